"""The sequential run: per method, ``M`` people erased one after another, each step fitted on
embeddings edited by the previous ones and composed (``composite.then(new)``); retained accuracy
of the people never erased at checkpoints, and the forget numbers of all erased people at the end.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from facekd.core.background import Background
from facekd.core.erasure import Erasure
from facekd.core.metrics import identification_hits, pair_scores, tar_at_far
from facekd.evaluation.later import Later, changed_share
from facekd.evaluation.protocol import _fit_rows, _person_split, _r
from facekd.evaluation.settings import FAR, MAX_IMPOSTORS, fit_method
from facekd.methods import unit_rows as _unit


def checkpoints(m: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to ``m``, and ``m``."""
    out, decade = set(), 1
    while decade <= m:
        out.update(c for c in (decade, 2 * decade, 5 * decade) if c <= m)
        decade *= 10
    return sorted(out | {m}) if m > 0 else []


def _retained_state(x: np.ndarray, y: np.ndarray, split: np.ndarray, keep: np.ndarray,
                    seed: int) -> tuple[float, float, float]:
    """Rank-1 and TAR@FAR (fractions) of the ``keep`` rows' identities, and the threshold."""
    hits = identification_hits(x[keep & split], y[keep & split], x[keep & ~split],
                               y[keep & ~split])
    gen, imp = pair_scores(x[keep], y[keep], max_impostor_pairs=MAX_IMPOSTORS, seed=seed)
    tar, thr = tar_at_far(gen, imp, FAR)
    return float(hits.mean()), tar, thr


def _sequential_forget(x: np.ndarray, y: np.ndarray, split: np.ndarray, never: np.ndarray,
                       splits: dict[int, tuple], thr: float) -> tuple[float, float]:
    """Forget rank-1 and TAR (fractions) of every erased person under the final composite: all
    their fresh enrolment halves re-enrolled into the never-erased gallery at once."""
    gal_rows = np.flatnonzero(never & split)
    enrol = [(p, s[0]) for p, s in splits.items()]
    gal = np.vstack([x[gal_rows]] + [x[r] for _, r in enrol])
    gal_y = np.concatenate([y[gal_rows]] + [np.full(len(r), p) for p, r in enrol])
    probes = np.concatenate([s[1] for s in splits.values()])
    hits = identification_hits(gal, gal_y, x[probes], y[probes])
    tars = []
    for fe, fp, _ in splits.values():
        fresh = np.concatenate([fe, fp])
        gen, _ = pair_scores(x[fresh], np.zeros(len(fresh), np.int64), max_impostor_pairs=0)
        tars.append(np.mean(gen > thr))
    return float(hits.mean()), float(np.mean(tars))


def _sequential(x0: np.ndarray, y: np.ndarray, split: np.ndarray, people: np.ndarray,
                held: int, method: str, seed: int, bar: Any, fit: str = "all",
                later: Later | None = None, background: Background | None = None
                ) -> tuple[list[dict], float, int]:
    """Erase ``people`` one after another with ``method``: rows at the checkpoints (``erased=0``
    is the original), the final composite's apply time on the whole gallery, its gate count.
    ``fit``: each fitted on all their non-fresh photos or on ``"K"`` of them (all where they
    hold no more than K). ``later``: people enrolled after the whole sequence so far (each row
    then carries the rank-1 points they lost, the share of their photos changed and the gates'
    summed estimate of it); ``background``: people enrolled nowhere, edited by each step as the
    workspace edits them, which each fit keeps its gate off."""
    composite = Erasure.identity(x0.shape[1])
    never = ~np.isin(y, people)
    marks = set(checkpoints(len(people)))
    splits = {int(p): _person_split(y, int(p), held, seed) for p in people}
    r1, tar, _ = _retained_state(x0, y, split, never, seed)
    rows = [_seq_row(method, 0, r1, tar)]
    kept = never & split  # the gallery people enrolled later search, with their own photo
    later0 = None if later is None else later.rank1(later.x, x0[kept], y[kept])
    if later is not None:
        rows[0].update(later_lost=0.0, later_changed=0.0, later_estimate=0.0)
    touched: float | None = 0.0  # the gates' own estimate of what they cost everyone else
    unseen: float | None = 0.0   # and of what they cost people enrolled later
    for step, person in enumerate(people, 1):
        bar.set_postfix_str(f"sequential {method} {step}/{len(people)}")
        x = composite.apply(x0)
        alive = ~np.isin(y, people[:step])  # not yet erased, and not this person
        pool = splits[int(person)][2]
        some = _fit_rows(pool, fit)
        bg = None if background is None else Background(
            _unit(composite.apply(background.vectors)), background.groups)
        new = fit_method(method, x[pool if some is None else some], x[alive & split],
                         y[alive & split], composite, bg)
        composite = composite.then(new)
        share = (new.params or {}).get("others_touched")
        touched = None if share is None or touched is None else touched + float(share)
        share = (new.params or {}).get("strangers_touched")
        unseen = None if share is None or unseen is None else unseen + float(share)
        if step in marks:
            x = composite.apply(x0)
            r1, tar, thr = _retained_state(x, y, split, never, seed)
            row = _seq_row(method, step, r1, tar)
            row["others_touched"] = None if touched is None else _r(100 * touched)
            if later is not None:
                lx = _unit(composite.apply(later.x))
                row.update(later_lost=_r(100 * (later0 - later.rank1(lx, x[kept], y[kept]))),
                           later_changed=_r(100 * changed_share(lx, later.x)),
                           later_estimate=None if unseen is None else _r(100 * unseen))
            if step == len(people):
                f1, ft = _sequential_forget(x, y, split, never, splits, thr)
                row.update(forget_rank1=_r(100 * f1), forget_tar=_r(100 * ft))
            rows.append(row)
        bar.update(1)
    t = time.perf_counter()
    composite.apply(x0[split])
    return rows, time.perf_counter() - t, composite.n_gates


def _seq_row(method: str, erased: int, r1: float, tar: float) -> dict:
    return {"method": method, "erased": erased, "retain_rank1": _r(100 * r1),
            "retain_tar": _r(100 * tar), "forget_rank1": None, "forget_tar": None,
            "others_touched": 0.0}
