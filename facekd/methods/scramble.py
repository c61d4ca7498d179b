"""The gated scramble: the person's faces become unrelated, ordinary-looking strangers.

A ridge discriminant fitted against everyone else's gallery faces opens a gate on the person's
faces; a gated face is replaced by a pseudo-random stranger (:mod:`facekd.tail`). Faces below the
gate are returned bit for bit unchanged.

Imports nothing from the project but :mod:`facekd.erasure`, :mod:`facekd.tail` and
:mod:`facekd.methods.base`; scipy is imported where it is used (keeps ``import facekd`` light).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from facekd.erasure import Erasure, ErasureError, as_matrix, single_threaded_blas
from facekd.methods.base import FitContext, MethodError, register
from facekd.tail import GateChain, Scrambler, normalize_rows

__all__ = ["RIDGE_GRID", "fit_scramble"]


def _folds(n: int, folds: int, rng: np.random.Generator,
           groups: np.ndarray | None = None) -> list[np.ndarray]:
    """Cross-validation parts of ``n`` rows: random rows, or whole groups when ``groups`` labels
    them (an identity's faces are never split across parts)."""
    if groups is None:
        return np.array_split(rng.permutation(n), min(folds, n))
    uniq, inv = np.unique(groups, return_inverse=True)
    return [np.flatnonzero(np.isin(inv, chunk))
            for chunk in np.array_split(rng.permutation(len(uniq)), min(folds, len(uniq)))]


class _RidgeDiscriminant:
    """Weighted ridge least squares ``x . w + b`` ~ 1 on the person's faces, ~ 0 on the gallery,
    each class carrying its share of the weight whatever its size.

    The gallery's half of the normal equations, and each gallery cross-validation part's share of
    it, are computed once and serve every ridge and every fold: they are the ``O(N d^2)`` work."""

    def __init__(self, gallery: np.ndarray, parts: list[np.ndarray], *,
                 forget_weight: float) -> None:
        self.ga = np.c_[gallery, np.ones(len(gallery))]
        self.wg = (1 - forget_weight) / len(gallery)
        self.base = self.wg * (self.ga.T @ self.ga)
        self.parts = parts
        self.part_grams = [self.wg * (self.ga[p].T @ self.ga[p]) for p in parts]
        self.forget_weight = forget_weight

    def fit(self, forget: np.ndarray, ridge: float, *, drop: int | None = None
            ) -> tuple[np.ndarray, float]:
        """``(w (d,), b)`` fitted on ``forget`` and the gallery, without gallery part ``drop``."""
        fa = np.c_[forget, np.ones(len(forget))]
        wf = self.forget_weight / len(forget)
        gram = (self.base + ridge * np.eye(self.ga.shape[1])) + wf * (fa.T @ fa)
        if drop is not None:
            gram = gram - self.part_grams[drop]
        sol = np.linalg.solve(gram, wf * fa.sum(axis=0))
        return sol[:-1], float(sol[-1])

    def heldout_gallery_scores(self, forget: np.ndarray, ridge: float) -> np.ndarray:
        """Each gallery face scored by a discriminant fitted without its part (without its whole
        identity when the parts are by identity): how an unseen ordinary face scores (in-sample
        scores are optimistic, most of all on small galleries)."""
        scores = np.empty(len(self.ga))
        for i, part in enumerate(self.parts):
            w, b = self.fit(forget, ridge, drop=i)
            scores[part] = self.ga[part, :-1] @ w + b
        return scores


def _scores(g: np.ndarray, w: np.ndarray, b: np.ndarray, block: int = 65_536) -> np.ndarray:
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


RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1)  # fit_scramble's choices when ridge=None


