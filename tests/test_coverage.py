"""Held-out coverage (facekd.operations.measure.coverage) and the gate trace a top-up reads
(GateChain.trace, Erasure.gate_levels), on synthetic clusters."""

from __future__ import annotations

import numpy as np
import pytest

from clusters import identity_clusters
from facekd.core.tail import normalize_rows
from facekd.erasure import Erasure, fit_esc, fit_scramble
from facekd.operations.measure import MOVED_COSINE, coverage, moved_share


@pytest.fixture(scope="module")
def faces():
    """40 identities x 16 faces in a cone like dlib's space."""
    return identity_clusters(40, 16, 64, spread=0.6, shared_axis=2.5, seed=5)


def _two_gates_and_a_projector(E: np.ndarray, y: np.ndarray) -> Erasure:
    """Gate on identity 3, an ESC step, then a gate on identity 8 (tail: gates, linear, gates)."""
    a = fit_scramble(E[y == 3][:10], E[y != 3], q=0.99)
    Ea = a.apply(E)
    b = fit_esc(Ea[y == 5][:10], k=1)
    Eab = a.then(b).apply(E)
    c = fit_scramble(Eab[y == 8][:10], Eab[y != 8], q=0.99, scrambler=a.scrambler)
    return a.then(b).then(c)


def test_trace_equals_the_chain_and_reports_the_largest_gate(faces):
    E, y = faces
    chain = fit_scramble(E[y == 3][:10], E[y != 3], q=0.99).tail[0]
    v = normalize_rows(E.astype(np.float64))
    out, top = chain.trace(v)
    assert np.abs(out - chain(v)).max() < 1e-12
    assert np.array_equal(top, chain.gates(v)[:, 0])  # one step: its gate on the input
    # q = 0.99: about 1 % of everyone else sits above the gate
    assert np.mean(top[y != 3] >= 1.0) <= 0.02 and np.mean(top[y == 3] >= 1.0) >= 0.8


def test_gate_levels_walk_every_stage_in_order(faces):
    E, y = faces
    e = _two_gates_and_a_projector(E, y)
    assert [st.kind for st in e.tail] == ["gates", "linear", "gates"] and e.n_gates == 2
    levels = e.gate_levels(E)
    assert levels.shape == (len(E),) and 0.0 <= levels.min() and levels.max() <= 1.0
    for person in (3, 8):
        assert np.mean(levels[y == person] >= 1.0) >= 0.8
    # A row no gate touches is exactly what the linear stage alone makes of it.
    calm = levels == 0.0
    assert calm.mean() > 0.8
    assert np.allclose(e.apply(E[calm]), e.tail[1](e.linear_part().apply(E[calm])), atol=1e-6)
    assert not fit_esc(E[:8], k=1).gate_levels(E).any()  # linear: no gate, all zero


def test_coverage_reads_the_gate_figure_and_falls_back_to_the_moved_share(faces):
    E, y = faces
    gate = fit_scramble(E[y == 3], E[y != 3], q=0.99)
    moved = {"share": 0.25, "covered": 1, "faces": 4, "held_out": True}
    cov = coverage(gate, moved, 0.5)
    assert cov["share"] == gate.params["heldout_gated_fully"] and cov["faces"] == 16
    assert cov["criterion"].startswith("gate fully open") and cov["floor"] == 0.5
    gate.params["heldout_gated_fully"] = None  # e.g. a one-photo fit: nothing cross-validated
    cov = coverage(gate, moved, 0.5)
    assert cov["share"] == 0.25 and cov["under_floor"] and "cosine" in cov["criterion"]
    assert coverage(fit_esc(E[:8], k=1), {**moved, "share": 0.5}, 0.5)["under_floor"] is False


def test_moved_share_counts_photos_pushed_below_the_cosine(faces):
    E, y = faces
    person = E[y == 3]
    esc = fit_esc(person[:8], k=2)
    got = moved_share(esc, person[8:], held_out=True)
    cos = np.sum(esc.apply(person[8:]) * normalize_rows(person[8:].astype(np.float64)), axis=1)
    assert got == {"share": float(np.mean(cos < MOVED_COSINE)),
                   "covered": int(np.sum(cos < MOVED_COSINE)), "faces": 8, "held_out": True}
    assert moved_share(Erasure.identity(64), person, held_out=True)["share"] == 0.0
    assert moved_share(esc, person[:0], held_out=False)["share"] is None


def _step(share: float | None, faces: int) -> dict:
    covered = 0 if share is None else int(round(share * faces))
    return {"share": share, "covered": covered, "faces": faces, "held_out": True,
            "criterion": "gate fully open", "floor": 0.5,
            "under_floor": share is not None and share < 0.5}


def test_a_top_up_is_judged_over_every_photo_given():
    from facekd.operations.refusals import _coverage_refusal
    from facekd.operations.measure import top_up_coverage

    # LFW + dlib, a gate from 2 photos: 8 of 10 new photos already erased, the 2 that escaped are
    # both covered by the further gate, but each scored by a gate fitted on the other one alone
    # is not: 0.0 held out on 2 photos. Over all 10 photos: 0.8.
    counts = {"photos_given": 10, "already_erased": 8, "escaped": 2, "newly_covered": 2}
    cov = top_up_coverage(_step(0.0, 2), counts, in_sample=2)
    assert cov["share"] == 0.8 and cov["covered"] == 8 and cov["faces"] == 10
    assert not cov["under_floor"] and cov["step"]["in_sample"] == 2
    assert _coverage_refusal(cov) is None
    # A further step that covers nothing, not even its own photos, changes nothing: refused.
    idle = top_up_coverage(_step(0.0, 2), counts, in_sample=0)
    assert "not even those it was fitted on" in _coverage_refusal(idle)
    # Nothing erased before and a step that does not generalise: under the floor.
    low = top_up_coverage(_step(0.25, 8), {"photos_given": 8, "already_erased": 0, "escaped": 8},
                          in_sample=5)
    assert low["share"] == 0.25 and low["under_floor"]
    assert "2 of 8 held-out photos" in _coverage_refusal(low)
    assert top_up_coverage(_step(None, 1), counts, in_sample=1)["share"] == 0.8


def test_a_gates_coverage_carries_its_interval_and_one_photo_says_whose_photos_it_counts(faces):
    E, y = faces
    moved = {"share": 0.25, "covered": 1, "faces": 4, "held_out": True}
    three = coverage(fit_scramble(E[y == 3][:3], E[y != 3], gallery_labels=y[y != 3]), moved, 0.5)
    lo, hi = three["interval"]
    # three held-out photos decide little: the 95 % interval is wide whatever they show
    assert three["faces"] == 3 and lo <= three["share"] <= hi and hi - lo > 0.4
    assert not three["from_others"]
    one = coverage(fit_scramble(E[y == 3][:1], E[y != 3], gallery_labels=y[y != 3]), moved, 0.5)
    assert one["from_others"] and one["interval"] is None
    assert "other enrolled people" in one["criterion"]
