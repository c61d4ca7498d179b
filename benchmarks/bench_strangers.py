"""Do scrambled faces stay strangers to one another in small galleries? (issue 21, item 3)

    FACEKD_CACHE=... python benchmarks/bench_strangers.py [--dataset DIR] [--encoder dlib]

For galleries of all, 40 and 15 people (the enrolment half of each, seeded draws): the stranger map
(``Scrambler.fit`` on the gallery, as ``fit_scramble`` fits it) turns 20 new photos of each of 12
people outside the gallery into strangers. Reported: pairwise cosine quantiles (median, 99th,
99.9th) of strangers to one another, strangers to the gallery, and distinct gallery people; and
the attack the issue describes: 10 scrambled photos re-enrolled next to the gallery, the other 10
searched, rank-1 over 50 random splits each, for 3 draws of the gallery per person (36 cases per
row; mean and its standard error; chance: 1 / people). ``raw``: the population
covariance as before (shrink 0); ``calibrated``: the default. The yardstick for the attack is the
same attack on real strangers: one photo each of 20 distinct people enrolled nowhere, 10 of them
re-enrolled as if one person and the other 10 searched (what a perfect erasure could at best
give; ``1 / people`` ignores that a gallery's faces come in clusters of one person's photos). The
full gallery leaves 20 people out for them (so its row has 19 people fewer than before).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from _common import REPO

from facekd.core.metrics import identification_hits, split_enrol_probe
from facekd.core.tail import ALPHA, Scrambler, normalize_rows
from facekd.encoders import load_encoder
from facekd.evaluation.bench import _usable, embed_dataset

Q = (0.5, 0.99, 0.999)
STRANGERS = 20  # real people enrolled nowhere, one photo each: the attack's yardstick


FACES = Path(os.environ.get("FACEKD_FACES_DIR", REPO.parent / "shared" / "data" / "faces"))


def _attack(gal: np.ndarray, gy: np.ndarray, faces: np.ndarray, r: np.random.Generator) -> float:
    """Half of ``faces`` (20) re-enrolled as one person next to the gallery, the other half
    searched: rank-1 (one random split)."""
    p = r.permutation(len(faces))
    half = len(faces) // 2
    g2 = np.vstack([gal, faces[p[:half]]])
    y2 = np.r_[gy, np.full(half, -1)]
    return float(identification_hits(g2, y2, faces[p[half:]], np.full(len(faces) - half, -1)).mean())


def _pct(rates: list[float]) -> str:
    """Mean rank-1 over the cases, its standard error and the worst case, in percent."""
    v = 100 * np.asarray(rates)
    return f"{v.mean():.1f} ± {v.std(ddof=1) / np.sqrt(len(v)):.1f} % (max {v.max():.0f})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default=str(FACES / "lfw_150px"))
    ap.add_argument("--encoder", default="dlib")
    ap.add_argument("--splits", type=int, default=50)
    ap.add_argument("--draws", type=int, default=3, help="gallery draws per person")
    a = ap.parse_args()
    E, y, _ = _usable(embed_dataset(a.dataset, load_encoder(a.encoder)))
    x = normalize_rows(E.astype(np.float64))
    ids, counts = np.unique(y, return_counts=True)
    rng = np.random.default_rng(0)
    people = rng.choice(ids[counts >= 20], 12, replace=False)
    others = np.setdiff1d(ids, people)
    enrol = split_enrol_probe(y, seed=0)
    print("| people | stranger map | strangers to each other (50 / 99 / 99.9 %) | strangers to "
          "the gallery | distinct gallery people | re-enrolled rank-1 (chance) "
          "| real strangers, same attack |")
    print("|---|---|---|---|---|---|---|")
    for n in (len(others) - STRANGERS + 1, 40, 15):  # people: the gallery's and the person
        ss, sg, dd, hits, real = {}, {}, [], {}, []
        for rep, draw in np.ndindex(len(people), a.draws):
            person = people[rep]
            r = np.random.default_rng([rep, n, draw])
            keep = r.choice(others, n - 1, replace=False)
            outside = r.choice(np.setdiff1d(others, keep), STRANGERS, replace=False)
            strangers = x[[r.choice(np.flatnonzero(y == o)) for o in outside]]
            rows = np.isin(y, keep) & enrol
            gal, gy = x[rows], y[rows]
            fresh = x[r.permutation(np.flatnonzero(y == person))[:20]]
            dd.append(np.quantile((gal @ gal.T)[gy[:, None] < gy[None, :]], Q))
            for name, shrink in (("raw", 0.0), ("calibrated", None)):
                s = Scrambler.fit(gal, alpha=ALPHA, seed=rep, labels=gy, shrink=shrink)(fresh)
                iu = np.triu_indices(len(s), 1)
                ss.setdefault(name, []).append(np.quantile((s @ s.T)[iu], Q))
                sg.setdefault(name, []).append(np.quantile(s @ gal.T, Q))
                hits.setdefault(name, []).append(np.mean([_attack(gal, gy, s, r)
                                                          for _ in range(a.splits)]))
            real.append(np.mean([_attack(gal, gy, strangers, r) for _ in range(a.splits)]))
        for name in ("raw", "calibrated"):
            f = lambda v: " / ".join(f"{q:.3f}" for q in np.mean(v, axis=0))  # noqa: E731
            print(f"| {n} | {name} | {f(ss[name])} | {f(sg[name])} | {f(dd)} | "
                  f"{_pct(hits[name])} ({100 / n:.1f} %) | {_pct(real)} |")


if __name__ == "__main__":
    main()
