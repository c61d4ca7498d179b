"""The verdict's statistics (facekd.core.verdict): exact split averages, the stranger baseline, and
PASS / FAIL / INCONCLUSIVE calibrated by simulation.

The simulation draws a gallery the way face embeddings behave (identity centres around a shared
mean, photos scattered about their centre, unit length). A *perfect erasure* replaces each of the
person's photos by an independent stranger drawn like the gallery (a new person per photo); an
*unerased* person keeps m photos of one new identity. Galleries of 15 to 1,000 people, 6, 12 and
24 photos, 200 seeds each.
"""

from __future__ import annotations

from math import comb

import numpy as np
import pytest

from clusters import identity_clusters
from facekd.core import verdict as vd

D, FACES, WITHIN = 32, 5, 0.45


def _gallery(n: int, seed: int):
    rng = np.random.default_rng(seed)
    mu = np.zeros(D)
    mu[0] = 3.0
    centres = mu + rng.normal(size=(n, D))
    g = np.repeat(centres, FACES, axis=0) + rng.normal(size=(n * FACES, D)) * WITHIN
    return g / np.linalg.norm(g, axis=1, keepdims=True), np.repeat(np.arange(n), FACES), mu


def _photos(rng, m: int, mu: np.ndarray, *, erased: bool, within: float = WITHIN):
    centres = mu + rng.normal(size=(m if erased else 1, D))
    p = centres + rng.normal(size=(m, D)) * within
    return p / np.linalg.norm(p, axis=1, keepdims=True)


def _verdict(p, g, y, found):
    chance = 1 / (len(np.unique(y)) + 1)
    figs = vd.attack_figures(p, (p @ g.T).max(axis=1), found.odds, chance=chance,
                             threshold=0.95)
    return vd.combine(figs, None, len(p),
                      needed=vd.photos_to_decide(figs, len(p), found.odds, chance=chance))


# ------------------------------------------------------------------ the attack, exactly
def test_split_hit_rates_equal_the_average_over_every_half_split():
    from itertools import combinations

    rng = np.random.default_rng(0)
    g, y, mu = _gallery(20, 1)
    p = _photos(rng, 7, mu, erased=False, within=0.9)
    best = (p @ g.T).max(axis=1)
    rates = []
    for enrol in combinations(range(7), 3):
        probe = [i for i in range(7) if i not in enrol]
        rates.append(np.mean((p[probe] @ p[list(enrol)].T).max(axis=1) > best[probe]))
    assert vd.split_hit_rates(p, best).mean() == pytest.approx(np.mean(rates), abs=1e-12)
    assert 0 < np.mean(rates) < 1  # a case where the average is not trivial


def test_split_hit_rate_of_a_probe_follows_the_hypergeometric_miss():
    p = np.eye(6)[:5] + 0.0  # orthogonal photos: cosine 0 to each other
    best = np.array([-1.0, 1.0, 1.0, 1.0, 1.0])  # every other photo beats the gallery for 0 only
    h = vd.split_hit_rates(p, best, enrol=2)
    assert h[0] == pytest.approx(1.0)  # 4 of 4 others beat: any enrolment hits
    assert np.all(h[1:] == 0.0)
    best[0] = 0.5  # none beats now
    assert vd.split_hit_rates(p, best, enrol=2)[0] == 0.0
    q = np.eye(6)[:5]
    q[1] = q[0]  # photo 1 duplicates photo 0: exactly one of 4 others beats for probe 0
    h = vd.split_hit_rates(q, np.array([0.5, 0.5, 2, 2, 2]), enrol=2)
    assert h[0] == pytest.approx(1 - comb(3, 2) / comb(4, 2))


def test_pair_share_counts_ordered_pairs_and_shrinks_clustered_evidence():
    hits = np.zeros((10, 10), bool)
    assert vd.pair_share(hits) == (0.0, 90.0)
    hits[0, 1:] = hits[1:, 0] = True  # one photo behind every hit: strongly clustered
    share, n_eff = vd.pair_share(hits)
    assert share == pytest.approx(18 / 90) and n_eff < 90


def test_stranger_baseline_matches_unrelated_strangers_drawn_for_real():
    """The gallery-only estimate against the rank-1 that m real strangers reach (simulated)."""
    g, y, mu = _gallery(40, 2)
    found = vd.strangers(g, y)
    rng = np.random.default_rng(3)
    reached = [vd.split_hit_rates(p, (p @ g.T).max(axis=1)).mean()
               for p in (_photos(rng, 12, mu, erased=True) for _ in range(300))]
    estimate = vd.stranger_baseline(found.odds, 6)
    assert estimate == pytest.approx(np.mean(reached), rel=0.35)
    assert estimate > 1 / 41  # more than 1 / (identities + 1): strangers' photos spread out


