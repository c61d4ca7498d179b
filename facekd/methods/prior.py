"""A within-identity prior for gates fitted on few photos: how much one person's photos vary.

One photo says nothing about how the person's *other* photos differ from it; everyone else in the
gallery does. Pooled over the gallery's identities (the within half of a two-covariance PLDA
model):

* ``within`` ``Sw`` ``(d, d)``: the pooled within-identity covariance, used by the gated scramble's
  discriminant as the person's own spread (:mod:`facekd.methods.scramble`), so that directions
  in which anyone's photos vary cannot separate the person from the gallery;
* ``pairs`` ``(P, 2)``: two photos of one gallery identity each. A gate fitted on the first
  photo alone (without that identity in the gallery) and scored on the second shows how a
  one-photo gate covers a new photo: the person's own cover is estimated from these held-out
  identities when there is no second photo of theirs to cross-validate with.

Pure numpy; imports nothing from the project.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["WithinPrior"]


@dataclass(frozen=True)
class WithinPrior:
    """Within-identity variation pooled over a labelled gallery.

    Attributes: ``within`` ``(d, d)`` float64 pooled within covariance (divisor: faces minus
    identities); ``pairs`` ``(P, 2)`` int64 rows of ``x`` holding two photos of one identity;
    ``identities``: how many identities with >= 2 faces it was pooled over.
    """

    within: np.ndarray
    pairs: np.ndarray
    identities: int

    @classmethod
    def fit(cls, x: np.ndarray, labels: np.ndarray, *, max_pairs: int = 1000,
            seed: int = 0) -> "WithinPrior | None":
        """Pool ``x`` ``(N, d)`` unit rows labelled ``labels`` ``(N,)``; ``None`` when fewer
        than 2 identities have 2 or more faces (no within variation to learn from)."""
        x = np.asarray(x, np.float64)
        _, inv, counts = np.unique(np.asarray(labels).ravel(), return_inverse=True,
                                   return_counts=True)
        many = counts >= 2
        if many.sum() < 2:
            return None
        rows = np.flatnonzero(many[inv])
        sums = np.zeros((len(counts), x.shape[1]))
        np.add.at(sums, inv[rows], x[rows])
        dev = x[rows] - (sums / counts[:, None])[inv[rows]]
        within = dev.T @ dev / max(len(rows) - int(many.sum()), 1)
        # Seeded same-identity pairs, each identity weighted by its faces: a random face, then a
        # random other face of its identity.
        rng = np.random.default_rng([seed, 11])
        first = rng.choice(rows, size=min(max_pairs, len(rows)), replace=False)
        order = np.argsort(inv, kind="stable")
        start = np.r_[0, np.cumsum(counts)[:-1]]
        pos = np.empty(len(order), np.int64)
        pos[order] = np.arange(len(order))
        c = counts[inv[first]]
        k = pos[first] - start[inv[first]]
        j = (k + 1 + rng.integers(0, c - 1)) % c  # never k itself
        second = order[start[inv[first]] + j]
        return cls(within=within, pairs=np.c_[first, second].astype(np.int64),
                   identities=int(many.sum()))
