"""What both gallery backends share: unit-vector validation and the results they return.

Neutral ground for :mod:`gallery_tools.gallery` (FAISS + SQLite) and
:mod:`gallery_tools.milvus_backend`, so neither backend imports the other. numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from gallery_tools.errors import GalleryError

__all__ = ["Match", "CheckReport", "normalised", "unit_rows", "members", "NORM_TOL"]

NORM_TOL = 1e-3  # a stored vector's norm may differ from 1 by this much (float32 round-off)


class Match(NamedTuple):
    """One search hit: the identity, the matched face and the cosine similarity."""

    identity: int
    face_id: int
    score: float


@dataclass
class CheckReport:
    """Result of a backend's ``check()``: ``ok`` is True when ``problems`` is empty."""

    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        return "ok" if self.ok else "\n".join(f"- {p}" for p in self.problems)


def normalised(vectors: Any, d: int) -> np.ndarray:
    """Validate ``(n, d)`` finite non-zero vectors (a single ``(d,)`` one is taken as ``(1, d)``);
    return L2-normalised ``(n, d)`` float32 rows (a copy). Anything else: GalleryError."""
    try:
        x = np.array(vectors, dtype=np.float32, copy=True, order="C")
    except (TypeError, ValueError) as exc:
        raise GalleryError(f"vectors cannot be read as a float matrix ({exc})") from None
    if x.ndim == 1 and x.shape[0] == d:
        x = x[None]
    if x.ndim != 2 or x.shape[1] != d:
        raise GalleryError(f"expected vectors of shape (n, {d}), got {x.shape}")
    if not np.isfinite(x).all():
        raise GalleryError("vectors contain NaN or inf")
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    if (norms == 0).any():
        raise GalleryError(f"{int((norms == 0).sum())} vector(s) are all zero and cannot be normalised")
    x /= norms[:, None]
    return x


def unit_rows(block: np.ndarray) -> bool:
    """True when every row of ``(n, d)`` float32 ``block`` is finite with unit norm."""
    norms = np.sqrt(np.einsum("ij,ij->i", block, block))
    return bool(np.isfinite(norms).all() and np.abs(norms - 1).max(initial=0) <= NORM_TOL)


def members(values: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """``(n,)`` bool: which ``(n,)`` ``values`` occur in ascending ``sorted_keys`` (a binary
    search each, no sort of the million values as ``np.isin`` / ``np.unique`` would do)."""
    if len(sorted_keys) == 0:
        return np.zeros(len(values), bool)
    at = np.minimum(np.searchsorted(sorted_keys, values), len(sorted_keys) - 1)
    return sorted_keys[at] == values
