"""Handing the encoder out: the edited (or, on request, the original) encoder as an ONNX file or
inside an insightface model pack. The writing is :mod:`facekd.encoders.onnx_export` and
:mod:`facekd.encoders.insightface_pack`; this module chooses the encoder and protects the workspace.

Takes an open workspace as its first argument and never imports :mod:`facekd.workspace`.
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from facekd.state.workspace import WorkspaceState

__all__ = ["export_onnx", "export_to_insightface_pack"]


def _chosen_encoder(ws: "WorkspaceState", original: bool):
    """The deployed encoder, or the base one (with a warning once anyone has been erased)."""
    if original and ws.ledger():
        warnings.warn("exporting the ORIGINAL encoder: it still recognises every erased person",
                      RuntimeWarning, stacklevel=4)
    return ws.base_encoder if original else ws.encoder


def export_onnx(ws: "WorkspaceState", out: str | os.PathLike, *, fp16: bool = False,
                original: bool = False, force: bool = False, bake_preprocessing: bool = False):
    """Export the edited (or, with ``original``, the base) encoder; returns the ExportReport.

    ``bake_preprocessing``: the file takes raw RGB pixels through a Sub/Mul head (for
    insightface; see :mod:`facekd.encoders.onnx_head`).

    The target must lie outside the workspace and be absent, or an ONNX model, or (with
    ``force``) any regular file; see :func:`facekd.encoders.onnx_export.check_target`.
    """
    from facekd.encoders.onnx_export import check_target, export

    check_target(out, protect=[ws.root], force=force)
    enc = _chosen_encoder(ws, original)
    return export(enc, out, fp16=fp16, bake_preprocessing=bake_preprocessing)


def export_to_insightface_pack(ws: "WorkspaceState", pack: str | os.PathLike, *,
                               out: str | os.PathLike | None = None, in_place: bool = False,
                               fp16: bool = False, original: bool = False) -> dict:
    """Write the edited (or original) encoder into an insightface model pack where
    ``FaceAnalysis`` loads it: a copy at ``out``, or ``in_place`` with a backup beside the
    pack (see :mod:`facekd.encoders.insightface_pack`)."""
    from facekd.encoders.insightface_pack import export_to_pack

    enc = _chosen_encoder(ws, original)
    source = getattr(ws.base_encoder, "path", None)  # an ONNX encoder's own file
    return export_to_pack(enc, ws.base_encoder.fingerprint, pack, out=out,
                          in_place=in_place, fp16=fp16, protect=(ws.root,),
                          keep=(source,) if source else ())
