"""``facekd bench --draws N``: one result pooled from N independent draws.

One draw is one sample: its erased people (12 by default), its small-gallery others, its enrolment
split and its fresh photos. On LFW + dlib seed 0 alone gave 0.8 % where five draws gave 2.0 %
(docs/benchmarks.md, "Five draws instead of one"), so a figure worth quoting is pooled over draws.
A pooled cell is the mean of the draws' cells; an ``_sd`` is the s.d. over every erased person of
every draw (equal-sized draws: the mean within-draw variance plus the variance of the draw means);
``per_draw`` keeps each draw's value of the figures a reader compares against targets.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from facekd.evaluation.bench_verdict import versus_perfect

PER_DRAW = ("forget_rank1", "forget_tar", "retain_rank1", "retain_tar")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _pool(rows: list[dict]) -> dict:
    """One row from the same row of several draws (``rows``, each a dict of metrics)."""
    out: dict[str, Any] = dict(rows[0])
    for key, first in rows[0].items():
        vals = [r.get(key) for r in rows]
        if key.endswith("_sd") or not _number(first) or not all(_number(v) for v in vals):
            continue
        if key != "n_erased" and isinstance(first, int) and all(v == first for v in vals):
            continue  # a count the same in every draw (a row's key, ``erased``): kept an int
        out[key] = sum(vals) if key == "n_erased" else round(float(np.mean(vals)), 4)
        if f"{key}_sd" in rows[0]:
            sds = [r.get(f"{key}_sd") for r in rows]
            if all(_number(s) for s in sds):
                var = np.mean(np.square(sds)) + np.var(vals)
                out[f"{key}_sd"] = round(float(np.sqrt(var)), 4)
    if "perfect_diffs" in rows[0]:  # paired by person: the interval is over every draw's people
        diffs = [d for r in rows for d in r.get("perfect_diffs", [])]
        out.update(perfect_diffs=diffs, **versus_perfect(diffs))
    out["per_draw"] = {k: [r.get(k) for r in rows] for k in PER_DRAW if k in rows[0]}
    out["draws"] = len(rows)
    return out


def _grouped(results: list[dict], part: str, key: tuple[str, ...]) -> list[dict]:
    """Rows of ``part`` pooled by ``key``, in the first draw's order (a row some draw lacks, e.g.
    a fit setting nobody there had photos for, is pooled over the draws that have it)."""
    groups: dict[tuple, list[dict]] = {}
    for res in results:
        for row in res[part]:
            groups.setdefault(tuple(row[k] for k in key), []).append(row)
    return [_pool(rows) for rows in groups.values()]


def pool_draws(results: list[dict]) -> dict:
    """One ``run_bench`` result from the results of several draws (same dataset, encoder,
    methods and settings; different seeds). ``protocol["draws"]`` / ``["seeds"]`` say which."""
    first = results[0]
    protocol = dict(first["protocol"])
    strangers = [r["protocol"]["strangers_rank1"] for r in results]
    # A perfect erasure, person by person: pooled over the draws' erased people like any row.
    perfect = {k: [r["protocol"].get(k) for r in results] for k in first["protocol"]
               if k.startswith("perfect_")}
    perfect = {k: (round(float(np.mean(v)), 4) if None not in v else None)
               for k, v in perfect.items()}
    protocol.update(draws=len(results), seeds=[r["protocol"]["seed"] for r in results],
                    erased_total=sum(r["protocol"]["erased"] for r in results),
                    strangers_rank1=round(float(np.mean(strangers)), 4),
                    strangers_rank1_per_draw=strangers, **perfect,
                    timings_s={k: round(sum(r["protocol"]["timings_s"][k] for r in results), 4)
                               for k in first["protocol"]["timings_s"]})
    return {**first, "original": _pool([r["original"] for r in results]),
            "rows": _grouped(results, "rows", ("method", "setting")),
            "sequential": _grouped(results, "sequential", ("method", "erased")),
            "protocol": protocol}
