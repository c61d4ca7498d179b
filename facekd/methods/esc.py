"""ESC: erase the top principal directions of the person's embeddings (an orthogonal projector).

Imports nothing from the project but :mod:`facekd.core.erasure` and :mod:`facekd.methods.base`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from facekd.core.erasure import Erasure, ErasureError, as_matrix, single_threaded_blas
from facekd.methods.base import FitContext, register

__all__ = ["fit_esc", "select_k"]


def select_k(singular_values: np.ndarray, d: int, *, p: float = 1.5, k: int | None = None,
             energy: float | None = None, rank: int | None = None) -> int:
    """Number of principal directions to erase.

    Exactly one rule applies, in this order of precedence: an explicit ``k``; an ``energy`` share
    (smallest ``k`` whose squared singular values hold that share of ``||F||_F^2``); the reference
    code's percentage rule ``k = int(d * p / 100)`` (at least 1, clipped to ``rank``).
    An explicit ``k`` above ``rank`` is an error, never silently clipped.
    """
    s = np.asarray(singular_values, dtype=np.float64)
    if rank is None:
        rank = int(np.count_nonzero(s > s.max(initial=0.0) * max(len(s), d) * np.finfo(np.float64).eps))
    if rank == 0:
        raise ErasureError("the forget embeddings are all zero (rank 0); nothing to erase")
    if k is not None:
        if int(k) != k or k < 1:
            raise ErasureError(f"k must be a positive integer, got {k!r}")
        if k > rank:
            raise ErasureError(f"k={k} exceeds rank(F)={rank}: the forget set spans only {rank} "
                               "direction(s); pass a smaller k or more images")
        return int(k)
    if energy is not None:
        if not 0.0 < energy <= 1.0:
            raise ErasureError(f"energy must be in (0, 1], got {energy!r}")
        share = np.cumsum(s[:rank] ** 2) / np.sum(s[:rank] ** 2)
        return int(min(rank, np.searchsorted(share, energy - 1e-12) + 1))
    if not 0.0 < p <= 100.0:
        raise ErasureError(f"p must be in (0, 100], got {p!r}")
    return int(min(rank, max(1, int(d * p / 100))))


def fit_esc(F: Any, *, p: float = 1.5, k: int | None = None, energy: float | None = None) -> Erasure:
    """Fit ESC on the forget identity's embeddings.

    Args:
        F: ``(n, d)`` embeddings of the identity to erase, as the encoder emits them (``n < d`` is
            the usual case and is fine). To add a deletion to an existing erasure ``e1``, fit on
            ``e1.apply(F)`` and compose with ``e1.then(e2)``.
        p, k, energy: how many directions to erase (see :func:`select_k`).

    Returns:
        An ``esc`` :class:`Erasure` whose map is ``I - Q Q^T``, ``Q`` = top-``k`` right singular
        vectors of ``F`` (uncentred, as published). The projector is built from ``Q`` itself, not
        from a reduced ``U U^T`` (the reference-code trap that also deletes span(F)'s complement).
    """
    f = as_matrix(F, "forget embeddings").astype(np.float64)
    n, d = f.shape
    with single_threaded_blas():
        _, s, vt = np.linalg.svd(f, full_matrices=False)
    rank = int(np.count_nonzero(s > s.max(initial=0.0) * max(n, d) * np.finfo(np.float64).eps))
    kk = select_k(s, d, p=p, k=k, energy=energy, rank=rank)
    q = np.ascontiguousarray(vt[:kk].T)  # (d, k), orthonormal columns
    removed = float(np.sum(s[:kk] ** 2) / np.sum(s ** 2))
    params = {"k": kk, "p": p if k is None and energy is None else None, "k_requested": k,
              "energy_requested": energy, "n": n, "rank": rank, "energy_removed": removed}
    return Erasure(method="esc", d=d, basis=q, params=params)



@register("esc", options=("p", "k", "energy"), config={"p": "p", "k": "k", "energy": "energy"},
          summary="published ESC: project out the person's top principal directions")
def _fit(forget: np.ndarray, context: FitContext) -> Erasure:
    return fit_esc(forget, **context.options)
