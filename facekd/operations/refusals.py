"""Why forget refuses a request before committing it: an erasure that covers too few of the
person's photos (:func:`_coverage_refusal`), and top-up photos none of which comes near any of
the erasure's gates (:func:`_check_top_up_photos`: they may show someone else).
"""

from __future__ import annotations

import warnings

import numpy as np

from facekd.core.erasure import Erasure
from facekd.errors import WorkspaceError


def _coverage_refusal(cov: dict) -> str | None:
    """One line saying why an erasure that covers too little must not be committed, or None: a
    top-up step that covers none of the photos it was fitted on, or a coverage under the floor."""
    step = cov.get("step")
    if step is not None and step["in_sample"] == 0:
        return (f"refused: the further step would erase none of the {step['faces']} escaped "
                "photos, not even those it was fitted on: it would change nothing (the encoder "
                "may not tell this person apart from others)")
    if not cov.get("under_floor"):
        return None
    seen = "held-out" if cov["held_out"] else "seen (no held-out half)"
    what = ("too few of the person's new photos" if cov.get("from_others") else
            f"only {cov['covered']} of {cov['faces']} {seen} photos of the person")
    return (f"refused: the erasure would erase {what} "
            f"(coverage {cov['share']:.2f}, under [forget] min_coverage "
            f"{cov['floor']:.2f}; {cov['criterion']}): it would leave most of their faces as "
            "they were (the encoder may not tell them apart from others, or the photos are too "
            "few to learn them from)")


# A request photo "comes near" a gate when it scores above all but NEAR_SHARE of the enrolled
# faces under it. Counted in the gallery's own scores, not in hinge widths: a gate fitted on
# many photos has a hinge 3x softer (facekd.methods.scramble_defaults.WIDTHS), and 5 of its widths
# reached down to 45 % of other people's 5-photo folders (LFW + dlib) against 4 % at the old
# widths; the top 1 % of the gallery is where 5 of the old widths reached (1.1 % of faces).
NEAR_SHARE = 0.01
NEAR_GATE = 5.0    # hinge widths, when the gallery is too small to read NEAR_SHARE off
_NEAR_ROWS = 20_000  # gallery faces sampled to read the gates' scores


def _gate_nearness(acc: Erasure, x: np.ndarray) -> np.ndarray:
    """``(m, G)``: each row's score under each of the erasure's ``G`` gates in hinge widths
    from the gate's opening point (``(s - t0) / (s1 - t0)``: 0 at the opening, 1 fully open).
    ``x`` ``(m, d)``: rows as the tail receives them."""
    from facekd.core.tail import GateChain

    x = np.asarray(x, np.float64)
    cols = [st.hinge(x) for st in acc.tail if isinstance(st, GateChain)]
    return np.concatenate(cols, axis=1) if cols else np.empty((len(x), 0))


def _near_levels(acc: Erasure, gallery: np.ndarray) -> np.ndarray:
    """``(G,)`` the level each gate must be cleared at to count as near: the ``1 - NEAR_SHARE``
    quantile of the enrolled faces' scores (a seeded sample of at most ``_NEAR_ROWS``), or
    ``-NEAR_GATE`` when fewer than 2 faces are enrolled. The stored faces stand for their tail
    input: a face no gate touched (nearly all) is stored unchanged."""
    if len(gallery) < 2:
        return np.full(acc.n_gates, -NEAR_GATE)
    rng = np.random.default_rng(0)
    rows = (np.arange(len(gallery)) if len(gallery) <= _NEAR_ROWS
            else np.sort(rng.choice(len(gallery), _NEAR_ROWS, replace=False)))
    return np.quantile(_gate_nearness(acc, gallery[rows]), 1.0 - NEAR_SHARE, axis=0)


def _check_top_up_photos(acc: Erasure, base_rows: np.ndarray, gallery: np.ndarray,
                         force: bool) -> list[str]:
    """Refuse (unless ``force``) top-up photos ``base_rows`` ``(m, d)`` (base encoder) none of
    which comes near any of the erasure's gates (scores above all but ``NEAR_SHARE`` of the
    enrolled faces ``gallery`` ``(N, d)`` under it, :func:`_near_levels`): they may show someone
    else, whom a further step fitted on them would erase. Escaped photos of the person sit below
    their gate but near it; an unrelated face sits where the gallery does. Returns the checks
    ``force`` overrode (``["request photos"]`` or ``[]``)."""
    if acc.n_gates == 0:
        return []  # a linear erasure has no gate to ask; the person's gallery faces are gone
    near = _gate_nearness(acc, acc.linear_part().apply(base_rows))
    if np.any(near > _near_levels(acc, gallery)[None, :]):
        return []
    msg = (f"none of the {len(base_rows)} --images photos comes near any gate of the erasure: "
           "they may not show the erased person")
    if not force:
        raise WorkspaceError(msg + "; check the folder, or pass --force")
    warnings.warn(msg + " (--force given)", RuntimeWarning, stacklevel=5)
    return ["request photos"]
