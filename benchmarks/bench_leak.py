"""The template an edited model gives away, and one mitigation: one gate for a batch of people.
Writes the ``bench:leak`` section of docs/benchmarks.md.

    python benchmarks/bench_leak.py [--people 16] [--batches 1,2,4,8] [--no-write]

A gate's weights single the erased person out: ranking every enrolled identity's mean face by
the gate's score puts them first (`facekd.core.metrics.template_leak`). Erasing several people with
ONE gate, fitted on all their photos against everyone else, mixes their templates: the model
then names a batch, not a person. The cost is a less precise gate. Measured on LFW (lfw_150px) +
dlib: `--people` people drawn from those with >= 40 faces, erased in batches of B, each person
with 20 fresh photos no fit saw (10 re-enrolled by an attacker, 10 probes). "Everyone else" is
the people outside the batch (their enrolment halves are the gallery the gate is fitted
against).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from _common import REPO, load_average, machine, versions, write_section

FACES = Path(os.environ.get("FACEKD_FACES_DIR", REPO.parent / "shared" / "data" / "faces"))
HELD = 20


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _batch_rows(X, y, split, batch, fresh, pool, means, ids):
    """Metrics of every person of one batch erased by one gate."""
    from facekd.erasure import fit_scramble
    from facekd.core.metrics import identification_hits, pair_scores, tar_at_far, template_leak

    others = ~np.isin(y, batch)
    gal = others & split
    e = fit_scramble(X[np.concatenate([pool[p] for p in batch])], X[gal], gallery_labels=y[gal])
    Xe = e.apply(X)
    gen, imp = pair_scores(Xe[others], y[others], max_impostor_pairs=300_000, seed=0)
    tar, thr = tar_at_far(gen, imp, 1e-3)
    gen0, imp0 = pair_scores(X[others], y[others], max_impostor_pairs=300_000, seed=0)
    tar0, _ = tar_at_far(gen0, imp0, 1e-3)
    r1 = identification_hits(Xe[gal], y[gal], Xe[others & ~split], y[others & ~split]).mean()
    r10 = identification_hits(X[gal], y[gal], X[others & ~split], y[others & ~split]).mean()
    rows = []
    for p in batch:
        fe, fp = fresh[p]
        hits = identification_hits(np.vstack([Xe[gal], Xe[fe]]), np.r_[y[gal], y[fe]], Xe[fp], y[fp])
        f = Xe[np.r_[fe, fp]]
        iu = np.triu_indices(len(f), 1)
        _, rank = template_leak(e, means, ids, p)
        rows.append({"forget_rank1": 100 * hits.mean(), "forget_tar": 100 * np.mean((f @ f.T)[iu] > thr),
                     "retain_tar_lost": 100 * (tar0 - tar), "retain_rank1_lost": 100 * (r10 - r1),
                     "rank": rank, "top1": rank == 1, "in_top_b": rank <= len(batch)})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--people", type=int, default=16)
    ap.add_argument("--batches", default="1,2,4,8")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    from facekd.evaluation.bench import embed_dataset
    from facekd.encoders import load_encoder
    from facekd.core.metrics import split_enrol_probe

    load_before, t0 = load_average(), time.perf_counter()
    emb = embed_dataset(FACES / "lfw_150px", load_encoder("dlib", device="cpu"), progress=True)
    X, y = _unit(emb.E.astype(np.float64)), emb.labels
    ids, counts = np.unique(y, return_counts=True)
    rng = np.random.default_rng(0)
    people = rng.choice(ids[counts >= 40], size=args.people, replace=False)
    split = split_enrol_probe(y, seed=0)
    fresh, pool = {}, {}
    for p in people:
        rows = np.random.default_rng([0, int(p)]).permutation(np.flatnonzero(y == p))
        fresh[p], pool[p] = (rows[:HELD // 2], rows[HELD // 2:HELD]), rows[HELD:]
        split[rows[:HELD]] = False  # fresh photos are never gallery faces
    means = np.stack([X[y == i].mean(0) for i in ids])
    lines = ["| batch size B | people | forget rank-1 | forget TAR@1e-3 | everyone else: TAR lost | "
             "rank-1 lost | singled out (rank 1) | mean rank of 158 | within the top B |",
             "|---|---|---|---|---|---|---|---|---|"]
    for b in (int(v) for v in args.batches.split(",")):
        rows = []
        for start in range(0, len(people) - b + 1, b):
            rows += _batch_rows(X, y, split, people[start:start + b], fresh, pool, means, ids)
        mean = lambda k: float(np.mean([r[k] for r in rows]))  # noqa: E731
        lines.append(f"| {b} | {len(rows)} | {mean('forget_rank1'):.1f} | {mean('forget_tar'):.2f} | "
                     f"{mean('retain_tar_lost'):.2f} | {mean('retain_rank1_lost'):.2f} | "
                     f"{100 * mean('top1'):.0f} % | {mean('rank'):.1f} | {100 * mean('in_top_b'):.0f} % |")
        print(lines[-1], flush=True)
    body = f"""## The template an edited model gives away, and batching as a mitigation (`benchmarks/bench_leak.py`)

Machine: {machine()}; {versions('facekd', 'numpy')}. 1-minute load average {load_before:.1f}
before, {load_average():.1f} after; wall {time.perf_counter() - t0:.0f} s. Command:
`python benchmarks/bench_leak.py --people {args.people} --batches {args.batches}`.

LFW (lfw_150px) + dlib, {args.people} people with >= 40 faces, erased in batches of B by ONE gated
scramble fitted on all the batch's photos (but {HELD} fresh ones each) against everyone else's
enrolment halves. "Singled out": ranking the 158 identities' mean faces by the gate's score (what
anyone holding the edited model can do) puts the person first. "Within the top B": the model names
the batch, not the person. Everyone else = people outside the batch; points lost against the
original.

{chr(10).join(lines)}"""
    print(body)
    if not args.no_write:
        write_section("leak", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
