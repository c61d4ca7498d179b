"""``calibrate``: keep photos of people enrolled nowhere, to read the MATCH threshold off them.

A one-to-many search labels MATCH above the score that a share ``fpir`` of never-enrolled
people's photos reach. Read off the gallery alone, a gallery of a few dozen faces cannot give a
1 % quantile (LFW, 15 people with one photo each: 4.8 % of never-enrolled people's photos
labelled MATCH at FPIR 1 %, docs/benchmarks.md, "MATCH in small galleries"). The operator's own
photos of the people the deployment meets but does not enrol (visitors, a public photo set of a
similar population) are real never-enrolled searches: with about ``10 / fpir`` of them the
quantile is read off them directly (:mod:`facekd.core.background`).

Takes an open workspace as its first argument and never imports :mod:`facekd.workspace`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facekd.core.background import Background
from facekd.errors import WorkspaceError
from facekd.faces.photos import list_images

if TYPE_CHECKING:
    from facekd.state.workspace import WorkspaceState

__all__ = ["MAX_PHOTOS", "calibrate", "background_summary"]

# At most this many photos are kept (a seeded sample of more): enough for FPIR 1e-3 to be read
# off them (TAIL_EXCEEDANCES / 1e-3), 5 MB in the gallery meta at d = 128, 20 MB at 512.
MAX_PHOTOS = 10_000


def _people(folder: Path, sources: list) -> np.ndarray:
    """``(n,)`` person index per photo: its first sub-folder under ``folder``; a photo directly
    in ``folder`` is a person of its own (nothing says two such photos show one person)."""
    keys = []
    for i, src in enumerate(sources):
        parts = Path(src).relative_to(folder).parts
        keys.append(parts[0] if len(parts) > 1 else f"\0{i}")
    _, groups = np.unique(np.array(keys, dtype=object), return_inverse=True)
    return groups.astype(np.int64).ravel()


def background_summary(ws: "WorkspaceState") -> dict:
    """What is stored and the MATCH threshold it gives: ``{"photos", "people", "threshold",
    "extrapolated", "note"}`` (``photos`` 0 without a background)."""
    from facekd.core.verdict import tail_extrapolated
    from facekd.operations.measure import identification_threshold, match_sample, threshold_note
    from facekd.operations.search import CACHE_DIR

    background = ws.background
    sample = match_sample(ws.gallery, ws.config, cache=ws.root / CACHE_DIR)
    faces = int(sample.best.size)
    return {"photos": background.photos if background else 0,
            "people": background.people if background else 0,
            "threshold": identification_threshold(ws.gallery, ws.config, sample),
            "searches": faces, "fpir": float(ws.config.fpir),
            "extrapolated": bool(faces and tail_extrapolated(faces, float(ws.config.fpir))),
            "note": threshold_note(sample, ws.config)}


def calibrate(ws: "WorkspaceState", images: str | os.PathLike | None = None, *,
              clear: bool = False, progress: bool = True) -> dict:
    """Store (replacing any earlier) photos of people enrolled nowhere as the workspace's
    background, or with ``clear`` drop it; without either, only report.

    ``images``: a folder, one sub-folder per person (a photo directly in it counts as a person
    of its own). Photos are embedded with the deployed (edited) encoder; only the vectors and
    the person index are kept, no path or name. More than :data:`MAX_PHOTOS` usable faces are
    sampled down (seeded by the config's seed).

    Returns :func:`background_summary` after the change, plus ``"before"`` (the threshold
    before it), ``"skipped"`` ``[(path, reason)]`` and ``"sampled_from"`` (usable faces found).
    """
    if images is not None and clear:
        raise WorkspaceError("pass --images DIR or --clear, not both")
    if images is None and not clear:
        return background_summary(ws) | {"before": None, "skipped": [], "sampled_from": None}
    ws.require_writable()
    try:
        before = background_summary(ws)["threshold"]
    except WorkspaceError:
        if not clear:
            raise
        before = None  # a damaged background: --clear is how it is dropped
    skipped: list = []
    found = None
    if clear:
        background = None
    else:
        folder = Path(images)
        paths = list_images(folder)
        vectors, sources, skipped = ws.embed_images(paths, progress=progress)
        if len(vectors) == 0:
            raise WorkspaceError(f"{folder}: no usable face in any of the {len(paths)} images")
        groups = _people(folder, sources)
        found = len(vectors)
        if found > MAX_PHOTOS:
            keep = np.sort(np.random.default_rng(ws.config.seed).choice(found, MAX_PHOTOS,
                                                                          replace=False))
            vectors, groups = vectors[keep], groups[keep]
        background = Background(np.ascontiguousarray(vectors, np.float32), groups)
    ws.commit_background(background)
    return background_summary(ws) | {"before": before, "skipped": skipped, "sampled_from": found}
