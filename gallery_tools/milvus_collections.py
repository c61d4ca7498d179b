"""The Milvus half of :class:`gallery_tools.milvus_backend.MilvusGallery`: :class:`MilvusCollections`.

Creating and opening a Milvus gallery (the writer lock, the SQLite metadata, connecting, the
recovery of a crashed save: re-pointing the alias, dropping orphan collections), and the Milvus
calls every generation is built from (one collection per generation, the alias, inserts, reads
by primary key in batches). The layout and the save protocol are described in
:mod:`gallery_tools.milvus_backend`.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from filelock import FileLock, Timeout

from gallery_tools.backend_spec import BackendSpec
from gallery_tools.errors import GalleryError
from gallery_tools.metadata import StoreBacked
from gallery_tools.milvus_connect import connect, disconnect, reason
from gallery_tools.store import Store

DB_NAME = "gallery.sqlite"
LOCK_NAME = "writer.lock"
FORMAT = "facekd-gallery-milvus/1"
BATCH = 4096            # rows per insert during a rewrite
READ_BATCH = 8192       # rows per read by primary key (Milvus returns at most 16,384 per query)


class MilvusCollections(StoreBacked):
    """A Milvus gallery opened: :meth:`create`, :meth:`open`, recovery and the Milvus calls."""

    # ------------------------------------------------------------------ construction
    @classmethod
    def _blank(cls, path: Path, spec: BackendSpec) -> "MilvusCollections":
        self = object.__new__(cls)
        self._dir, self._spec = Path(path), spec
        self._store = self._lock = self._client = None
        self._closed = False
        return self

    @classmethod
    def create(cls, path: str | os.PathLike, dim: int, spec: BackendSpec, *,
               encoder_fingerprint: str) -> "MilvusCollections":
        """Create an empty gallery: metadata at ``path``, an empty collection behind the alias.

        Refuses a ``path`` that is not an empty directory and an alias that already exists.
        """
        path = Path(path)
        if not isinstance(dim, (int, np.integer)) or dim < 1:
            raise GalleryError(f"dim must be a positive integer, got {dim!r}")
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise GalleryError(f"{path}: exists and is not an empty directory")
        self = cls._blank(path, spec)
        try:
            self._client = connect(spec)
            if self._alias_target() is not None or self._client.has_collection(spec.name):
                raise GalleryError(f"Milvus already holds a collection or alias {spec.name!r}; "
                                   "choose another NAME or drop it first")
            path.mkdir(parents=True, exist_ok=True)
            self._take_lock(10.0)
            first = self._collection_name(0)
            self._create_collection(first, int(dim))
            self._store = Store.create(path / DB_NAME, {
                "format": FORMAT, "dim": str(int(dim)), "backend": str(spec),
                "collection": first, "encoder_fingerprint": str(encoder_fingerprint),
                "generation": "0", "faces": "0", "next_face_id": "0"})
            self._load(writable=True)
            self._point_alias()
        except BaseException:
            self._release()
            raise
        return self

    @classmethod
    def open(cls, path: str | os.PathLike, spec: BackendSpec, *, writable: bool = False,
             lock_timeout: float = 10.0) -> "MilvusCollections":
        """Open the committed generation; a writer first finishes what a crashed writer left
        (alias re-pointed, stale and half-written collections dropped, uncommitted rows
        deleted)."""
        path = Path(path)
        if not (path / DB_NAME).is_file():
            raise GalleryError(f"{path}: not a gallery (no {DB_NAME})")
        self = cls._blank(path, spec)
        try:
            if writable:
                self._take_lock(lock_timeout)
            self._store = Store.open(path / DB_NAME, writable=writable)
            self._client = connect(spec)
            self._load(writable=writable)
            if writable:
                self._recover()
        except BaseException:
            self._release()
            raise
        return self

    def _take_lock(self, timeout: float) -> None:
        lock = FileLock(str(self._dir / LOCK_NAME), timeout=timeout)
        try:
            lock.acquire()
        except Timeout:
            raise GalleryError(f"{self._dir}: another process holds the writer lock "
                               f"(waited {timeout:g} s); open read-only or retry later") from None
        except OSError as exc:
            raise GalleryError(f"{self._dir}: cannot take the writer lock "
                               f"({exc.strerror or exc})") from None
        self._lock = lock

    def _close_backend(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            disconnect(client, self._spec)

    def _load(self, *, writable: bool) -> None:
        st = self._store.settings()
        try:
            if st.get("format") != FORMAT:
                raise KeyError("format")
            self._dim = int(st["dim"])
            self._generation = int(st["generation"])
            self._collection = st["collection"]
            self._fingerprint = st["encoder_fingerprint"]
            self._next_face_id = self._committed_next = int(st["next_face_id"])
            n = int(st["faces"])
        except (KeyError, ValueError) as exc:
            raise GalleryError(f"{self._dir}: gallery settings are damaged or not a Milvus "
                               f"gallery ({exc})") from None
        # A Lite database's path follows the workspace (a relative --gallery path is resolved
        # against wherever the workspace is opened from, so it may be moved or copied whole);
        # a server's address and alias must match exactly.
        stored = str(st.get("backend", ""))
        if (stored.partition(":")[0] != "milvus-lite" if self._spec.kind == "milvus-lite"
                else stored != str(self._spec)):
            raise GalleryError(f"{self._dir}: gallery was created for {st.get('backend')}, "
                               f"the workspace names {self._spec}")
        self._writable = writable
        self._ids, self._labels = self._store.face_rows()
        self._committed_ids = self._ids
        if len(self._ids) != n:
            raise GalleryError(f"{self._dir}: database lists {len(self._ids)} faces, generation "
                               f"{self._generation} recorded {n}")
        if not self._call("has_collection", self._collection):
            raise GalleryError(f"Milvus lacks the committed collection {self._collection} of "
                               f"{self._dir} (dropped outside facekd?); restore it from a backup")
        self._call("load_collection", self._collection)
        self._reset_pending()

    def _reset_pending(self) -> None:
        self._removed = np.empty(0, np.int64)        # committed face ids removed since the save
        self._erasures: list = []                    # applied to committed rows at the save
        self._new_ids = np.empty(0, np.int64)        # faces added since the save ...
        self._new_labels = np.empty(0, np.int64)
        self._new_vecs = np.empty((0, self._dim), np.float32)  # ... with later erasures applied
        self._meta_dirty = False
        self._cache: tuple[np.ndarray, np.ndarray] | None = None  # committed (ids, raw vectors)

    def _recover(self) -> None:
        """Finish a crashed writer's work: the committed state decides, Milvus follows."""
        coll, nxt = self._collection, self._committed_next
        if self._count(coll, f"face_id >= {nxt}"):
            self._call("delete", coll, filter=f"face_id >= {nxt}")
            self._call("flush", coll)
        self._point_alias()
        for stale in self._stale_collections():
            self._call("drop_collection", stale)
        self._remove_lite_leftovers()

    def _remove_lite_leftovers(self) -> None:
        """Milvus Lite drops a collection with ``rmtree``; a kill in the middle can delete its
        ``schema.json`` first, after which Lite no longer lists the directory but the segment
        files (maybe an erased person's vectors) are still there. This process holds Lite's
        directory lock, so it deletes such unlisted directories of this gallery itself."""
        if self._spec.kind != "milvus-lite":
            return
        root = Path(self._spec.uri) / "collections"
        listed = set(self._call("list_collections"))
        for d in (root.iterdir() if root.is_dir() else ()):
            if d.is_dir() and self._is_generation(d.name) and d.name not in listed:
                shutil.rmtree(d)

    # ------------------------------------------------------------------ Milvus helpers
    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """One client call; a Milvus failure becomes a one-line GalleryError."""
        try:
            return getattr(self._client, method)(*args, **kwargs)
        except GalleryError:
            raise
        except Exception as exc:
            raise GalleryError(f"Milvus {method} failed: {reason(exc)}") from None

    def _collection_name(self, generation: int) -> str:
        return f"{self._spec.name}_g{generation:08d}"

    def _stale_collections(self) -> list[str]:
        """Collections of this gallery's other generations: old ones a crash left behind (they
        may hold erased faces) and half-written ones."""
        return sorted(c for c in self._call("list_collections")
                      if self._is_generation(c) and c != self._collection)

    def _is_generation(self, name: str) -> bool:
        return re.fullmatch(rf"{re.escape(self._spec.name)}_g\d{{8}}", name) is not None

    def _alias_target(self) -> str | None:
        try:
            return self._client.describe_alias(self._spec.name)["collection_name"]
        except Exception:  # "alias does not exist" is an exception in pymilvus
            return None

    def _point_alias(self) -> None:
        """Point the serving alias at the committed collection (create it the first time)."""
        target = self._alias_target()
        if target is None:
            self._call("create_alias", self._collection, self._spec.name)
        elif target != self._collection:
            self._call("alter_alias", self._collection, self._spec.name)

    def _create_collection(self, name: str, dim: int) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("face_id", DataType.INT64, is_primary=True)
        schema.add_field("identity", DataType.INT64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        params = self._client.prepare_index_params()
        # Exact search on Lite (what the parity test compares with FAISS); a server picks its
        # own index for the size it holds.
        kind = "FLAT" if self._spec.kind == "milvus-lite" else "AUTOINDEX"
        params.add_index(field_name="vector", index_type=kind, metric_type="IP")
        self._call("create_collection", name, schema=schema, index_params=params)

    def _count(self, coll: str, expr: str) -> int:
        rows = self._call("query", coll, filter=expr, output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def _insert(self, coll: str, ids: np.ndarray, labels: np.ndarray, vecs: np.ndarray) -> None:
        for s in range(0, len(ids), BATCH):
            rows = [{"face_id": int(i), "identity": int(l), "vector": v}
                    for i, l, v in zip(ids[s:s + BATCH], labels[s:s + BATCH], vecs[s:s + BATCH])]
            self._call("insert", coll, rows)

    def _batches(self, coll: str, fields: Sequence[str], ids: np.ndarray):
        """The rows of ``coll`` with primary keys ``ids`` (SQLite knows them), in batches of
        :data:`READ_BATCH`: ``(ids, labels, vectors)`` arrays (vectors ``(b, d)`` float32, or
        None when not asked for), each batch in no fixed order. Reading by key never touches
        other rows (a removed person's are not even read) and costs the same per row at any
        collection size, where query_iterator's cost per row grows with the collection (100k
        rows: 16 s against 6 s)."""
        for s in range(0, len(ids), READ_BATCH):
            rows = self._call("query", coll, ids=ids[s:s + READ_BATCH].tolist(),
                              output_fields=list(fields))
            got = np.fromiter((r["face_id"] for r in rows), np.int64, len(rows))
            labels = np.fromiter((r["identity"] for r in rows), np.int64, len(rows))
            vecs = (np.asarray([r["vector"] for r in rows], np.float32).reshape(-1, self._dim)
                    if "vector" in fields else None)
            yield got, labels, vecs

    def _committed(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ids (n,), raw vectors (n, d))`` of the committed collection in face-id order,
        read once and cached until the next save."""
        if self._cache is None:
            parts = list(self._batches(self._collection, ("face_id", "identity", "vector"),
                                       self._committed_ids))
            ids = np.concatenate([p[0] for p in parts]) if parts else np.empty(0, np.int64)
            vecs = (np.concatenate([p[2] for p in parts]) if parts
                    else np.empty((0, self._dim), np.float32))
            order = np.argsort(ids, kind="stable")
            self._cache = ids[order], vecs[order]
        return self._cache

    def _edit(self, vecs: np.ndarray) -> np.ndarray:
        """Committed vectors through the erasures queued since the save (in order)."""
        for e in self._erasures:
            vecs = e.apply(vecs)
        return np.asarray(vecs, np.float32)
