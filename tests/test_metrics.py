"""facekd.core.metrics on hand-made inputs and small synthetic clusters."""

from __future__ import annotations

import json
from math import comb

import numpy as np
import pytest

from clusters import identity_clusters
from facekd.core.metrics import (ErasureReport, MetricsError, erasure_report, identification_hits,
                            identification_rate, knowledge_retention, membership_inference,
                            pair_scores, split_enrol_probe, tar_at_far)
from facekd.erasure import Erasure, fit_esc


# ---------------------------------------------------------------------- verification
def test_tar_at_far_on_known_scores_accepts_exactly_far_of_impostors():
    impostor = np.arange(1000.0)          # 0 .. 999
    genuine = np.array([500.0, 989.0, 990.0, 2000.0])
    tar, thr = tar_at_far(genuine, impostor, 0.01)
    assert thr == 989.0                    # 10 impostors (990..999) lie strictly above
    assert np.mean(impostor > thr) == 0.01
    assert tar == 0.5                      # 990 and 2000 accepted; 989 is not (strictly above)
    tar, thr = tar_at_far(genuine, impostor, 1e-4)  # finer than 1/1000: observed FAR 0
    assert thr == 999.0 and tar == 0.25


def test_pair_scores_counts_every_pair_or_samples_the_cap():
    E, y = identity_clusters(6, 5, 16, seed=0)
    gen, imp = pair_scores(E, y)
    assert gen.size == 6 * comb(5, 2) and imp.size == comb(30, 2) - 6 * comb(5, 2)
    full = E @ E.T
    same = y[:, None] == y[None, :]
    iu = np.triu_indices(30, 1)
    assert np.allclose(np.sort(imp), np.sort(full[iu][~same[iu]]), atol=1e-6)
    _, sampled = pair_scores(E, y, max_impostor_pairs=50, seed=1)
    assert sampled.size == 50
    # Every sampled score is the cosine of some impostor pair.
    pool = full[~same]
    assert np.abs(pool[None, :] - sampled[:, None]).min(axis=1).max() < 1e-6


# ---------------------------------------------------------------------- identification
def test_identification_ranks_identities_by_their_best_face():
    g = np.eye(4)[[0, 1, 1, 2]]            # identity 1 has two faces
    gl = np.array([10, 11, 11, 12])
    probes = np.array([[1, 0, 0, 0.1], [0, 0.9, 0, 0.2], [0.6, 0, 0.8, 0], [0, 0, 0, 1]])
    pl = np.array([10, 11, 12, 13])        # 13 is not enrolled: always a miss
    assert identification_hits(g, gl, probes, pl, k=1).tolist() == [True, True, True, False]
    confused = np.array([[0.8, 0, 0.6, 0]])  # closer to 10 than to its own 12
    assert not identification_hits(g, gl, confused, [12], k=1)[0]
    assert identification_hits(g, gl, confused, [12], k=2)[0]
    assert identification_rate(g, gl, probes, pl) == 0.75


# ---------------------------------------------------------------------- KR and MIA
def test_knowledge_retention_probes_converge_and_recognise_separable_identities():
    E, y = identity_clusters(20, 10, 32, seed=3)
    split = split_enrol_probe(y, seed=0)
    kr = knowledge_retention(E[split], y[split], E[~split], y[~split], [4])
    assert kr.linear_converged and 0 < kr.linear_iterations
    for name in ("linear", "weak", "knn"):
        assert getattr(kr, f"{name}_forget") == 1.0 and getattr(kr, f"{name}_retain") == 1.0


def test_knowledge_retention_on_one_photo_per_person_prints_no_sklearn_warning():
    """More identities than half the faces (a gallery of 1-3 photos each) made sklearn warn
    that the labels look like regression targets; forget printed that to the operator."""
    import warnings

    E, y = identity_clusters(30, 2, 32, seed=3)  # sklearn warns from 21 samples on
    train = np.r_[True, np.diff(y) != 0]  # each identity's first photo
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kr = knowledge_retention(E[train], y[train], E[~train], y[~train], [4])
    assert kr.linear_retain == 1.0 and kr.linear_forget == 1.0