def _gate_fit(disc: _RidgeDiscriminant, fitted: tuple[np.ndarray, float], in_sample: np.ndarray,
              f: np.ndarray, ridge: float, q: float, forget_parts: list[np.ndarray]) -> dict:
    """One ridge's discriminant ``(w, b)``, gate threshold ``t0`` and cross-validated scores of
    the person's photos (``held``), with how many of them clear ``t0`` (``recall``) and by how
    many held-out gallery standard deviations their lower quartile does (``margin``)."""
    from scipy.special import ndtri

    w, b = fitted  # disc.fit(f, ridge); ``in_sample`` (N,): its scores on the whole gallery
    # The gate opens above the q-quantile of held-out gallery scores (each face scored by a
    # discriminant fitted without it, or without its identity) and of in-sample scores. A
    # gallery holds too few faces to read a 1e-5 quantile off it: a normal tail fitted to the
    # held-out scores extrapolates it (and never lowers the empirical one).
    heldout_g = disc.heldout_gallery_scores(f, ridge)
    tail = float(heldout_g.mean() + ndtri(q) * heldout_g.std())
    t0 = float(max(np.quantile(heldout_g, q), np.quantile(in_sample, q), tail))
    n = len(f)
    held = np.empty(n)
    for part in forget_parts:
        rest = np.setdiff1d(np.arange(n), part)
        w2, b2 = disc.fit(f[rest], ridge) if len(rest) else (w, b)
        held[part] = f[part] @ w2 + b2
    return {"w": w, "b": b, "t0": t0, "held": held, "ridge": ridge,
            "recall": float(np.mean(held > t0)),
            "margin": float((np.quantile(held, 0.25) - t0) / max(heldout_g.std(), 1e-12))}


