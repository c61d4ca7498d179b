"""facekd.encoders.insightface_pack: the edited recognition model lands where FaceAnalysis loads it.

Packs are built from small seeded models (a 5-output "detector", a 192x192 "landmark" model and
112x112 recognition models) in insightface's layout; the file selection is insightface's own
(sorted glob, ModelRouter's shape tests, first model per task), mirrored in ``pack_models``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from facekd.encoders.base import InputSpec
from facekd.encoders.insightface_pack import export_to_pack, insightface_normalisation, pack_models
from facekd.encoders.onnx_model import OnnxEncoder
from facekd.errors import PackError
from test_onnx_model import build_mxnet_style, build_torch_model, chips, fitted_erasure


def _stub(path: Path, size: list, n_out: int) -> Path:
    """A model insightface routes by shape alone: ``n_out`` Identity outputs of its input."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, size)
    outs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, size) for i in range(n_out)]
    nodes = [helper.make_node("Identity", ["x"], [f"y{i}"]) for i in range(n_out)]
    onnx.save(helper.make_model(helper.make_graph(nodes, "stub", [x], outs)), str(path))
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def pack(tmp_path) -> Path:
    """``buffalo_x``: detector, landmark, recognition (w600k_r50.onnx), version-2 manifest."""
    d = tmp_path / "models" / "buffalo_x"
    d.mkdir(parents=True)
    _stub(d / "det_10g.onnx", [1, 3, "H", "W"], 9)
    _stub(d / "2d106det.onnx", [1, 3, 192, 192], 1)
    build_torch_model("gemm_bn", d / "w600k_r50.onnx")
    files = [{"name": p.name, "sha256": _sha(p), "size": p.stat().st_size} for p in sorted(d.iterdir())]
    (d / "manifest.json").write_text(json.dumps({"version": 2, "files": files}))
    return d


def _recognition(pack_dir: Path) -> Path:
    return next(p for p, task in pack_models(pack_dir) if task == "recognition")


def insightface_embed(path: Path, x: np.ndarray) -> np.ndarray:
    """What insightface's ArcFaceONNX.get_feat computes for RGB chips ``x`` (it reads the
    normalisation off the node names and feeds (rgb - mean) / std)."""
    mean, std = insightface_normalisation(onnx.load(str(path)))
    blob = ((x.astype(np.float32) - mean) / std).transpose(0, 3, 1, 2)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: np.ascontiguousarray(blob)})[0]


def test_pack_models_routes_files_as_insightface_does(pack):
    assert [(p.name, t) for p, t in pack_models(pack)] == [
        ("2d106det.onnx", "landmark"), ("det_10g.onnx", "detection"),
        ("w600k_r50.onnx", "recognition")]


def test_copy_gets_the_edited_model_under_the_loaded_name_and_a_fresh_manifest(pack, tmp_path):
    base = OnnxEncoder(pack / "w600k_r50.onnx")
    edited = base.with_erasure(fitted_erasure(base))
    before = {p.name: p.read_bytes() for p in pack.iterdir()}
    out = tmp_path / "models" / "buffalo_x_erased"
    res = export_to_pack(edited, base.fingerprint, pack, out=out)
    assert {p.name: p.read_bytes() for p in pack.iterdir()} == before  # the original is untouched
    assert _recognition(out) == out / "w600k_r50.onnx" and res["replaced"] == "w600k_r50.onnx"
    assert sorted(p.name for p in out.iterdir()) == sorted(before)  # no stray file for the glob
    entry = next(f for f in json.loads((out / "manifest.json").read_text())["files"]
                 if f["name"] == "w600k_r50.onnx")
    assert entry["sha256"] == _sha(out / "w600k_r50.onnx") == res["sha256"]
    assert entry["size"] == (out / "w600k_r50.onnx").stat().st_size
    x = chips(6, seed=4)
    assert np.abs(insightface_embed(out / "w600k_r50.onnx", x) - edited.embed(x)).max() <= 1e-5
    assert not res["baked_head"] and res["backup"] is None


