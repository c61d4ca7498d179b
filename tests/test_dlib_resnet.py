"""dlib's face ResNet in torch: parity with dlib, erasure folding, ONNX export, cached loading."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from facekd.encoders import dlib_resnet
from facekd.encoders import load_encoder
from facekd.encoders.dlib_format import DlibFormatError
from facekd.erasure import Erasure, fit_esc, fit_esc_t
from facekd.errors import EncoderError

import face_recognition_models as frm

PARITY_ATOL = 1e-5  # a /255 instead of /256 mistake moves outputs by 4e-4: stay well below


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("facekd-cache")


@pytest.fixture(scope="module")
def encoder(cache_dir):
    return dlib_resnet.load(device="cpu", cache_dir=cache_dir)


@pytest.fixture(scope="module")
def test_chips() -> np.ndarray:
    """Seeded noise chips, a synthetic gradient-and-circles chip, all-black and all-white."""
    rng = np.random.default_rng(20250601)
    noise = rng.integers(0, 256, (6, 150, 150, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:150, :150]
    synth = np.stack([xx * 255 // 149, yy * 255 // 149, np.full_like(xx, 90)], -1)
    for cx, cy, r, value in ((50, 60, 20, 255), (100, 60, 20, 0), (75, 110, 25, 180)):
        synth[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = value
    extremes = np.stack([np.zeros((150, 150, 3)), np.full((150, 150, 3), 255)])
    return np.concatenate([noise, synth[None], extremes]).astype(np.uint8)


@pytest.fixture(scope="module")
def embeddings(encoder, test_chips) -> np.ndarray:
    """The original encoder's output on ``test_chips``, computed once."""
    return encoder.embed(test_chips)


def test_matches_dlib_compute_face_descriptor_on_synthetic_chips(encoder, test_chips):
    import dlib
    rec = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
    ref = np.array([rec.compute_face_descriptor(c) for c in test_chips])
    out = encoder.embed(test_chips, batch_size=4)
    assert out.shape == (len(test_chips), 128) and out.dtype == np.float32
    assert np.abs(out - ref).max() < PARITY_ATOL


def test_input_spec_is_read_from_the_file(encoder):
    spec = encoder.input_spec
    assert (spec.size, spec.channel_order, spec.alignment) == (150, "RGB", "dlib")
    assert spec.std == (256.0, 256.0, 256.0)  # dlib divides by 256, not 255
    np.testing.assert_allclose(spec.mean, (122.782, 117.001, 104.298), atol=1e-5)
    assert encoder.dim == 128 and encoder.dist_thresh == pytest.approx(0.6)


def test_expected_layer_list_has_the_anet_type_counts():
    kinds = collections.Counter(op[0] for op in dlib_resnet.expected_layers())
    assert kinds == {"con": 29, "affine": 29, "relu": 29, "wrapper": 22, "add_prev": 14,
                     "avg_pool": 5, "max_pool": 1, "fc": 1}


def test_residual_merges_zero_extend_the_smaller_operand():
    plan = [u for u in dlib_resnet._unit_plan(150) if u["down"]]
    # (0, dw, 0, dh, 0, dc): 32->64 and 64->128 extend channels only; 3x3 block vs 4x4 shortcut
    # and 1x1 vs 2x2 extend the block spatially (dlib's cpu::add), never crop.
    assert [u["pad_short"] for u in plan] == [(0, 0, 0, 0, 0, 32), (0, 0, 0, 0, 0, 64),
                                              (0, 0, 0, 0, 0, 128), (0, 0, 0, 0, 0, 0)]
    assert [u["pad_block"] for u in plan] == [(0, 0, 0, 0, 0, 0), (0, 0, 0, 0, 0, 0),
                                              (0, 1, 0, 1, 0, 0), (0, 1, 0, 1, 0, 0)]


def test_embed_rejects_wrong_chips(encoder):
    with pytest.raises(EncoderError, match="150, 150, 3"):
        encoder.embed(np.zeros((2, 112, 112, 3), np.uint8))
    with pytest.raises(EncoderError, match="uint8"):
        encoder.embed(np.zeros((2, 150, 150, 3), np.float32))


# ---------------------------------------------------------------------- erasure folding
def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def erasures():
    # Random forget directions: the fold must hold for any erasure, and random ones keep most of
    # each embedding's norm, so normalisation does not amplify float32 rounding.
    rng = np.random.default_rng(3)
    first = fit_esc(rng.normal(size=(6, 128)), k=4)
    second = fit_esc(first.apply(rng.normal(size=(5, 128))), k=3)
    return first, second


def test_folded_erasure_equals_erasure_applied_to_embeddings(encoder, test_chips, embeddings,
                                                            erasures):
    first, _ = erasures
    edited = encoder.with_erasure(first)
    got = _normalize(edited.embed(test_chips))
    want = first.apply(embeddings)
    assert np.abs(got - want).max() < 1e-6
    assert edited.erasure is first and encoder.erasure is None
    assert edited.fingerprint != encoder.fingerprint
    # the fold lives inside the fc weight: no extra layer that could be stripped
    assert [n for n, _ in edited.module.named_children()] == ["stem", "units", "fc"]


def test_second_erasure_composes_with_the_first_on_original_weights(encoder, test_chips,
                                                                   embeddings, erasures):
    first, second = erasures
    twice = encoder.with_erasure(first).with_erasure(second)
    want = first.then(second).apply(embeddings)
    assert np.abs(_normalize(twice.embed(test_chips)) - want).max() < 1e-6
    assert twice.erasure.k == first.k + second.k