def test_strangers_best_is_the_score_against_the_other_identities():
    g, y, _ = _gallery(10, 4)
    found = vd.strangers(g, y)
    sim = g @ g.T
    sim[y[:, None] == y[None, :]] = -np.inf
    assert np.allclose(found.best, sim.max(axis=1), atol=1e-6)


# ------------------------------------------------------------------ calibration
@pytest.mark.parametrize("people", [15, 100, 1000])
@pytest.mark.parametrize("photos", [6, 12, 24])
def test_a_perfect_erasure_is_failed_at_most_5_percent_of_the_time(people, photos):
    g, y, mu = _gallery(people, people)
    found = vd.strangers(g, y)
    fails = sum(_verdict(_photos(np.random.default_rng([seed, photos]), photos, mu,
                                 erased=True), g, y, found).status == vd.FAIL
                for seed in range(200))
    assert fails <= 10, f"{fails} of 200 perfect erasures FAILed"


@pytest.mark.parametrize("people", [15, 100, 1000])
@pytest.mark.parametrize("photos", [6, 12, 24])
def test_an_unerased_person_is_failed_at_least_99_percent_of_the_time(people, photos):
    g, y, mu = _gallery(people, people)
    found = vd.strangers(g, y)
    fails = sum(_verdict(_photos(np.random.default_rng([seed, photos, 1]), photos, mu,
                                 erased=False), g, y, found).status == vd.FAIL
                for seed in range(200))
    assert fails >= 198, f"only {fails} of 200 unerased people FAILed"


def test_few_photos_are_inconclusive_and_say_whether_more_would_settle_it():
    g, y, mu = _gallery(1000, 7)
    found = vd.strangers(g, y)
    v = _verdict(_photos(np.random.default_rng(8), 20, mu, erased=True), g, y, found)
    assert v.status == vd.INCONCLUSIVE and "20 photos cannot decide" in v.reason
    assert v.photos_needed > 20 and f"about {v.photos_needed} photos" in v.reason
    g, y, mu = _gallery(100, 5)
    v = _verdict(_photos(np.random.default_rng(6), 6, mu, erased=True), g, y, vd.strangers(g, y))
    assert v.status == vd.INCONCLUSIVE and ("about" in v.reason or "not settle" in v.reason)


def test_a_perfect_erasure_can_pass_with_enough_evidence():
    g, y, mu = _gallery(40, 40)
    found = vd.strangers(g, y)
    statuses = [_verdict(_photos(np.random.default_rng([seed, 24]), 24, mu, erased=True),
                         g, y, found).status for seed in range(200)]
    assert statuses.count(vd.PASS) >= 5 and vd.FAIL not in statuses[:20]


def test_photos_the_unedited_encoder_never_recognised_are_inconclusive():
    after = [vd.judge("rank-1", 0.0, 50, 0.1)]
    before = [vd.judge("rank-1", 0.02, 50, 0.1)]
    assert after[0].ruling == vd.PASS and before[0].ruling != vd.FAIL
    v = vd.combine(after, before, 50)
    assert v.status == vd.INCONCLUSIVE and "did not recognise" in v.reason
    assert vd.combine(after, [vd.judge("rank-1", 0.9, 50, 0.1)], 50).status == vd.PASS


def test_an_estimate_over_twice_chance_never_passes_even_under_the_strangers_bound():
    f = vd.judge("rank-1", 0.08, 400, 0.4, pass_cap=0.05)
    assert f.ruling == vd.INCONCLUSIVE
    assert "cannot tell the person from strangers" in vd.combine([f], None, 400).reason


def test_the_forecast_names_the_fewest_photos_that_decide_at_the_same_rates():
    g, y, mu = _gallery(1000, 7)
    found = vd.strangers(g, y)
    p = _photos(np.random.default_rng(8), 20, mu, erased=True)
    figs = vd.attack_figures(p, (p @ g.T).max(axis=1), found.odds, chance=1 / 1001,
                             threshold=0.95)
    n = vd.photos_to_decide(figs, 20, found.odds, chance=1 / 1001)
    assert n is not None and n > 20
    assert vd.photos_to_decide(figs, 20, found.odds, chance=1 / 1001, limit=n - 1) is None


