"""Identification: rank-1 hits of probes against a gallery, the identification rate, and the
knowledge retained by a classifier trained on the edited embeddings (scikit-learn, imported where
used).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from facekd.core.metrics.inputs import (MetricsError, _CHUNK, _embeddings, _labels,
                                        _single_threaded_blas)


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
    knn = KNeighborsClassifier(n_neighbors=min(5, xtr.shape[0]), metric="cosine",
                               algorithm="brute")
    with _single_threaded_blas(), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # linear: see linear_converged
        # A gallery of 1-3 photos per person has more identities than half its faces, which
        # sklearn takes for regression targets; they are identities.
        warnings.filterwarnings("ignore", "The number of unique classes is greater than 50%",
                                UserWarning)
        linear.fit(ztr, ytr)
        weak.fit(ztr, ytr)
        knn.fit(xtr, ytr)
    iters = int(np.max(linear.n_iter_))

    def acc(model: Any, z: np.ndarray) -> tuple[float, float]:
        ok = model.predict(z) == yte
        return float(ok[forget].mean()), float(ok[~forget].mean())

    lf, lr_ = acc(linear, zte)
    wf, wr = acc(weak, zte)
    kf, kr = acc(knn, xte)
    return KnowledgeRetention(lf, lr_, wf, wr, kf, kr, iters, iters < max_iter,
                              int(forget.sum()), int((~forget).sum()))
