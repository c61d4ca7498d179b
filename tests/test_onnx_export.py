"""facekd.encoders.onnx_export: export with a parity report, fp16, execution-provider selection.

Provider selection is pure logic over onnxruntime's list, so it is tested with given lists (this
machine has only the CPU provider); the exports themselves run for real on onnxruntime's CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from facekd.encoders.onnx_export import export, select_providers
from facekd.encoders.onnx_model import METADATA_KEY, OnnxEncoder, has_preprocessing_head
from facekd.errors import EncoderError
from test_onnx_model import (build_mxnet_style, build_torch_model, chips, dense_erasure,
                             fitted_erasure)

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"


# ------------------------------------------------------------------ provider selection
def test_select_prefers_tensorrt_then_cuda_then_cpu():
    assert select_providers([CPU, CUDA, TRT]) == [TRT, CUDA, CPU]
    assert select_providers(["AzureExecutionProvider", CUDA, CPU]) == [CUDA, CPU]
    assert select_providers(["AzureExecutionProvider", CPU]) == [CPU]


def test_select_always_keeps_cpu_as_fallback():
    assert select_providers([TRT, CUDA]) == [TRT, CUDA, CPU]
    assert select_providers([CPU, CUDA], prefer="cuda") == [CUDA, CPU]


def test_select_honours_preference_order_and_aliases():
    assert select_providers([CPU, CUDA, TRT], prefer=["cuda", "tensorrt"]) == [CUDA, TRT, CPU]
    assert select_providers([CPU, CUDA, TRT], prefer="cpu") == [CPU]
    # TensorRT alone still gets CUDA behind it for the nodes TensorRT cannot take
    assert select_providers([CPU, CUDA, TRT], prefer="trt") == [TRT, CUDA, CPU]
    assert select_providers([CPU, CUDA], prefer=["tensorrt", "cuda"]) == [CUDA, CPU]


def test_select_refuses_an_explicit_gpu_request_without_gpu():
    with pytest.raises(EncoderError, match="onnxruntime-gpu"):
        select_providers([CPU], prefer="cuda")
    with pytest.raises(EncoderError, match="empty"):
        select_providers([CPU], prefer=[])


def test_select_defaults_to_what_onnxruntime_reports():
    got = select_providers()
    assert got[-1] == CPU and set(got) <= set(ort.get_available_providers())


# ------------------------------------------------------------------ export + parity
@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("export_models")
    out = {k: build_torch_model(k, d / f"{k}.onnx") for k in ("gemm_bn", "matmul", "normalized")}
    out["mxnet"] = build_mxnet_style(d / "mxnet.onnx")
    return out


@pytest.mark.parametrize("name", ["gemm_bn", "matmul", "normalized", "mxnet"])
def test_export_of_edited_encoder_matches_it_in_fp32_and_fp16(models, tmp_path, name):
    enc = OnnxEncoder(models[name])
    edited = enc.with_erasure(fitted_erasure(enc))
    x = chips(12, seed=3)
    r32 = export(edited, tmp_path / "e32.onnx", check_chips=x)
    assert r32.max_abs_diff < 1e-4 and r32.min_cosine > 0.99999 and r32.passed
    assert r32.provider == CPU and r32.providers_used[0] == CPU and r32.erasure_k == 3
    r16 = export(edited, tmp_path / "e16.onnx", fp16=True, check_chips=x)
    assert r16.min_cosine >= 0.999 and r16.passed
    assert r16.size_bytes < r32.size_bytes
    # fp32 in, fp32 out, whatever the weights
    m16 = onnx.load(str(tmp_path / "e16.onnx"))
    assert m16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert m16.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in m16.graph.initializer)
    assert has_preprocessing_head(m16.graph) == (name == "mxnet")  # insightface still reads it
    # the exported file is itself a loadable encoder computing the edited embeddings
    again = OnnxEncoder(tmp_path / "e16.onnx")
    e, a = edited.embed(x), again.embed(x)
    cos = np.sum(e * a, 1) / np.linalg.norm(e, axis=1) / np.linalg.norm(a, axis=1)
    assert cos.min() >= 0.999


def test_fp16_batches_1_7_64(models, tmp_path):
    enc = OnnxEncoder(models["gemm_bn"])
    edited = enc.with_erasure(dense_erasure())
    export(edited, tmp_path / "e16.onnx", fp16=True)
    half = OnnxEncoder(tmp_path / "e16.onnx")
    for n in (1, 7, 64):
        x = chips(n, seed=n)
        e, h = edited.embed(x), half.embed(x)
        assert h.shape == (n, e.shape[1])
        cos = np.sum(e * h, 1) / np.linalg.norm(e, axis=1) / np.linalg.norm(h, axis=1)
        assert cos.min() >= 0.999


def test_report_records_contract_and_serialises(models, tmp_path):
    enc = OnnxEncoder(models["mxnet"])
    report = export(enc, tmp_path / "m.onnx")
    d = report.to_dict()
    json.dumps(d)
    assert d["provider"] == CPU and d["passed"] and d["erasure_k"] is None
    assert d["input_name"] == "data" and d["output_name"] == "fc1" and d["dim"] == 32
    assert d["n_chips"] == 16 and d["input_spec"]["std"] == [1.0, 1.0, 1.0]
    assert "ran on CPUExecutionProvider" in report.message()
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert json.loads(meta[METADATA_KEY])["mean"] == [0.0, 0.0, 0.0]


def test_export_metadata_records_the_edit_size_but_not_the_erased_directions(models, tmp_path):
    enc = OnnxEncoder(models["gemm_bn"])
    edited = enc.with_erasure(fitted_erasure(enc))
    export(edited, tmp_path / "e.onnx")
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "e.onnx")).metadata_props}
    info = json.loads(meta["facekd.erasure"])
    assert info["k"] == 3 and info["method"] == "esc"
    assert set(info) <= {"method", "k", "gates", "linear_stages_after_gates", "steps", "surgery"}


def test_failed_parity_requirement_leaves_the_old_file_untouched(models, tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous good file")
    enc = OnnxEncoder(models["gemm_bn"])
    with pytest.raises(EncoderError, match="export refused"):
        export(enc, target, fp16=True, require_cosine=1.0 + 1e-9)
    assert target.read_bytes() == b"previous good file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_export_rejects_bad_input(models, tmp_path):
    enc = OnnxEncoder(models["gemm_bn"])
    with pytest.raises(EncoderError, match="expected chips"):
        export(enc, tmp_path / "x.onnx", check_chips=chips(2, size=64))
    with pytest.raises(EncoderError, match="Encoder"):
        export("not an encoder", tmp_path / "x.onnx")
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(EncoderError, match="none of the requested"):
            export(enc, tmp_path / "x.onnx", providers="tensorrt")
    assert not list(tmp_path.iterdir())


def test_torch_to_onnx_failure_leaves_the_previous_file_untouched(tmp_path, monkeypatch):
    import torch

    from facekd.encoders.base import InputSpec, TorchEncoder

    class Tiny(TorchEncoder):
        def with_erasure(self, erasure):  # not exercised here
            raise NotImplementedError

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=4), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 4 * 4, 8))
    enc = Tiny(net, InputSpec(16, (127.5,) * 3, (127.5,) * 3), 8, device="cpu")
    out = tmp_path / "enc.onnx"
    enc.to_onnx(out)
    before = out.read_bytes()
    monkeypatch.setattr(onnx.checker, "check_model", lambda m: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        enc.to_onnx(out)
    assert out.read_bytes() == before and list(tmp_path.iterdir()) == [out]


def test_baked_head_swaps_channels_for_a_bgr_network_and_is_skipped_for_raw_input(models, tmp_path):
    from facekd.encoders.base import InputSpec

    bgr = OnnxEncoder(models["gemm_bn"],
                      input_spec=InputSpec(112, (10.0, 20.0, 30.0), (50.0, 60.0, 70.0), "BGR"))
    x = chips(4, seed=9)
    report = export(bgr, tmp_path / "bgr.onnx", check_chips=x, bake_preprocessing=True)
    sess = ort.InferenceSession(str(tmp_path / "bgr.onnx"), providers=[CPU])
    raw = np.ascontiguousarray(x.astype(np.float32).transpose(0, 3, 1, 2))  # RGB pixels
    assert np.abs(sess.run(None, {sess.get_inputs()[0].name: raw})[0] - bgr.embed(x)).max() < 1e-4
    assert report.input_spec["channel_order"] == "RGB"
    raw_enc = OnnxEncoder(models["mxnet"])  # already takes raw pixels: nothing to bake
    export(raw_enc, tmp_path / "m.onnx", bake_preprocessing=True)
    assert len(onnx.load(str(tmp_path / "m.onnx")).graph.node) == len(raw_enc.model.graph.node)


@pytest.mark.slow
def test_the_torch_export_based_exporter_writes_the_same_model(monkeypatch):
    """The TorchScript exporter is used while torch has it (docs/cli.md, "ONNX exporter"); the
    torch.export-based one, its successor, writes a model with the same outputs."""
    import onnxruntime as ort

    from facekd.encoders import load_encoder

    enc = load_encoder("dlib")
    chips = np.random.default_rng(0).integers(0, 255, size=(3, 150, 150, 3), dtype=np.uint8)
    ref = enc.embed(chips)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    monkeypatch.setenv("FACEKD_ONNX_EXPORTER", "dynamo")
    model = enc.onnx_model()
    assert model.opset_import[0].version >= 18
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": enc.input_spec.to_tensor_array(chips)})[0]
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    assert float((out * ref).sum(axis=1).min()) > 0.99999
