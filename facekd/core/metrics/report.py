"""The erasure report: every measurement of one erasure on one gallery (rank-1, TAR, MIA, knowledge
retention), before and after, in percent (:class:`ErasureReport`, :func:`erasure_report`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import numpy as np

from facekd.core.metrics.attacks import MIA_MIN_PER_CLASS, membership_inference, mia_features
from facekd.core.metrics.identification import identification_hits, knowledge_retention
from facekd.core.metrics.inputs import MetricsError, _embeddings, _labels
from facekd.core.metrics.verification import pair_scores, tar_at_far, wilson_interval


@dataclass
class ErasureReport:
    """Before/after metrics of one erasure under the re-enrolment protocol (esc-method.md).

    ``before`` / ``after``: metric name -> percent (``None`` when not computable, e.g. MIA with
    fewer than 2 probe faces). Names: ``rank1_forget``, ``rank1_retain``,
    ``tar@<far>_forget``, ``tar@<far>_retain``, ``kr_linear_*``, ``kr_weak_*``, ``kr_knn_*``,
    ``mia``. ``thresholds``: state -> far -> cosine threshold. ``timings``: stage -> seconds.
    """

    before: dict[str, float | None]
    after: dict[str, float | None]
    chance_rank1: float
    forget_labels: list[int]
    fars: list[float]
    counts: dict[str, int]
    thresholds: dict[str, dict[str, float]]
    probes: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    # state -> metric -> [low, high]: 95% Wilson interval (percent) of each proportion, over the
    # trials counted in ``counts`` (probes, test samples; pairs are taken as independent, which
    # makes the TAR intervals optimistic). Missing for metrics that are not proportions.
    intervals: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain JSON-compatible dict (Python floats/ints/bools only)."""
        return json.loads(json.dumps(asdict(self), default=_plain))

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: dict) -> "ErasureReport":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    @classmethod
    def from_json(cls, text: str) -> "ErasureReport":
        return cls.from_dict(json.loads(text))

    def table(self) -> str:
        """Text table: metric | before | after | change (percent)."""
        def fmt(v: float | None) -> str:
            return "   n/a" if v is None else f"{v:6.1f}"

        def ci(state: str, name: str) -> str:
            lo_hi = self.intervals.get(state, {}).get(name)
            return f"{'':13}" if not lo_hi else f" [{lo_hi[0]:5.1f},{lo_hi[1]:5.1f}]"

        rows = [f"{'metric':<20} {'before':>6} {'(95% CI)':<13} {'after':>6} {'(95% CI)':<13} "
                f"{'change':>7}"]
        for name in self.before:
            b, a = self.before[name], self.after.get(name)
            delta = "    n/a" if a is None or b is None else f"{a - b:+7.1f}"
            rows.append(f"{name:<20} {fmt(b)}{ci('before', name)} {fmt(a)}{ci('after', name)} "
                        f"{delta}")
        rows.append(f"chance rank-1: {100 * self.chance_rank1:.2f}%  "
                    f"({self.counts['identities']} identities, {len(self.forget_labels)} erased, "
                    f"{self.counts['forget_probe']} forget probes)")
        if "impostor_pairs" in self.counts:
            iters = "/".join(str(self.probes.get(s, {}).get("linear_iterations", "?"))
                             for s in ("before", "after"))
            c = self.counts
            rows.append(f"measured on {c['retain_probe'] + c['forget_probe']} probes, "
                        f"{c['retain_genuine_pairs']} + {c['forget_genuine_pairs']} genuine and "
                        f"{c['impostor_pairs']} impostor pairs; KR probes on "
                        f"{c.get('kr_identities', c['identities'])} identities, linear probe "
                        f"{iters} iterations (before/after)")
        for state, info in self.probes.items():
            if not info.get("linear_converged", True):
                rows.append(f"warning: the linear KR probe ({state}) did not converge")
        return "\n".join(rows)


