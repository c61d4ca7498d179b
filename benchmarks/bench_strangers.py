"""Do scrambled faces stay strangers to one another in small galleries? (issue 21, item 3)

    FACEKD_CACHE=... python benchmarks/bench_strangers.py [--dataset DIR] [--encoder dlib]

For galleries of all, 40 and 15 people (the enrolment half of each, seeded draws): the stranger map
(``Scrambler.fit`` on the gallery, as ``fit_scramble`` fits it) turns 20 new photos of each of 12
people outside the gallery into strangers. Reported: pairwise cosine quantiles (median, 99th,
99.9th) of strangers to one another, strangers to the gallery, and distinct gallery people; and
the attack the issue describes: 10 scrambled photos re-enrolled next to the gallery, the other 10
searched, rank-1 over 50 random splits each (chance: 1 / people). ``raw``: the population
covariance as before (shrink 0); ``calibrated``: the default.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from _common import REPO

from facekd.bench import _usable, embed_dataset
from facekd.encoders import load_encoder
from facekd.metrics import identification_hits, split_enrol_probe
from facekd.tail import Scrambler, normalize_rows

Q = (0.5, 0.99, 0.999)


FACES = Path(os.environ.get("FACEKD_FACES_DIR", REPO.parent / "shared" / "data" / "faces"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default=str(FACES / "lfw_150px"))
    ap.add_argument("--encoder", default="dlib")
    ap.add_argument("--splits", type=int, default=50)
    a = ap.parse_args()
    E, y, _ = _usable(embed_dataset(a.dataset, load_encoder(a.encoder)))
    x = normalize_rows(E.astype(np.float64))
    ids, counts = np.unique(y, return_counts=True)
    rng = np.random.default_rng(0)
    people = rng.choice(ids[counts >= 20], 12, replace=False)
    others = np.setdiff1d(ids, people)
    enrol = split_enrol_probe(y, seed=0)
    print("| people | stranger map | strangers to each other (50 / 99 / 99.9 %) | strangers to "
          "the gallery | distinct gallery people | re-enrolled rank-1 (chance) |")
    print("|---|---|---|---|---|---|")
    for n in (len(others), 40, 15):
        ss, sg, dd, hits = {}, {}, [], {}
        for rep, person in enumerate(people):
            r = np.random.default_rng([rep, n])
            keep = others if n >= len(others) else r.choice(others, n - 1, replace=False)
            rows = np.isin(y, keep) & enrol
            gal, gy = x[rows], y[rows]
            fresh = x[r.permutation(np.flatnonzero(y == person))[:20]]
            dd.append(np.quantile((gal @ gal.T)[gy[:, None] < gy[None, :]], Q))
            for name, shrink in (("raw", 0.0), ("calibrated", None)):
                s = Scrambler.fit(gal, alpha=1.05, seed=rep, labels=gy, shrink=shrink)(fresh)
                iu = np.triu_indices(len(s), 1)
                ss.setdefault(name, []).append(np.quantile((s @ s.T)[iu], Q))
                sg.setdefault(name, []).append(np.quantile(s @ gal.T, Q))
                h = []
                for _ in range(a.splits):
                    p = r.permutation(20)
                    g2 = np.vstack([gal, s[p[:10]]])
                    y2 = np.r_[gy, np.full(10, -1)]
                    h.append(identification_hits(g2, y2, s[p[10:]], np.full(10, -1)).mean())
                hits.setdefault(name, []).append(np.mean(h))
        for name in ("raw", "calibrated"):
            f = lambda v: " / ".join(f"{q:.3f}" for q in np.mean(v, axis=0))  # noqa: E731
            print(f"| {n} | {name} | {f(ss[name])} | {f(sg[name])} | {f(dd)} | "
                  f"{100 * np.mean(hits[name]):.1f} % (max {100 * np.max(hits[name]):.0f}) "
                  f"({100 / n:.1f} %) |")


if __name__ == "__main__":
    main()