def test_membership_inference_is_chance_for_same_scores_and_perfect_for_separated():
    rng = np.random.default_rng(0)
    same = membership_inference(rng.normal(size=400), rng.normal(size=600))
    assert 40.0 <= same <= 60.0
    apart = membership_inference(rng.normal(3.0, 0.5, size=(50, 2)), rng.normal(0, 0.5, size=(80, 2)))
    assert apart >= 99.0


# ---------------------------------------------------------------------- the report
def test_split_gives_every_multi_image_identity_enrolment_and_probe_faces():
    y = np.array([0] * 7 + [1] * 2 + [2] + [3] * 4)
    split = split_enrol_probe(y, seed=3)
    for lab in (0, 1, 3):
        assert split[y == lab].any() and (~split[y == lab]).any()
    assert split[y == 2].all()             # a single face is enrolled, never probed
    assert np.array_equal(split, split_enrol_probe(y, seed=3))


@pytest.fixture(scope="module")
def small_report():
    E, y = identity_clusters(30, 8, 64, seed=5)
    E = np.concatenate([E * 3.0, identity_clusters(1, 1, 64, seed=9)[0]])  # + a single-image id
    y = np.r_[y, 99]
    split = split_enrol_probe(y, seed=0)
    e = fit_esc(E[(y == 2) & split], k=2)
    return erasure_report(E, y, [2], e, split, fars=(1e-2, 1e-3)), E, y, split


def test_report_json_round_trip_is_exact_and_plain(small_report):
    report = small_report[0]
    text = report.to_json()
    back = ErasureReport.from_json(text)
    assert back == ErasureReport.from_dict(report.to_dict())
    assert back.to_json() == text

    def plain(o):
        if isinstance(o, dict):
            return all(isinstance(k, str) and plain(v) for k, v in o.items())
        if isinstance(o, list):
            return all(plain(v) for v in o)
        return o is None or type(o) in (str, int, float, bool)

    assert plain(json.loads(text)) and plain(report.to_dict())
    assert report.counts["identities"] == 31 and report.counts["forget_probe"] == 4
    assert "rank1_forget" in report.table() and "tar@0.01_retain" in report.table()
    assert set(report.timings) >= {"apply", "identification", "verification",
                                   "knowledge_retention", "mia", "total"}


def test_faces_mapped_to_zero_match_nothing_instead_of_crashing():
    g = np.array([[1.0, 0.0], [0.0, 1.0]])
    probes = np.array([[0.0, 0.0], [0.0, 2.0]])
    assert identification_hits(g, [0, 1], probes, [0, 1]).tolist() == [False, True]


def test_identity_erasure_changes_no_metric():
    E, y = identity_clusters(20, 12, 32, seed=6)
    split = split_enrol_probe(y, seed=1)
    r = erasure_report(E, y, [0, 1], Erasure.identity(32), split, fars=(1e-2,))
    for name, value in r.before.items():
        assert r.after[name] == pytest.approx(value, abs=1e-9), name
    assert 30.0 <= r.before["mia"] <= 70.0


def test_mia_is_not_reported_from_too_few_faces():
    E, y = identity_clusters(20, 6, 32, seed=6)  # 3 members + 3 non-members per forget identity
    r = erasure_report(E, y, [0], Erasure.identity(32), split_enrol_probe(y, seed=1), fars=(1e-2,))
    assert r.before["mia"] is None and r.after["mia"] is None


