"""The public workspace: ``Workspace.open(...)`` / ``Workspace.init(...)`` and its operations.

:class:`Workspace` is :class:`facekd.state.workspace.WorkspaceState` (config, gallery, encoder
state, ledger, receipts, the commits) plus one-line methods that delegate to the operations in
:mod:`facekd.operations`, so it reads like an estimator: ``ws.enroll(tree)``, ``ws.forget(id)``,
``ws.verify(id)``, ``ws.search(image)``, ``ws.export_onnx(out)``, ``ws.check()``. It sits above
the operations (they take the state object and never import this module) and below the CLI;
following ``ws.forget`` only goes down: this facade -> :func:`facekd.operations.forget.forget` ->
the state's ``commit_deletion`` -> the gallery (docs/architecture.md).

Importing it loads no heavy library: the operations import gallery_tools and FAISS, the encoders,
scikit-learn and OpenCV inside the functions that need them.
"""

from __future__ import annotations

import os

from facekd.errors import WorkspaceError
from facekd.faces import IMAGE_SUFFIXES
from facekd.faces.photos import list_images
from facekd.operations import (calibrate, check, enrollment, export, forget, measure, search,
                               verify)
from facekd.operations.forget import ForgetResult
from facekd.operations.verify import VerifyResult
from facekd.state.config import CONFIG_NAME, Config
from facekd.state.workspace import WorkspaceState, default_workspace

# Re-exported, so `from facekd.workspace import ...` is the one import a caller needs (the demo
# lists images with IMAGE_SUFFIXES; tests read Config, CONFIG_NAME and the result types here).
__all__ = ["CONFIG_NAME", "Config", "Workspace", "WorkspaceError", "ForgetResult", "VerifyResult",
           "default_workspace", "list_images", "IMAGE_SUFFIXES"]


class Workspace(WorkspaceState):
    """An open workspace (see :class:`~facekd.state.workspace.WorkspaceState` for its state, opening
    and commits) with the operations as methods. Use :meth:`init` / :meth:`open`, and as a context
    manager."""

    def enroll(self, tree: str | os.PathLike, *, ids_csv: str | os.PathLike | None = None,
               progress: bool = True, merge: bool = False):
        """Enrol a folder-per-identity tree with the edited encoder and commit; see
        :func:`facekd.operations.enrollment.enroll`."""
        return enrollment.enroll(self, tree, ids_csv=ids_csv, progress=progress, merge=merge)

    def calibrate(self, images: str | os.PathLike | None = None, *, clear: bool = False,
                  progress: bool = True) -> dict:
        """Store photos of people enrolled nowhere (or ``clear`` them) to read the one-to-many
        MATCH threshold off; see :func:`facekd.operations.calibrate.calibrate`."""
        return calibrate.calibrate(self, images, clear=clear, progress=progress)

    def identity_named(self, name: str) -> int:
        """The enrolled identity named ``name``; see :func:`facekd.operations.search.identity_named`."""
        return search.identity_named(self, name)

    def search(self, image: str | os.PathLike, *, k: int = 5, identity: int | None = None) -> dict:
        """Best ``k`` gallery matches of the largest face in ``image`` (only ``identity``'s faces
        when given); see :func:`facekd.operations.search.search`."""
        return search.search(self, image, k=k, identity=identity)

    def match_threshold(self) -> float | None:
        """Config threshold, or the gallery's impostor score at FAR ``config.far`` ("auto")."""
        return measure.match_threshold(self.gallery, self.config)

    def export_onnx(self, out: str | os.PathLike, *, fp16: bool = False, original: bool = False,
                    force: bool = False, bake_preprocessing: bool = False):
        """Export the edited (or, with ``original``, the base) encoder as ONNX; returns the
        ExportReport; see :func:`facekd.operations.export.export_onnx`."""
        return export.export_onnx(self, out, fp16=fp16, original=original, force=force,
                                  bake_preprocessing=bake_preprocessing)

    def export_to_insightface_pack(self, pack: str | os.PathLike, *,
                                   out: str | os.PathLike | None = None, in_place: bool = False,
                                   fp16: bool = False, original: bool = False) -> dict:
        """Write the edited (or original) encoder into an insightface model pack; see
        :func:`facekd.operations.export.export_to_insightface_pack`."""
        return export.export_to_insightface_pack(self, pack, out=out, in_place=in_place,
                                                 fp16=fp16, original=original)

    def check(self) -> dict:
        """Consistency of gallery, encoder state, ledger and receipt files (re-creates missing
        receipt files); see :func:`facekd.operations.check.check`."""
        return check.check(self)

    def forget(self, identity: int, *, method: str | None = None, p: float | None = None,
               k: int | None = None, energy: float | None = None,
               images: str | os.PathLike | None = None, dry_run: bool = False,
               progress: bool = True, force: bool = False) -> ForgetResult:
        """Erase ``identity`` from encoder and gallery, measure, and commit atomically; see
        :func:`facekd.operations.forget.forget`."""
        return forget.forget(self, identity, method=method, p=p, k=k, energy=energy,
                             images=images, dry_run=dry_run, progress=progress, force=force)

    def verify(self, identity: int, *, images: str | os.PathLike | None = None,
               progress: bool = True, record: bool = True) -> VerifyResult:
        """Judge whether an erased identity is still found (PASS / FAIL / INCONCLUSIVE); see
        :func:`facekd.operations.verify.verify`."""
        return verify.verify(self, identity, images=images, progress=progress, record=record)
