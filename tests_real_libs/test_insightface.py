"""insightface's own model_zoo and FaceAnalysis on facekd-edited models and facekd-written packs.

Seeded tiny models (``tests/test_onnx_model.py`` builders, ``tests/scrfd_graph.py``): an
ArcFace-style graph (torch export, Gemm + BatchNormalization) and an MXNet-style one
(``_minusscalar0`` / ``_mulscalar0`` head, raw pixels in); insightface is handed BGR images, as
its users do (``cv2.imread``), facekd RGB.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

insightface = pytest.importorskip("insightface", reason="insightface is not installed "
                                  "(ci/real_libs.sh installs it in its own venv)")
from insightface.app import FaceAnalysis  # noqa: E402
from insightface.app.common import Face as InsightfaceFace  # noqa: E402
from insightface.model_zoo import get_model  # noqa: E402
from insightface.utils import face_align  # noqa: E402

from facekd.encoders import load_encoder  # noqa: E402
from facekd.encoders.onnx_model import OnnxEncoder  # noqa: E402
from facekd.faces import chips_from_files, norm_crop  # noqa: E402
from facekd.faces.insightface_det import ScrfdDetector  # noqa: E402
from facekd.encoders.insightface_pack import export_to_pack  # noqa: E402
from scrfd_graph import build_scrfd, face_image  # noqa: E402
from test_onnx_model import build_mxnet_style, build_torch_model, chips, fitted_erasure  # noqa: E402

TOL = 1e-6  # on L2-normalised embeddings, the space both libraries compare faces in
CPU = ["CPUExecutionProvider"]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.atleast_2d(x)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _close(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(_unit(a) - _unit(b)).max())


def _bgr(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rgb[..., ::-1])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(params=["arcface", "mxnet"])
def edited(request, tmp_path) -> tuple[Path, OnnxEncoder]:
    """A facekd-edited recognition model written to ONNX, and the facekd encoder it came from."""
    src = tmp_path / "w600k_r50.onnx"
    if request.param == "arcface":
        build_torch_model("gemm_bn", src)
    else:
        build_mxnet_style(src)
    base = OnnxEncoder(src)
    enc = base.with_erasure(fitted_erasure(base))
    return enc.to_onnx(tmp_path / f"edited_{request.param}.onnx"), enc


def test_get_feat_on_the_edited_model_matches_facekd(edited):
    path, enc = edited
    model = get_model(str(path), providers=CPU)
    assert model.taskname == "recognition"
    x = chips(5, seed=11)
    got = np.concatenate([model.get_feat([_bgr(c)]) for c in x])
    assert _close(got, enc.embed(x)) <= TOL


def test_get_through_face_kps_matches_facekd_norm_crop(edited):
    path, enc = edited
    model = get_model(str(path), providers=CPU)
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (240, 200, 3), dtype=np.uint8)
    kps = face_align.arcface_dst * 1.4 + np.array([30.0, 40.0], np.float32)
    kps = (kps + rng.normal(0, 1.5, kps.shape)).astype(np.float32)  # not an exact similarity
    face = InsightfaceFace(bbox=np.array([20, 30, 190, 200], np.float32), kps=kps, det_score=0.9)
    got = model.get(_bgr(img), face)
    chip = norm_crop(img, kps, 112)
    assert np.array_equal(chip, _bgr(face_align.norm_crop(_bgr(img), kps, 112)))
    assert np.array_equal(norm_crop(img, kps.astype(np.float64), 112),
                          _bgr(face_align.norm_crop(_bgr(img), kps.astype(np.float64), 112)))
    assert _close(got, enc.embed(chip[None])) <= TOL


def _pack(root: Path, name: str = "buffalo_t", *, manifest: bool = False) -> Path:
    d = root / "models" / name
    d.mkdir(parents=True)
    build_scrfd(d / "det_10g.onnx", noise=0.05, seed=2)
    build_torch_model("gemm_bn", d / "w600k_r50.onnx")
    if manifest:
        (d / "MODEL.LICENSE").write_text("test fixture\n")
        tasks = {"detection": {"file": "det_10g.onnx", "sha256": _sha(d / "det_10g.onnx")},
                 "recognition": {"file": "w600k_r50.onnx", "sha256": _sha(d / "w600k_r50.onnx"),
                                 "preprocessing": {"mean": 127.5, "std": 127.5}}}
        (d / "manifest.json").write_text(json.dumps({
            "manifest_version": 2, "model_id": name, "license": "MODEL.LICENSE", "tasks": tasks}))
    return d


def _analysis(pack: Path) -> FaceAnalysis:
    app = FaceAnalysis(name=str(pack), providers=CPU)
    app.prepare(ctx_id=-1)
    return app


@pytest.mark.parametrize("manifest", [False, True], ids=["glob", "manifest-v2"])
def test_face_analysis_and_facekd_find_the_same_face_points_and_embedding(tmp_path, manifest):
    pack = _pack(tmp_path, manifest=manifest)
    img = face_image(height=240, cell=(2, 6), seed=3)
    faces = _analysis(pack).get(_bgr(img))
    det, kps = ScrfdDetector(pack / "det_10g.onnx").detect_raw(img)
    assert len(faces) == len(det) == 1
    np.testing.assert_allclose(faces[0].bbox, det[0, :4], atol=1e-4)
    np.testing.assert_allclose(faces[0].kps, kps[0], atol=1e-4)
    enc = load_encoder(f"insightface:{pack}")
    path = tmp_path / "photo.png"
    import cv2

    cv2.imwrite(str(path), _bgr(img))
    res = chips_from_files([path], enc.input_spec)
    assert _close(faces[0].embedding, enc.embed(res.chips)) <= TOL


@pytest.mark.parametrize("manifest", [False, True], ids=["glob", "manifest-v2"])
def test_face_analysis_loads_the_file_export_to_pack_wrote(tmp_path, manifest):
    pack = _pack(tmp_path, manifest=manifest)
    build_torch_model("gemm", pack / "w600k_r50_old.onnx", seed=9)  # sorts after: never chosen
    base = load_encoder(f"insightface:{pack}")
    edited = base.with_erasure(fitted_erasure(base))
    out = tmp_path / "models" / "buffalo_t_erased"
    res = export_to_pack(edited, base.fingerprint, pack, out=out)
    app = _analysis(out)  # a version-2 manifest: insightface checks the new sha256 itself
    rec = app.models["recognition"]
    assert Path(rec.model_file).resolve() == (out / "w600k_r50.onnx").resolve() == Path(res["file"]).resolve()
    x = chips(4, seed=6)
    got = np.concatenate([rec.get_feat([_bgr(c)]) for c in x])
    assert _close(got, edited.embed(x)) <= TOL
    original = _analysis(pack).models["recognition"].get_feat([_bgr(x[0])])
    assert _close(original, base.embed(x[:1])) <= TOL  # the original pack is untouched
