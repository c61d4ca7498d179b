"""The gallery backend interface the workspace works through, and the factory that picks one.

Two backends implement :class:`GalleryBackend`:

* ``faiss`` (default): :class:`gallery_tools.Gallery`, FAISS vectors + SQLite metadata in one
  directory; one machine.
* ``milvus://HOST:PORT/NAME`` or ``milvus-lite:PATH``:
  :class:`gallery_tools.milvus_backend.MilvusGallery`, vectors in a Milvus collection behind the
  alias ``NAME``, the same SQLite metadata (faces, identities, meta) in the gallery directory.

Both inherit :class:`gallery_tools.metadata.StoreBacked` (the SQLite half: guards, face rows,
identity and meta reads) and return :mod:`gallery_tools.vectors`' ``Match`` and ``CheckReport``.

Both keep the same contract: changes stay in memory until :meth:`GalleryBackend.save`, which
commits them all or none; after the save that follows :meth:`GalleryBackend.remove` no byte of
the removed faces' vectors is left in the backend's storage (:func:`find_traces` proves it for
storage on this machine).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from gallery_tools.backend_spec import (  # noqa: F401  (re-exported)
    DEFAULT_SPEC, LITE_NAME, BackendSpec, parse_spec)

__all__ = ["GalleryBackend", "BackendSpec", "parse_spec", "create_backend", "open_backend",
           "find_traces", "DEFAULT_SPEC"]

@runtime_checkable
class GalleryBackend(Protocol):
    """What the workspace needs of a gallery. Vectors are ``(n, d)`` float32, unit rows; face ids
    are ``(n,)`` int64, ascending, never reused; identities are int64."""

    @property
    def path(self) -> Path: ...
    @property
    def dim(self) -> int: ...
    @property
    def generation(self) -> int: ...
    @property
    def writable(self) -> bool: ...
    @property
    def encoder_fingerprint(self) -> str: ...

    def __len__(self) -> int: ...

    # changes (in memory until save)
    def add(self, vectors: Any, identities: Any, *, names: Sequence[str | None] | None = None,
            sources: Sequence[str | None] | None = None,
            source_sha256: Sequence[str | None] | None = None) -> np.ndarray:
        """Add faces; returns their new face ids."""

    def remove(self, identity: int) -> int:
        """Remove every face of ``identity``; returns how many."""

    def apply(self, erasure: Any) -> None:
        """Rewrite every stored vector as ``erasure.apply(v)`` (an identity removed just before
        is left out of the rewrite)."""

    def set_encoder_fingerprint(self, fp: str) -> None: ...
    def set_meta(self, key: str, value: bytes) -> None: ...
    def delete_meta(self, key: str) -> None: ...

    def save(self) -> int:
        """Commit every change atomically; returns the new generation number."""

    # reads
    def search(self, queries: Any, k: int = 1, threshold: float | None = None) -> list: ...
    def vectors(self, identity: int | None = None) -> np.ndarray: ...
    def labels(self) -> np.ndarray: ...
    def face_ids(self, identity: int | None = None) -> np.ndarray: ...
    def identities(self) -> list: ...
    def has_identity(self, identity: int) -> bool: ...
    def identity_has_folder(self, identity: int, folder: str) -> bool: ...
    def has_source(self, sha256: str) -> bool: ...
    def known_sources(self, shas: Sequence[str]) -> set[str]: ...
    def get_meta(self, key: str) -> bytes | None: ...

    def check(self, *, hashes: bool = True) -> Any:
        """A report with ``ok`` and ``problems``; never raises for an inconsistency."""

    def storage_files(self) -> list[Path]:
        """Files on this machine that hold the gallery's vectors ([] for a remote server)."""

    def close(self) -> None: ...


def _lite_path(spec: BackendSpec, gallery_dir: Path) -> BackendSpec:
    """A relative Lite path is relative to the workspace (the gallery directory's parent), so
    a workspace that holds its Lite database can be moved or copied as one directory."""
    p = Path(spec.uri)
    if spec.kind != "milvus-lite":
        return spec
    if not p.is_absolute():
        p = Path(gallery_dir).parent / p
    return BackendSpec(spec.kind, str(p), spec.name)


def create_backend(spec: str | None, path: str | os.PathLike, dim: int, *,
                   encoder_fingerprint: str, index: str = "flat") -> GalleryBackend:
    """Create an empty gallery of the given kind at ``path`` (its metadata directory)."""
    parsed = parse_spec(spec)
    if parsed.kind == "faiss":
        from gallery_tools.gallery import Gallery

        return Gallery.create(path, dim, encoder_fingerprint=encoder_fingerprint, index=index)
    from gallery_tools.milvus_backend import MilvusGallery

    return MilvusGallery.create(path, dim, _lite_path(parsed, Path(path)),
                                encoder_fingerprint=encoder_fingerprint)


def open_backend(spec: str | None, path: str | os.PathLike, *, writable: bool = False,
                 lock_timeout: float = 10.0, verify: bool = True) -> GalleryBackend:
    """Open the last committed state of a gallery of the given kind."""
    parsed = parse_spec(spec)
    if parsed.kind == "faiss":
        from gallery_tools.gallery import Gallery

        return Gallery.open(path, writable=writable, lock_timeout=lock_timeout, verify=verify)
    from gallery_tools.milvus_backend import MilvusGallery

    return MilvusGallery.open(path, _lite_path(parsed, Path(path)), writable=writable,
                              lock_timeout=lock_timeout)


def find_traces(files: Sequence[Path], vectors: np.ndarray, *, window: int = 16) -> list[str]:
    """Byte scan: which files contain the first ``window`` float32 values of any of ``vectors``
    (``(m, d)`` float32, as stored) verbatim. ``[]`` means no trace. 16 random-looking float32
    values (64 bytes) occur by chance with probability ~2^-512 per position.

    Messages name the file and how many vectors were found, never the vectors themselves.
    """
    x = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    needles = [row[:window].tobytes() for row in x]
    found = []
    for f in files:
        try:
            data = Path(f).read_bytes()
        except OSError:
            continue  # a file deleted while scanning holds nothing
        hits = sum(n in data for n in needles)
        if hits:
            found.append(f"{f}: holds {hits} of the {len(needles)} vectors")
    return found
