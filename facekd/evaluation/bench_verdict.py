"""Does verify's verdict agree with the attack replayed from outside? One erased person of a
``facekd bench`` run, judged both ways.

verify's ruling (:mod:`facekd.core.verdict`) on the person's fresh photos is compared with a replay of
the half-split re-enrolment attack over ``splits`` random splits of the same photos, against
2 x chance = 2 / (identities + 1). verify is wrong when it PASSes a person the replay finds over
that, or FAILs one the replay finds at or under it; INCONCLUSIVE is never wrong. Numbers are
percent of erased people, so ``facekd bench`` averages them into rates per method.
"""

from __future__ import annotations

import numpy as np

from facekd.core import verdict as vd

__all__ = ["VERDICT_METRICS", "verdict_vs_replay", "replay_rank1", "perfect_erasure",
           "perfect_erasure_photos", "paired_difference", "versus_perfect"]

# ``replay_rank1``: the replay's rank-1 (percent); ``replay_over``: it finds the person over 2x
# chance (what the per-person target counts; a perfect erasure is over it for 19-38 % of
# LFW people, docs/benchmarks.md).
VERDICT_METRICS = ("verdict_pass", "verdict_fail", "verdict_inconclusive", "verdict_false_pass",
                   "verdict_false_fail", "replay_rank1", "replay_over")
SPLITS = 200


def replay_rank1(person: np.ndarray, gallery: np.ndarray, *, splits: int = SPLITS,
                 seed: int = 0) -> float:
    """Mean rank-1 of the half-split re-enrolment attack over ``splits`` random splits of the
    ``(m, d)`` unit photos, against the ``(N, d)`` unit gallery (the person not in it)."""
    rng = np.random.default_rng(seed)
    best = (person @ gallery.T).max(axis=1)
    m, e = len(person), len(person) // 2
    total = 0.0
    for _ in range(splits):
        order = rng.permutation(m)
        enrol, probe = order[:e], order[e:]
        total += float(np.mean((person[probe] @ person[enrol].T).max(axis=1) > best[probe]))
    return total / splits


def verdict_vs_replay(after: np.ndarray, before: np.ndarray, gallery: np.ndarray,
                      labels: np.ndarray, *, threshold: float | None, factor: float = 2.0,
                      max_tar: float = 0.05, seed: int = 0) -> dict[str, float]:
    """verify's verdict on one person and whether the replay agrees (percent: 100 or 0 each).

    Args:
        after, before: ``(m, d)`` unit embeddings of the person's fresh photos by the edited and
            the original encoder. gallery, labels: ``(N, d)`` edited unit embeddings of everyone
            else and their ``(N,)`` identities. threshold: the one-to-one (FAR) threshold.
    """
    found = vd.strangers(gallery, labels, seed=seed)
    chance = 1.0 / (len(np.unique(labels)) + 1)
    figures = {}
    for state, x in (("after", after), ("before", before)):
        best = (x @ gallery.T).max(axis=1)
        figures[state] = vd.attack_figures(x, best, found.odds, chance=chance, factor=factor,
                                           threshold=threshold, max_tar=max_tar)
    status = vd.combine(figures["after"], figures["before"], len(after)).status
    rate = replay_rank1(after, gallery, seed=seed)
    over = rate > factor * chance
    return {"verdict_pass": 100.0 * (status == vd.PASS),
            "verdict_fail": 100.0 * (status == vd.FAIL),
            "verdict_inconclusive": 100.0 * (status == vd.INCONCLUSIVE),
            "verdict_false_pass": 100.0 * (status == vd.PASS and over),
            "verdict_false_fail": 100.0 * (status == vd.FAIL and not over),
            "replay_rank1": 100.0 * rate, "replay_over": 100.0 * over}


def perfect_erasure_photos(x_all: np.ndarray, y_all: np.ndarray, gallery_y: np.ndarray,
                           person: int, held: int, rng: np.random.Generator
                           ) -> tuple[np.ndarray, np.ndarray] | None:
    """What ``person``'s ``held`` new photos become under a perfect erasure: one photo each of
    ``held`` distinct other people, none of them enrolled.

    They are drawn from the identities of ``y_all`` (labels of the unit photos ``x_all``
    ``(n, d)``) outside the gallery when enough are, else from the gallery's own others, which
    are then left out of it (a stranger is never enrolled). Returns ``(photos (held, d), keep
    (N,) bool)``: the rows of the gallery (labels ``gallery_y``) to search; ``None`` when too few
    identities are left for the draw or for a gallery of 2 identities after it.
    """
    enrolled = np.unique(gallery_y)
    outside = np.setdiff1d(np.unique(y_all), np.r_[enrolled, person])
    pool = outside if len(outside) >= held else np.setdiff1d(np.unique(y_all), [person])
    if len(pool) < held:
        return None
    who = rng.choice(pool, held, replace=False)
    keep = ~np.isin(gallery_y, who)
    if len(np.unique(gallery_y[keep])) < 2:
        return None
    photos = x_all[[rng.choice(np.flatnonzero(y_all == w)) for w in who]]
    return photos, keep


def perfect_erasure(x_all: np.ndarray, y_all: np.ndarray, gallery: np.ndarray,
                    gallery_y: np.ndarray, person: int, before: np.ndarray, *,
                    threshold: float | None, factor: float = 2.0, seed: int = 0
                    ) -> dict[str, float] | None:
    """:func:`verdict_vs_replay` on a perfect erasure of ``person``: their ``(m, d)`` original
    fresh photos ``before`` replaced by as many strangers' (:func:`perfect_erasure_photos`),
    against the ``(N, d)`` unit ``gallery`` (labels ``gallery_y``) without the strangers. The
    yardstick an erased person's own figures are read against, person by person: its replayed
    rank-1, whether that is over ``factor`` x chance, and what verify rules (it should never
    FAIL one whose replay is at or under the bound). ``None`` when it cannot be drawn."""
    drawn = perfect_erasure_photos(x_all, y_all, gallery_y, person, len(before),
                                   np.random.default_rng([seed, 2, int(person)]))
    if drawn is None:
        return None
    photos, keep = drawn
    return verdict_vs_replay(photos, before, gallery[keep], gallery_y[keep], threshold=threshold,
                             factor=factor, seed=seed)


def paired_difference(a: np.ndarray, b: np.ndarray, boots: int = 2000, seed: int = 0
                      ) -> tuple[float, float, float]:
    """Mean of ``a - b`` (``(m,)`` each, paired by erased person: same draw, same gallery) and
    its 95 % percentile bootstrap interval over people."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(len(d), size=(boots, len(d)))].mean(axis=1)
    return float(d.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def versus_perfect(diffs: list[float]) -> dict[str, float | None]:
    """A row's erased people against a perfect erasure of each (``diffs``: their replayed rank-1
    minus the perfect erasure's, points): the mean and its 95 % bootstrap interval
    (``minus_perfect``, ``_lo``, ``_hi``; ``None`` without any). An interval that reaches 0 or
    below says the erasure is no easier to find than a perfect one on these people."""
    if not diffs:
        return {"minus_perfect": None, "minus_perfect_lo": None, "minus_perfect_hi": None}
    mean, lo, hi = paired_difference(np.asarray(diffs), np.zeros(len(diffs)))
    return {"minus_perfect": round(mean, 4), "minus_perfect_lo": round(lo, 4),
            "minus_perfect_hi": round(hi, 4)}
