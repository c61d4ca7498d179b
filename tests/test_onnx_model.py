"""OnnxEncoder: loading any ONNX face encoder, reading its input contract, folding an erasure.

The models are small networks the tests build themselves: torch CNNs exported with the legacy
exporter (ending Gemm + BatchNormalization like insightface's ArcFace, or a bare MatMul) and an
MXNet-style graph written with the onnx helper API (Sub/Mul pre-processing head, initialisers
listed as graph inputs, Gemm transB=1 + BatchNormalization, as insightface's older packs are).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from facekd.encoders import load_encoder
from facekd.encoders.base import InputSpec
from facekd.encoders.onnx_model import ARCFACE_SPEC, OnnxEncoder, fold_plan, has_preprocessing_head
from facekd.erasure import Erasure, fit_esc
from facekd.errors import EncoderError

DIM = 32
SIZE = 112


# ------------------------------------------------------------------ model builders (shared)
class _TinyCNN(torch.nn.Module):
    """Conv/PReLU body, then ``head`` (Linear [+ BatchNorm1d], Linear without bias, ...)."""

    def __init__(self, head: torch.nn.Module, normalize: bool = False):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.BatchNorm2d(8), torch.nn.PReLU(8),
            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.PReLU(16),
            torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())
        self.head = head
        self.normalize = normalize

    def forward(self, x):
        y = self.head(self.body(x))
        return torch.nn.functional.normalize(y, dim=1) if self.normalize else y


def _randomize_bn(bn: torch.nn.modules.batchnorm._BatchNorm, gen: torch.Generator) -> None:
    with torch.no_grad():
        bn.weight.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
        bn.bias.copy_(torch.randn(bn.num_features, generator=gen) * 0.3)
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen) * 0.2)
        bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)


def export_torch(module: torch.nn.Module, path: Path, size: int = SIZE) -> Path:
    """The legacy exporter with a dynamic batch axis, as ``samples`` and most users do it."""
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, torch.zeros(1, 3, size, size), str(path), dynamo=False,
                          opset_version=17, input_names=["input"], output_names=["embedding"],
                          dynamic_axes={"input": {0: "N"}, "embedding": {0: "N"}})
    return path


def build_torch_model(kind: str, path: Path, seed: int = 0) -> Path:
    """``kind``: gemm_bn, gemm_bn_default (BN at init: the exporter dedups its tensors),
    gemm, matmul (Linear without bias), matmul_bn (the same + BatchNorm1d, facenet's ending),
    normalized (ends with an L2 normalisation)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if kind in ("gemm_bn", "gemm_bn_default"):
        head = torch.nn.Sequential(torch.nn.Linear(64, DIM), torch.nn.BatchNorm1d(DIM))
        if kind == "gemm_bn":
            _randomize_bn(head[1], gen)
    elif kind == "gemm":
        head = torch.nn.Linear(64, DIM)
    elif kind == "matmul":
        head = torch.nn.Linear(64, DIM, bias=False)
    elif kind == "matmul_bn":  # facenet's ending: last_linear (no bias) -> last_bn
        head = torch.nn.Sequential(torch.nn.Linear(64, DIM, bias=False), torch.nn.BatchNorm1d(DIM))
        _randomize_bn(head[1], gen)
    elif kind == "normalized":
        head = torch.nn.Linear(64, DIM)
    else:
        raise ValueError(kind)
    model = _TinyCNN(head, normalize=kind == "normalized")
    _randomize_bn(model.body[1], gen)
    return export_torch(model, path)


def build_mxnet_style(path: Path, seed: int = 0, *, tail: str = "gemm_bn") -> Path:
    """insightface's older packs: raw-pixel input 'data', '_minusscalar0'/'_mulscalar0' head,
    initialisers also listed as graph inputs (IR 3 style), Gemm transB=1 'pre_fc1' + BN 'fc1'.
    ``tail="matmul_add"`` ends with MatMul + Add instead of Gemm + BN; ``tail="gemm_nobias"`` with a
    Gemm that has no bias input C (it is optional)."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    inits = {
        "minus_c": np.array(127.5, f32), "mul_c": np.array(0.0078125, f32),
        "conv0_w": (rng.normal(size=(8, 3, 3, 3)) * 0.3).astype(f32),
        "conv0_b": rng.normal(size=8).astype(f32) * 0.1,
        "conv1_w": (rng.normal(size=(16, 8, 3, 3)) * 0.2).astype(f32),
        "fc_w": (rng.normal(size=(DIM, 16)) * 0.3).astype(f32),      # transB=1 layout
        "fc_b": rng.normal(size=DIM).astype(f32) * 0.1,
        "bn_g": (rng.random(DIM) + 0.5).astype(f32), "bn_b": rng.normal(size=DIM).astype(f32) * 0.2,
        "bn_m": rng.normal(size=DIM).astype(f32) * 0.1, "bn_v": (rng.random(DIM) + 0.5).astype(f32),
        "mm_w": (rng.normal(size=(16, DIM)) * 0.3).astype(f32),
    }
    nodes = [
        helper.make_node("Sub", ["data", "minus_c"], ["_minusscalar0"], name="_minusscalar0"),
        helper.make_node("Mul", ["_minusscalar0", "mul_c"], ["_mulscalar0"], name="_mulscalar0"),
        helper.make_node("Conv", ["_mulscalar0", "conv0_w", "conv0_b"], ["conv0"], name="conv0",
                         kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv0"], ["relu0"], name="relu0"),
        helper.make_node("Conv", ["relu0", "conv1_w"], ["conv1"], name="conv1",
                         kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["conv1"], ["pool"], name="pool"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten0", axis=1),
    ]
    if tail == "gemm_bn":
        nodes += [helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["pre_fc1"], name="pre_fc1",
                                   alpha=1.0, beta=1.0, transB=1),
                  helper.make_node("BatchNormalization", ["pre_fc1", "bn_g", "bn_b", "bn_m", "bn_v"],
                                   ["fc1"], name="fc1", epsilon=2e-5)]
        used = [k for k in inits if not k.startswith("mm_")]
    elif tail == "gemm_nobias":
        nodes += [helper.make_node("Gemm", ["flat", "fc_w"], ["fc1"], name="pre_fc1", transB=1)]
        used = [k for k in inits if not k.startswith(("bn_", "mm_", "fc_b"))]
    else:
        nodes += [helper.make_node("MatMul", ["flat", "mm_w"], ["mm"], name="mm"),
                  helper.make_node("Add", ["mm", "fc_b"], ["fc1"], name="bias_add")]
        used = [k for k in inits if not k.startswith(("bn_", "fc_w"))]
    tensors = [numpy_helper.from_array(inits[k], k) for k in used]
    data = helper.make_tensor_value_info("data", TensorProto.FLOAT, ["None", 3, SIZE, SIZE])
    listed = [helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.dims)) for t in tensors]
    out = helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["None", DIM])
    graph = helper.make_graph(nodes, "mxnet_converted_model", [data] + listed, [out], tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 6
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def chips(n: int, size: int = SIZE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def fitted_erasure(encoder, k: int = 3, seed: int = 1) -> Erasure:
    """ESC fitted on a stand-in identity: the encoder's embeddings of a few chips, centred on
    the mean embedding of other chips. Random networks map all inputs into a narrow cone; erasing
    its shared axis would leave ~1% of each embedding and make float32 parity ill-conditioned."""
    size = encoder.input_spec.size
    centre = encoder.embed(chips(16, size, seed + 100)).mean(axis=0)
    return fit_esc(encoder.embed(chips(10, size, seed)) - centre, k=k)


def dense_erasure(d: int = DIM, seed: int = 2) -> Erasure:
    """An ESC-T-style dense map (not a projector)."""
    a = np.eye(d) + 0.2 * np.random.default_rng(seed).normal(size=(d, d))
    return Erasure(method="esc-t", d=d, linear_map=a)


def normalized(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


TORCH_KINDS = {"gemm_bn": "gemm+batchnorm", "gemm_bn_default": "gemm+batchnorm", "gemm": "gemm",
               "matmul": "matmul", "matmul_bn": "matmul+batchnorm", "normalized": "appended-matmul"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("onnx_models")
    for kind in TORCH_KINDS:
        build_torch_model(kind, d / f"{kind}.onnx")
    build_mxnet_style(d / "mxnet.onnx")
    build_mxnet_style(d / "mxnet_matmul_add.onnx", tail="matmul_add")
    build_mxnet_style(d / "mxnet_gemm_nobias.onnx", tail="gemm_nobias")
    return d


ALL_MODELS = {**TORCH_KINDS, "mxnet": "gemm+batchnorm", "mxnet_matmul_add": "matmul+add",
              "mxnet_gemm_nobias": "gemm"}


# ------------------------------------------------------------------ editing
@pytest.mark.parametrize("name", sorted(ALL_MODELS))
def test_edited_output_equals_erasure_apply_for_batches_1_7_64(model_dir, name):
    enc = OnnxEncoder(model_dir / f"{name}.onnx")
    erasure = fitted_erasure(enc)
    edited = enc.with_erasure(erasure)
    assert edited.surgery == ALL_MODELS[name]
    for n in (1, 7, 64):
        x = chips(n, seed=n)
        want = erasure.apply(enc.embed(x))
        got = normalized(edited.embed(x))
        assert got.shape == (n, DIM)
        np.testing.assert_allclose(got, want, atol=1e-5)
        # the erased directions really are gone from the edited network's raw output
        assert np.abs(edited.embed(x) @ erasure.basis).max() < 1e-4 * np.abs(enc.embed(x)).max()


@pytest.mark.parametrize("name", ["gemm_bn", "matmul", "matmul_bn", "mxnet", "normalized"])
def test_dense_esc_t_map_folds_exactly(model_dir, name):
    enc = OnnxEncoder(model_dir / f"{name}.onnx")
    erasure = dense_erasure()
    x = chips(7)
    np.testing.assert_allclose(normalized(enc.with_erasure(erasure).embed(x)),
                               erasure.apply(enc.embed(x)), atol=1e-5)


def test_folding_keeps_graph_interface_and_head_and_node_count(model_dir):
    path = model_dir / "mxnet.onnx"
    enc = OnnxEncoder(path)
    edited = enc.with_erasure(fitted_erasure(enc))
    before, after = onnx.load(str(path)).graph, edited.model.graph
    onnx.checker.check_model(edited.model)
    assert [v.name for v in after.output] == ["fc1"]
    assert [(n.op_type, n.name) for n in after.node] == [(n.op_type, n.name) for n in before.node]
    assert after.input[0].name == "data"
    assert after.input[0].type == before.input[0].type  # dtype and the dynamic batch axis
    assert after.output[0].type == before.output[0].type
    assert has_preprocessing_head(after)  # insightface still sees the Sub/Mul head


def test_edited_file_holds_no_copy_of_the_original_final_weights(model_dir, tmp_path):
    path = model_dir / "gemm_bn.onnx"
    original = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    enc = OnnxEncoder(path)
    out = enc.with_erasure(fitted_erasure(enc)).to_onnx(tmp_path / "edited.onnx")
    edited = [numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer]
    for name in ("head.0.weight", "head.0.bias", "head.1.running_mean", "head.1.running_var"):
        assert not any(e.shape == original[name].shape and np.array_equal(e, original[name])
                       for e in edited), name
    assert len(edited) == len(original)  # replaced, not added alongside


def test_appended_matmul_is_the_only_new_node_and_keeps_the_output_name(model_dir):
    enc = OnnxEncoder(model_dir / "normalized.onnx")
    edited = enc.with_erasure(fitted_erasure(enc))
    before = onnx.load(str(model_dir / "normalized.onnx")).graph
    after = edited.model.graph
    assert len(after.node) == len(before.node) + 1
    assert after.node[-1].op_type == "MatMul" and after.node[-1].output[0] == "embedding"
    assert [n.op_type for n in after.node[:3]] == [n.op_type for n in before.node[:3]]


def test_second_erasure_composes_with_the_first(model_dir):
    enc = OnnxEncoder(model_dir / "gemm_bn.onnx")
    e1 = fitted_erasure(enc, k=2, seed=1)
    once = enc.with_erasure(e1)
    e2 = fitted_erasure(once, k=2, seed=5)  # fitted on already-edited embeddings
    twice = once.with_erasure(e2)
    assert twice.erasure.k == 4 and len(twice.erasure.history) == 2
    x = chips(7, seed=9)
    np.testing.assert_allclose(normalized(twice.embed(x)), e1.then(e2).apply(enc.embed(x)), atol=1e-5)


def test_to_onnx_round_trip_keeps_contract_and_changes_fingerprint(model_dir, tmp_path):
    spec = InputSpec(SIZE, (120.0, 110.0, 100.0), (60.0, 61.0, 62.0), "BGR", alignment="arcface")
    enc = OnnxEncoder(model_dir / "gemm.onnx", input_spec=spec)
    edited = enc.with_erasure(fitted_erasure(enc))
    assert edited.fingerprint != enc.fingerprint
    path = edited.to_onnx(tmp_path / "sub" / "edited.onnx")
    again = OnnxEncoder(path)
    assert again.input_spec == spec  # read back from facekd.input_spec metadata
    assert again.fingerprint == edited.fingerprint
    x = chips(5)
    np.testing.assert_allclose(again.embed(x), edited.embed(x), atol=1e-6)
    assert not list(tmp_path.glob("sub/.*"))  # no temp file left behind


def test_fold_plan_reports_how_each_graph_is_edited(model_dir):
    for name, kind in ALL_MODELS.items():
        assert fold_plan(onnx.load(str(model_dir / f"{name}.onnx")), DIM) == kind


# ------------------------------------------------------------------ the input contract
def test_insightface_defaults_for_a_plain_112_graph(model_dir):
    enc = OnnxEncoder(model_dir / "gemm_bn.onnx")
    assert enc.input_spec == ARCFACE_SPEC
    assert enc.dim == DIM and enc.family == "onnx"


def test_sub_mul_head_means_raw_pixels(model_dir):
    path = model_dir / "mxnet.onnx"
    enc = OnnxEncoder(path)
    assert enc.input_spec.mean == (0.0,) * 3 and enc.input_spec.std == (1.0,) * 3
    x = chips(3)
    raw = x.astype(np.float32).transpose(0, 3, 1, 2)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"data": raw})[0]
    np.testing.assert_allclose(enc.embed(x), ref, rtol=1e-5, atol=1e-5)


def test_structural_head_detection_without_insightface_names(tmp_path):
    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _TinyCNN(torch.nn.Linear(64, DIM))

        def forward(self, x):
            return self.net((x - 127.5) * 0.0078125)

    enc = OnnxEncoder(export_torch(Head(), tmp_path / "head.onnx"))
    assert enc.input_spec.std == (1.0,) * 3


def test_explicit_input_spec_overrides_file_and_graph(model_dir):
    spec = InputSpec(SIZE, (127.5,) * 3, (127.5,) * 3, "RGB", alignment="none")
    enc = OnnxEncoder(model_dir / "mxnet.onnx", input_spec=spec)
    assert enc.input_spec is spec
    assert enc.with_erasure(fitted_erasure(enc)).input_spec is spec


def test_loose_metadata_keys_are_read(model_dir, tmp_path):
    model = onnx.load(str(model_dir / "gemm.onnx"))
    for key, value in {"input_mean": "0.5", "input_std": "[0.25, 0.25, 0.25]",
                       "channel_order": "bgr"}.items():
        p = model.metadata_props.add()
        p.key, p.value = key, value
    onnx.save(model, str(tmp_path / "meta.onnx"))
    spec = OnnxEncoder(tmp_path / "meta.onnx").input_spec
    assert spec.mean == (0.5,) * 3 and spec.std == (0.25,) * 3 and spec.channel_order == "BGR"


def test_static_batch_axis_is_fed_in_padded_chunks(model_dir, tmp_path):
    model = onnx.load(str(model_dir / "gemm.onnx"))
    for v in (model.graph.input[0], model.graph.output[0]):
        v.type.tensor_type.shape.dim[0].Clear()
        v.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, str(tmp_path / "b1.onnx"))
    fixed, dynamic = OnnxEncoder(tmp_path / "b1.onnx"), OnnxEncoder(model_dir / "gemm.onnx")
    x = chips(3)
    np.testing.assert_allclose(fixed.embed(x), dynamic.embed(x), atol=1e-6)


def test_load_encoder_onnx_and_arcface_families(model_dir):
    path = model_dir / "gemm_bn.onnx"
    assert isinstance(load_encoder(f"onnx:{path}"), OnnxEncoder)
    assert load_encoder(f"arcface:{path}").dim == DIM
    with pytest.raises(EncoderError, match="needs a model path"):
        load_encoder("onnx")


# ------------------------------------------------------------------ clear errors
def test_two_outputs_is_a_clear_error(model_dir, tmp_path):
    model = onnx.load(str(model_dir / "gemm_bn.onnx"))
    extra = next(n.output[0] for n in model.graph.node if n.op_type == "Flatten")
    model.graph.output.append(helper.make_tensor_value_info(extra, TensorProto.FLOAT, ["N", 64]))
    onnx.save(model, str(tmp_path / "two.onnx"))
    with pytest.raises(EncoderError, match="one embedding output, found 2"):
        OnnxEncoder(tmp_path / "two.onnx")


def test_wrong_input_rank_is_a_clear_error(tmp_path):
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    w = numpy_helper.from_array(np.ones((8, 4), np.float32), "w")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              str(tmp_path / "rank2.onnx"))
    with pytest.raises(EncoderError, match="rank 2"):
        OnnxEncoder(tmp_path / "rank2.onnx")


def test_erasure_dimension_mismatch_is_a_clear_error(model_dir):
    enc = OnnxEncoder(model_dir / "gemm_bn.onnx")
    with pytest.raises(EncoderError, match="dimension 16 does not match"):
        enc.with_erasure(fit_esc(np.random.default_rng(0).normal(size=(5, 16)), k=1))
    with pytest.raises(EncoderError, match="expected a facekd Erasure"):
        enc.with_erasure(np.eye(DIM))


@pytest.mark.parametrize("content", [b"", b"definitely not a protobuf \xff\xfe", b"\x08\x07" * 50])
def test_a_file_that_is_not_onnx_is_a_clear_error(tmp_path, content):
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(EncoderError, match="not an ONNX model|invalid ONNX model"):
        OnnxEncoder(path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(EncoderError, match="no such ONNX file"):
        OnnxEncoder(tmp_path / "absent.onnx")


def test_wrong_chips_are_rejected(model_dir):
    enc = OnnxEncoder(model_dir / "gemm.onnx")
    with pytest.raises(EncoderError, match="expected chips"):
        enc.embed(chips(2, size=96))
