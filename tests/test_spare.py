"""A gate spares the enrolled people nearest it: their new photos pass unchanged, the erased
person's do not, in numpy and in the exported ONNX tail alike, and gates that spare compose."""

from __future__ import annotations

import numpy as np
import pytest

from clusters import identity_clusters, twin_clusters
from facekd.core.metrics import identification_hits
from facekd.core.tail import NO_SPARE, GateChain, normalize_rows
from facekd.erasure import Erasure, ErasureError, fit_scramble
from facekd.methods.spare import SPARE, SPARE_FACES, fit_spare


def _cover(e, fresh):
    return float(np.mean(e.tail[0].gates(fresh)[:, 0] >= 1.0))


@pytest.fixture(scope="module")
def twins():
    E, y = twin_clusters(0.8)
    me, sib = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    keep = (y != 0) & ~np.isin(np.arange(len(y)), sib[10:])  # the sibling's 10 enrolled photos
    return E, y, me, sib, keep


def test_a_sibling_is_spared_only_above_the_person_so_the_person_stays_erased(twins):
    """The person comes first: an enrolled look-alike as close as a sibling is spared only
    above the cosine the person's own photos reach (plus a margin for unseen ones), and the
    person's new photos are erased exactly as without sparing."""
    E, y, me, sib, keep = twins
    fit, fresh = E[me[:10]], E[me[10:]]
    spared = fit_scramble(fit, E[keep], gallery_labels=y[keep])
    plain = fit_scramble(fit, E[keep], gallery_labels=y[keep], spare=0)
    assert spared.params["spare"] == SPARE and plain.params["spare"] == 0
    assert 0 < spared.params["spared_faces"] <= SPARE_FACES and plain.tail[0].n_known == 0
    assert spared.tail[0].t0[0] == plain.tail[0].t0[0]  # the same gate
    chain = spared.tail[0]
    sibling = normalize_rows(E[sib[:10]].mean(axis=0, keepdims=True))[0]
    j = int(np.argmax(chain.known[0] @ sibling))
    assert chain.known[0, j] @ sibling == pytest.approx(1.0)  # spared, but as a sibling:
    assert chain.known_t[0, j] > max(chain.known_t[0, :spared.params["spared_faces"]].min(),
                                     float((fresh @ sibling).max()))  # above the person
    assert _cover(spared, fresh) == _cover(plain, fresh) >= 0.9
    assert not spared.tail[0].spared(np.r_[fit, fresh]).any()


def test_a_one_photo_gate_spares_the_look_alike_it_opens_on_and_still_erases_the_person(twins):
    """A one-photo gate opens wide, fully on the sibling's mean face: the sibling is still among
    the faces it spares (above the person's own cosine), so their new photos pass, while the
    person's new photos are erased exactly as without sparing."""
    E, y, me, sib, keep = twins
    fit, fresh, sib_new = E[me[:1]], E[me[10:]], E[sib[10:]]
    spared = fit_scramble(fit, E[keep], gallery_labels=y[keep])
    plain = fit_scramble(fit, E[keep], gallery_labels=y[keep], spare=0)
    chain = spared.tail[0]
    sibling = normalize_rows(E[sib[:10]].mean(axis=0, keepdims=True))[0]
    assert chain.hinge(sibling[None])[0, 0] > 1  # the gate is fully open on the sibling
    j = int(np.argmax(chain.known[0] @ sibling))
    assert chain.known[0, j] @ sibling == pytest.approx(1.0)
    assert chain.known_t[0, j] > float((fit @ sibling).max())
    opened = plain.tail[0].gates(sib_new)[:, 0] > 0
    assert opened.mean() >= 0.5  # without sparing the gate takes most of the sibling's photos
    assert not (chain.gates(sib_new)[:, 0] > 0).any()
    assert _cover(spared, fresh) == _cover(plain, fresh) >= 0.9
    assert not chain.spared(np.r_[fit, fresh]).any()


def test_the_persons_own_photos_are_never_spared_and_their_double_only_above_them(twins):
    E, y, me, _, keep = twins
    # The person enrolled a second time under another name: spared, if at all, only above the
    # person's own photos' cosine to that mean face plus the margin, so their photos stay erased.
    groups = np.where(np.isin(np.arange(len(y)), me[20:30]), 999, y)
    rows = keep | np.isin(np.arange(len(y)), me[20:30])
    fit, fresh = E[me[:3]], E[me[30:]]
    e = fit_scramble(fit, E[rows], gallery_labels=groups[rows])
    chain = e.tail[0]
    double = normalize_rows(E[me[20:30]].mean(axis=0, keepdims=True))
    as_double = chain.known[0] @ double[0] > 0.999
    assert np.all(chain.known_t[0][as_double] > (fit @ double[0]).max())
    assert not chain.spared(fit).any()
    # of the person's new photos only the most sibling-like few pass (1 - SPARE of strangers')
    assert chain.spared(fresh).mean() <= 0.1
    # fit_spare alone: its cosine clears every photo of the person it was given
    w, b = chain.weights[:, 0], chain.bias[0]
    s = fit_spare(E[rows], groups[rows], E[me], w, b)
    assert np.all(s.t > (E[me] @ s.known.T).max(axis=0))
    assert np.all(fit_spare(E[rows], groups[rows], fit, w, b, q=0).t == NO_SPARE)


