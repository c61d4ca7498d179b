"""facekd's InceptionResnetV1 against facenet-pytorch's published state_dict layout.

The real checkpoints cannot be downloaded here, so the published layout is written out below from
facenet-pytorch's ``models/inception_resnet_v1.py`` (independently of facekd's module code) and a
randomly initialised network is saved as a facenet-style ``state_dict`` and loaded back.
InceptionResnetV1 at 160x160 costs ~1.5 GFLOP per chip, so batches stay small.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from facekd.encoders import load_encoder
from facekd.encoders.facenet import (FACENET_SPEC, FacenetEncoder, InceptionResnetV1,
                                     build_from_state_dict)
from facekd.encoders.onnx_export import export
from facekd.encoders.onnx_model import OnnxEncoder
from facekd.erasure import Erasure, fit_esc
from facekd.errors import EncoderError

VGGFACE2_CLASSES = 8631


def _basic(prefix: str, cin: int, cout: int, kh: int, kw: int | None = None) -> dict:
    kw = kh if kw is None else kw
    keys = {f"{prefix}.conv.weight": (cout, cin, kh, kw)}
    for name in ("weight", "bias", "running_mean", "running_var"):
        keys[f"{prefix}.bn.{name}"] = (cout,)
    keys[f"{prefix}.bn.num_batches_tracked"] = ()
    return keys


def _conv(prefix: str, cin: int, cout: int) -> dict:
    return {f"{prefix}.weight": (cout, cin, 1, 1), f"{prefix}.bias": (cout,)}


def published_layout() -> dict[str, tuple]:
    """Key -> shape of facenet-pytorch's InceptionResnetV1 (without ``logits``)."""
    k: dict[str, tuple] = {}
    for name, cin, cout, ks in [("conv2d_1a", 3, 32, 3), ("conv2d_2a", 32, 32, 3),
                                ("conv2d_2b", 32, 64, 3), ("conv2d_3b", 64, 80, 1),
                                ("conv2d_4a", 80, 192, 3), ("conv2d_4b", 192, 256, 3)]:
        k |= _basic(name, cin, cout, ks)
    for i in range(5):  # Block35, scale 0.17
        p = f"repeat_1.{i}"
        k |= _basic(f"{p}.branch0", 256, 32, 1)
        k |= _basic(f"{p}.branch1.0", 256, 32, 1) | _basic(f"{p}.branch1.1", 32, 32, 3)
        k |= (_basic(f"{p}.branch2.0", 256, 32, 1) | _basic(f"{p}.branch2.1", 32, 32, 3)
              | _basic(f"{p}.branch2.2", 32, 32, 3))
        k |= _conv(f"{p}.conv2d", 96, 256)
    k |= (_basic("mixed_6a.branch0", 256, 384, 3) | _basic("mixed_6a.branch1.0", 256, 192, 1)
          | _basic("mixed_6a.branch1.1", 192, 192, 3) | _basic("mixed_6a.branch1.2", 192, 256, 3))
    for i in range(10):  # Block17, scale 0.10
        p = f"repeat_2.{i}"
        k |= _basic(f"{p}.branch0", 896, 128, 1) | _basic(f"{p}.branch1.0", 896, 128, 1)
        k |= _basic(f"{p}.branch1.1", 128, 128, 1, 7) | _basic(f"{p}.branch1.2", 128, 128, 7, 1)
        k |= _conv(f"{p}.conv2d", 256, 896)
    k |= (_basic("mixed_7a.branch0.0", 896, 256, 1) | _basic("mixed_7a.branch0.1", 256, 384, 3)
          | _basic("mixed_7a.branch1.0", 896, 256, 1) | _basic("mixed_7a.branch1.1", 256, 256, 3)
          | _basic("mixed_7a.branch2.0", 896, 256, 1) | _basic("mixed_7a.branch2.1", 256, 256, 3)
          | _basic("mixed_7a.branch2.2", 256, 256, 3))
    for p in [f"repeat_3.{i}" for i in range(5)] + ["block8"]:  # Block8, scale 0.20 / final
        k |= _basic(f"{p}.branch0", 1792, 192, 1) | _basic(f"{p}.branch1.0", 1792, 192, 1)
        k |= _basic(f"{p}.branch1.1", 192, 192, 1, 3) | _basic(f"{p}.branch1.2", 192, 192, 3, 1)
        k |= _conv(f"{p}.conv2d", 384, 1792)
    k["last_linear.weight"] = (512, 1792)
    for name in ("weight", "bias", "running_mean", "running_var"):
        k[f"last_bn.{name}"] = (512,)
    k["last_bn.num_batches_tracked"] = ()
    return k


