"""Photos of people enrolled nowhere, kept to read the one-to-many MATCH threshold directly.

The MATCH threshold is the score that a share ``fpir`` of never-enrolled people's photos reach
in a search of the gallery. Without such photos it is read off the gallery's own faces, each
searched against the other identities (:func:`facekd.core.verdict.strangers`); a gallery of a
few dozen faces holds too few of them to read a 1 % quantile, and the normal tail fitted instead
(:func:`facekd.core.verdict.fpir_threshold`) let 4.8 % of never-enrolled people's photos MATCH
on LFW galleries of 15 people with one photo each. A :class:`Background` is the operator's own
sample of the people the deployment meets but never enrolled (``facekd calibrate``): each photo's
best score against the whole gallery is one real never-enrolled search, and :func:`pool` adds
those searches to the gallery's own, so that with about ``10 / fpir`` of them the quantile is read
off real searches rather than extrapolated.

The vectors are the deployed encoder's, like the gallery's, and every committed erasure is
applied to them as to the gallery (a face an erased person's gate opens on is scrambled here
too). No file path or name is kept: a photo is a vector and the index of the person it belongs
to (one per sub-folder; each photo its own person in a flat folder).

Pure math: numpy and :class:`facekd.core.verdict.Strangers` only.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from facekd.core.verdict import Strangers

__all__ = ["Background", "pool"]

# A stored vector's norm may stray this far from 1 (float32 rounding after erasures) and still
# be taken for a unit row; more means the blob was damaged or written by something else.
_NORM_TOL = 1e-3


@dataclass(frozen=True)
class Background:
    """Never-enrolled people's photos: ``vectors`` ``(n, d)`` float32 unit rows of the deployed
    encoder, ``groups`` ``(n,)`` int64 in ``[0, people)``: the person each photo shows, so
    that the threshold's bootstrap resamples people, not photos."""

    vectors: np.ndarray
    groups: np.ndarray

    def __post_init__(self) -> None:
        v, g = np.asarray(self.vectors), np.asarray(self.groups)
        if v.ndim != 2 or g.shape != (len(v),):
            raise ValueError(f"a background needs (n, d) vectors and (n,) groups, got {v.shape} "
                             f"and {g.shape}")
        if len(v) and not np.all(np.isfinite(v)):
            raise ValueError("background vectors hold NaN or infinity")
        if len(v) and np.max(np.abs(np.linalg.norm(v, axis=1) - 1.0)) > _NORM_TOL:
            raise ValueError("background vectors are not unit rows")
        if len(g) and (g.min() < 0 or not np.issubdtype(g.dtype, np.integer)):
            raise ValueError("background groups must be non-negative integers")

    @property
    def photos(self) -> int:
        return int(len(self.vectors))

    @property
    def people(self) -> int:
        return int(len(np.unique(self.groups)))

    @property
    def dim(self) -> int:
        return int(np.asarray(self.vectors).shape[1])

    def to_bytes(self) -> bytes:
        """``.npz`` bytes (``vectors`` float32, ``groups`` int64), e.g. for the gallery meta."""
        buf = io.BytesIO()
        np.savez(buf, vectors=np.asarray(self.vectors, np.float32),
                 groups=np.asarray(self.groups, np.int64))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, *, dim: int | None = None) -> "Background":
        """Inverse of :meth:`to_bytes`; ``ValueError`` on anything else, or on vectors of another
        dimension than ``dim``."""
        try:
            with np.load(io.BytesIO(bytes(data)), allow_pickle=False) as z:
                vectors, groups = np.asarray(z["vectors"], np.float32), np.asarray(z["groups"])
        except Exception as exc:  # a damaged blob fails inside numpy/zipfile in many ways
            raise ValueError(f"not a background ({type(exc).__name__})") from None
        out = cls(vectors, groups)
        if dim is not None and out.photos and out.dim != int(dim):
            raise ValueError(f"background vectors have d={out.dim}, the encoder d={dim}")
        return out


def pool(found: Strangers, best: np.ndarray, groups: np.ndarray) -> Strangers:
    """The gallery's own stranger searches (``found``) and the background's, as one sample for
    :func:`facekd.core.verdict.fpir_threshold`.

    Args:
        found: the gallery's faces searched against the other identities.
        best: ``(n,)`` each background photo's best cosine to the whole gallery.
        groups: ``(n,)`` the person each shows (:attr:`Background.groups`).

    Returns:
        A :class:`~facekd.core.verdict.Strangers` for the threshold only: labels are
        renumbered (the gallery's identities ``0..k-1``, the background's people ``k + group``,
        so that no two people share one), and the background rows' ``odds`` are NaN (they play
        no gallery identity; not for :func:`~facekd.core.verdict.stranger_baseline`).
    """
    b = np.asarray(best, np.float64).ravel()
    g = np.asarray(groups, np.int64).ravel()
    if b.shape != g.shape:
        raise ValueError(f"best {b.shape} and groups {g.shape} differ")
    ids, own = np.unique(np.asarray(found.labels), return_inverse=True)
    return Strangers(np.concatenate([np.asarray(found.odds, np.float64), np.full(len(b), np.nan)]),
                     np.concatenate([np.asarray(found.best, np.float64), b]),
                     np.concatenate([own.astype(np.int64).ravel(), len(ids) + g]))