def test_in_place_keeps_a_backup_outside_the_pack(pack):
    base = OnnxEncoder(pack / "w600k_r50.onnx")
    original = (pack / "w600k_r50.onnx").read_bytes()
    manifest = (pack / "manifest.json").read_text()
    res = export_to_pack(base.with_erasure(fitted_erasure(base)), base.fingerprint, pack,
                         in_place=True)
    backup = Path(res["backup"])
    assert backup.parent == pack.parent and backup != pack
    assert (backup / "w600k_r50.onnx").read_bytes() == original
    assert (backup / "manifest.json").read_text() == manifest
    assert (pack / "w600k_r50.onnx").read_bytes() != original and _recognition(pack).name == "w600k_r50.onnx"
    assert json.loads((pack / "manifest.json").read_text())["files"][-1]["sha256"] == \
        _sha(pack / "w600k_r50.onnx")
    assert sorted(p.name for p in pack.iterdir()) == ["2d106det.onnx", "det_10g.onnx",
                                                      "manifest.json", "w600k_r50.onnx"]


def test_refuses_when_another_recognition_model_sorts_first(pack, tmp_path):
    build_torch_model("gemm", pack / "glintr100.onnx", seed=5)  # sorts before w600k_r50.onnx
    base = OnnxEncoder(pack / "w600k_r50.onnx")
    before = {p.name: p.read_bytes() for p in pack.iterdir()}
    with pytest.raises(PackError, match="would load glintr100.onnx before w600k_r50.onnx"):
        export_to_pack(base.with_erasure(fitted_erasure(base)), base.fingerprint, pack,
                       in_place=True)
    assert {p.name: p.read_bytes() for p in pack.iterdir()} == before
    assert sorted(p.name for p in pack.parent.iterdir()) == ["buffalo_x"]  # no backup left


def test_refuses_a_pack_whose_recognition_model_is_not_the_workspace_original(pack, tmp_path):
    other = OnnxEncoder(build_torch_model("gemm_bn", tmp_path / "other.onnx", seed=9))
    with pytest.raises(PackError, match="original encoder"):
        export_to_pack(other, other.fingerprint, pack, out=tmp_path / "copy")
    assert not (tmp_path / "copy").exists()


def test_mxnet_style_head_is_kept_and_a_foreign_normalisation_gets_a_baked_head(tmp_path):
    d = tmp_path / "old_pack"
    d.mkdir()
    build_mxnet_style(d / "model.onnx")
    base = OnnxEncoder(d / "model.onnx")  # its _minus/_mul head: raw pixels in
    x = chips(4, seed=2)
    edited = base.with_erasure(fitted_erasure(base))
    res = export_to_pack(edited, base.fingerprint, d, out=tmp_path / "copy1")
    assert not res["baked_head"]
    assert np.abs(insightface_embed(tmp_path / "copy1" / "model.onnx", x) - edited.embed(x)).max() <= 1e-5
    # the same graph declared as wanting facenet's (x - 127.5) / 128: insightface would feed
    # (x - 127.5) / 127.5 without a head, so one is baked in
    shutil.rmtree(d)
    d.mkdir()
    build_torch_model("gemm_bn", d / "model.onnx")
    spec = InputSpec(112, (127.5,) * 3, (128.0,) * 3, "RGB", alignment="arcface")
    base = OnnxEncoder(d / "model.onnx", input_spec=spec)
    res = export_to_pack(base, base.fingerprint, d, out=tmp_path / "copy2")
    assert res["baked_head"]
    assert np.abs(insightface_embed(tmp_path / "copy2" / "model.onnx", x) - base.embed(x)).max() <= 1e-5


def test_cli_writes_a_pack_copy_and_checks_its_arguments(pack, tmp_path):
    from test_cli_workspace_option import run

    ws = tmp_path / "ws"
    assert run("init", "-w", ws, "--encoder", f"onnx:{pack / 'w600k_r50.onnx'}", "--aligned")[0] == 0
    code, out, err = run("export-onnx", "-w", ws, "--insightface-pack", pack, tmp_path / "copy",
                         "--json")
    assert code == 0, err
    assert json.loads(out)["loaded_by_insightface"] == str(tmp_path / "copy" / "w600k_r50.onnx")
    for args in ([], [tmp_path / "x", "--in-place"]):
        code, _, err = run("export-onnx", "-w", ws, "--insightface-pack", pack, *args)
        assert code == 2 and err.count("\n") == 1 and "--in-place" in err


