"""A facekd workspace's state: config, gallery, encoder state, ledger and receipts in one directory.

Layout::

    WORKSPACE/
      config.toml      encoder spec, alignment, thresholds, acceptance bound, forget defaults
      gallery/         the gallery_tools.Gallery (FAISS vectors + SQLite metadata; with a Milvus
                       backend only the SQLite metadata, see gallery_tools.backend)
      receipts/        <receipt_id>.json, derived copies of the receipts held in the gallery

Every piece of *mutable* state lives in the gallery's meta table, so one ``Gallery.save()``
commits model state, gallery, ledger and receipt together or not at all:

=================== ==========================================================================
``salt``            per-workspace HMAC key for identity hashes (hex)
``encoder_state``   JSON ``{"base": sha256, "edited": sha256, "d": int, "family": str}``
``erasure``         the accumulated :class:`~facekd.core.erasure.Erasure` (``.npz`` bytes)
``ledger``          JSON list, one entry per committed deletion or top-up (hashed identity only;
                    ``kind``: ``erasure`` or ``top-up``, absent in older entries: an erasure)
``receipt:<id>``    each receipt's JSON
``background``      optional: never-enrolled people's photos as the deployed encoder's vectors
                    (:class:`~facekd.core.background.Background` ``.npz`` bytes; ``facekd
                    calibrate``), edited with the gallery at every commit
=================== ==========================================================================

The edited encoder is never stored: it is rebuilt on load as
``base_encoder.with_erasure(accumulated)`` (folding is cheap) and its fingerprint compared with
``encoder_state``. Gallery vectors are always those of the *current* edited encoder, L2-normalised.
Because every edit is a function of the final embedding (a linear map, or a gate that returns faces
below it unchanged), applying a new erasure to stored vectors equals re-enrolling the original
images with the newly edited encoder, which is why forgetting needs no images.

This module holds that state and opens, creates and commits workspaces, nothing more:
:meth:`WorkspaceState.commit_deletion` (or :meth:`WorkspaceState.commit_top_up`) is forget's one
atomic write. It sits below the operations (:mod:`facekd.operations`), which take a
``WorkspaceState`` as their first argument, and imports none of them; the public
:class:`facekd.workspace.Workspace` (the layer above the operations) subclasses it and adds the
one-line methods ``ws.enroll(...)``, ``ws.forget(...)``, ``ws.verify(...)``... that delegate down.
The settings are :mod:`facekd.state.config`, the photos a user passes :mod:`facekd.faces.photos`.

Function-local imports, here and in the operations, are the heavy ones (gallery_tools and FAISS,
the encoders and torch/onnx, scikit-learn and scipy through the metrics, tqdm): importing the
workspace (the CLI's commands, facekd.demo and facekd.evaluation.report do) loads none of them,
OpenCV included, until an operation needs it, which keeps ``facekd --help`` and the light
commands fast.
"""

from __future__ import annotations

import json
import os
import shutil
import tomllib
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from facekd.core.background import Background
from facekd.core.erasure import Erasure
from facekd.errors import FacekdError, WorkspaceError
from facekd.faces.photos import embed_images
from facekd.state import receipt as rc
from facekd.state.config import CONFIG_NAME, Config, as_identity

__all__ = ["WorkspaceState", "default_workspace", "read_background", "VERIFICATIONS_KEY",
           "BACKGROUND_KEY"]

VERIFICATIONS_KEY = "verifications"  # gallery meta: the recorded verify outcomes (JSON list)
BACKGROUND_KEY = "background"  # gallery meta: facekd calibrate's never-enrolled photos (.npz)


def read_background(gallery: Any) -> Background | None:
    """The gallery's stored :class:`~facekd.core.background.Background` (``None`` when
    ``facekd calibrate`` never stored one); a damaged one is refused, never used."""
    raw = gallery.get_meta(BACKGROUND_KEY)
    if raw is None:
        return None
    try:
        return Background.from_bytes(raw, dim=getattr(gallery, "dim", None))
    except ValueError as exc:
        raise WorkspaceError(f"gallery meta {BACKGROUND_KEY!r} is damaged ({exc}); store it "
                             "again with `facekd calibrate --images DIR` or drop it with "
                             "`facekd calibrate --clear`") from None


def default_workspace() -> Path:
    """``$FACEKD_WORKSPACE`` or ``./facekd-workspace``."""
    return Path(os.environ.get("FACEKD_WORKSPACE", "facekd-workspace"))


