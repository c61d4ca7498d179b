"""Does MATCH mean what FPIR promises? The one-to-many threshold on small galleries, from outside.

    FACEKD_CACHE=... python benchmarks/bench_fpir.py [--dataset DIR] [--encoder dlib]
        [--people 15,40,62,100] [--photos 1,3] [--draws 10] [--seed 0] [--no-write]

For each draw, ``--people`` LFW identities are enrolled with ``--photos`` seeded photos each, and
the MATCH threshold is read off that gallery as verify and search read it
(:func:`facekd.core.verdict.strangers`, :func:`~facekd.core.verdict.fpir_threshold`, FPIR 1 %,
seed 0). The identities not drawn are split in two halves. One half plays the operator's
background (``facekd calibrate``, :func:`facekd.core.background.pool`): up to each of
``--background`` photos, at most 20 of each person. The other half is measured from outside: the
share of its photos (up to 1,500, at most 10 of each person) whose best score clears the
threshold (the real FPIR), and the share of enrolled people's other photos found as themselves
above it (TPIR). Arms: the quantile alone (``TAIL_EXCEEDANCES = 0``, before the twelfth round),
with the normal tail (the default without a background), and with each background size. Writes
``bench:fpir-ENCODER``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from _common import (BG_PER_PERSON, REPO, embedding_args, encoder_spec, load_average, publish,
                     unit_embeddings)

from facekd.core import background, verdict

FACES = Path(os.environ.get("FACEKD_FACES_DIR", REPO.parent / "shared" / "data" / "faces"))
FPIR, OUTSIDE, PER_PERSON = 0.01, 1500, 10


def one_gallery(x: np.ndarray, y: np.ndarray, people: int, photos: int, sizes: list[int],
                rng: np.random.Generator) -> dict:
    """Real FPIR and TPIR (fractions) of every arm's threshold on one drawn gallery."""
    ids = np.unique(y)
    gallery = rng.choice(ids, people, replace=False)
    rows = np.concatenate([rng.choice(np.flatnonzero(y == i), min(photos, int(np.sum(y == i))),
                                      replace=False) for i in gallery])
    g, gy = x[rows], y[rows]
    found = verdict.strangers(g, gy, max_probes=2000, seed=0)
    others = rng.permutation(np.setdiff1d(ids, gallery))
    calib, tested = others[: len(others) // 2], others[len(others) // 2:]
    # At most PER_PERSON photos of each never-enrolled person: LFW's largest identity alone
    # would otherwise be a third of them, and the rate that of one person.
    outside = np.concatenate([rng.permutation(np.flatnonzero(y == i))[:PER_PERSON]
                              for i in tested])
    outside = x[rng.permutation(outside)[:OUTSIDE]]
    best_out = (outside @ g.T).max(axis=1)
    bg = rng.permutation(np.concatenate([rng.permutation(np.flatnonzero(y == i))[:BG_PER_PERSON]
                                         for i in calib]))
    mine = np.setdiff1d(np.flatnonzero(np.isin(y, gallery)), rows)
    mine = mine[rng.permutation(len(mine))[:OUTSIDE]]
    s = x[mine] @ g.T
    right = gy[s.argmax(axis=1)] == y[mine]
    out = {"faces": len(rows)}

    def rates(t: float) -> tuple[float, float]:
        return float(np.mean(best_out > t)), float(np.mean(right & (s.max(axis=1) > t)))

    saved = verdict.TAIL_EXCEEDANCES
    try:
        verdict.TAIL_EXCEEDANCES = 0
        out["alone"] = rates(verdict.fpir_threshold(found, FPIR, seed=0))
    finally:
        verdict.TAIL_EXCEEDANCES = saved
    out["tail"] = rates(verdict.fpir_threshold(found, FPIR, seed=0))
    for size in sizes:
        b = bg[:size]
        sample = background.pool(found, (x[b] @ g.T).max(axis=1), y[b])
        out[f"bg{size}"] = rates(verdict.fpir_threshold(sample, FPIR, seed=0))
        out[f"bg{size}-photos"] = len(b)
    return out


def table(name: str, cells: dict, sizes: list[int]) -> str:
    arms = ["alone", "tail"] + [f"bg{size}" for size in sizes]
    bgs = " | ".join(f"background of {size}" for size in sizes)
    out = [f"| encoder | people x photos | faces | background photos | never-enrolled labelled "
           f"MATCH, mean (worst): quantile alone | with the tail | {bgs} | enrolled found above "
           "it (TPIR): " + " / ".join(["alone", "tail"] + [f"bg {s}" for s in sizes]) + " |",
           "|---" * (5 + len(arms)) + "|"]
    for (people, photos), rows in cells.items():
        fp = {a: 100 * np.array([r[a][0] for r in rows]) for a in arms}
        tp = {a: 100 * np.mean([r[a][1] for r in rows]) for a in arms}
        have = " / ".join(f"{np.mean([r[f'bg{size}-photos'] for r in rows]):.0f}"
                          for size in sizes)
        cols = " | ".join(f"{fp[a].mean():.2f} ({fp[a].max():.2f})" for a in arms)
        out.append(f"| {name} | {people} x {photos} | {rows[0]['faces']} | {have} | {cols} "
                   f"| {' / '.join(f'{tp[a]:.1f}' for a in arms)} |")
    return "\n".join(out)


def main() -> None:
    ap = embedding_args(__doc__, FACES, draws=10, people="15,40,62,100", photos="1,3")
    ap.add_argument("--background", default="300,1000",
                    help="background sizes (never-enrolled photos kept for calibration)")
    a = ap.parse_args()
    load0, t0 = load_average(), time.perf_counter()
    x, y = unit_embeddings(a.dataset, a.encoder)
    sizes = [int(b) for b in a.background.split(",")]
    cells = {}
    for people in (int(p) for p in a.people.split(",")):
        for photos in (int(k) for k in a.photos.split(",")):
            cells[(people, photos)] = [
                one_gallery(x, y, people, photos, sizes, np.random.default_rng([a.seed, d, people,
                                                                         photos]))
                for d in range(a.draws)]
    name, spec = encoder_spec(a.encoder)
    publish(f"fpir-{name}", f"## MATCH in small galleries ({Path(a.dataset).name} + `{name}`, "
            "`benchmarks/bench_fpir.py`)",
            f"python benchmarks/bench_fpir.py --encoder {spec} --people {a.people} --photos "
            f"{a.photos} --background {a.background} --draws {a.draws} --seed {a.seed}",
            f"Configured FPIR {FPIR:g}; the identities not enrolled split in halves: a "
            f"background (at most {BG_PER_PERSON} photos each; the column gives the mean kept) "
            f"and up to {OUTSIDE} tested photos (at most {PER_PERSON} each); as many of the "
            f"enrolled people's other photos; {a.draws} draws per row.",
            table(name, cells, sizes), load0=load0, t0=t0,
            no_write=a.no_write)


if __name__ == "__main__":
    main()
