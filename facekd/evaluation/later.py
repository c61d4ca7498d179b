"""People enrolled after an erasure, for ``facekd bench``: what an erasure costs them.

A gate spares the enrolled people it scores highest (:mod:`facekd.methods.spare`), not people
enrolled after it, and in a gallery of tens of people that cost is the larger one: on LFW one
erasure fitted on 2-3 photos among 15 people cost people enrolled later 4-10 rank-1 points where
everyone enrolled lost under 0.1 (docs/benchmarks.md, "Fourteenth round"). So the bench measures
them apart, where the dataset holds people outside the workspace (``--gallery-people``): each has
their first photo enrolled into the edited gallery after the erasure and up to
``LATER_PHOTOS - 1`` more searching it, as ``benchmarks/bench_later.py`` does. Beside the rank-1
they lose: the share of their photos the edit changes, and what forget says of it (the gate's
estimate ``params["strangers_touched"]`` and the top of its 95 % interval,
:func:`facekd.operations.costs.later_bound`), so a reader sees on their own data whether forget's
line holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facekd.core.erasure import Erasure
from facekd.core.metrics import identification_hits
from facekd.methods import unit_rows as _unit
from facekd.operations.costs import later_bound

__all__ = ["CHANGED", "LATER_METRICS", "Later", "changed_share", "later_figures"]

LATER_PHOTOS = 10       # per person: one enrolled after the erasure, the rest searching
MAX_LATER_PEOPLE = 200  # a seeded draw beyond this: enough for a share of a few percent
CHANGED = 0.999         # an edited photo whose cosine to its original is below this "changed"
LATER_METRICS = ("later_rank1", "later_lost", "later_changed", "later_estimate", "later_bound",
                 "later_over")


def changed_share(edited: np.ndarray, original: np.ndarray) -> float:
    """The share of rows of ``original`` ``(n, d)`` unit embeddings that ``edited`` (the same
    rows after an erasure) changed: cosine below :data:`CHANGED`."""
    return float(np.mean(np.sum(edited * original, axis=1) < CHANGED))


@dataclass(frozen=True)
class Later:
    """People enrolled after the erasure: ``x`` ``(L, d)`` float32 unit rows of their photos,
    ``y`` ``(L,)`` their identities, ``first`` ``(L,)`` bool: the photo each has enrolled (the
    others search). Every identity holds one enrolled photo and at least one search."""

    x: np.ndarray
    y: np.ndarray
    first: np.ndarray

    @classmethod
    def draw(cls, x: np.ndarray, y: np.ndarray, people: np.ndarray, seed: int) -> Later | None:
        """From ``people`` (identities of ``y`` outside the workspace; a seeded draw of
        ``MAX_LATER_PEOPLE`` where there are more) with 2 or more photos, their first
        ``LATER_PHOTOS`` photos in dataset order; None when nobody qualifies."""
        counts = {int(p): int(np.sum(y == p)) for p in people}
        ok = np.array(sorted(p for p, c in counts.items() if c >= 2), np.int64)
        if len(ok) > MAX_LATER_PEOPLE:
            ok = np.sort(np.random.default_rng([seed, 11]).choice(ok, MAX_LATER_PEOPLE,
                                                                 replace=False))
        if not len(ok):
            return None
        rows = np.concatenate([np.flatnonzero(y == p)[:LATER_PHOTOS] for p in ok])
        first = np.r_[True, y[rows][1:] != y[rows][:-1]]
        return cls(_unit(x[rows]), y[rows], first)

    @property
    def people(self) -> int:
        return int(self.first.sum())

    @property
    def searches(self) -> int:
        return int((~self.first).sum())

    def rank1(self, x: np.ndarray, gallery: np.ndarray, gallery_y: np.ndarray) -> float:
        """Rank-1 (fraction) of their searches ``x[~first]`` against ``gallery`` ``(g, d)``
        with their enrolled photos ``x[first]`` added (``x``: their photos as the deployed
        encoder gives them)."""
        hits = identification_hits(np.vstack([gallery, x[self.first]]),
                                   np.r_[gallery_y, self.y[self.first]], x[~self.first],
                                   self.y[~self.first])
        return float(hits.mean())


def later_figures(later: Later, edit: Erasure, gallery0: np.ndarray, gallery: np.ndarray,
                  gallery_y: np.ndarray) -> dict[str, float | None]:
    """What one erasure ``edit`` costs people enrolled after it (percent; :data:`LATER_METRICS`),
    and whether forget's figure for them (its ``params``) holds.

    ``gallery0`` / ``gallery`` ``(g, d)``: the enrolled faces before and after ``edit``, labelled
    ``gallery_y``. ``later_over`` is 100 where the share changed is above the top of forget's
    interval, 0 where not (a mean over erasures is then the share of erasures it was short);
    None for an erasure that states no figure (a method without a gate)."""
    lx = _unit(edit.apply(later.x))
    before = later.rank1(later.x, gallery0, gallery_y)
    after = later.rank1(lx, gallery, gallery_y)
    changed = changed_share(lx, later.x)
    params = edit.params or {}
    estimate, bound = params.get("strangers_touched"), later_bound(params)
    return {"later_rank1": 100 * after, "later_lost": 100 * (before - after),
            "later_changed": 100 * changed,
            "later_estimate": None if estimate is None else 100 * float(estimate),
            "later_bound": None if bound is None else 100 * bound,
            "later_over": None if bound is None else 100.0 * (changed > bound)}