class WorkspaceState:
    """An open workspace's state. Use :meth:`init` / :meth:`open`, and as a context manager.

    Read-only opens share the gallery; ``writable=True`` takes the gallery's lock.
    """

    def __init__(self, root: Path, config: Config, gallery: Any, writable: bool):
        self.root = root
        self.config = config
        self.gallery = gallery
        self.writable = writable
        self._base = None
        self._edited = None

    # -------------------------------------------------------------- lifecycle
    @classmethod
    def init(cls, root: str | os.PathLike, encoder: str, *, aligned: bool = False,
             index: str = "flat", match_threshold: float | None = None,
             backend: str = "faiss") -> "WorkspaceState":
        """Create a workspace for encoder spec ``encoder`` (``dlib``, ``onnx:PATH``...) whose
        gallery vectors live in ``backend`` (``faiss``, ``milvus://HOST:PORT/NAME``,
        ``milvus-lite:PATH``; see gallery_tools.backend)."""
        from facekd.encoders import load_encoder
        from gallery_tools.backend import create_backend

        root = Path(root)
        if (root / CONFIG_NAME).exists() or (root / "gallery").exists():
            raise WorkspaceError(f"{root}: already holds a workspace")
        cfg = Config(encoder=encoder, aligned=aligned, index=index, match_threshold=match_threshold,
                     backend=backend)
        cfg.validate()
        enc = load_encoder(encoder)
        made_root = not root.exists()
        root.mkdir(parents=True, exist_ok=True)
        try:
            gallery = create_backend(backend, root / "gallery", enc.dim,
                                     encoder_fingerprint=enc.fingerprint, index=index)
            try:
                gallery.set_meta("salt", rc.new_salt().encode())
                gallery.set_meta("encoder_state", json.dumps(
                    {"base": enc.fingerprint, "edited": enc.fingerprint, "d": enc.dim,
                     "family": enc.family}).encode())
                gallery.set_meta("erasure", Erasure.identity(enc.dim).to_bytes())
                gallery.set_meta("ledger", b"[]")
                gallery.save()
            finally:
                gallery.close()
        except BaseException:
            # A failed init (server unreachable, disk full, Ctrl-C) leaves no half workspace
            # behind: nothing here holds user data yet, and no config.toml was written.
            shutil.rmtree(root if made_root else root / "gallery", ignore_errors=True)
            raise
        # config.toml last: its presence is what marks a finished workspace.
        import tomli_w

        rc.write_atomic(root / CONFIG_NAME, tomli_w.dumps(cfg.to_toml()).encode())
        ws = cls.open(root)
        ws._base = ws._edited = enc
        return ws

    @classmethod
    def open(cls, root: str | os.PathLike | None = None, *, writable: bool = False,
             lock_timeout: float = 10.0, verify: bool = True) -> "WorkspaceState":
        """Open a workspace; ``verify`` refuses gallery files whose checksum changed (``check``
        opens with ``verify=False`` and reports it instead)."""
        from gallery_tools.backend import open_backend

        root = Path(root) if root is not None else default_workspace()
        cfg_path = root / CONFIG_NAME
        if not cfg_path.is_file():
            raise WorkspaceError(f"{root}: not a facekd workspace (no {CONFIG_NAME}); "
                                 "create one with `facekd init --encoder SPEC`")
        try:
            cfg = Config.from_toml(tomllib.loads(cfg_path.read_text(encoding="utf-8")), str(cfg_path))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise WorkspaceError(f"{cfg_path}: invalid TOML ({exc})") from None
        if writable and (root / "gallery").is_dir() and not os.access(root / "gallery", os.W_OK):
            raise WorkspaceError(f"{root}: the workspace is read-only (cannot write to "
                                 f"{root / 'gallery'}); this command changes it")
        gallery = open_backend(cfg.backend, root / "gallery", writable=writable,
                               lock_timeout=lock_timeout, verify=verify)
        return cls(root, cfg, gallery, writable)

    def close(self) -> None:
        if self.gallery is not None:
            self.gallery.close()
            self.gallery = None

    def __enter__(self) -> "WorkspaceState":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------- state in meta
    def _meta_json(self, key: str, default: Any = None) -> Any:
        """The JSON value of meta ``key``; ``default`` when it is absent and a default is given
        (an optional key), else an error (a key every workspace has)."""
        raw = self.gallery.get_meta(key)
        if raw is None:
            if default is not None:
                return default
            raise WorkspaceError(f"{self.root}: gallery meta lacks {key!r}; not a facekd workspace")
        try:
            return json.loads(bytes(raw).decode())
        except ValueError:  # bad UTF-8 or JSON: the database was damaged or edited by hand
            raise WorkspaceError(f"{self.root / 'gallery'}: gallery meta {key!r} is damaged "
                                 "(not JSON)") from None

    @property
    def salt(self) -> str:
        raw = self.gallery.get_meta("salt")
        if raw is None:
            raise WorkspaceError(f"{self.root}: gallery meta lacks the identity salt")
        return bytes(raw).decode()

    @property
    def encoder_state(self) -> dict:
        return self._meta_json("encoder_state")

    @property
    def erasure(self) -> Erasure:
        """The accumulated erasure of every committed deletion (identity map if none)."""
        raw = self.gallery.get_meta("erasure")
        if raw is None:
            raise WorkspaceError(f"{self.root}: gallery meta lacks the accumulated erasure")
        try:
            return Erasure.from_bytes(raw)
        except FacekdError:
            raise
        except Exception as exc:  # a damaged blob fails inside numpy/zipfile in many ways
            raise WorkspaceError(f"{self.root / 'gallery'}: gallery meta 'erasure' is damaged "
                                 f"({type(exc).__name__})") from None

    def ledger(self) -> list[dict]:
        """Committed deletions, oldest first (hashed identities only)."""
        return self._meta_json("ledger")

    def verifications(self) -> list[dict]:
        """Recorded ``verify`` outcomes, oldest first (:mod:`facekd.operations.verify`; ``[]`` when none)."""
        out = self._meta_json(VERIFICATIONS_KEY, default=[])
        if not isinstance(out, list):
            raise WorkspaceError(f"{self.root / 'gallery'}: gallery meta 'verifications' is "
                                 "damaged (not a list)")
        return out

    @property
    def background(self) -> Background | None:
        """The never-enrolled photos ``facekd calibrate`` stored (:func:`read_background`)."""
        return read_background(self.gallery)

    def commit_background(self, background: Background | None) -> int:
        """Store ``background`` (vectors of the deployed encoder) or, with ``None``, drop the
        stored one; one save. The new generation (which also retires the derived caches)."""
        self.require_writable()
        if background is None:
            self.gallery.delete_meta(BACKGROUND_KEY)
        else:
            self.gallery.set_meta(BACKGROUND_KEY, background.to_bytes())
        return self.commit()

    def receipt(self, receipt_id: str) -> dict:
        raw = self.gallery.get_meta(f"receipt:{receipt_id}")
        if raw is None:
            raise WorkspaceError(f"no receipt {receipt_id!r}; list them with `facekd ledger`")
        try:
            return json.loads(bytes(raw).decode())
        except ValueError:
            raise WorkspaceError(f"receipt {receipt_id} in the gallery meta is damaged") from None

    def hash_identity(self, identity: int) -> str:
        return rc.hash_identity(as_identity(identity), self.salt)

    def erased_entries(self, identity: int) -> list[dict]:
        """Ledger entries for ``identity`` (matched by its salted hash)."""
        h = self.hash_identity(identity)
        return [e for e in self.ledger() if e["identity_hash"] == h]

    # -------------------------------------------------------------- encoders
    @property
    def base_encoder(self):
        """The original encoder named in the config; its fingerprint must match the workspace's."""
        if self._base is None:
            from facekd.encoders import load_encoder

            enc = load_encoder(self.config.encoder)
            want = self.encoder_state["base"]
            if enc.fingerprint != want:
                raise WorkspaceError(
                    f"encoder {self.config.encoder!r} has fingerprint {enc.fingerprint[:12]}..., "
                    f"but this workspace was built with {want[:12]}...; the model file changed")
            self._base = enc
        return self._base

    @property
    def encoder(self):
        """The deployed (edited) encoder: ``base_encoder.with_erasure(accumulated erasure)``."""
        if self._edited is None:
            acc = self.erasure
            enc = self.base_encoder if acc.is_identity else self.base_encoder.with_erasure(acc)
            want = self.encoder_state["edited"]
            if enc.fingerprint != want:
                # Folding is float64 maths cast to float32; another BLAS may round differently.
                warnings.warn(f"edited encoder fingerprint {enc.fingerprint[:12]}... differs from "
                              f"the recorded {want[:12]}... (different numeric library?)",
                              RuntimeWarning, stacklevel=2)
            self._edited = enc
        return self._edited

    def embed_images(self, paths: list[Path], *, progress: bool = True,
                     base: bool = False) -> tuple[np.ndarray, list, list]:
        """Embed image files with the deployed (edited) encoder, or with ``base`` the original one,
        under the configured image limits: ``((m, d) float32 unit rows, source paths (m,),
        skipped [(path, reason)])``; see :func:`facekd.faces.photos.embed_images`. ``self.erasure
        .apply(base rows)`` equals the deployed encoder's rows (a top-up needs the base rows to
        see which gates each photo opens)."""
        return embed_images(self.base_encoder if base else self.encoder, paths,
                            aligned=self.config.aligned, limits=self.config.image_limits,
                            progress=progress)

    # -------------------------------------------------------------- commits
    def require_writable(self) -> None:
        if not self.writable:
            raise WorkspaceError("workspace opened read-only")

    def commit(self) -> int:
        """Commit the gallery and every meta key set since the last commit; the new generation."""
        return int(self.gallery.save())

    def commit_deletion(self, identity: int, step: Erasure, combined: Erasure, edited: Any,
                        receipt: dict, entry: dict, *,
                        before_save: Callable[[], None] | None = None) -> tuple[int, int]:
        """Remove ``identity``'s faces, apply ``step`` to every other stored vector, and record
        ``combined`` (the new accumulated erasure), the ``edited`` encoder's fingerprint, the
        ledger ``entry`` and the ``receipt``: one ``gallery.save()`` commits them all or nothing.

        Returns ``(faces removed, new generation)``. ``before_save`` runs just before the save
        (the forget pipeline's kill-test hook).
        """
        self.require_writable()
        removed = int(self.gallery.remove(identity))
        return removed, self._commit_edit(step, combined, edited, receipt, entry, before_save)

    def commit_top_up(self, step: Erasure, combined: Erasure, edited: Any, receipt: dict,
                      entry: dict, *, before_save: Callable[[], None] | None = None) -> int:
        """As :meth:`commit_deletion` for a top-up of an identity already erased (nothing to
        remove): apply ``step`` to every stored vector and record ``combined``, the ``edited``
        fingerprint, the ledger ``entry`` and the ``receipt`` in one save; the new generation."""
        self.require_writable()
        return self._commit_edit(step, combined, edited, receipt, entry, before_save)

    def _commit_edit(self, step: Erasure, combined: Erasure, edited: Any, receipt: dict,
                     entry: dict, before_save: Callable[[], None] | None) -> int:
        """The shared body of the two commits: everything but removing an identity."""
        base = self.base_encoder
        # The background is what never-enrolled people's photos give under the deployed encoder:
        # edited with the gallery, in the same save (read before any change: damage refuses).
        background = self.background
        self.gallery.apply(step)
        if background is not None and background.photos:
            self.gallery.set_meta(BACKGROUND_KEY, Background(
                step.apply(background.vectors), background.groups).to_bytes())
        self.gallery.set_encoder_fingerprint(edited.fingerprint)
        ledger = self.ledger() + [entry]
        self.gallery.set_meta("erasure", combined.to_bytes())
        self.gallery.set_meta("encoder_state", json.dumps(
            {"base": base.fingerprint, "edited": edited.fingerprint, "d": combined.d,
             "family": base.family}).encode())
        self.gallery.set_meta("ledger", json.dumps(ledger).encode())
        self.gallery.set_meta(f"receipt:{receipt['receipt_id']}", rc.to_json(receipt).encode())
        if before_save is not None:
            before_save()
        generation = self.commit()
        self._edited = edited
        return generation

    def receipt_path(self, receipt_id: str) -> Path:
        """Where the derived copy of a committed receipt lives: ``receipts/<id>.json``."""
        return self.root / "receipts" / f"{receipt_id}.json"

    def write_receipt_file(self, receipt_id: str, data: bytes) -> Path:
        """(Re)write the derived receipt file atomically from the committed JSON bytes; a
        ``receipts`` folder that is a symbolic link is refused (it would write outside)."""
        folder = self.root / "receipts"
        if folder.is_symlink():
            raise WorkspaceError(f"{folder}: is a symbolic link; receipts are written inside the "
                                 "workspace only (replace it with a folder)")
        return rc.write_atomic(self.receipt_path(receipt_id), data)

    def identities(self) -> list:
        return self.gallery.identities()
