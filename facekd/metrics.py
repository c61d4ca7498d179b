"""Erasure metrics: pure functions of embeddings and labels (numpy + scikit-learn only).

Embeddings are compared by cosine: every function L2-normalises rows itself, so callers may pass
raw encoder outputs. Low-level functions return fractions in ``[0, 1]``; :func:`membership_inference`
returns a percentage (50 = ideal), and :class:`ErasureReport` stores every metric in percent so its
numbers read like the tables in esc-method.md.

This module imports nothing else from the project; an erasure is duck-typed (anything with
``apply(E) -> (n, d)`` normalised embeddings).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import numpy as np

__all__ = [
    "MetricsError", "identification_hits", "identification_rate", "pair_scores", "tar_at_far",
    "KnowledgeRetention", "far_threshold", "knowledge_retention", "membership_inference", "mia_features",
    "split_enrol_probe", "ErasureReport", "erasure_report", "template_leak", "wilson_interval",
]

_CHUNK = 2048  # probe rows per score block: (chunk, gallery) float32 stays a few MB
_GRAM_MAX = 4096  # sampled pairs are read off one (n, n) Gram matrix up to this many faces (64 MB)


def _single_threaded_blas() -> Any:
    """Pin BLAS to one thread for the probes' small products (no-op without threadpoolctl).

    scikit-learn's lbfgs on ~2,000 x 128 inputs ran 10x slower with OpenBLAS threads on a busy
    2-core machine (0.2 s vs 2-4 s). The limit is process-wide while inside; do not run
    reports concurrently from several threads of one process.
    """
    try:
        from threadpoolctl import threadpool_limits  # ships with scikit-learn
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


class MetricsError(ValueError):
    """Invalid input to a metric: shape mismatch, NaN/inf, no forget samples, no probes..."""


# ---------------------------------------------------------------------- input checks
def _embeddings(x: Any, name: str, *, d: int | None = None) -> np.ndarray:
    """``(n, d)`` finite float32 with L2-normalised rows (a new array).

    All-zero rows stay zero (cosine 0 to everything): an erasure can map a face entirely into
    the erased span, and such a face must simply match nothing.
    """
    try:
        arr = np.array(x, dtype=np.float32, copy=True)
    except (TypeError, ValueError) as exc:
        raise MetricsError(f"{name}: cannot be read as a numeric matrix ({exc})") from None
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise MetricsError(f"{name}: expected an (n, d) matrix, got shape {arr.shape}")
    if d is not None and arr.shape[1] != d:
        raise MetricsError(f"{name}: dimension {arr.shape[1]} does not match d={d}")
    if not np.all(np.isfinite(arr)):
        raise MetricsError(f"{name}: contains NaN or inf")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    arr /= np.maximum(norms, np.finfo(np.float32).tiny)
    return arr


def _labels(y: Any, n: int, name: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise MetricsError(f"{name}: expected shape ({n},), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise MetricsError(f"{name}: labels must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _scores(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64).ravel()
    if not np.all(np.isfinite(arr)):
        raise MetricsError(f"{name}: contains NaN or inf")
    return arr


# ---------------------------------------------------------------------- identification
def identification_hits(gallery: Any, gallery_labels: Any, probes: Any, probe_labels: Any, *,
                        k: int = 1) -> np.ndarray:
    """Rank-``k`` closed-set identification outcome for each probe: ``(m,)`` bool.

    Identities are ranked by their best-matching gallery *face* (cosine); a probe is a hit when
    its identity is among the top ``k``. Ties count against the probe (an identity scoring the
    same as the true one ranks above it), so a degenerate all-zero face matches nothing. A probe
    whose identity has no gallery face is a miss.

    Args:
        gallery: ``(g, d)`` embeddings; gallery_labels: ``(g,)`` ints.
        probes: ``(m, d)`` embeddings; probe_labels: ``(m,)`` ints.
    """
    g = _embeddings(gallery, "gallery")
    p = _embeddings(probes, "probes", d=g.shape[1])
    gl = _labels(gallery_labels, g.shape[0], "gallery_labels")
    pl = _labels(probe_labels, p.shape[0], "probe_labels")
    if int(k) != k or k < 1:
        raise MetricsError(f"k must be a positive integer, got {k!r}")
    order = np.argsort(gl, kind="stable")
    g, gl = g[order], gl[order]
    ids, starts = np.unique(gl, return_index=True)
    col = np.searchsorted(ids, pl)
    known = (col < len(ids)) & (ids[np.minimum(col, len(ids) - 1)] == pl)
    hits = np.zeros(p.shape[0], dtype=bool)
    for s in range(0, p.shape[0], _CHUNK):
        sim = p[s:s + _CHUNK] @ g.T                          # (chunk, g)
        per_id = np.maximum.reduceat(sim, starts, axis=1)    # (chunk, identities): best face
        rows = np.arange(per_id.shape[0])
        c = np.minimum(col[s:s + _CHUNK], len(ids) - 1)
        true = per_id[rows, c]
        better = np.count_nonzero(per_id >= true[:, None], axis=1) - 1  # minus itself
        hits[s:s + _CHUNK] = known[s:s + _CHUNK] & (better < k)
    return hits


def identification_rate(gallery: Any, gallery_labels: Any, probes: Any, probe_labels: Any, *,
                        k: int = 1) -> float:
    """Rank-``k`` hit rate in ``[0, 1]`` (see :func:`identification_hits`)."""
    hits = identification_hits(gallery, gallery_labels, probes, probe_labels, k=k)
    if hits.size == 0:
        raise MetricsError("no probes to identify")
    return float(hits.mean())


# ---------------------------------------------------------------------- verification
def pair_scores(E: Any, labels: Any, *, max_impostor_pairs: int = 2_000_000,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cosine scores of genuine and impostor pairs: ``((g,), (i,))`` float64.

    Genuine = every unordered pair of distinct faces with the same label. Impostor = every pair
    with different labels when there are at most ``max_impostor_pairs`` of them, else that many
    pairs drawn uniformly (with replacement; duplicates do not bias the score distribution).
    ``max_impostor_pairs=0`` skips impostors.
    """
    x = _embeddings(E, "embeddings")
    y = _labels(labels, x.shape[0], "labels")
    n = x.shape[0]
    genuine = []
    for lab in np.unique(y):
        idx = np.flatnonzero(y == lab)
        if idx.size >= 2:
            block = x[idx] @ x[idx].T
            genuine.append(block[np.triu_indices(idx.size, 1)])
    gen = np.concatenate(genuine).astype(np.float64) if genuine else np.zeros(0)

    counts = np.unique(y, return_counts=True)[1].astype(np.int64)
    n_imp = (n * n - int(np.sum(counts * counts))) // 2
    if max_impostor_pairs <= 0 or n_imp == 0:
        return gen, np.zeros(0)
    if n_imp <= max_impostor_pairs:
        parts = []
        for s in range(0, n, _CHUNK):
            sim = x[s:s + _CHUNK] @ x.T
            rows = np.arange(s, min(n, s + _CHUNK))[:, None]
            keep = (np.arange(n)[None, :] > rows) & (y[s:s + _CHUNK, None] != y[None, :])
            parts.append(sim[keep])
        return gen, np.concatenate(parts).astype(np.float64)
    rng = np.random.default_rng(seed)
    out = np.empty(int(max_impostor_pairs), dtype=np.float64)
    # A few thousand faces: every score is in one small matrix product, and a sampled pair is a
    # lookup (2M pairs: 0.05 s instead of 1.4 s of row gathers and dot products).
    gram = x @ x.T if n <= _GRAM_MAX else None
    filled = 0
    while filled < out.size:
        want = out.size - filled
        i = rng.integers(0, n, size=2 * want)
        j = rng.integers(0, n, size=2 * want)
        ok = y[i] != y[j]
        i, j = i[ok][:want], j[ok][:want]
        if gram is not None:
            out[filled:filled + i.size] = gram[i, j]
            filled += i.size
            continue
        for s in range(0, i.size, 1 << 16):
            a, b = i[s:s + (1 << 16)], j[s:s + (1 << 16)]
            out[filled:filled + a.size] = np.einsum("ij,ij->i", x[a], x[b])
            filled += a.size
    return gen, out


