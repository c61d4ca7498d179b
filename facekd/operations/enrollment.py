"""Enrolment: a folder-per-identity tree into the workspace's gallery, with the deployed encoder.

Takes an open workspace as its first argument and never imports :mod:`facekd.workspace`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from facekd.errors import WorkspaceError
from facekd.faces import image_limits

if TYPE_CHECKING:
    from facekd.state.workspace import WorkspaceState

__all__ = ["enroll"]


def enroll(ws: "WorkspaceState", tree: str | os.PathLike, *, ids_csv: str | os.PathLike | None = None,
           progress: bool = True, merge: bool = False):
    """Enrol a folder-per-identity tree with the edited encoder and commit.

    Images that cannot be used (unreadable, over the image limits, unsupported, no face) are
    skipped and listed in ``result.skipped``; ``merge`` allows ids CSV rows that would put
    two folders, or a new folder and an enrolled person, under one id. Returns
    gallery_tools' ``EnrollResult``.
    """
    ws.require_writable()
    from gallery_tools import enroll as enroll_tree

    if not Path(tree).is_dir():
        raise WorkspaceError(f"{tree}: not a directory")
    erased = {e["identity_hash"] for e in ws.ledger()}
    with image_limits(ws.config.image_limits):
        # An erased id is never handed to a newcomer: its ledger entry would describe them.
        result = enroll_tree(tree, ws.encoder, ws.gallery, ids_csv=ids_csv,
                             aligned=ws.config.aligned, progress=progress, merge=merge,
                             reserved=lambda i: ws.hash_identity(i) in erased)
    if result.added:
        ws.commit()
    return result
