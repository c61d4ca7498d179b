"""``--encoder insightface:DIR``: an insightface model pack as the workspace's encoder.

Packs are built in tmp from seeded tiny models: a torch-exported recognition CNN and a detector
graph with SCRFD's output layout (``scrfd_graph``). Detection, decoding, NMS, alignment and
embedding run for real; the insightface library itself is exercised in ``tests_real_libs/``.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import run_cli
from facekd.encoders import load_encoder
from facekd.encoders.insightface_pack import select_models
from facekd.encoders.onnx_model import OnnxEncoder
from facekd.errors import PackError
from facekd.faces import FaceAligner, chips_from_files, default_aligner, norm_crop
from facekd.faces.insightface_det import ScrfdDetector
from scrfd_graph import build_scrfd, expected_face, face_image
from test_onnx_model import build_mxnet_style, build_torch_model, fitted_erasure


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_rgb(path: Path, img: np.ndarray) -> Path:
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture
def pack(tmp_path) -> Path:
    """``buffalo_t``: SCRFD-layout detector + ArcFace-style recognition model, no manifest."""
    d = tmp_path / "models" / "buffalo_t"
    d.mkdir(parents=True)
    build_scrfd(d / "det_10g.onnx")
    build_torch_model("gemm_bn", d / "w600k_r50.onnx")
    return d


def _v2_manifest(d: Path, recognition: str, **extra) -> None:
    tasks = {"detection": {"file": "det_10g.onnx", "sha256": _sha(d / "det_10g.onnx")},
             "recognition": {"file": recognition, "sha256": _sha(d / recognition), **extra}}
    (d / "manifest.json").write_text(json.dumps({"manifest_version": 2, "model_id": d.name,
                                                 "license": "MODEL.LICENSE", "tasks": tasks}))


# ------------------------------------------------------------------ the detector
def test_scrfd_decoding_finds_the_one_face_with_its_box_and_five_points(tmp_path):
    det = ScrfdDetector(build_scrfd(tmp_path / "det.onnx"))
    for cell in [(3, 5), (6, 2)]:
        boxes, kps = det.detect_raw(face_image(cell=cell))
        box, points = expected_face(cell)
        assert boxes.shape == (1, 5) and boxes[0, 4] > 0.9
        np.testing.assert_allclose(boxes[0, :4], box, atol=1e-4)
        np.testing.assert_allclose(kps[0], points, atol=1e-4)


def test_image_without_the_pattern_has_no_face_and_nms_merges_the_two_anchors(tmp_path):
    det = ScrfdDetector(build_scrfd(tmp_path / "det.onnx", noise=0.3, seed=3))
    plain = np.full((240, 320, 3), 120, np.uint8)
    assert det.detect(plain) == []
    faces = det.detect(face_image(height=240, cell=(2, 4)))
    # both anchors of the cell and the candidates of both detection sizes collapse to one face
    assert len(faces) == 1 and faces[0].order == "insightface"


def test_a_fixed_size_graph_is_run_at_its_own_size(tmp_path):
    det = ScrfdDetector(build_scrfd(tmp_path / "det.onnx", fixed=(640, 640)))
    assert det.sizes == [(640, 640)]
    assert len(det.detect(face_image())) == 1


def test_a_detector_without_landmark_heads_is_refused(tmp_path):
    with pytest.raises(PackError, match="5 landmarks"):
        ScrfdDetector(build_scrfd(tmp_path / "det.onnx", landmarks=False))


# ------------------------------------------------------------------ alignment
def test_norm_crop_puts_the_five_points_on_the_arcface_template():
    from facekd.faces import ARCFACE_TEMPLATE

    angle, scale, shift = np.deg2rad(17), 1.9, np.array([40.0, 25.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    kps = ARCFACE_TEMPLATE @ rot.T + shift
    img = np.zeros((260, 260, 3), np.uint8)
    for i, (x, y) in enumerate(kps):
        cv2.circle(img, (int(round(x)), int(round(y))), 3, (255, 40 * i, 0), -1)
    chip = norm_crop(img, kps, 112)
    assert chip.shape == (112, 112, 3)
    for i, (x, y) in enumerate(ARCFACE_TEMPLATE):  # each dot lands on its template point
        assert chip[int(round(y)), int(round(x)), 0] > 200
        assert abs(int(chip[int(round(y)), int(round(x)), 1]) - 40 * i) <= 12


def test_chips_are_norm_crops_at_the_detector_points_and_embed_as_the_pack_model(pack, tmp_path):
    enc = load_encoder(f"insightface:{pack}")
    assert enc.input_spec.detector == str(pack / "det_10g.onnx")
    assert isinstance(default_aligner(enc.input_spec), ScrfdDetector)
    img = face_image(cell=(4, 4), seed=5)
    res = chips_from_files([_write_rgb(tmp_path / "a.png", img)], enc.input_spec)
    face, = default_aligner(enc.input_spec).detect(img)
    np.testing.assert_allclose(face.landmarks, expected_face((4, 4))[1], atol=1e-4)
    want = norm_crop(img, face.landmarks, 112)
    assert res.sources == [0] and np.array_equal(res.chips[0], want)
    plain = OnnxEncoder(pack / "w600k_r50.onnx")  # the same file, insightface's normalisation
    assert enc.fingerprint == plain.fingerprint
    np.testing.assert_array_equal(enc.embed(res.chips), plain.embed(want[None]))


def test_the_edited_encoder_keeps_the_pack_detector(pack):
    enc = load_encoder(f"insightface:{pack}")
    edited = enc.with_erasure(fitted_erasure(enc))
    assert edited.input_spec.detector == enc.input_spec.detector
    assert edited.input_spec == enc.input_spec == OnnxEncoder(pack / "w600k_r50.onnx").input_spec


# ------------------------------------------------------------------ which files
def test_version_2_manifest_picks_the_recognition_file_and_its_normalisation(pack):
    build_torch_model("gemm", pack / "a_first.onnx", seed=4)  # sorts first: the glob's choice
    build_mxnet_style(pack / "z_raw.onnx")
    assert select_models(pack).recognition.name == "a_first.onnx"
    _v2_manifest(pack, "z_raw.onnx", preprocessing="embedded")
    models = select_models(pack)
    assert models.recognition.name == "z_raw.onnx" and models.manifest_v2
    enc = load_encoder(f"insightface:{pack}")
    assert enc.path == pack / "z_raw.onnx"
    assert enc.input_spec.mean == (0.0,) * 3 and enc.input_spec.std == (1.0,) * 3
    _v2_manifest(pack, "a_first.onnx", preprocessing={"mean": 127.5, "std": 128.0})
    assert load_encoder(f"insightface:{pack}").input_spec.std == (128.0,) * 3


def test_a_pack_without_a_landmark_detector_falls_back_and_says_so_once(tmp_path):
    d = tmp_path / "rec_only"
    d.mkdir()
    build_torch_model("gemm_bn", d / "w600k_r50.onnx")
    with pytest.warns(UserWarning, match="has no detector.*facekd's own path"):
        enc = load_encoder(f"insightface:{d}")
    assert enc.input_spec.detector is None
    assert isinstance(default_aligner(enc.input_spec), FaceAligner)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_encoder(f"insightface:{d}")  # said once per process
    e = tmp_path / "no_kps"
    e.mkdir()
    build_scrfd(e / "det_500m.onnx", landmarks=False)
    build_torch_model("gemm_bn", e / "w600k_mbf.onnx")
    with pytest.warns(UserWarning, match="det_500m.onnx gives no 5 landmarks"):
        assert load_encoder(f"insightface:{e}").input_spec.detector is None


# ------------------------------------------------------------------ the CLI
def test_cli_init_enroll_and_search_through_the_pack(pack, tmp_path):
    tree = tmp_path / "tree"
    for name, seeds in (("alice", (1, 2)), ("bob", (3, 4))):
        (tree / name).mkdir(parents=True)
        for s in seeds:
            _write_rgb(tree / name / f"{s}.png", face_image(cell=(2 + s, 3 + s), seed=s))
    _write_rgb(tree / "bob" / "empty.png", np.full((200, 200, 3), 128, np.uint8))
    ws = tmp_path / "ws"
    code, out, err = run_cli("init", "-w", ws, "--encoder", f"insightface:{pack}", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["detector"] == str(pack / "det_10g.onnx")
    assert data["model"] == str(pack / "w600k_r50.onnx") and data["encoder"] == f"insightface:{pack}"
    code, out, err = run_cli("enroll", "-w", ws, tree, "--json")
    assert code == 0, err
    assert json.loads(out)["added"] == 4 and "empty.png: no face found" in err
    code, out, err = run_cli("search", "-w", ws, tree / "alice" / "2.png", "--json")
    assert code == 0, err
    best = json.loads(out)["matches"][0]  # the enrolled photo finds its own gallery row
    assert best["name"] == "alice" and best["score"] == pytest.approx(1.0, abs=1e-5)
    code, out, err = run_cli("export-onnx", "-w", ws, "--insightface-pack", pack,
                             tmp_path / "copy", "--json")
    assert code == 0, err
    assert json.loads(out)["loaded_by_insightface"] == str(tmp_path / "copy" / "w600k_r50.onnx")


def _refused(tmp_path, spec: str, fragment: str) -> None:
    ws = tmp_path / "ws_refused"
    code, out, err = run_cli("init", "-w", ws, "--encoder", spec)
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("error: ")
    assert fragment in err and "Traceback" not in err
    assert not (ws / "config.toml").exists()


def test_cli_refuses_a_missing_folder(tmp_path):
    _refused(tmp_path, f"insightface:{tmp_path / 'nowhere'}", "no such insightface model-pack")


def test_cli_refuses_a_pack_without_a_recognition_model(tmp_path):
    d = tmp_path / "det_only"
    d.mkdir()
    build_scrfd(d / "det_10g.onnx")
    _refused(tmp_path, f"insightface:{d}", "no recognition model")


def test_cli_refuses_a_checksum_mismatch(pack, tmp_path):
    _v2_manifest(pack, "w600k_r50.onnx")
    build_torch_model("gemm_bn", pack / "w600k_r50.onnx", seed=7)  # changed after the manifest
    _refused(tmp_path, f"insightface:{pack}", "does not match")


def test_cli_refuses_an_unreadable_onnx_file(pack, tmp_path):
    (pack / "genderage.onnx").write_bytes(b"\x08\x07not a protobuf at all" * 20)
    _refused(tmp_path, f"insightface:{pack}", "genderage.onnx: not a readable ONNX model")


def test_cli_refuses_a_broken_version_2_manifest(pack, tmp_path):
    (pack / "manifest.json").write_text(json.dumps({"manifest_version": 2, "tasks": {}}))
    _refused(tmp_path, f"insightface:{pack}", "version-2 manifest without model_id")


def test_bench_caches_the_pack_detector_chips_apart_from_dlib_chips(pack, tmp_path):
    from facekd.evaluation.bench import _cache_key

    files = [_write_rgb(tmp_path / "a.png", face_image())]
    plain, packed = OnnxEncoder(pack / "w600k_r50.onnx"), load_encoder(f"insightface:{pack}")
    assert plain.input_spec == packed.input_spec and plain.fingerprint == packed.fingerprint
    assert _cache_key(plain, tmp_path, files) != _cache_key(packed, tmp_path, files)
