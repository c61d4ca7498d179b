"""The gated scramble: faces below the gate never move, the person's faces become strangers, gates
compose into one chain, and every encoder family carries the tail (torch, ONNX, fp16 export)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from clusters import identity_clusters
from facekd.core.metrics import identification_hits
from facekd.core.tail import GateChain, normalize_rows
from facekd.erasure import Erasure, ErasureError, fit_esc, fit_scramble


@pytest.fixture(scope="module")
def faces():
    """Cone-shaped clusters like dlib's space: 60 identities x 24 faces."""
    return identity_clusters(60, 24, 128, spread=0.6, shared_axis=2.5, seed=3)


def _split(E, y, target, n_fit=14):
    f = np.flatnonzero(y == target)
    return E[f[:n_fit]], E[f[n_fit:]], E[y != target], y[y != target]


def test_faces_below_every_gate_do_not_move(faces):
    E, y = faces
    fit, _, others, _ = _split(E, y, 7)
    e = fit_scramble(fit, others)
    # The tail returns rows below every gate bit for bit ...
    v = normalize_rows(others.astype(np.float64))
    assert np.mean(np.all(e.tail[0](v) == v, axis=1)) >= 0.995
    # ... and apply() changes them by float32 renormalisation alone.
    untouched = np.abs(e.apply(others) - others).max(axis=1) < 1e-6
    # q = 0.999: at most a few gallery faces sit above the gate; everyone else keeps their bytes.
    assert untouched.mean() >= 0.995
    assert e.params["gallery_touched"] <= 0.002


def test_the_persons_unseen_faces_become_unrelated_strangers(faces):
    E, y = faces
    fit, fresh, others, oy = _split(E, y, 7)
    # These clusters overlap more than real faces do: a gate at the 0.999 quantile (the default,
    # 0.9999, is tuned for faces) shows the mechanism.
    e = fit_scramble(fit, others, q=0.999)
    g = e.tail[0].gates(fresh.astype(np.float64))[:, 0]
    assert np.mean(g >= 1.0) >= 0.9  # the gate generalises to photos it never saw
    before = fresh @ fresh.T
    after = e.apply(fresh) @ e.apply(fresh).T
    iu = np.triu_indices(len(fresh), 1)
    impostor = (others[:200] @ others[200:400].T).ravel()
    assert before[iu].mean() > np.quantile(impostor, 0.99)
    # Scrambled photos of one person are no closer to each other than strangers are.
    assert after[iu].mean() < np.quantile(impostor, 0.75)
    # Re-enrolment: half the scrambled photos enrolled next to the gallery, the rest searched.
    ed, half = e.apply(fresh), len(fresh) // 2
    gal = np.vstack([e.apply(others), ed[:half]])
    gl = np.r_[oy, np.full(half, 999)]
    hits = identification_hits(gal, gl, ed[half:], np.full(len(fresh) - half, 999))
    assert hits.mean() <= 0.2


def test_scrambled_faces_sit_where_ordinary_faces_sit(faces):
    E, y = faces
    fit, fresh, others, _ = _split(E, y, 11)
    e = fit_scramble(fit, others, alpha=1.0)
    m = normalize_rows(others.mean(0, keepdims=True))[0]
    ordinary = others @ m
    scrambled = e.apply(fresh) @ m
    # Same distance from the crowd's centre, within the spread of ordinary faces.
    assert abs(np.median(scrambled) - np.median(ordinary)) < 2 * ordinary.std()


def test_the_fast_chain_equals_running_each_gate_in_turn(faces):
    E, y = faces
    e = Erasure.identity(128)
    for target in (3, 9, 17, 24, 40):
        fit, _, others, _ = _split(E, y, target)
        shared = e.tail[0].scrambler if e.tail else None
        step = fit_scramble(e.apply(fit), e.apply(others), scrambler=shared, q=0.99)
        e = e.then(step)
    (chain,) = e.tail
    assert chain.n_gates == 5
    v = normalize_rows(E.astype(np.float64))
    naive = v.copy()
    for i in range(chain.n_gates):  # the definition: one gate after the other, on every row
        g = chain.gates(naive, slice(i, i + 1))
        naive = normalize_rows(naive + g * (chain.scrambler(naive) - naive))
        naive[g[:, 0] == 0] = naive[g[:, 0] == 0]  # rows below gate i keep their values
    fast = chain(v)
    assert np.abs(fast - naive).max() < 1e-12