def wilson_interval(successes: float, trials: int, *, z: float = 1.959964) -> tuple[float, float]:
    """95% (``z`` = 1.96) Wilson score interval ``(low, high)`` in ``[0, 1]`` of a proportion
    ``successes / trials``; ``(0, 1)`` when there are no trials. Exact enough at 0 and 1 hits,
    where the normal approximation collapses to a zero-width interval."""
    if trials <= 0:
        return 0.0, 1.0
    p = min(max(float(successes) / trials, 0.0), 1.0)
    z2 = z * z / trials
    centre = (p + z2 / 2) / (1 + z2)
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials)) / (1 + z2)
    # min/max: at p = 0 or 1 the bound equals p mathematically; keep it so in floating point
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def far_threshold(impostor: Any, far: float) -> float:
    """The score threshold at false-accept rate ``far``: the ``(floor(far * i) + 1)``-th highest of
    ``i`` impostor scores (a pair is accepted when its score is strictly above it)."""
    imp = _scores(impostor, "impostor")
    if imp.size == 0:
        raise MetricsError("far_threshold needs impostor scores (got none)")
    if not 0.0 < far < 1.0:
        raise MetricsError(f"far must be in (0, 1), got {far!r}")
    allowed = int(math.floor(far * imp.size + 1e-9))
    # k-th largest via partition: O(i), not a full sort of millions of scores.
    kth = imp.size - 1 - allowed
    return float(np.partition(imp, kth)[kth])