def test_bad_report_inputs_raise_metrics_error():
    E, y = identity_clusters(5, 4, 8, seed=7)
    split = split_enrol_probe(y)
    e = Erasure.identity(8)
    nan = E.copy(); nan[0, 0] = np.nan
    bad = [
        lambda: erasure_report(E, y[:-1], [0], e, split),           # label count mismatch
        lambda: erasure_report(E, y, [42], e, split),               # forget label absent
        lambda: erasure_report(E, y, [], e, split),                 # empty forget set
        lambda: erasure_report(nan, y, [0], e, split),              # NaN
        lambda: erasure_report(E, y, [0], e, split | (y == 0)),     # no forget probes
        lambda: erasure_report(E, y, [0], e, np.ones_like(split)),  # no probes at all
        lambda: erasure_report(E, y, [0], e, split.astype(int)),    # split not bool
        lambda: erasure_report(E, y, [0, 1, 2, 3, 4], e, split),    # nothing retained
        lambda: erasure_report(E, y, [0], object(), split),         # no apply()
        lambda: erasure_report(E, y, [0], Erasure.identity(16), split),  # erasure d mismatch
        lambda: erasure_report(E[:, :1].ravel(), y, [0], e, split),
        lambda: tar_at_far([], [0.1, 0.2], 1e-3),
        lambda: tar_at_far([0.5], [0.1], 1.5),
        lambda: identification_rate(E, y, E[:, :4], y),             # d mismatch
        lambda: identification_rate(E, y, E, y, k=0),
        lambda: membership_inference([0.1], [0.2, 0.3]),
        lambda: knowledge_retention(E, y, E, y, [42]),
        lambda: split_enrol_probe(y, frac=1.0),
    ]
    for i, call in enumerate(bad):
        with pytest.raises(MetricsError):
            call()
            pytest.fail(f"bad input #{i} was accepted")


# ---------------------------------------------------------------------- bounded cost, stated power
def test_wilson_interval_matches_known_values_and_stays_wide_at_zero_hits():
    from facekd.core.metrics import wilson_interval

    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)  # not the normal 0-width [0, 0]
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    for k, n in ((1, 3), (299, 300), (7, 7)):
        lo, hi = wilson_interval(k, n)
        assert 0 <= lo <= k / n <= hi <= 1


def test_sampled_pairs_read_off_the_gram_matrix_equal_the_row_by_row_scores(monkeypatch):
    import facekd.core.metrics.verification as m

    E, y = identity_clusters(40, 5, 16, seed=4)
    gen_a, imp_a = pair_scores(E, y, max_impostor_pairs=5000, seed=3)
    monkeypatch.setattr(m, "_GRAM_MAX", 0)  # force the gather + dot path
    gen_b, imp_b = pair_scores(E, y, max_impostor_pairs=5000, seed=3)
    assert np.array_equal(gen_a, gen_b) and np.allclose(imp_a, imp_b, atol=1e-6)


def test_knowledge_retention_counts_the_test_samples_behind_each_accuracy():
    E, y = identity_clusters(30, 8, 32, spread=0.6, seed=5)
    split = split_enrol_probe(y, seed=0)
    kr = knowledge_retention(E[split], y[split], E[~split], y[~split], [3])
    assert kr.n_forget == int(((y == 3) & ~split).sum()) and kr.n_retain + kr.n_forget == (~split).sum()


def test_report_states_intervals_and_bounds_the_probe_population():
    E, y = identity_clusters(40, 6, 32, seed=6)
    split = split_enrol_probe(y, seed=0)
    e = fit_esc(E[(y == 3) & split], k=2)
    full = erasure_report(E, y, [3], e, split, fars=(1e-2,))
    capped = erasure_report(E, y, [3], e, split, fars=(1e-2,), max_probe_identities=10)
    same = erasure_report(E, y, [3], e, split, fars=(1e-2,), max_probe_identities=39)
    assert same.before == full.before and same.after == full.after  # small: measured fully
    assert full.counts["kr_identities"] == 40 and capped.counts["kr_identities"] == 11
    assert capped.counts["kr_retain_probe"] < full.counts["kr_retain_probe"]
    # rank-1 and TAR do not depend on the probe cap
    assert {k: v for k, v in capped.after.items() if not k.startswith("kr_")} == \
        {k: v for k, v in full.after.items() if not k.startswith("kr_")}
    for state in ("before", "after"):
        for name, (lo, hi) in full.intervals[state].items():
            assert 0 <= lo <= getattr(full, state)[name] <= hi <= 100, name
    assert set(full.intervals["after"]) >= {"rank1_forget", "rank1_retain", "tar@0.01_retain",
                                            "kr_linear_forget", "kr_knn_retain"}
    table = full.table()
    assert "95% CI" in table and "impostor pairs" in table and "KR probes on 40 identities" in table
    assert ErasureReport.from_json(full.to_json()).intervals == full.intervals