def test_an_undecidable_case_says_more_photos_would_not_settle_it():
    v = vd.combine([vd.judge("rank-1", 0.05, 10, 0.06)], None, 10, needed=None)
    assert v.status == vd.INCONCLUSIVE and "would not settle it" in v.reason
    one = vd.combine([vd.judge("rank-1", 0.0, 1, 0.13)], None, 1)  # forget's one held-back photo
    assert one.reason.startswith("1 photo cannot decide: rank-1 0.0% [0.0%, ")


def test_an_estimate_on_twice_chance_is_inconclusive_not_a_pass():
    # An outside replay of the same photos over 200 random splits lands on either side of the
    # cap: within the margin the ruling stays open, and says why.
    on = vd.judge("rank-1", 0.05, 20, 0.3, interval=(0.003, 0.25), pass_cap=0.0526,
                  pass_margin=0.008)
    clear = vd.judge("rank-1", 0.04, 20, 0.3, interval=(0.003, 0.25), pass_cap=0.0526,
                     pass_margin=0.008)
    assert on.ruling == vd.INCONCLUSIVE and clear.ruling == vd.PASS
    reason = vd.combine([on], None, 20).reason
    assert "could land on either side" in reason and "2 x chance" in reason


def test_replay_spread_is_the_spread_of_random_splits_rank1():
    rng = np.random.default_rng(3)
    beats = rng.random((16, 16)) < 0.08
    np.fill_diagonal(beats, False)
    rates = []
    for _ in range(4000):  # a replay's splits, one at a time
        order = rng.permutation(16)
        enrol, probe = order[:8], order[8:]
        rates.append(beats[np.ix_(probe, enrol)].any(axis=1).mean())
    assert vd.replay_spread(beats, 8) == pytest.approx(np.std(rates), rel=0.1)
    assert vd.replay_spread(np.zeros((16, 16), bool), 8) == 0.0  # nothing found: no spread


def test_attack_figures_hold_a_pass_back_by_the_replays_noise():
    g, y, mu = _gallery(40, 5)
    p = _photos(np.random.default_rng(6), 20, mu, erased=True)
    found = vd.strangers(g, y)
    fig = vd.attack_figures(p, (p @ g.T).max(axis=1), found.odds, chance=1 / 41)[0]
    beats = vd.beats_gallery(p, (p @ g.T).max(axis=1))
    assert fig.pass_margin == pytest.approx(
        vd.Z95 * vd.replay_spread(beats, 10) / np.sqrt(vd.REPLAY_SPLITS))
    assert fig.ruling != vd.PASS or fig.estimate <= fig.pass_cap - fig.pass_margin


def _fpir_alone_and_with_tail(found: vd.Strangers, monkeypatch) -> tuple[float, float]:
    with_tail = vd.fpir_threshold(found, 0.01)
    monkeypatch.setattr(vd, "TAIL_EXCEEDANCES", 0)  # the quantile alone, as before
    alone = vd.fpir_threshold(found, 0.01)
    monkeypatch.undo()
    return alone, with_tail


def test_a_small_gallerys_match_threshold_holds_the_fpir_it_promises(monkeypatch):
    # 15 or 40 people enrolled with one photo: their highest stranger score is about the 94th /
    # 97.5th percentile, so the quantile alone let 7 / 3.5 % of never-enrolled people MATCH.
    E, y = identity_clusters(440, 2, d=64, spread=0.35, seed=5)
    first = np.r_[True, y[1:] != y[:-1]]
    for people in (15, 40):
        rates = []
        for seed in range(10):
            gallery = np.random.default_rng(seed).choice(440, people, replace=False)
            keep = first & np.isin(y, gallery)
            best = (E[~np.isin(y, gallery)] @ E[keep].T).max(axis=1)
            alone, tail = _fpir_alone_and_with_tail(vd.strangers(E[keep], y[keep]), monkeypatch)
            assert tail >= alone
            rates.append((np.mean(best > alone), np.mean(best > tail)))
        alone_rate, tail_rate = np.mean(rates, axis=0)
        assert alone_rate > 0.02 and tail_rate <= 0.012


def test_a_gallery_large_enough_to_read_the_quantile_keeps_it_unchanged(monkeypatch):
    E, y = identity_clusters(300, 4, d=64, seed=6)
    found = vd.strangers(E, y, max_probes=1200)  # 12 faces expected above the 1 % quantile
    alone, tail = _fpir_alone_and_with_tail(found, monkeypatch)
    assert alone == tail
