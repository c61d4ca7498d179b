"""Looking people up: who is in this photo (``search``), and which id a name was enrolled under.

Takes an open workspace as its first argument and never imports :mod:`facekd.workspace`.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np

from facekd.errors import WorkspaceError
from facekd.operations.measure import (identification_threshold, match_sample, match_threshold,
                                       threshold_note)
from facekd.state.config import as_identity

if TYPE_CHECKING:
    from facekd.state.workspace import WorkspaceState

__all__ = ["search", "identity_named", "CACHE_DIR"]

CACHE_DIR = "cache"  # derived data a workspace may keep (measure.gallery_strangers)


def search(ws: "WorkspaceState", image: str | os.PathLike, *, k: int = 5,
           identity: int | None = None) -> dict:
    """Best ``k`` gallery matches of the largest face in ``image``; with ``identity``, only
    that identity's faces are compared (a one-to-one check: is this that person?).

    ``match`` is judged at the one-to-many threshold (the gallery's FPIR ``config.fpir``: the
    score that share of never-enrolled people's photos exceed here) for a search, and at the
    one-to-one threshold (FAR ``config.far`` per pair) with ``identity``.

    Returns ``{"image": file name, "threshold": float | None, "threshold_kind": "fpir" | "far",
    "matches": [{"identity", "name", "face_id", "score", "match"}, ...]}``, best first.
    """
    if identity is not None:
        identity = as_identity(identity)
        if not ws.gallery.has_identity(identity):
            raise WorkspaceError(f"unknown identity {identity}; list them with "
                                 "`facekd identities`")
    path = Path(image)
    if path.is_dir():
        raise WorkspaceError(f"{path}: is a directory, not an image file")
    if not path.exists() and not path.is_symlink():
        raise WorkspaceError(f"{path}: no such image file")
    vecs, _, skipped = ws.embed_images([path], progress=False)
    if len(vecs) == 0:
        why = "; ".join(str(reason).removeprefix(f"{p}: ") for p, reason in skipped)
        raise WorkspaceError(f"{path.name}: no usable face ({why or 'none found'})")
    note = None
    if identity is None:
        found = match_sample(ws.gallery, ws.config, cache=ws.root / CACHE_DIR)
        thr, kind = identification_threshold(ws.gallery, ws.config, found), "fpir"
        note = threshold_note(found, ws.config)
    else:
        thr, kind = match_threshold(ws.gallery, ws.config), "far"
    if identity is None:
        matches = ws.gallery.search(vecs, k=k)[0]
    else:
        scores = np.asarray(ws.gallery.vectors(identity), np.float32) @ vecs[0]
        best = np.argsort(-scores, kind="stable")[:k]
        fids = ws.gallery.face_ids(identity)
        matches = [SimpleNamespace(identity=identity, face_id=fids[i], score=scores[i])
                   for i in best]
    names = {i.identity: i.name for i in ws.gallery.identities()}
    return {"image": path.name, "threshold": thr, "threshold_kind": kind,
            "threshold_note": note, "matches": [
        {"identity": int(m.identity), "name": names.get(m.identity), "face_id": int(m.face_id),
         "score": float(m.score), "match": bool(thr is not None and m.score > thr)}
        for m in matches]}


def identity_named(ws: "WorkspaceState", name: str) -> int:
    """The enrolled identity recorded under ``name`` (exact match).

    Names of erased people are not kept, so an erased person is found by id only.
    """
    ids = [int(i.identity) for i in ws.gallery.identities() if i.name == name]
    if not ids:
        raise WorkspaceError(f"no enrolled identity is named {name!r} (names of erased people "
                             "are not kept: use --identity with the id forget printed; list "
                             "enrolled ones with `facekd identities`)")
    if len(ids) > 1:
        raise WorkspaceError(f"{len(ids)} identities are named {name!r} "
                             f"({', '.join(map(str, ids[:5]))}); use --identity")
    return ids[0]