def fit_scramble(F: Any, gallery: Any, *, q: float | None = None, width: float = 0.3,
                 full_quantile: float = 0.05, alpha: float = 1.05, ridge: float | None = None,
                 forget_weight: float = 0.5, folds: int = 5, n_features: int = 512,
                 sigma: float = 200.0, seed: int = 0, max_gallery: int = 50_000,
                 gallery_labels: Any = None, scrambler: Scrambler | None = None) -> Erasure:
    """Fit a gated scramble: the person's faces become unrelated, ordinary-looking strangers.

    A ridge discriminant ``s(x)`` is fitted to be 1 on the person's faces ``F`` and 0 on the
    ``gallery`` (everyone else). The gate opens at ``t0`` = the ``q``-quantile of ``s`` on the
    gallery (default 0.9995 with ``gallery_labels``, 0.9999 without; the larger of the empirical
    quantile and a normal tail fitted to the scores) and is fully open at ``s1 = t0 + width * (s_cv - t0)``, ``s_cv`` the
    ``full_quantile``-quantile of *cross-validated* scores of ``F`` (each photo scored by a
    discriminant fitted without it, which is how an unseen photo of the person scores; ``t0`` is
    likewise taken over held-out gallery scores, which is how unseen ordinary faces score). A gated face
    is replaced by ``t(x)``: a pseudo-random point distributed like the population (gallery mean
    and covariance, deviation scaled by ``alpha``), so erased faces neither match one another nor
    stand out (``alpha = 1``: distributed like ordinary faces; larger: easier to spot, harder to
    re-identify; the default 1.05 is the measured balance on LFW + dlib, docs/benchmarks.md).

    Args:
        F: ``(n, d)`` embeddings of the person (``n >= 2``), in the space the erasure applies to.
        gallery: ``(N, d)`` embeddings of everyone else (what the deployment holds).
        ridge: the discriminant's ridge; default: chosen from ``RIDGE_GRID`` by how many of the
            person's cross-validated photos clear the gate (few photos need a stronger ridge).
        gallery_labels: ``(N,)`` identity of each gallery face. With them the gate's threshold is
            calibrated on identities the discriminant never saw (cross-validation by identity),
            which is how a new photo of an enrolled person scores; without, by face.
        scrambler: reuse an existing chain's stranger map, so the new step merges into it (the
            workspace passes the accumulated erasure's); default: fit one on ``gallery``.

    Returns:
        An :class:`Erasure` whose linear part is the identity and whose tail is one gate. Faces
        below the gate are returned unchanged.
    """
    f = normalize_rows(as_matrix(F, "forget embeddings").astype(np.float64))
    # The gallery stays in its own dtype: a float64 copy of a million faces is 1 GB and only the
    # fitted sample needs one; the whole gallery is only ever scored, block by block.
    g = as_matrix(gallery, "gallery embeddings", d=f.shape[1])
    n, d = f.shape
    if n < 2:
        raise ErasureError("fit_scramble needs at least 2 embeddings of the person")
    if len(g) < 2:
        raise ErasureError("fit_scramble needs at least 2 gallery embeddings of other people")
    if q is None:  # calibrated by identity, a lower quantile gives the same protection
        q = 0.9995 if gallery_labels is not None else 0.9999
    if not 0.0 < q < 1.0 or not 0.0 < width <= 1.0 or not 0.0 <= full_quantile <= 1.0:
        raise ErasureError("q must be in (0, 1), width in (0, 1], full_quantile in [0, 1]")
    if not alpha > 0 or (ridge is not None and not ridge > 0) or not 0.0 < forget_weight < 1.0:
        raise ErasureError("alpha and ridge must be positive, forget_weight in (0, 1)")
    rng = np.random.default_rng(seed)
    groups = None
    if gallery_labels is not None:
        groups = np.asarray(gallery_labels).ravel()
        if groups.shape != (len(g),):
            raise ErasureError(f"gallery_labels: expected {len(g)} labels, got {groups.shape}")
    pick = np.arange(len(g)) if len(g) <= max_gallery else rng.choice(len(g), max_gallery,
                                                                     replace=False)
    fit_g = normalize_rows(g[pick].astype(np.float64))
    groups = None if groups is None else groups[pick]
    ridges = RIDGE_GRID if ridge is None else (float(ridge),)
    fold_rng = np.random.default_rng(seed)  # the same parts for every ridge
    gallery_parts = _folds(len(fit_g), folds, fold_rng, groups)
    forget_parts = _folds(n, folds, fold_rng)
    with single_threaded_blas():
        disc = _RidgeDiscriminant(fit_g, gallery_parts, forget_weight=forget_weight)
        fitted = [disc.fit(f, r) for r in ridges]
        # One pass over the whole gallery scores it under every ridge's discriminant.
        in_sample = _scores(g, np.stack([w for w, _ in fitted], axis=1),
                            np.array([b for _, b in fitted]))
        fits = [_gate_fit(disc, fitted[i], in_sample[:, i], f, r, q, forget_parts)
                for i, r in enumerate(ridges)]
    # The ridge whose held-out photos of the person clear the gate best (ties: the wider margin).
    i_best = max(range(len(fits)), key=lambda i: (fits[i]["recall"], fits[i]["margin"]))
    best = fits[i_best]
    w, b, t0, held, ridge = best["w"], best["b"], best["t0"], best["held"], best["ridge"]
    s_cv = float(np.quantile(held, full_quantile))
    separable = s_cv > t0
    spread = (s_cv - t0) if separable else float(np.median(f @ w + b) - t0)
    s1 = t0 + width * max(spread, 1e-3)
    if scrambler is None:
        # The population's mean and covariance from the sample the discriminant saw (all of a
        # gallery up to max_gallery faces): a 50k-face estimate of a d x d covariance is exact to
        # well under the spread of the strangers it shapes.
        scrambler = Scrambler.fit(fit_g, n_features=n_features, sigma=sigma, alpha=alpha,
                                  seed=seed)
    elif scrambler.mean.shape != (d,):
        raise ErasureError(f"scrambler dimension {scrambler.mean.shape} does not match d={d}")
    chain = GateChain(weights=w[:, None], bias=np.array([b]), t0=np.array([t0]),
                      s1=np.array([s1]), scrambler=scrambler)
    gate_fit = chain.gates(f)[:, 0]
    gallery_touched = float(np.mean(in_sample[:, i_best] > t0))
    params = {"q": q, "width": width, "full_quantile": full_quantile, "alpha": alpha,
              "ridge": ridge, "heldout_recall": best["recall"], "forget_weight": forget_weight,
              "n_features": int(scrambler.omega.shape[0]),
              "sigma": sigma, "seed": seed, "n": n, "gallery": int(len(g)),
              "separable": bool(separable),
              "fit_gated_fully": float(np.mean(gate_fit >= 1.0)),
              "heldout_gated_fully": float(np.mean((held - t0) / (s1 - t0) >= 1.0)),
              "gallery_touched": gallery_touched}
    return Erasure(method="esc", d=d, basis=np.zeros((d, 0)), params=params,
                   history=[{"method": "scramble", "params": params}], tail=[chain])


@register("scramble", options=("q", "width", "full_quantile", "alpha", "ridge", "forget_weight",
                               "folds", "n_features", "sigma", "seed", "max_gallery"),
          config={"scramble_q": "q", "scramble_alpha": "alpha", "seed": "seed"},
          summary="gated scramble: the person's faces become unrelated strangers")
def _fit(forget: np.ndarray, context: FitContext) -> Erasure:
    if len(context.gallery) < 2:
        raise MethodError("scramble needs at least 2 gallery faces of other people "
                          "(the gate is fitted against them)")
    # Later gates reuse the chain's stranger map, so the chain stays one object (one gate product).
    return fit_scramble(forget, context.gallery, gallery_labels=context.gallery_labels,
                        scrambler=context.previous.scrambler, **context.options)