def test_composition_merges_gates_sharing_a_scrambler_and_equals_applying_in_turn(faces):
    E, y = faces
    fit_a, _, others_a, _ = _split(E, y, 5)
    a = fit_scramble(fit_a, others_a)
    Ea = a.apply(E)
    fit_b, _, others_b, _ = _split(Ea, y, 6)
    b = fit_scramble(fit_b, others_b, scrambler=a.tail[0].scrambler)
    ab = a.then(b)
    assert len(ab.tail) == 1 and ab.n_gates == 2
    assert ab.scrambler is a.scrambler is a.tail[0].scrambler and fit_esc(E[:5], k=1).scrambler is None
    assert np.allclose(ab.apply(E), b.apply(Ea), atol=1e-5)
    own = fit_scramble(fit_b, others_b)  # its own scrambler: two chains, same map
    assert len(a.then(own).tail) == 2
    assert np.allclose(a.then(own).apply(E), own.apply(Ea), atol=1e-5)


def test_linear_steps_compose_before_and_after_a_gate(faces):
    E, y = faces
    fit, _, others, _ = _split(E, y, 2)
    esc = fit_esc(E[y == 30], k=2)
    gate = fit_scramble(esc.apply(fit), esc.apply(others))
    before = esc.then(gate)
    assert before.k == 2 and [s.kind for s in before.tail] == ["gates"]
    assert np.allclose(before.apply(E), gate.apply(esc.apply(E)), atol=1e-5)
    after = gate.then(esc)
    assert [s.kind for s in after.tail] == ["gates", "linear"]
    assert np.allclose(after.apply(E), esc.apply(gate.apply(E)), atol=1e-5)


def test_gated_erasures_round_trip_and_format_1_files_still_load(faces, tmp_path):
    E, y = faces
    fit, _, others, _ = _split(E, y, 4)
    e = fit_esc(E[y == 1], k=1).then(fit_scramble(fit, others))
    back = Erasure.load(e.save(tmp_path / "e.npz"))
    assert back.n_gates == 1 and back.k == 1 and np.array_equal(back.apply(E), e.apply(E))
    # A file written by facekd 0.1 (format 1, linear only).
    old = fit_esc(E[y == 1], k=1)
    meta = old.metadata()
    meta["format"] = 1
    for key in ("tail", "gates"):
        meta.pop(key)
    buf = io.BytesIO()
    np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), basis=old.basis)
    loaded = Erasure.from_bytes(buf.getvalue())
    assert loaded.is_projector and np.array_equal(loaded.apply(E), old.apply(E))


def test_damaged_gate_arrays_are_refused(faces):
    E, y = faces
    fit, _, others, _ = _split(E, y, 4)
    e = fit_scramble(fit, others)
    with np.load(io.BytesIO(e.to_bytes())) as npz:
        arrays = dict(npz)
    for key, bad in (("tail0_s1", arrays["tail0_t0"] - 1.0), ("tail0_mix", arrays["tail0_mix"][:3]),
                     ("tail0_weights", np.full_like(arrays["tail0_weights"], np.nan))):
        broken = dict(arrays, **{key: bad})
        buf = io.BytesIO()
        np.savez(buf, **broken)
        with pytest.raises(ErasureError):
            Erasure.from_bytes(buf.getvalue())


