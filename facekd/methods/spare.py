"""Which enrolled people a gate spares: the mean faces of those nearest it, and the cosine above
which a face counts as one of them.

A gate fitted on few photos opens on a share of everyone else's new photos (0.25 % per one-photo
gate on LFW + dlib), and in sequence those shares add up: 50 one-photo erasures scrambled 15 % of
everyone else's new photos and cost them 10.4 rank-1 points. Nearly all of those photos are of
someone enrolled whose mean face sits near the gate, and they match that mean face far better
than the erased person's photos do (the erased person is no longer enrolled). A step that lets a
face through when it matches one of the ``M`` enrolled mean faces nearest its gate
(:class:`facekd.core.tail.GateChain`'s ``known``) keeps that cost down without touching the
erased person's photos: the cosine is read off enrolled strangers of those people, and it is
never below the erased person's own photos' cosine to that mean face plus a margin for photos not
yet seen (docs/benchmarks.md, "Sparing the enrolled").

Pure math: numpy and scipy, two names from :mod:`facekd.core.tail` and the sparing quantiles
from :mod:`facekd.methods.scramble_defaults`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facekd.core.tail import NO_SPARE, normalize_rows
from facekd.methods.scramble_defaults import SPARE, SPARE_FEW

__all__ = ["SPARE", "SPARE_FACES", "SPARE_FEW", "Spare", "fit_spare"]

# Mean faces per gate: the enrolled identities it scores highest. On LFW + dlib the identity that
# spared a face was among the 10 nearest in 97 % of cases and among the 40 nearest in all.
SPARE_FACES = 32
_MIN_CALIBRATION = 20  # enrolled faces needed to read the cosine off
# Where nobody near the gate has two photos (an ID-photo gallery), the within-identity s.d. of a
# photo's cosine to other people's mean faces is taken as this share of the s.d. of the
# strangers' cosines. Measured near one-photo gates (the 64 identities it scores highest, 5
# photos each, 12 gates): 0.32-0.38 on LFW + dlib, 0.37-0.45 FaceNet, 0.41-0.46 the tiny
# encoder; the top of that range, so the margin errs on the erased person's side. With a margin
# of 0 an ID-photo gallery's gates spared 6-8 % of the person's new photos as look-alikes (LFW,
# 62 people, one photo each; docs/benchmarks.md, "ID-photo galleries").
BLIND_RATIO = 0.45


@dataclass(frozen=True)
class Spare:
    """``known`` ``(SPARE_FACES, d)`` unit mean faces (zero rows pad), ``t`` ``(SPARE_FACES,)``
    the cosine to each above which a face is spared (``facekd.core.tail.NO_SPARE``: never), and
    ``spared`` ``(N,)`` bool: the gallery faces a new photo like them would be spared as (each
    against its identity's mean without it)."""

    known: np.ndarray
    t: np.ndarray
    spared: np.ndarray
    faces: int  # how many of ``known`` are real mean faces


def _group_sums(x: np.ndarray, group: np.ndarray) -> np.ndarray:
    """``(G, ...)`` column sums of the rows of ``x`` by ``group`` ``(N,)`` (ints from 0)."""
    from scipy import sparse

    onehot = sparse.csr_matrix((np.ones(len(x)), (group, np.arange(len(x)))),
                               shape=(int(group.max()) + 1, len(x)))
    return np.asarray(onehot @ x)


def _identity_sums(x: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                 np.ndarray]:
    """``(inverse (N,), sums (J, d), counts (J,))`` of the unit rows ``x`` by identity."""
    inv = np.unique(groups, return_inverse=True)[1].ravel()
    return inv, _group_sums(x, inv), np.bincount(inv)


def _group_nanmean(x: np.ndarray, group: np.ndarray) -> np.ndarray:
    """``(G, M)`` per-group column means of ``(r, M)`` ``x`` ignoring NaN."""
    ok = ~np.isnan(x)
    return _group_sums(np.where(ok, x, 0.0), group) / np.maximum(_group_sums(ok * 1.0, group), 1)


def fit_spare(gallery: np.ndarray, groups: np.ndarray | None, person: np.ndarray,
              w: np.ndarray, b: float, *, q: float = SPARE,
              faces: int = SPARE_FACES) -> Spare:
    """The enrolled people a gate ``s(x) = x . w + b`` spares: the mean faces it scores highest.

    Args:
        gallery: ``(N, d)`` unit float64 faces of everyone else; groups: ``(N,)`` identities
            (``None``: unknown, nobody is spared).
        person: ``(n, d)`` unit photos of the erased person. A face is spared as someone only
            above the person's photos' cosine to that someone's mean face plus a margin (2.326
            pooled within-identity s.d.: how much closer an unseen photo may sit): the person
            comes first.
        q: the quantile of enrolled strangers' cosines (faces of the ``2 * faces`` identities
            nearest the gate, each against the chosen mean faces of other identities) above
            which a face is spared; 0: nobody is spared.

    A mean face the gate opens on is a candidate too: a wide gate (one photo) opens on its
    nearest look-alikes' mean faces, and they are the people it costs most. What keeps the
    person erased is the cosine, not the gate: a look-alike, or the person enrolled a second
    time under another identity, is spared only above the person's own photos plus the margin
    (LFW + dlib, people enrolled twice: one-photo gates left the double out in 7 of 12 and kept
    it at cosines of 0.98-1.0 in the rest, and let the person's new photos through no more often
    than when doubles were never spared).
    """
    d = gallery.shape[1]
    none = Spare(np.zeros((max(faces, 0), d)), np.full(max(faces, 0), NO_SPARE),
                 np.zeros(len(gallery), bool), 0)
    if groups is None or q <= 0 or faces < 1 or len(gallery) < _MIN_CALIBRATION:
        return none
    inv, sums, counts = _identity_sums(gallery, groups)
    means = normalize_rows(sums)
    order = np.argsort(-(means @ w + b), kind="stable")[:2 * faces]
    cal = np.isin(inv, order)
    if len(order) < 2 or cal.sum() < _MIN_CALIBRATION:
        return none
    # Enrolled strangers of the people nearest the gate: each face against the others' mean
    # faces. Their cosine's q-quantile is where a face counts as one of them.
    cos = gallery[cal] @ means[order].T
    own = inv[cal][:, None] == order[None, :]
    cos[own] = np.nan
    t = float(np.nanquantile(np.nanmax(cos, axis=1), q))
    # How far one photo's cosine to someone else's mean face strays from its identity's usual
    # (pooled within-identity s.d.): an unseen photo of the person may sit that much closer.
    local = np.unique(inv[cal], return_inverse=True)[1].ravel()
    multi = np.bincount(local)[local] >= 2  # a lone photo's deviation from itself is no spread
    if multi.any():
        dev = (cos - _group_nanmean(cos, local)[local])[multi]
        within = float(np.sqrt(np.nanmean(dev ** 2)))
    else:  # an ID-photo gallery: the spread from the strangers' (BLIND_RATIO)
        within = BLIND_RATIO * float(np.nanstd(cos))
    margin = 2.326 * within
    # The person comes first: a face is spared as someone only above the person's own photos'
    # cosine to that someone's mean face plus the margin (a sibling's threshold rises; their
    # most typical photos are still spared, the person's unseen ones are not).
    each = np.maximum(t, (person @ means[order].T).max(axis=0) + margin)
    keep = each < 1
    near, each = order[keep][:faces], each[keep][:faces]
    if len(near) == 0 or not 0 < t < 1:
        return none
    known = means[near]
    # Which gallery faces would be spared as new photos: their own mean face taken without them.
    cos = gallery @ known.T
    column = np.full(len(means), -1)
    column[near] = np.arange(len(near))
    own = np.flatnonzero(column[inv] >= 0)
    col = column[inv[own]]
    rest = counts[inv[own]] - 1
    loo = normalize_rows(sums[inv[own]] - gallery[own])
    cos[own, col] = np.where(rest > 0, np.einsum("nd,nd->n", gallery[own], loo), -np.inf)
    padded, thresholds = np.zeros((faces, d)), np.full(faces, NO_SPARE)
    padded[:len(near)], thresholds[:len(near)] = known, each
    return Spare(padded, thresholds, (cos > each).any(axis=1), int(len(near)))