def test_esc_t_dense_map_folds_too(encoder, test_chips, embeddings):
    rng = np.random.default_rng(5)
    protos = np.concatenate([embeddings[:1], rng.normal(size=(3, 128))])
    erasure = fit_esc_t(embeddings[:3] + 0.1 * rng.normal(size=(3, 128)), protos, 0, epochs=2)
    assert erasure.method == "esc-t"
    got = _normalize(encoder.with_erasure(erasure).embed(test_chips))
    assert np.abs(got - erasure.apply(embeddings)).max() < 1e-5


def test_erasure_of_wrong_dimension_is_refused(encoder):
    with pytest.raises(EncoderError, match="dimension 64"):
        encoder.with_erasure(Erasure.identity(64))


# ---------------------------------------------------------------------- ONNX
@pytest.mark.slow
def test_onnx_export_of_original_and_edited_matches_torch(encoder, test_chips, embeddings,
                                                         erasures, tmp_path):
    import onnx
    import onnxruntime as ort
    x = encoder.input_spec.to_tensor_array(test_chips)
    edited = encoder.with_erasure(erasures[0])
    expected = {"original": embeddings, "edited": edited.embed(test_chips)}
    for name, enc in (("original", encoder), ("edited", edited)):
        path = enc.to_onnx(tmp_path / f"{name}.onnx")
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
        assert model.opset_import[0].version == 17
        assert len(model.graph.input) == 1 and len(model.graph.output) == 1
        ops = collections.Counter(n.op_type for n in model.graph.node)
        assert ops == {"Conv": 29, "Relu": 29, "Add": 14, "Pad": 5, "AveragePool": 4,
                       "MaxPool": 1, "ReduceMean": 1, "MatMul": 1}
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for batch in (x[:1], x):  # the batch axis is dynamic
            got = session.run(None, {"input": batch})[0]
            assert np.abs(got - expected[name][:len(batch)]).max() < 1e-5


# ---------------------------------------------------------------------- loading and cache
def test_second_load_comes_from_the_cache_without_parsing(cache_dir, encoder, test_chips,
                                                          embeddings, monkeypatch):
    files = list(cache_dir.glob("dlib_resnet_*.bin"))
    assert len(files) == 1 and encoder.source_sha256 in files[0].name

    def no_parse(_):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(dlib_resnet, "convert", no_parse)
    again = dlib_resnet.load(device="cpu", cache_dir=cache_dir)
    assert again.fingerprint == encoder.fingerprint
    np.testing.assert_allclose(again.embed(test_chips[:2]), embeddings[:2], atol=1e-6)


def test_corrupt_cache_file_is_replaced_by_a_fresh_conversion(cache_dir, encoder, tmp_path):
    other = tmp_path / "cache"
    other.mkdir()
    first = dlib_resnet.load(device="cpu", cache_dir=other)
    (cache_file,) = other.glob("dlib_resnet_*.bin")
    cache_file.write_bytes(cache_file.read_bytes()[:1000])  # a crash mid-write, say
    again = dlib_resnet.load(device="cpu", cache_dir=other)
    assert again.fingerprint == first.fingerprint == encoder.fingerprint
    assert cache_file.stat().st_size > 20_000_000


def test_load_encoder_accepts_family_and_path(encoder, cache_dir):
    by_path = load_encoder(f"dlib:{frm.face_recognition_model_location()}", device="cpu",
                           cache_dir=cache_dir)
    assert by_path.fingerprint == encoder.fingerprint and by_path.family == "dlib"


def test_missing_or_foreign_model_files_raise_encoder_errors(tmp_path):
    with pytest.raises(EncoderError, match="not found"):
        load_encoder(f"dlib:{tmp_path / 'nope.dat'}")
    junk = tmp_path / "junk.dat"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n not a dlib file")
    with pytest.raises(DlibFormatError, match="byte offset"):
        dlib_resnet.load(str(junk), cache=False)
    with pytest.raises(EncoderError, match="unknown option"):
        dlib_resnet.load(None, colour="bgr")


def test_a_valid_stream_of_another_network_is_not_taken_for_the_resnet(tmp_path):
    from test_dlib_format import tiny_network

    path = tmp_path / "tiny.dat"
    path.write_bytes(tiny_network())
    with pytest.raises(EncoderError, match="not dlib's face ResNet"):
        dlib_resnet.load(str(path), cache=False)


def test_to_onnx_file_loads_with_dlib_preprocessing_and_matches_torch(encoder, test_chips,
                                                                      embeddings, tmp_path):
    """TorchEncoder.to_onnx writes facekd.input_spec: dlib's per-channel mean and /256 survive."""
    path = encoder.to_onnx(tmp_path / "dlib.onnx")
    loaded = load_encoder(f"onnx:{path}")
    assert loaded.input_spec == encoder.input_spec
    assert np.abs(loaded.embed(test_chips) - embeddings).max() <= 1e-5


def test_baked_dlib_export_fed_raw_pixels_matches_torch(encoder, test_chips, embeddings, tmp_path):
    import onnxruntime as ort

    from facekd.encoders.onnx_export import export

    report = export(encoder, tmp_path / "baked.onnx", check_chips=test_chips,
                    bake_preprocessing=True)
    assert report.passed and report.input_spec["std"] == [1.0] * 3
    sess = ort.InferenceSession(str(tmp_path / "baked.onnx"), providers=["CPUExecutionProvider"])
    raw = np.ascontiguousarray(test_chips.astype(np.float32).transpose(0, 3, 1, 2))
    got = sess.run(None, {sess.get_inputs()[0].name: raw})[0]
    assert np.abs(got - embeddings).max() <= 1e-5
