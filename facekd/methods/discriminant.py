"""The gated scramble's discriminant: ridge least squares that scores the person's faces 1 and
everyone else's 0, its cross-validation parts, and its scores over a gallery in blocks.

Imports nothing from the project; numpy only.
"""

from __future__ import annotations

import numpy as np

__all__ = ["folds", "RidgeDiscriminant", "scores"]


def folds(n: int, folds: int, rng: np.random.Generator,
           groups: np.ndarray | None = None) -> list[np.ndarray]:
    """Cross-validation parts of ``n`` rows: random rows, or whole groups when ``groups`` labels
    them (an identity's faces are never split across parts)."""
    if groups is None:
        return np.array_split(rng.permutation(n), min(folds, n))
    uniq, inv = np.unique(groups, return_inverse=True)
    return [np.flatnonzero(np.isin(inv, chunk))
            for chunk in np.array_split(rng.permutation(len(uniq)), min(folds, len(uniq)))]


class RidgeDiscriminant:
    """Weighted ridge least squares ``x . w + b`` ~ 1 on the person's faces, ~ 0 on the gallery,
    each class carrying its share of the weight whatever its size.

    With a within-identity covariance ``within`` ``(d, d)`` and a strength ``tau > 0``, each of
    the person's photos counts as a cloud of covariance ``tau * within`` around it (the normal
    equations gain ``forget_weight * tau * within``): one photo then stands for the person's
    other photos too, and directions in which anyone's photos vary stop separating the person
    from the gallery (tau -> inf: the within-class LDA direction).

    The gallery's half of the normal equations, and each gallery cross-validation part's share of
    it, are computed once and serve every ridge and every fold: they are the ``O(N d^2)`` work."""

    def __init__(self, gallery: np.ndarray, parts: list[np.ndarray], *,
                 forget_weight: float, within: np.ndarray | None = None) -> None:
        self.ga = np.c_[gallery, np.ones(len(gallery))]
        self.wg = (1 - forget_weight) / len(gallery)
        self.base = self.wg * (self.ga.T @ self.ga)
        self.parts = parts
        self.part_grams = [self.wg * (self.ga[p].T @ self.ga[p]) for p in parts]
        self.forget_weight = forget_weight
        d1 = self.ga.shape[1]
        self.within = np.zeros((d1, d1))
        if within is not None:
            self.within[:-1, :-1] = forget_weight * within

    def fit(self, forget: np.ndarray, ridge: float, tau: float = 0.0, *,
            less: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """``(w (d,), b)`` fitted on ``forget`` and the gallery, without the gallery faces whose
        share of the normal equations is ``less`` (a part's entry of ``part_grams``)."""
        fa = np.c_[forget, np.ones(len(forget))]
        wf = self.forget_weight / len(forget)
        gram = (self.base + ridge * np.eye(self.ga.shape[1])) + wf * (fa.T @ fa)
        if tau:
            gram = gram + tau * self.within
        if less is not None:
            gram = gram - less
        sol = np.linalg.solve(gram, wf * fa.sum(axis=0))
        return sol[:-1], float(sol[-1])

    def heldout_gallery_scores(self, forget: np.ndarray, ridge: float, tau: float = 0.0,
                               parts: list[np.ndarray] | None = None) -> np.ndarray:
        """Each gallery face scored by a discriminant fitted without its part (without its whole
        identity when the parts are by identity): how an unseen ordinary face scores (in-sample
        scores are optimistic, most of all on small galleries). ``parts``: other parts than the
        ones the discriminant was built with (their share of the normal equations is computed
        here: one more ``O(N d^2)`` pass)."""
        grams = (self.part_grams if parts is None else
                 [self.wg * (self.ga[p].T @ self.ga[p]) for p in parts])
        scores = np.empty(len(self.ga))
        for part, gram in zip(self.parts if parts is None else parts, grams):
            w, b = self.fit(forget, ridge, tau, less=gram)
            scores[part] = self.ga[part, :-1] @ w + b
        return scores

    def one_photo_z(self, pairs: np.ndarray, groups: np.ndarray | None, ridge: float,
                    tau: float, max_rows: int = 2000) -> np.ndarray:
        """``(P,)`` how a one-photo gate scores a new photo, in held-out gallery standard scores.

        For each gallery pair ``(a, b)`` (two photos of one identity, rows of the gallery): the
        discriminant fitted on photo ``a`` alone against the gallery without ``a``'s part (its
        identity, when parts are by identity), scoring ``b``, as ``(s(b) - mean) / sd`` over that
        part's faces of other identities (``groups`` ``(N,)``; at most ``max_rows`` of them).
        Each fit is a rank-one update of its part's inverse normal equations, so P pairs cost
        ``folds`` inversions and ``O(P d (d + max_rows))``."""
        owner = np.empty(len(self.ga), np.int64)
        for i, part in enumerate(self.parts):
            owner[part] = i
        z = np.full(len(pairs), np.nan)
        eye = ridge * np.eye(self.ga.shape[1])
        for i, part in enumerate(self.parts):
            mine = np.flatnonzero(owner[pairs[:, 0]] == i)
            if not len(mine) or len(part) < 3:
                continue
            inv = np.linalg.inv(self.base - self.part_grams[i] + eye + tau * self.within)
            fa, fb = self.ga[pairs[mine, 0]], self.ga[pairs[mine, 1]]
            mfa = fa @ inv  # inv is symmetric
            sol = self.forget_weight * mfa / (1 + self.forget_weight
                                              * np.einsum("ij,ij->i", fa, mfa))[:, None]
            # Ordinary faces no fit saw: the part's other identities. A part holding one
            # identity (a gallery of a few people) has none: then a sample of the whole gallery.
            mean, sd = self._others_stats(part, sol, pairs[mine, 0], groups, max_rows)
            z[mine] = (np.einsum("ij,ij->i", fb, sol) - mean) / np.maximum(sd, 1e-12)
        return z[np.isfinite(z)]

    def _others_stats(self, part: np.ndarray, sol: np.ndarray, owners: np.ndarray,
                      groups: np.ndarray | None, max_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Mean and s.d. ``(P,)`` of the scores under discriminants ``sol`` ``(P, d + 1)`` of the
        part's faces not of identity ``groups[owners]`` (a sample of the whole gallery for the
        columns the part leaves fewer than 2 of)."""
        def stats(rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            rows = rows[:: max(1, len(rows) // max_rows)]
            mask = (None if groups is None
                    else groups[rows][:, None] != groups[owners[cols]][None, :])
            return _nan_stats(self.ga[rows] @ sol[cols].T, mask)

        mean, sd = stats(part, np.arange(len(sol)))
        bad = np.flatnonzero(~np.isfinite(mean))
        if len(bad):
            mean[bad], sd[bad] = stats(np.arange(len(self.ga)), bad)
        return mean, sd


def _nan_stats(scores: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and s.d. of ``scores`` ``(rows, P)`` over the rows ``mask`` keeps (NaN where
    a column keeps fewer than 2)."""
    if mask is not None:
        scores = np.where(mask, scores, np.nan)
    kept = np.sum(np.isfinite(scores), axis=0)
    ok = kept >= 2
    mean, sd = np.full(scores.shape[1], np.nan), np.full(scores.shape[1], np.nan)
    mean[ok] = np.nanmean(scores[:, ok], axis=0)
    sd[ok] = np.nanstd(scores[:, ok], axis=0)
    return mean, sd


def scores(g: np.ndarray, w: np.ndarray, b: np.ndarray, block: int = 65_536) -> np.ndarray:
    """``(N, R)`` float64 scores ``normalize(g) @ w + b`` of the ``(N, d)`` gallery (any float
    dtype) under ``R`` discriminants ``w`` (d, R), ``b`` (R,), computed in float64 blocks (no
    float64 copy of the whole gallery)."""
    out = np.empty((len(g), w.shape[1]))
    for i in range(0, len(g), block):
        x = g[i:i + block].astype(np.float64)
        # (x @ w) / |x| rather than (x / |x|) @ w: no normalised copy of the block
        norms = np.maximum(np.sqrt(np.einsum("ij,ij->i", x, x)), 1e-12)
        out[i:i + block] = (x @ w) / norms[:, None] + b
    return out
