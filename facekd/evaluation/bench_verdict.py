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

__all__ = ["VERDICT_METRICS", "verdict_vs_replay", "replay_rank1"]

VERDICT_METRICS = ("verdict_pass", "verdict_fail", "verdict_inconclusive", "verdict_false_pass",
                   "verdict_false_fail")
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
    over = replay_rank1(after, gallery, seed=seed) > factor * chance
    return {"verdict_pass": 100.0 * (status == vd.PASS),
            "verdict_fail": 100.0 * (status == vd.FAIL),
            "verdict_inconclusive": 100.0 * (status == vd.INCONCLUSIVE),
            "verdict_false_pass": 100.0 * (status == vd.PASS and over),
            "verdict_false_fail": 100.0 * (status == vd.FAIL and not over)}
