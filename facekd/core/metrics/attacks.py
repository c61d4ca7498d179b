"""Attacks on an erasure: membership inference on score features, and the template leak (what the
edited model alone gives away about the person it erased).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from facekd.core.metrics.inputs import MetricsError


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


def template_leak(erasure: Any, means: Any, ids: Any, person: int) -> tuple[float, int]:
    """What the edited model alone gives away about whom it erased.

    Reads the erasure's own parameters, as anyone holding the edited model can (a gated tail
    ships its gate; a folded linear edit is recovered from the public base model as
    ``I - W'W^+``): the direction it singles out (the last gate's weights, or the erased
    subspace's top direction) and ranks every identity's mean face by how strongly it triggers
    it (gate score; energy in the erased subspace). Returns ``(cosine between that direction and
    the person's mean face minus the population mean, the person's rank; 1 = singled out)``.

    erasure: a :class:`facekd.core.erasure.Erasure` (read through its ``tail`` and ``matrix()``).
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