def tar_at_far(genuine: Any, impostor: Any, far: float) -> tuple[float, float]:
    """True-accept rate at a false-accept rate: ``(tar in [0, 1], threshold)``.

    A pair is accepted when its score is strictly above ``threshold``. The threshold is the
    ``(floor(far * i) + 1)``-th highest impostor score, so at most ``far`` of the impostors are
    accepted (exactly that share barring ties). When ``far * i < 1`` the threshold is the highest
    impostor score (observed FAR 0): too few impostor pairs to resolve that FAR.
    """
    gen = _scores(genuine, "genuine")
    imp = _scores(impostor, "impostor")
    if gen.size == 0 or imp.size == 0:
        raise MetricsError(f"tar_at_far needs genuine and impostor scores "
                           f"(got {gen.size} genuine, {imp.size} impostor)")
    threshold = far_threshold(imp, far)
    return float(np.mean(gen > threshold)), threshold


# ---------------------------------------------------------------------- knowledge retention
@dataclass
class KnowledgeRetention:
    """Probe accuracies in ``[0, 1]`` on forget and retain test samples.

    ``linear_*``: multinomial logistic regression trained to convergence (models an attacker);
    ``weak_*``: the paper's weak probe (SGD, lr 1e-3, 10 epochs); ``knn_*``: 5-NN, cosine.
    """

    linear_forget: float
    linear_retain: float
    weak_forget: float
    weak_retain: float
    knn_forget: float
    knn_retain: float
    linear_iterations: int
    linear_converged: bool
    n_forget: int = 0  # test samples behind the *_forget and *_retain accuracies
    n_retain: int = 0