def _plain(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _far_key(far: float) -> str:
    return f"tar@{far:g}"


def _state_metrics(x: np.ndarray, original: np.ndarray, y: np.ndarray, split: np.ndarray,
                   forget: np.ndarray, forget_labels: np.ndarray, fars: tuple[float, ...], *,
                   max_impostor_pairs: int, seed: int, timings: dict[str, float],
                   probe_rows: np.ndarray | None = None) -> tuple[dict, dict, dict, dict, dict]:
    """All metrics of one state (original or edited embeddings ``x``, normalised); also their
    95% Wilson intervals (percent). ``probe_rows``: the rows the KR probes use (default all)."""
    out: dict[str, float | None] = {}
    counts: dict[str, int] = {}
    ci: dict[str, list[float]] = {}
    probe = ~split

    def rate(name: str, hits: np.ndarray) -> None:
        out[name] = 100.0 * float(hits.mean())
        ci[name] = [100.0 * v for v in wilson_interval(float(hits.sum()), int(hits.size))]

    t = time.perf_counter()
    hits = identification_hits(x[split], y[split], x[probe], y[probe], k=1)
    pf = forget[probe]
    rate("rank1_forget", hits[pf])
    rate("rank1_retain", hits[~pf])
    timings["identification"] = timings.get("identification", 0.0) + time.perf_counter() - t

    t = time.perf_counter()
    gen_r, imp_r = pair_scores(x[~forget], y[~forget], max_impostor_pairs=max_impostor_pairs,
                               seed=seed)
    gen_f, _ = pair_scores(x[forget], y[forget], max_impostor_pairs=0)
    counts.update(impostor_pairs=int(imp_r.size), retain_genuine_pairs=int(gen_r.size),
                  forget_genuine_pairs=int(gen_f.size))
    thresholds = {}
    for far in fars:
        _, thr = tar_at_far(gen_r, imp_r, far)
        if gen_f.size:
            rate(f"{_far_key(far)}_forget", gen_f > thr)
        else:
            out[f"{_far_key(far)}_forget"] = None
        rate(f"{_far_key(far)}_retain", gen_r > thr)
        thresholds[f"{far:g}"] = thr
    timings["verification"] = timings.get("verification", 0.0) + time.perf_counter() - t

    t = time.perf_counter()
    keep = np.ones(len(y), bool) if probe_rows is None else probe_rows
    kr = knowledge_retention(x[split & keep], y[split & keep], x[probe & keep], y[probe & keep],
                             forget_labels, seed=seed)
    for kind in ("linear", "weak", "knn"):
        for part, n in (("forget", kr.n_forget), ("retain", kr.n_retain)):
            acc = getattr(kr, f"{kind}_{part}")
            out[f"kr_{kind}_{part}"] = 100.0 * acc
            ci[f"kr_{kind}_{part}"] = [100.0 * v for v in wilson_interval(acc * n, n)]
    probe_info = {"linear_iterations": kr.linear_iterations,
                  "linear_converged": kr.linear_converged}
    timings["knowledge_retention"] = timings.get("knowledge_retention", 0.0) + time.perf_counter() - t

    t = time.perf_counter()
    feats = mia_features(original[forget], x[forget], y[forget], split[forget], seed=seed)
    members = split[forget]
    # Below MIA_MIN_PER_CLASS a 5-fold CV accuracy swings by tens of points on noise alone (4 vs 4
    # faces read 12.5% "before" in the demo), so it is reported as not computable.
    if min(int(members.sum()), int((~members).sum())) < MIA_MIN_PER_CLASS:
        out["mia"] = None
    else:
        out["mia"] = membership_inference(feats[members], feats[~members], seed=seed)
        m = 2 * min(int(members.sum()), int((~members).sum()))  # balanced classes, CV accuracy
        ci["mia"] = [100.0 * v for v in wilson_interval(out["mia"] / 100.0 * m, m)]
    timings["mia"] = timings.get("mia", 0.0) + time.perf_counter() - t
    return out, counts, thresholds, probe_info, ci


def erasure_report(E: Any, labels: Any, forget_labels: Iterable[int], erasure: Any, split: Any, *,
                   fars: Iterable[float] = (1e-3, 1e-4), max_impostor_pairs: int = 2_000_000,
                   max_probe_identities: int | None = None, seed: int = 0) -> ErasureReport:
    """Before/after metrics of ``erasure`` under the re-enrolment protocol.

    Args:
        E: ``(n, d)`` original (un-normalised) embeddings.
        labels: ``(n,)`` ints. forget_labels: the erased identities (each must occur in labels).
        erasure: anything with ``apply(E) -> (n, d)`` normalised edited embeddings; by
            convention fitted on the forget identities' enrolment faces (the MIA members).
        split: ``(n,)`` bool, True = enrolment face (see :func:`split_enrol_probe`).
        max_probe_identities: the knowledge-retention probes (whose one-vs-rest weak probe costs
            grow with identities x faces) are trained and tested on the forget identities plus a
            seeded sample of this many others when there are more; ``counts`` records how many.
            None: all of them.

    "Before" uses the original embeddings, "after" the edited ones; in both, every identity's
    enrolment faces (erased ones included) form the gallery and the probe faces search it.
    Verification thresholds come from impostor pairs of retained identities in the same state.
    """
    t_total = time.perf_counter()
    x0 = _embeddings(E, "E")
    y = _labels(labels, x0.shape[0], "labels")
    sp = np.asarray(split)
    if sp.shape != y.shape or sp.dtype != bool:
        raise MetricsError(f"split: expected a ({len(y)},) bool array, got {sp.dtype} {sp.shape}")
    fl = np.unique(np.asarray(list(forget_labels), dtype=np.int64))
    if fl.size == 0:
        raise MetricsError("forget_labels is empty")
    missing = np.setdiff1d(fl, y)
    if missing.size:
        raise MetricsError(f"{missing.size} forget label(s) do not occur in labels")
    forget = np.isin(y, fl)
    if forget.all():
        raise MetricsError("every identity is in forget_labels; nothing is retained")
    if not (forget & ~sp).any():
        raise MetricsError("no probe faces of the forget identities (split puts them all in enrolment)")
    if not (~forget & ~sp).any():
        raise MetricsError("no probe faces of retained identities")
    fars_t = tuple(float(f) for f in fars)

    timings: dict[str, float] = {}
    t = time.perf_counter()
    try:
        edited = erasure.apply(np.asarray(E))
    except AttributeError:
        raise MetricsError(f"erasure must have an apply(E) method, got {type(erasure).__name__}") from None
    except ValueError as exc:  # e.g. ErasureError: dimension mismatch
        raise MetricsError(f"erasure.apply rejected the embeddings: {exc}") from None
    timings["apply"] = time.perf_counter() - t
    x1 = _embeddings(edited, "edited embeddings (erasure.apply output)", d=x0.shape[1])
    if x1.shape[0] != x0.shape[0]:
        raise MetricsError(f"erasure.apply returned {x1.shape[0]} rows for {x0.shape[0]}")

    probe_rows = None
    others = np.unique(y[~forget])
    if max_probe_identities is not None and len(others) > max_probe_identities:
        chosen = np.random.default_rng(seed).choice(others, int(max_probe_identities), replace=False)
        probe_rows = forget | np.isin(y, chosen)
    common = dict(max_impostor_pairs=max_impostor_pairs, seed=seed, timings=timings,
                  probe_rows=probe_rows)
    before, counts, thr_b, probe_b, ci_b = _state_metrics(x0, x0, y, sp, forget, fl, fars_t, **common)
    after, _, thr_a, probe_a, ci_a = _state_metrics(x1, x0, y, sp, forget, fl, fars_t, **common)
    counts.update(
        faces=int(len(y)), identities=int(np.unique(y[sp]).size), forget_identities=int(fl.size),
        forget_enrol=int((forget & sp).sum()), forget_probe=int((forget & ~sp).sum()),
        retain_enrol=int((~forget & sp).sum()), retain_probe=int((~forget & ~sp).sum()),
        d=int(x0.shape[1]),
        kr_identities=int(np.unique(y if probe_rows is None else y[probe_rows]).size),
        kr_retain_probe=int((~forget & ~sp & (True if probe_rows is None else probe_rows)).sum()))
    timings["total"] = time.perf_counter() - t_total
    return ErasureReport(
        before=before, after=after, chance_rank1=1.0 / counts["identities"],
        forget_labels=[int(v) for v in fl], fars=list(fars_t), counts=counts,
        thresholds={"before": thr_b, "after": thr_a},
        probes={"before": probe_b, "after": probe_a}, timings=timings,
        intervals={"before": ci_b, "after": ci_a})
