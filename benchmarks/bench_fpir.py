"""Does MATCH mean what FPIR promises? The one-to-many threshold on small galleries, from outside.

    FACEKD_CACHE=... python benchmarks/bench_fpir.py [--dataset DIR] [--encoder dlib]
        [--people 15,40,62,100] [--photos 1,3] [--draws 10] [--seed 0] [--no-write]

For each draw, ``--people`` LFW identities are enrolled with ``--photos`` seeded photos each, and
the MATCH threshold is read off that gallery as verify and search read it
(:func:`facekd.core.verdict.strangers`, :func:`~facekd.core.verdict.fpir_threshold`, FPIR 1 %,
seed 0). Then, from outside: the share of never-enrolled people's photos (up to 1,500, at most
10 of each identity not drawn) whose best score clears it (the real FPIR), and the share of enrolled
people's other photos found as themselves above it (TPIR). Both for the threshold read off the
quantile alone (``TAIL_EXCEEDANCES = 0``, as before) and with the normal tail it now fits where
the gallery holds too few faces to read the quantile. Writes ``bench:fpir-ENCODER``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from _common import REPO, embedding_args, encoder_spec, load_average, publish, unit_embeddings

from facekd.core import verdict

FACES = Path(os.environ.get("FACEKD_FACES_DIR", REPO.parent / "shared" / "data" / "faces"))
FPIR, OUTSIDE, PER_PERSON = 0.01, 1500, 10


def one_gallery(x: np.ndarray, y: np.ndarray, people: int, photos: int,
                rng: np.random.Generator) -> dict:
    """Real FPIR and TPIR (fractions) of both thresholds on one drawn gallery."""
    ids = np.unique(y)
    gallery = rng.choice(ids, people, replace=False)
    rows = np.concatenate([rng.choice(np.flatnonzero(y == i), min(photos, int(np.sum(y == i))),
                                      replace=False) for i in gallery])
    g, gy = x[rows], y[rows]
    found = verdict.strangers(g, gy, max_probes=2000, seed=0)
    # At most PER_PERSON photos of each never-enrolled person: LFW's largest identity alone
    # would otherwise be a third of them, and the rate that of one person.
    outside = np.concatenate([rng.permutation(np.flatnonzero(y == i))[:PER_PERSON]
                              for i in np.setdiff1d(ids, gallery)])
    outside = x[rng.permutation(outside)[:OUTSIDE]]
    best_out = (outside @ g.T).max(axis=1)
    mine = np.setdiff1d(np.flatnonzero(np.isin(y, gallery)), rows)
    mine = mine[rng.permutation(len(mine))[:OUTSIDE]]
    s = x[mine] @ g.T
    right = gy[s.argmax(axis=1)] == y[mine]
    out = {"faces": len(rows)}
    saved = verdict.TAIL_EXCEEDANCES
    try:
        for arm, tail in (("alone", 0), ("tail", saved)):
            verdict.TAIL_EXCEEDANCES = tail
            t = verdict.fpir_threshold(found, FPIR, seed=0)
            out[arm] = (float(np.mean(best_out > t)), float(np.mean(right & (s.max(axis=1) > t))))
    finally:
        verdict.TAIL_EXCEEDANCES = saved
    return out


def table(name: str, cells: dict) -> str:
    out = ["| encoder | people x photos | faces | never-enrolled labelled MATCH, mean (worst): "
           "quantile alone -> with the tail | enrolled found above it (TPIR): alone -> tail |",
           "|---|---|---|---|---|"]
    for (people, photos), rows in cells.items():
        fp = {a: 100 * np.array([r[a][0] for r in rows]) for a in ("alone", "tail")}
        tp = {a: 100 * np.mean([r[a][1] for r in rows]) for a in ("alone", "tail")}
        out.append(f"| {name} | {people} x {photos} | {rows[0]['faces']} "
                   f"| {fp['alone'].mean():.2f} ({fp['alone'].max():.2f}) -> "
                   f"**{fp['tail'].mean():.2f}** ({fp['tail'].max():.2f}) "
                   f"| {tp['alone']:.1f} -> {tp['tail']:.1f} |")
    return "\n".join(out)


def main() -> None:
    ap = embedding_args(__doc__, FACES, draws=10)
    ap.add_argument("--people", default="15,40,62,100", help="gallery sizes, comma-separated")
    ap.add_argument("--photos", default="1,3", help="photos enrolled per person")
    a = ap.parse_args()
    load0, t0 = load_average(), time.perf_counter()
    x, y = unit_embeddings(a.dataset, a.encoder)
    cells = {}
    for people in (int(p) for p in a.people.split(",")):
        for photos in (int(k) for k in a.photos.split(",")):
            cells[(people, photos)] = [
                one_gallery(x, y, people, photos, np.random.default_rng([a.seed, d, people,
                                                                         photos]))
                for d in range(a.draws)]
    name, spec = encoder_spec(a.encoder)
    publish(f"fpir-{name}", f"## MATCH in small galleries ({Path(a.dataset).name} + `{name}`, "
            "`benchmarks/bench_fpir.py`)",
            f"python benchmarks/bench_fpir.py --encoder {spec} --people {a.people} --photos "
            f"{a.photos} --draws {a.draws} --seed {a.seed}",
            f"Configured FPIR {FPIR:g}; up to {OUTSIDE} photos of never-enrolled people (at most "
            f"{PER_PERSON} each) and of the enrolled people's other photos per gallery; "
            f"{a.draws} draws per row.", table(name, cells), load0=load0, t0=t0,
            no_write=a.no_write)


if __name__ == "__main__":
    main()
