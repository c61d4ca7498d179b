"""The half of a gallery backend that lives in SQLite, shared by both backends.

:class:`StoreBacked` is the base of :class:`gallery_tools.Gallery` (FAISS) and
:class:`gallery_tools.milvus_backend.MilvusGallery`: the open/writable guards, the properties
every backend has, the face rows held in memory, and the reads and ``meta`` writes that go
straight to the :class:`gallery_tools.store.Store` (faces, identities, settings, meta). What
differs between backends (vectors, search, changes, save, check) is theirs.

A subclass sets, when it opens: ``_dir`` (Path), ``_store`` (Store), ``_closed``,
``_writable``, ``_dim``, ``_generation``, ``_fingerprint``, and the committed-or-pending face
rows ``_ids`` ``(N,)`` int64 ascending with their identities ``_labels`` ``(N,)`` int64; and it
defines ``close()`` (which ``with`` calls on exit).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, TypeVar

import numpy as np

from gallery_tools.errors import GalleryError
from gallery_tools.vectors import normalised

if TYPE_CHECKING:
    from gallery_tools.store import Store

_B = TypeVar("_B", bound="StoreBacked")


class StoreBacked:
    """Guards, properties and SQLite-backed reads common to every gallery backend."""

    _dir: Path
    _store: Store | None
    _closed: bool
    _writable: bool
    _dim: int
    _generation: int
    _fingerprint: str
    _ids: np.ndarray
    _labels: np.ndarray
    _lock: Any  # the writer lock (a filelock.FileLock) or None

    def _close_backend(self) -> None:
        """Close what a backend holds besides the store and the writer lock (files, a server
        connection); :meth:`_release` calls it first."""

    def _release(self) -> None:
        """Close everything the gallery holds, the writer lock last; safe after a failed open."""
        try:
            self._close_backend()
        finally:
            try:
                if self._store is not None:
                    self._store.close()
            finally:
                self._store = None
                if self._lock is not None:
                    self._lock.release()
                    self._lock = None
                self._closed = True

    def _require_open(self) -> None:
        if self._closed:
            raise GalleryError("the gallery is closed")

    def _require_writable(self) -> None:
        self._require_open()
        if not self._writable:
            raise GalleryError("the gallery was opened read-only (open it with writable=True)")

    # ------------------------------------------------------------------ properties
    @property
    def path(self) -> Path:
        return self._dir

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def generation(self) -> int:
        """Generation number of the last committed save this object loaded or wrote."""
        return self._generation

    @property
    def writable(self) -> bool:
        return self._writable

    @property
    def encoder_fingerprint(self) -> str:
        return self._fingerprint

    def set_encoder_fingerprint(self, fp: str) -> None:
        """Record the encoder the vectors now belong to (e.g. after folding an erasure in)."""
        self._require_writable()
        if not isinstance(fp, str) or not fp:
            raise GalleryError("encoder fingerprint must be a non-empty string")
        self._store.set_settings({"encoder_fingerprint": fp})
        self._fingerprint = fp

    def __len__(self) -> int:
        return int(len(self._ids))

    def __enter__(self: _B) -> _B:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ face rows
    def _checked_faces(self, vectors: object, identities: object, names: Sequence | None,
                       sources: Sequence | None, source_sha256: Sequence | None
                       ) -> tuple[np.ndarray, np.ndarray]:
        """``add``'s arguments checked alike by both backends: ``(n, d)`` unit float32 vectors and
        ``(n,)`` int64 identities; the optional per-face lists must have ``n`` entries."""
        x = normalised(vectors, self._dim)
        n = x.shape[0]
        ident = np.asarray(identities)
        if ident.ndim == 0:
            ident = ident.reshape(1)
        if ident.shape != (n,) or not (np.issubdtype(ident.dtype, np.integer)
                                       or (ident.size == 0 and ident.dtype == np.float64)):
            raise GalleryError(f"identities must be ({n},) integers, got {ident.dtype} {ident.shape}")
        for name, seq in (("names", names), ("sources", sources), ("source_sha256", source_sha256)):
            if seq is not None and len(seq) != n:
                raise GalleryError(f"{name} has {len(seq)} entries for {n} vectors")
        return x, ident.astype(np.int64)

    def labels(self) -> np.ndarray:
        """``(N,)`` int64 identity of each row of ``vectors()``."""
        self._require_open()
        return self._labels.copy()

    def face_ids(self, identity: int | None = None) -> np.ndarray:
        """``(n,)`` int64 face ids (ascending), of one identity or all."""
        self._require_open()
        if identity is None:
            return self._ids.copy()
        return self._ids[self._labels == int(identity)]

    # ------------------------------------------------------------------ metadata
    def has_identity(self, identity: int) -> bool:
        self._require_open()
        return self._store.has_identity(int(identity))

    def identity_has_folder(self, identity: int, folder: str) -> bool:
        """True when some face of ``identity`` was enrolled from a file in a folder named ``folder``
        (a re-run of the same enrolment, not a second person under the same id)."""
        self._require_open()
        return any(Path(src).parent.name == folder for src in self._store.sources(int(identity)))

    def has_source(self, sha256: str) -> bool:
        """True when a face enrolled from a file with this sha256 (hex) is stored."""
        self._require_open()
        return self._store.has_source(str(sha256))

    def known_sources(self, shas: Sequence[str]) -> set[str]:
        """The subset of ``shas`` already enrolled (batched :meth:`has_source`)."""
        self._require_open()
        return self._store.known_sources(shas)

    def get_meta(self, key: str) -> bytes | None:
        self._require_open()
        return self._store.get_meta(key)

    def set_meta(self, key: str, value: bytes) -> None:
        """Store ``value`` under ``key``; committed with the next ``save()``, all or nothing."""
        self._require_writable()
        self._store.set_meta(key, value)

    def delete_meta(self, key: str) -> None:
        self._require_writable()
        self._store.delete_meta(key)