def random_checkpoint(seed: int = 0, logits: int | None = VGGFACE2_CLASSES) -> dict:
    """A facenet-style state_dict: random weights, non-trivial BN statistics, a logits head."""
    torch.manual_seed(seed)
    module = InceptionResnetV1()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
    state = dict(module.state_dict())
    if logits:
        state["logits.weight"] = torch.randn(logits, 512, generator=gen) * 0.01
        state["logits.bias"] = torch.zeros(logits)
    return state


def chips(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 160, 160, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("facenet") / "20180402-114759-vggface2.pt"
    torch.save(random_checkpoint(), path)
    return path


@pytest.fixture(scope="module")
def encoder(checkpoint) -> FacenetEncoder:
    return FacenetEncoder.from_state_dict(checkpoint, device="cpu")


def stand_in_erasure(k: int = 4, seed: int = 1, d: int = 512) -> Erasure:
    """ESC fitted on a stand-in identity's directions (random, so no forward passes are spent:
    InceptionResnetV1 is slow on 2 cores and the fold is exact for any erasure)."""
    return fit_esc(np.random.default_rng(seed).normal(size=(6, d)), k=k)


@pytest.fixture(scope="module")
def probe(encoder) -> tuple[np.ndarray, np.ndarray]:
    """Three chips and the original encoder's embeddings of them."""
    x = chips(3, seed=7)
    return x, encoder.embed(x)


def normalized(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ------------------------------------------------------------------ architecture
def test_state_dict_keys_and_shapes_match_the_published_layout():
    got = {k: tuple(v.shape) for k, v in InceptionResnetV1().state_dict().items()}
    want = published_layout()
    assert sorted(set(got) ^ set(want)) == []
    assert {k: v for k, v in got.items() if want[k] != v} == {}
    assert len(got) == 714


def test_parameter_count_matches_the_published_vggface2_model():
    params = sum(p.numel() for p in InceptionResnetV1().parameters())
    # facenet-pytorch's InceptionResnetV1(pretrained="vggface2") reports 27,910,327 parameters,
    # of which the 8631-class logits layer holds 512 * 8631 + 8631.
    assert params + 512 * VGGFACE2_CLASSES + VGGFACE2_CLASSES == 27_910_327


def test_block_repeats_and_residual_scales():
    m = InceptionResnetV1()
    assert [len(m.repeat_1), len(m.repeat_2), len(m.repeat_3)] == [5, 10, 5]
    assert {b.scale for b in m.repeat_1} == {0.17} and {b.scale for b in m.repeat_2} == {0.10}
    assert {b.scale for b in m.repeat_3} == {0.20}
    assert m.block8.noReLU and m.block8.scale == 1.0 and not m.repeat_3[0].noReLU
    assert m.last_linear.bias is None and m.last_bn.eps == 1e-3


# ------------------------------------------------------------------ loading
def test_checkpoint_with_logits_loads_and_embeds_unnormalised(encoder, checkpoint):
    assert encoder.input_spec == FACENET_SPEC and encoder.dim == 512
    state = torch.load(checkpoint, weights_only=True)
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, state[key]), key
    x = chips(2, seed=1)
    e = encoder.embed(x)
    assert e.shape == (2, 512) and e.dtype == np.float32
    np.testing.assert_allclose(encoder.embed(x[:1]), e[:1], rtol=1e-5, atol=1e-5)  # batch of 1
    ref_in = torch.from_numpy((x.astype(np.float32) - 127.5) / 128.0).permute(0, 3, 1, 2)
    with torch.no_grad():
        ref = encoder.module(ref_in).numpy()
    np.testing.assert_allclose(e, ref, rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.linalg.norm(e, axis=1), 1.0)  # the library normalises, not the net


def test_load_encoder_facenet_family(checkpoint):
    enc = load_encoder(f"facenet:{checkpoint}", device="cpu")
    assert isinstance(enc, FacenetEncoder) and enc.family == "facenet"


def test_dataparallel_prefix_and_missing_num_batches_tracked_are_accepted():
    state = {f"module.{k}": v for k, v in random_checkpoint(logits=None).items()
             if not k.endswith("num_batches_tracked")}
    assert isinstance(build_from_state_dict(state), InceptionResnetV1)


def test_wrong_checkpoints_are_clear_errors(tmp_path):
    state = random_checkpoint(logits=None)
    del state["repeat_2.3.conv2d.weight"]
    state["extra.weight"] = torch.zeros(3)
    state["last_linear.weight"] = torch.zeros(128, 1792)
    with pytest.raises(EncoderError, match="1 missing.*1 unexpected.*wrong shape"):
        build_from_state_dict(state)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(EncoderError, match="cannot be read"):
        FacenetEncoder.from_state_dict(bad)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(EncoderError, match="not a facenet-pytorch state_dict"):
        FacenetEncoder.from_state_dict(tmp_path / "list.pt")
    with pytest.raises(EncoderError, match="no such"):
        FacenetEncoder.from_state_dict(tmp_path / "absent.pt")
    with pytest.raises(EncoderError, match="needs a checkpoint path"):
        load_encoder("facenet")


# ------------------------------------------------------------------ editing
def test_folded_erasure_equals_apply_and_keeps_the_state_dict_layout(encoder, probe, tmp_path):
    x, base = probe
    erasure = stand_in_erasure()
    edited = encoder.with_erasure(erasure)
    got = edited.embed(x)
    np.testing.assert_allclose(normalized(got), erasure.apply(base), atol=1e-5)
    assert edited.fingerprint != encoder.fingerprint and encoder.erasure is None
    # same keys and shapes: the edited weights load into a fresh facenet-style network
    torch.save(edited.state_dict(), tmp_path / "edited.pt")
    again = FacenetEncoder.from_state_dict(tmp_path / "edited.pt", device="cpu")
    np.testing.assert_allclose(again.embed(x[:1]), got[:1], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_dense_map_and_second_erasure_compose(encoder, probe):
    x, base = probe
    d = encoder.dim
    dense = Erasure(method="esc-t", d=d,
                    linear_map=np.eye(d) + 0.05 * np.random.default_rng(3).normal(size=(d, d)))
    np.testing.assert_allclose(normalized(encoder.with_erasure(dense).embed(x)), dense.apply(base),
                               atol=1e-5)
    e1, e2 = stand_in_erasure(k=2, seed=2), stand_in_erasure(k=2, seed=3)
    both = encoder.with_erasure(e1).with_erasure(e2)
    assert both.erasure.k == 4
    np.testing.assert_allclose(normalized(both.embed(x)), e1.then(e2).apply(base), atol=1e-5)


def test_erasure_dimension_mismatch_is_a_clear_error(encoder):
    with pytest.raises(EncoderError, match="dimension 128 does not match"):
        encoder.with_erasure(fit_esc(np.random.default_rng(0).normal(size=(5, 128)), k=1))


@pytest.mark.slow
def test_onnx_export_of_edited_facenet_fp32_and_fp16(encoder, tmp_path):
    edited = encoder.with_erasure(stand_in_erasure())
    x = chips(2, seed=5)
    r32 = export(edited, tmp_path / "f32.onnx", check_chips=x)
    assert r32.min_cosine > 0.99999 and r32.passed
    r16 = export(OnnxEncoder(tmp_path / "f32.onnx"), tmp_path / "f16.onnx", fp16=True, check_chips=x)
    assert r16.min_cosine >= 0.999
    # the exported file loads as an OnnxEncoder with facenet's contract (from its metadata)
    as_onnx = OnnxEncoder(tmp_path / "f32.onnx")
    assert as_onnx.input_spec == FACENET_SPEC and as_onnx.dim == 512
    assert len(onnx.load(str(tmp_path / "f32.onnx")).graph.output) == 1


def test_facenet_carries_a_gated_erasure_in_torch_and_in_its_onnx_export(encoder, probe, tmp_path):
    """A gate fitted on photos near the first probe chip: the edited facenet applies it exactly as
    Erasure.apply does, in torch and in the exported graph (d = 512). (A random-weight network
    maps every chip to nearly the same point, so which chips it opens on says nothing here.)"""
    import onnxruntime as ort

    from facekd.erasure import fit_scramble

    x, E = probe
    rng = np.random.default_rng(3)
    person = normalized(E[:1]) + 0.02 * rng.normal(size=(8, 512))  # photos near chip 0
    others = normalized(np.vstack([E[1:], rng.normal(size=(300, 512))]))
    e = fit_scramble(person, others, q=0.99)
    edited = encoder.with_erasure(e)
    got = normalized(edited.embed(x))
    want = e.apply(E)
    assert np.abs(got - want).max() < 1e-4
    assert got[0] @ normalized(E[:1])[0] < 0.9  # the gate opened: chip 0 is a stranger now
    path = edited.to_onnx(tmp_path / "gated.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y = sess.run(None, {sess.get_inputs()[0].name: edited.input_spec.to_tensor_array(x)})[0]
    assert np.abs(normalized(y) - want).max() < 1e-3


def test_to_onnx_file_loads_with_facenet_preprocessing_and_matches_torch(encoder, probe, tmp_path):
    """TorchEncoder.to_onnx writes facekd.input_spec: load_encoder('onnx:...') needs nothing else."""
    x, want = probe
    edited = encoder.with_erasure(stand_in_erasure())
    path = edited.to_onnx(tmp_path / "f.onnx")
    loaded = load_encoder(f"onnx:{path}")
    assert loaded.input_spec == FACENET_SPEC
    assert np.abs(loaded.embed(x) - edited.embed(x)).max() <= 1e-5
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert set(json.loads(meta["facekd.erasure"])) <= {"method", "k", "gates", "steps",
                                                       "linear_stages_after_gates"}


def test_baked_facenet_export_takes_raw_pixels_and_insightface_reads_its_head(encoder, probe,
                                                                             tmp_path):
    import onnxruntime as ort

    from facekd.encoders.onnx_model import has_preprocessing_head

    x, want = probe
    report = export(encoder, tmp_path / "baked.onnx", check_chips=x, bake_preprocessing=True)
    assert report.passed and report.input_spec["mean"] == [0.0] * 3
    model = onnx.load(str(tmp_path / "baked.onnx"))
    names = [n.name for n in model.graph.node[:8]]  # insightface's ArcFaceONNX test, verbatim
    assert any(s.startswith("Sub") for s in names) and any(s.startswith("Mul") for s in names)
    assert has_preprocessing_head(model.graph)
    sess = ort.InferenceSession(str(tmp_path / "baked.onnx"), providers=["CPUExecutionProvider"])
    raw = np.ascontiguousarray(x.astype(np.float32).transpose(0, 3, 1, 2))  # pixels, RGB, NCHW
    got = sess.run(None, {sess.get_inputs()[0].name: raw})[0]
    assert np.abs(got - want).max() <= 1e-5
    assert np.abs(load_encoder(f"onnx:{tmp_path / 'baked.onnx'}").embed(x) - want).max() <= 1e-5