@pytest.mark.parametrize("bad", [
    lambda f, g: fit_scramble(f[:1], g),                # one photo of the person
    lambda f, g: fit_scramble(f, g[:1]),                # no gallery to gate against
    lambda f, g: fit_scramble(f, g[:, :64]),            # dimension mismatch
    lambda f, g: fit_scramble(f, g, q=1.0),
    lambda f, g: fit_scramble(f, g, alpha=0.0),
    lambda f, g: fit_scramble(np.full_like(f, np.nan), g),
])
def test_fit_scramble_rejects_bad_input(faces, bad):
    E, y = faces
    fit, _, others, _ = _split(E, y, 4)
    with pytest.raises(ErasureError):
        bad(fit, others)


# ----------------------------------------------------------------------------- encoders
@pytest.fixture(scope="module")
def chips_and_labels():
    from facekd.faces.synthfaces import render_dataset

    return render_dataset(list(range(2000, 2030)), 10)


@pytest.mark.parametrize("spec", ["samples", "dlib"])
def test_every_encoder_family_carries_the_tail_and_exports_it(spec, chips_and_labels, tmp_path):
    import cv2
    import onnx
    import onnxruntime as ort

    from facekd.encoders import load_encoder
    from facekd.encoders.tail_onnx import tail_inputs
    from facekd.encoders.onnx_export import export

    chips, labels = chips_and_labels
    enc = load_encoder(spec, device="cpu") if spec == "dlib" else load_encoder(spec)
    size = enc.input_spec.size
    if chips.shape[1] != size:
        chips = np.stack([cv2.resize(c, (size, size)) for c in chips])
    E = enc.embed(chips, progress=False)
    target = labels == 2004
    # with labels the gate also spares the enrolled people nearest it: exported too
    e = fit_scramble(E[target], E[~target], q=0.999, gallery_labels=labels[~target])
    assert e.tail[0].n_known and e.params["spared_faces"] > 0
    edited = enc.with_erasure(e)
    want = e.apply(E)
    got = normalize_rows(edited.embed(chips, progress=False).astype(np.float64))
    assert np.abs(got - want).max() < 1e-4
    assert edited.fingerprint != enc.fingerprint
    for fp16 in (False, True):
        path = tmp_path / f"{spec}-{fp16}.onnx"
        export(edited, path, fp16=fp16)
        model = onnx.load(str(path))
        tail_inits = tail_inputs(model)
        dtypes = {t.data_type for t in model.graph.initializer if t.name in tail_inits}
        assert dtypes == {onnx.TensorProto.FLOAT}  # the tail stays float32 in an fp16 export
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        y = sess.run(None, {sess.get_inputs()[0].name: edited.input_spec.to_tensor_array(chips)})[0]
        y = normalize_rows(y.astype(np.float64))
        if not fp16:
            assert np.abs(y - want).max() < 1e-3
        # Either way, the faces the reference scrambles are scrambled in the exported model too.
        scrambled = np.abs(want - normalize_rows(E.astype(np.float64))).max(axis=1) > 1e-3
        assert scrambled[target].mean() >= 0.8
        moved = np.abs(y - normalize_rows(E.astype(np.float64))).max(axis=1) > 1e-2
        assert np.array_equal(moved[scrambled], np.ones(scrambled.sum(), bool))


def test_a_second_gate_on_an_edited_onnx_encoder_rebuilds_one_tail(chips_and_labels):
    from facekd.encoders import load_encoder

    chips, labels = chips_and_labels
    enc = load_encoder("samples")
    E = enc.embed(chips, progress=False)
    a = fit_scramble(E[labels == 2001], E[labels != 2001])
    Ea = a.apply(E)
    b = fit_scramble(Ea[labels == 2002], Ea[labels != 2002], scrambler=a.tail[0].scrambler)
    twice = enc.with_erasure(a).with_erasure(b)
    assert twice.erasure.n_gates == 2
    from facekd.encoders.tail_onnx import _nodes

    # One chain: a single gate product up front, then the two gates' scrambles inside it.
    assert sum(n.op_type == "Cos" for n in _nodes(twice.model.graph)) == 2
    got = normalize_rows(twice.embed(chips, progress=False).astype(np.float64))
    assert np.abs(got - a.then(b).apply(E)).max() < 1e-4