def test_gates_that_spare_compose_and_round_trip(twins):
    E, y, me, sib, keep = twins
    a = fit_scramble(E[me[:3]], E[keep], gallery_labels=y[keep])
    Ea = a.apply(E)
    two = np.flatnonzero(y == 2)
    rest = keep & (y != 2)
    b = fit_scramble(Ea[two[:3]], Ea[rest], gallery_labels=y[rest],
                     scrambler=a.tail[0].scrambler)
    plain = fit_scramble(Ea[two[:3]], Ea[rest], gallery_labels=y[rest], spare=0,
                         scrambler=a.tail[0].scrambler)
    ab, a_plain = a.then(b), a.then(plain)
    assert ab.n_gates == 2 and ab.tail[0].known.shape == (2, SPARE_FACES, E.shape[1])
    assert a_plain.tail[0].known.shape == (2, SPARE_FACES, E.shape[1])  # zero rows pad
    assert np.all(a_plain.tail[0].known_t[1] == NO_SPARE)
    assert np.allclose(ab.apply(E), b.apply(Ea), atol=1e-5)
    assert np.allclose(a_plain.apply(E), plain.apply(Ea), atol=1e-5)
    chain = ab.tail[0]
    v = normalize_rows(E.astype(np.float64))
    naive, top = chain.trace(v)
    assert np.abs(chain(v) - naive).max() < 1e-12
    back = Erasure.from_bytes(ab.to_bytes())
    assert np.array_equal(back.tail[0].known, chain.known)
    assert np.array_equal(back.apply(E), ab.apply(E))
    # a chain that spares nobody stores exactly what it stored before sparing existed
    assert not any("known" in k for k in plain.tail[0].arrays("x_"))


def test_damaged_or_bad_sparing_settings_are_refused(twins):
    E, y, me, _, keep = twins
    with pytest.raises(ErasureError, match="spare"):
        fit_scramble(E[me[:3]], E[keep], gallery_labels=y[keep], spare=1.0)
    chain = fit_scramble(E[me[:3]], E[keep], gallery_labels=y[keep]).tail[0]
    arrays = chain.arrays("t_")
    arrays["t_known_t"] = np.full_like(arrays["t_known_t"], np.nan)
    with pytest.raises(ValueError, match="NaN"):
        GateChain.from_arrays(arrays, "t_")
    arrays = chain.arrays("t_")
    arrays["t_known"] = arrays["t_known"][:, :, :5]
    with pytest.raises(ValueError, match="shape"):
        GateChain.from_arrays(arrays, "t_")


def test_the_exported_tail_spares_the_faces_the_reference_spares(twins):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from facekd.encoders.tail_onnx import append_tail

    import dataclasses

    E, y, me, sib, keep = twins
    e = fit_scramble(E[me[:3]], E[keep], gallery_labels=y[keep], q=0.99)
    # Made by hand so that the gate opens on the sibling's new photos and spares most of them
    # (a fitted gate spares a sibling only above the person's photos): the export's
    # mechanics, not the fit, are under test.
    chain = e.tail[0]
    sibling = normalize_rows(E[sib[:10]].mean(axis=0, keepdims=True))
    known = chain.known.copy()
    known[0, 0] = sibling[0]
    t = chain.known_t.copy()
    t[0, 0] = float(np.quantile(E[sib[10:]] @ sibling[0], 0.3))
    opens = float(np.quantile(E[sib[10:]] @ chain.weights[:, 0] + chain.bias[0], 0.2))
    chain = dataclasses.replace(chain, known=known, known_t=t,
                                t0=np.array([opens]), s1=np.array([opens + 0.01]))
    e = dataclasses.replace(e, tail=[chain])
    d = E.shape[1]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["emb"])], "identity",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d])],
                              [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["N", d])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    append_tail(model, e.tail)
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rows = np.r_[me[10:], sib[10:]]
    got = normalize_rows(sess.run(None, {"x": E[rows].astype(np.float32)})[0].astype(np.float64))
    want = e.apply(E[rows]).astype(np.float64)
    spared = chain.spared(E[rows])[:, 0] & (chain.hinge(E[rows])[:, 0] > 0)
    assert spared.sum() >= 5  # the sibling's new photos the gate opens on, let through
    assert np.abs(got - want).max() < 1e-4
    assert np.abs(got[spared] - E[rows][spared]).max() < 1e-5


def test_erasures_in_sequence_cost_everyone_else_less_when_gates_spare():
    """Ten one-photo erasures one after another on cone-shaped clusters: with sparing the people
    never erased keep more of their rank-1, and the erased are found no more often."""
    E, y = identity_clusters(60, 16, 64, spread=0.7, shared_axis=2.0, seed=5)
    E = normalize_rows(E.astype(np.float64))
    rng = np.random.default_rng(0)
    enrol = np.zeros(len(y), bool)
    for i in np.unique(y):
        enrol[rng.permutation(np.flatnonzero(y == i))[:8]] = True
    erased = np.arange(10)
    results = {}
    for spare in (0.0, SPARE):
        acc = Erasure.identity(E.shape[1])
        for step, p in enumerate(erased):
            x = acc.apply(E).astype(np.float64)
            alive = ~np.isin(y, erased[:step + 1]) & enrol
            photo = np.flatnonzero((y == p) & enrol)[:1]
            new = fit_scramble(x[photo], x[alive], gallery_labels=y[alive], spare=spare,
                               scrambler=acc.scrambler, q_one=0.98)
            acc = acc.then(new)
        x = acc.apply(E).astype(np.float64)
        never = ~np.isin(y, erased)
        kept = identification_hits(x[never & enrol], y[never & enrol], x[never & ~enrol],
                                   y[never & ~enrol]).mean()
        gone = np.isin(y, erased) & ~enrol
        results[spare] = (kept, float(np.mean(acc.tail[0].gates(E[gone]).max(axis=1) > 0)))
    assert results[SPARE][0] > results[0.0][0]
    assert results[SPARE][1] == pytest.approx(results[0.0][1], abs=0.05)