def knowledge_retention(train_E: Any, train_y: Any, test_E: Any, test_y: Any,
                        forget_labels: Iterable[int], *, max_iter: int = 10_000,
                        seed: int = 0) -> KnowledgeRetention:
    """Train fresh probes on ``(train_E, train_y)`` and test on forget / retain samples.

    Args:
        train_E: ``(n, d)``; train_y: ``(n,)`` ints (erased identities included, as an attacker
            who re-enrols them would).
        test_E: ``(m, d)``; test_y: ``(m,)`` ints; must contain forget and retain samples.
        forget_labels: the erased identities.

    Cost: the linear probe converges in a few lbfgs iterations (0.1 s at 300 identities x 5
    faces); the weak probe is one-vs-rest, so it grows with identities x faces (3 s there):
    callers measuring large galleries cap the identities (``erasure_report``).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, SGDClassifier
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.preprocessing import StandardScaler

    xtr = _embeddings(train_E, "train_E")
    xte = _embeddings(test_E, "test_E", d=xtr.shape[1])
    ytr = _labels(train_y, xtr.shape[0], "train_y")
    yte = _labels(test_y, xte.shape[0], "test_y")
    forget = np.isin(yte, np.fromiter(forget_labels, dtype=np.int64))
    if not forget.any():
        raise MetricsError("knowledge_retention: no test sample carries a forget label")
    if forget.all():
        raise MetricsError("knowledge_retention: no retain test samples")
    if np.unique(ytr).size < 2:
        raise MetricsError("knowledge_retention: training data needs at least 2 identities")

    scaler = StandardScaler().fit(xtr)
    ztr, zte = scaler.transform(xtr), scaler.transform(xte)
    linear = LogisticRegression(max_iter=max_iter, tol=1e-4)
    # The weak probe is deliberately stopped after 10 epochs, so its warning is expected.
    weak = SGDClassifier(loss="log_loss", learning_rate="constant", eta0=1e-3, max_iter=10,
                         tol=None, random_state=seed, n_jobs=min(2, os.cpu_count() or 1))
    with _single_threaded_blas(), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # linear: see linear_converged
        linear.fit(ztr, ytr)
        weak.fit(ztr, ytr)
    iters = int(np.max(linear.n_iter_))
    knn = KNeighborsClassifier(n_neighbors=min(5, xtr.shape[0]), metric="cosine",
                               algorithm="brute").fit(xtr, ytr)

    def acc(model: Any, z: np.ndarray) -> tuple[float, float]:
        ok = model.predict(z) == yte
        return float(ok[forget].mean()), float(ok[~forget].mean())

    lf, lr_ = acc(linear, zte)
    wf, wr = acc(weak, zte)
    kf, kr = acc(knn, xte)
    return KnowledgeRetention(lf, lr_, wf, wr, kf, kr, iters, iters < max_iter,
                              int(forget.sum()), int((~forget).sum()))


# ---------------------------------------------------------------------- membership inference
MIA_MIN_PER_CLASS = 10  # members and non-members each; fewer -> the report's MIA is None
def membership_inference(member_scores: Any, nonmember_scores: Any, *, folds: int = 5,
                         seed: int = 0) -> float:
    """Membership-inference accuracy in percent (50 = the attacker cannot tell).

    Logistic regression on per-sample score features (``(n,)`` or ``(n, f)``), classes balanced
    by subsampling the larger one, stratified ``folds``-fold CV (fewer folds when a class has
    fewer samples; at least 2 per class are needed).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def feats(x: Any, name: str) -> np.ndarray:
        arr = np.asarray(x, dtype=np.float64)
        arr = arr.reshape(-1, 1) if arr.ndim == 1 else arr
        if arr.ndim != 2:
            raise MetricsError(f"{name}: expected (n,) or (n, f) scores, got shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise MetricsError(f"{name}: contains NaN or inf")
        return arr

    mem, non = feats(member_scores, "member_scores"), feats(nonmember_scores, "nonmember_scores")
    if mem.shape[1] != non.shape[1]:
        raise MetricsError(f"member and non-member features differ: {mem.shape[1]} vs {non.shape[1]}")
    m = min(len(mem), len(non))
    if m < 2:
        raise MetricsError(f"membership_inference needs >= 2 members and >= 2 non-members "
                           f"(got {len(mem)} and {len(non)})")
    rng = np.random.default_rng(seed)
    mem = mem[rng.permutation(len(mem))[:m]]
    non = non[rng.permutation(len(non))[:m]]
    x = np.concatenate([mem, non])
    y = np.r_[np.ones(m, dtype=int), np.zeros(m, dtype=int)]
    cv = StratifiedKFold(n_splits=min(int(folds), m), shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    return float(100.0 * cross_val_score(model, x, y, cv=cv).mean())


def mia_features(original: np.ndarray, edited: np.ndarray, labels: np.ndarray,
                 members: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """Per-sample MIA features of the forget identity's faces: ``(n, 2)`` float64.

    1. ``cos(e, edit(e))`` of the normalised original and edited embedding. For a projector this
       is ``||P e||``, i.e. ``sqrt(1 - energy removed)``: ESC's directions are fitted on the
       members, so members lose more energy than held-out faces; this is the leak MIA looks for.
    2. cosine of the edited embedding to its identity's mean edited *member* embedding, the member
       itself left out, and for a non-member one random member left out, so both references
       average the same number of faces. Members and non-members are then identically
       distributed when nothing was fitted on them (MIA ~50 "before"); a gap is the erasure's.

    Feature 1 is rounded to 1e-6 so float32 rounding noise is not a feature when nothing changed.

    Args:
        original, edited: ``(n, d)`` normalised embeddings of the forget identities' faces.
        labels: ``(n,)``; members: ``(n,)`` bool (True = used to fit the erasure).
    """
    rng = np.random.default_rng(seed)
    f1 = np.round(np.einsum("ij,ij->i", original, edited).astype(np.float64), 6)
    f2 = np.zeros(len(labels))
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        mem = idx[members[idx]]
        if mem.size == 0:
            continue
        total = edited[mem].sum(axis=0, dtype=np.float64)
        for i in idx:
            ref = total - edited[i if members[i] else rng.choice(mem)]
            norm = np.linalg.norm(ref)
            f2[i] = float(edited[i] @ ref / norm) if norm > 0 else 0.0
    return np.column_stack([f1, f2])


# ---------------------------------------------------------------------- the report
def split_enrol_probe(labels: Any, *, frac: float = 0.5, seed: int = 0) -> np.ndarray:
    """``(n,)`` bool, True = enrolment face. Per identity ``round(frac * c)`` faces are enrolled,
    clipped so that every identity with ``c >= 2`` faces has at least one of each; identities with
    one face are enrolled only (they contribute no probe)."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise MetricsError(f"labels: expected shape (n,), got {y.shape}")
    if not 0.0 < frac < 1.0:
        raise MetricsError(f"frac must be in (0, 1), got {frac!r}")
    rng = np.random.default_rng(seed)
    split = np.zeros(y.shape[0], dtype=bool)
    for lab in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == lab))
        n_enrol = 1 if idx.size < 2 else min(idx.size - 1, max(1, int(round(frac * idx.size))))
        split[idx[:n_enrol]] = True
    return split


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


def template_leak(erasure: Any, means: Any, ids: Any, person: int) -> tuple[float, int]:
    """What the edited model alone gives away about whom it erased.

    Reads the erasure's own parameters, as anyone holding the edited model can (a gated tail
    ships its gate; a folded linear edit is recovered from the public base model as
    ``I - W'W^+``): the direction it singles out (the last gate's weights, or the erased
    subspace's top direction) and ranks every identity's mean face by how strongly it triggers
    it (gate score; energy in the erased subspace). Returns ``(cosine between that direction and
    the person's mean face minus the population mean, the person's rank; 1 = singled out)``.

    erasure: a :class:`facekd.erasure.Erasure` (read through its ``tail`` and ``matrix()``).
    means: ``(c, d)`` mean unit embedding of every identity (the space the erasure was fitted in),
    ids ``(c,)`` sorted.
    """
    means, ids = np.asarray(means, np.float64), np.asarray(ids)
    mu = means[np.searchsorted(ids, person)]
    centre = means.mean(axis=0)
    gates = [st for st in erasure.tail if hasattr(st, "weights")]
    if gates:
        w = gates[-1].weights[:, -1]
        score = means @ w
        direction = w
    else:
        a = np.eye(erasure.d) - erasure.matrix()
        score = np.linalg.norm(means @ a, axis=1)
        direction = np.linalg.svd(a)[0][:, 0]
    dev = mu - centre
    cos = float(abs(direction @ dev) / (np.linalg.norm(direction) * np.linalg.norm(dev) + 1e-12))
    rank = int(1 + np.sum(score > score[np.searchsorted(ids, person)]))
    return cos, rank