def test_in_place_refuses_to_overwrite_the_workspace_original_model(pack, tmp_path):
    from test_cli_workspace_option import run

    ws = tmp_path / "ws"
    assert run("init", "-w", ws, "--encoder", f"onnx:{pack / 'w600k_r50.onnx'}", "--aligned")[0] == 0
    before = (pack / "w600k_r50.onnx").read_bytes()
    code, _, err = run("export-onnx", "-w", ws, "--insightface-pack", pack, "--in-place")
    assert code == 2 and "workspace's original encoder" in err and err.count("\n") == 1
    assert (pack / "w600k_r50.onnx").read_bytes() == before
    assert run("check", "-w", ws)[0] == 0


def test_cli_bake_preprocessing_writes_a_file_that_takes_raw_pixels(pack, tmp_path):
    from test_cli_workspace_option import run

    ws = tmp_path / "ws"
    assert run("init", "-w", ws, "--encoder", f"onnx:{pack / 'w600k_r50.onnx'}", "--aligned")[0] == 0
    code, out, err = run("export-onnx", "-w", ws, tmp_path / "baked.onnx", "--bake-preprocessing",
                         "--json")
    assert code == 0 and json.loads(out)["input_spec"]["mean"] == [0.0] * 3, err
    assert insightface_normalisation(onnx.load(str(tmp_path / "baked.onnx"))) == (0.0, 1.0)
    x = chips(3, seed=8)
    want = OnnxEncoder(pack / "w600k_r50.onnx").embed(x)
    assert np.abs(insightface_embed(tmp_path / "baked.onnx", x) - want).max() <= 1e-5


def _v2(pack_dir: Path, **recognition) -> None:
    """insightface 2.x's task manifest naming w600k_r50.onnx (and the detector)."""
    tasks = {"detection": {"file": "det_10g.onnx", "sha256": _sha(pack_dir / "det_10g.onnx")},
             "recognition": {"file": "w600k_r50.onnx", "sha256": _sha(pack_dir / "w600k_r50.onnx"),
                             **recognition}}
    (pack_dir / "manifest.json").write_text(json.dumps(
        {"manifest_version": 2, "model_id": pack_dir.name, "license": "MODEL.LICENSE", "tasks": tasks}))


def test_version_2_manifest_names_the_file_whatever_sorts_first_and_gets_the_new_sha(pack, tmp_path):
    from facekd.encoders.insightface_pack import select_models

    build_torch_model("gemm", pack / "a_glint.onnx", seed=5)  # the glob would pick this one
    _v2(pack, preprocessing={"mean": 127.5, "std": 127.5})
    base = OnnxEncoder(pack / "w600k_r50.onnx")
    edited = base.with_erasure(fitted_erasure(base))
    out = tmp_path / "models" / "buffalo_x_erased"
    res = export_to_pack(edited, base.fingerprint, pack, out=out)
    chosen = select_models(out)  # verifies the manifest's sha256 against the written file
    assert chosen.manifest_v2 and chosen.recognition == out / "w600k_r50.onnx" == Path(res["file"])
    tasks = json.loads((out / "manifest.json").read_text())["tasks"]
    assert tasks["recognition"]["sha256"] == _sha(out / "w600k_r50.onnx")
    assert tasks["detection"]["sha256"] == _sha(pack / "det_10g.onnx")


def test_version_2_manifest_with_another_normalisation_is_refused(pack, tmp_path):
    _v2(pack, preprocessing="embedded")  # insightface would feed raw pixels to an ArcFace graph
    base = OnnxEncoder(pack / "w600k_r50.onnx")
    with pytest.raises(PackError, match="tells insightface to feed"):
        export_to_pack(base.with_erasure(fitted_erasure(base)), base.fingerprint, pack,
                       out=tmp_path / "copy")
    assert not (tmp_path / "copy").exists()
