"""The benchmark's protocol (fresh re-enrolment, as in ``benchmarks/bench_tradeoff.py``): who is
erased, which photos are held fresh and which fit, and every measurement of one erasure
(forget and retain rank-1 and TAR, knowledge-retention probes, membership inference,
detectability, look-alikes, false matches, the template leak, verify's verdict).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from facekd.core.erasure import Erasure
from facekd.core.metrics import (MIA_MIN_PER_CLASS, identification_hits, knowledge_retention,
                                 membership_inference, mia_features, pair_scores, tar_at_far,
                                 template_leak)
from facekd.evaluation.bench_verdict import verdict_vs_replay, versus_perfect
from facekd.evaluation.later import Later, later_figures
from facekd.evaluation.settings import (BenchError, FAR, LOOKALIKES, MAX_HELD, MAX_IMPOSTORS,
                                        METRICS, MOVED_TOL, SD_METRICS, _class_means, fit_method)
from facekd.methods import unit_rows as _unit


# ---------------------------------------------------------------------- protocol
@dataclass
class Protocol:
    """Who is erased and which photos are fresh. ``held`` fresh photos per erased person
    (half re-enrolled, half probes); eligible people have at least ``eligible_min`` faces."""

    held: int
    eligible_min: int
    eligible: np.ndarray  # (e,) labels
    people: np.ndarray    # (m,) labels, the seeded draw


def _draw(counts: dict[int, int], n: int, rng: np.random.Generator) -> Protocol:
    """``held`` from the ``n``-th largest identity (LFW: 20), then a seeded draw of ``n`` people.

    ``held = min(20, 2 * (c // 4))`` where ``c`` is the face count of the ``n``-th largest
    identity, so that at least ``n`` people keep as many photos to fit on as they hold out
    (``>= max(2 * held, held + 4)`` faces).
    """
    sizes = sorted(counts.values(), reverse=True)
    c = sizes[min(n, len(sizes)) - 1]
    held = min(MAX_HELD, 2 * (c // 4))
    need = max(2 * held, held + 4)
    eligible = np.array(sorted(k for k, v in counts.items() if v >= need), np.int64)
    if held < 2 or eligible.size == 0:
        raise BenchError(f"no identity has enough faces to erase (need >= {need}; the largest "
                         f"has {sizes[0]})")
    people = rng.choice(eligible, size=min(n, eligible.size), replace=False)
    return Protocol(held, need, eligible, np.asarray(people, np.int64))


def _person_split(labels: np.ndarray, person: int, held: int, seed: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of ``person``: ``(fresh_enrol (held/2,), fresh_probe (held - held/2,), pool (r,))``.

    Seeded per person, so the same person gets the same fresh photos in every experiment.
    """
    rng = np.random.default_rng([seed, 7, int(person)])
    rows = rng.permutation(np.flatnonzero(labels == person))
    return rows[:held // 2], rows[held // 2:held], rows[held:]


def _fit_rows(pool: np.ndarray, setting: str) -> np.ndarray | None:
    """Fit rows for a setting; ``None`` when ``K`` is asked but no more than ``K`` remain."""
    if setting == "all":
        return pool
    k = int(setting)
    return pool[:k] if len(pool) > k else None


@dataclass
class Case:
    """One erased person's row sets (indices into the dataset).

    fresh_enrol, fresh_probe: held-out photos; pool: photos a fit may use; gallery / probes:
    enrolment / probe rows of everyone else; retained: all their rows; lookalikes: rows of the
    ``LOOKALIKES`` retained identities whose mean face is nearest (cosine, original space).
    """

    person: int
    fresh_enrol: np.ndarray
    fresh_probe: np.ndarray
    pool: np.ndarray
    gallery: np.ndarray
    probes: np.ndarray
    retained: np.ndarray
    lookalikes: np.ndarray

    @property
    def fresh(self) -> np.ndarray:
        return np.concatenate([self.fresh_enrol, self.fresh_probe])


def _make_case(y: np.ndarray, split: np.ndarray, means: np.ndarray,
               ids: np.ndarray, person: int, held: int, seed: int) -> Case:
    fe, fp, pool = _person_split(y, person, held, seed)
    ret = y != person
    me = means[np.searchsorted(ids, person)]
    sims = means @ me
    sims[ids == person] = -np.inf
    near = ids[np.argsort(-sims, kind="stable")[:LOOKALIKES]]
    return Case(person, fe, fp, pool, np.flatnonzero(ret & split), np.flatnonzero(ret & ~split),
                np.flatnonzero(ret), np.flatnonzero(np.isin(y, near)))


# ---------------------------------------------------------------------- metrics
def _roc_auc_either_way(pos: np.ndarray, neg: np.ndarray) -> float:
    """``max(auc, 1 - auc)`` of scores ``pos (p,)`` vs ``neg (q,)`` (separable either way)."""
    from sklearn.metrics import roc_auc_score

    auc = roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg])
    return float(max(auc, 1.0 - auc))


def _trained_auc(pos: np.ndarray, neg: np.ndarray, seed: int) -> float | None:
    """Cross-validated ROC AUC of a balanced logistic regression: ``pos (p, d)`` vs ``neg (q, d)``;
    ``None`` with fewer than 2 of either."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(5, len(pos), len(neg))
    if folds < 2:
        return None
    x = np.vstack([pos, neg])
    y = np.r_[np.ones(len(pos), int), np.zeros(len(neg), int)]
    model = make_pipeline(StandardScaler(),
                          LogisticRegression(class_weight="balanced", max_iter=2000))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(np.mean(cross_val_score(model, x, y, cv=cv, scoring="roc_auc")))


def _mia(x0: np.ndarray, x: np.ndarray, members: np.ndarray, fresh: np.ndarray,
         seed: int) -> float | None:
    """Membership inference (percent, 50 = ideal) of fit rows vs fresh rows of one person;
    ``None`` below the metrics module's minimum per class."""
    if min(len(members), len(fresh)) < MIA_MIN_PER_CLASS:
        return None
    rows = np.concatenate([members, fresh])
    is_member = np.r_[np.ones(len(members), bool), np.zeros(len(fresh), bool)]
    feats = mia_features(x0[rows], x[rows], np.zeros(len(rows), np.int64), is_member, seed=seed)
    return membership_inference(feats[is_member], feats[~is_member], seed=seed)


def retained_tar(x: np.ndarray, y: np.ndarray, case: Case, seed: int) -> tuple[float, float]:
    """``(TAR, threshold)`` at the bench's FAR over everyone else's pairs (``case.retained``;
    at most ``MAX_IMPOSTORS`` seeded impostor pairs) of the unit embeddings ``x`` ``(n, d)``:
    the one-to-one threshold every FAR-based figure of the case uses."""
    gen, imp = pair_scores(x[case.retained], y[case.retained], max_impostor_pairs=MAX_IMPOSTORS,
                           seed=seed)
    return tar_at_far(gen, imp, FAR)


def _evaluate(x: np.ndarray, x0: np.ndarray, y: np.ndarray, case: Case, fit: np.ndarray,
              seed: int) -> dict[str, float | None]:
    """Every single-erasure metric (percent) of one person.

    x: ``(n, d)`` float32 edited unit embeddings of the whole dataset; x0: the original ones.
    fit: rows the erasure was fitted on (the MIA members).
    """
    p = case.person
    gal = np.vstack([x[case.gallery], x[case.fresh_enrol]])
    gal_y = np.r_[y[case.gallery], np.full(len(case.fresh_enrol), p)]
    fp = x[case.fresh_probe]
    forget_hits = identification_hits(gal, gal_y, fp, np.full(len(fp), p))
    retain_hits = identification_hits(gal, gal_y, x[case.probes], y[case.probes])
    tar_r, thr = retained_tar(x, y, case, seed)
    gen_f, _ = pair_scores(x[case.fresh], np.zeros(len(case.fresh), np.int64),
                           max_impostor_pairs=0)
    kr = knowledge_retention(gal, gal_y, np.vstack([fp, x[case.probes]]),
                             np.r_[np.full(len(fp), p), y[case.probes]], [p], seed=seed)
    mean_dir = _unit(x[case.gallery].mean(axis=0, keepdims=True))[0]
    fresh, others = x[case.fresh], x[case.probes]
    moved = np.linalg.norm(x[case.lookalikes] - x0[case.lookalikes], axis=1) > MOVED_TOL
    # Scrambled faces are strangers: how often does one match someone enrolled (pairs above the
    # retained FAR threshold)? An ordinary stranger would match at about FAR.
    false_match = float(np.mean(fresh @ x[case.gallery].T > thr))
    return {
        "forget_rank1": 100 * float(forget_hits.mean()),
        "forget_tar": 100 * float(np.mean(gen_f > thr)),
        "kr_linear": 100 * kr.linear_forget,
        "kr_knn": 100 * kr.knn_forget,
        "mia": _mia(x0, x, fit, case.fresh, seed),
        "detect_auc": 100 * _roc_auc_either_way(fresh @ mean_dir, others @ mean_dir),
        "detect_auc_trained": _pct(_trained_auc(fresh, others, seed)),
        "lookalike_fp": 100 * float(moved.mean()),
        "false_match": 100 * false_match,
        "retain_rank1": 100 * float(retain_hits.mean()),
        "retain_tar": 100 * tar_r,
        # verify's ruling on the fresh photos against the attack replayed from outside
        **verdict_vs_replay(fresh, x0[case.fresh], x[case.gallery], y[case.gallery],
                            threshold=thr, seed=seed),
    }


def _pct(v: float | None) -> float | None:
    return None if v is None else 100 * v


def _aggregate(per: list[dict], fit_s: list[float]) -> dict:
    """Mean (and s.d. over people) of each metric; ``None`` where no person had a value."""
    out: dict[str, Any] = {}
    sds: dict[str, Any] = {}
    for m in METRICS:
        vals = np.array([r[m] for r in per if r.get(m) is not None], np.float64)
        out[m] = _r(vals.mean()) if vals.size else None
        if m in SD_METRICS:
            sds[f"{m}_sd"] = _r(vals.std(ddof=1)) if vals.size > 1 else None
    out["fit_s"] = _r(np.mean(fit_s)) if fit_s else 0.0
    out["n_erased"] = len(per)
    return {**out, **sds}


def _paired(per: list[dict], perfect: dict[int, float] | None) -> dict:
    """A row's people against a perfect erasure of each: their differences in replayed rank-1
    (points; people without a perfect erasure left out) and :func:`versus_perfect` of them."""
    if perfect is None:
        return {}
    diffs = [_r(r["replay_rank1"] - perfect[r["person"]]) for r in per if r["person"] in perfect]
    return {"perfect_diffs": diffs, **versus_perfect(diffs)}


def _r(v: float) -> float:
    return round(float(v), 4)


def _later(later: Later | None, er: Erasure, x0: np.ndarray, x: np.ndarray, y: np.ndarray,
           case: Case) -> dict:
    """:func:`later_figures` of one erasure ``er`` (``x``: the dataset under it), against the
    gallery of everyone else in ``case``; ``{}`` without people enrolled later."""
    if later is None:
        return {}
    return later_figures(later, er, x0[case.gallery], x[case.gallery], y[case.gallery])


# ---------------------------------------------------------------------- experiments
def _single(x0: np.ndarray, y: np.ndarray, split: np.ndarray, cases: list[Case],
            methods: list[str], settings: list[str], seed: int, bar: Any,
            perfect: dict[int, float] | None = None, later: Later | None = None,
            background: Any = None) -> tuple[dict, list, dict]:
    """Original metrics, one row per (method, setting) (each a mean over ``cases``), and per
    setting how many people had too few photos for it. ``perfect``: each erased person's
    replayed rank-1 under a perfect erasure; each row then carries its people's differences
    from it (``perfect_diffs``, points) and their mean with its interval
    (:func:`versus_perfect`). ``later``: people enrolled after each erasure; each row then
    carries what it cost them (:func:`later_figures`). ``background``: people enrolled nowhere
    the methods fit against (:func:`fit_method`)."""
    ident = Erasure.identity(x0.shape[1])
    x_ident = ident.apply(x0)
    all_ids = np.unique(y)
    means = _class_means(x0, y)
    orig = []
    per: dict[tuple[str, str], list] = {(m, s): [] for m in methods for s in settings}
    times: dict[tuple[str, str], list] = {k: [] for k in per}
    # People whose non-fresh photos are too few for a "K" setting (they do not count in its row).
    skipped = {s: sum(_fit_rows(c.pool, s) is None for c in cases) for s in settings}
    for case in cases:
        bar.set_postfix_str("original")
        orig.append(_evaluate(x_ident, x0, y, case, case.pool, seed)
                    | _later(later, ident, x0, x_ident, y, case))
        bar.update(1)
        gallery = x0[case.gallery]
        for method in methods:
            for setting in settings:
                bar.set_postfix_str(f"{method} / {setting}")
                rows = _fit_rows(case.pool, setting)
                if rows is not None:
                    t = time.perf_counter()
                    er = fit_method(method, x0[rows], gallery, y[case.gallery], ident,
                                    background)
                    times[(method, setting)].append(time.perf_counter() - t)
                    xe = er.apply(x0)
                    row = _evaluate(xe, x0, y, case, rows, seed) | _later(later, er, x0, xe, y,
                                                                           case)
                    cos, rank = template_leak(er, means, all_ids, case.person)
                    row.update(template_cos=100 * cos, template_top1=100.0 * (rank == 1),
                               person=case.person)
                    per[(method, setting)].append(row)
                bar.update(1)
    rows_out = [{"method": m, "setting": s, **_aggregate(per[(m, s)], times[(m, s)]),
                 **_paired(per[(m, s)], perfect)}
                for m in methods for s in settings if per[(m, s)]]
    return _aggregate(orig, []), rows_out, skipped