def test_gate_chain_validation_names_the_problem():
    chain = GateChain(weights=np.zeros((4, 1)), bias=np.zeros(1), t0=np.ones(1), s1=np.zeros(1),
                      scrambler=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="s1 > t0"):
        chain.validate()


@pytest.mark.parametrize("tail", ["gemm_bn", "matmul_add"])
def test_an_insightface_style_graph_carries_the_tail(tail, tmp_path, chips_and_labels):
    """MXNet-converted ArcFace packs (raw-pixel Sub/Mul head, IR 3 initialisers listed as inputs,
    Gemm + BatchNormalization last): the edit still loads in onnxruntime and matches apply()."""
    import onnxruntime as ort

    from facekd.encoders.onnx_model import OnnxEncoder
    from test_onnx_model import build_mxnet_style

    path = build_mxnet_style(tmp_path / "arc.onnx", tail=tail)
    enc = OnnxEncoder(path)
    chips, labels = chips_and_labels
    E = enc.embed(chips, progress=False)
    target = labels == 2003
    esc = fit_esc(E[labels == 2009], k=2)
    e = esc.then(fit_scramble(esc.apply(E[target]), esc.apply(E[~target]), q=0.99))
    edited = enc.with_erasure(e)
    got = normalize_rows(edited.embed(chips, progress=False).astype(np.float64))
    assert np.abs(got - e.apply(E)).max() < 1e-4
    out = tmp_path / "edited.onnx"
    edited.to_onnx(out)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == [enc.output_name]
    y = sess.run(None, {sess.get_inputs()[0].name: edited.input_spec.to_tensor_array(chips)})[0]
    assert np.abs(normalize_rows(y.astype(np.float64)) - e.apply(E)).max() < 1e-4


def test_scramble_on_a_gallery_past_its_sample_scores_every_face_without_a_float64_copy():
    # max_gallery below N: the discriminant and the stranger map see a sample, but the gate's
    # in-sample quantile and the reported share of touched faces come from every gallery face,
    # scored block by block in float64 from the float32 gallery.
    from facekd.methods.scramble import _scores

    rng = np.random.default_rng(3)
    g = rng.normal(size=(3000, 16)).astype(np.float32)
    f = (g[:1] + 0.2 * rng.normal(size=(8, 16))).astype(np.float32)
    e = fit_scramble(f, g, max_gallery=1000, n_features=32)
    chain = e.tail[0]
    full = normalize_rows(g.astype(np.float64))
    assert e.params["gallery_touched"] == pytest.approx(float(np.mean(chain.gates(full)[:, 0] > 0)))
    w = np.stack([chain.weights[:, 0], -chain.weights[:, 0]], axis=1)
    b = np.array([chain.bias[0], 0.0])
    np.testing.assert_allclose(_scores(g, w, b, block=700), full @ w + b, rtol=0, atol=1e-12)


def test_a_mixed_chain_counts_the_directions_after_its_gates():
    """An ESC step after a gate lives in the tail as a linear stage: the erasure says so
    (name "mixed", its directions counted) and so does the exported file's metadata."""
    from facekd import fit_esc, fit_scramble
    from facekd.encoders.base import erasure_summary

    rng = np.random.default_rng(3)
    g = rng.normal(size=(300, 16))
    person = rng.normal(size=(8, 16)) + 3 * np.eye(16)[0]
    gated = fit_scramble(person, g)
    mixed = gated.then(fit_esc(gated.apply(rng.normal(size=(6, 16))), k=2))
    assert gated.name == "scramble" and mixed.name == "mixed"
    assert mixed.k == 0 and mixed.directions == 2 and mixed.n_gates == 1
    summary = erasure_summary(mixed)
    assert summary["k"] == 2 and summary["linear_stages_after_gates"] == 1
