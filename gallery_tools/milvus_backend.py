"""A gallery whose vectors live in Milvus (a server or cluster, or Milvus Lite on this machine).

Layout: the gallery directory holds the same SQLite metadata as the FAISS backend
(``gallery.sqlite``: faces, identities, settings, meta; ``writer.lock``); Milvus holds the
vectors in a collection ``NAME_gGGGGGGGG`` with fields ``face_id`` (INT64, primary key),
``identity`` (INT64) and ``vector`` (FLOAT_VECTOR, d, unit rows; inner-product metric). The
alias ``NAME`` is what other services search.

Why a new collection per erasure: Milvus deletes and upserts are tombstones. The old rows'
bytes stay in the segment files until a compaction that Milvus Lite never runs (measured:
delete + flush + ``compact()`` leaves them; see tests/test_milvus_backend.py). The only deletion
that is physical on every deployment is dropping the collection that holds them.

``save()`` after a :meth:`remove` or :meth:`apply`:

1. write ``NAME_g<G+1>``: read every committed row except the removed faces out of
   ``NAME_g<G>`` by primary key in batches, apply the queued erasures, insert; flush; verify
   the row count;
2. commit one SQLite transaction holding the new collection's name, the generation, the face
   rows and every meta change (ledger, receipts, encoder state) -- **the commit point**;
3. point the alias ``NAME`` at ``NAME_g<G+1>``;
4. drop ``NAME_g<G>`` (the physical deletion).

A crash before 2 leaves generation G committed and served (the half-written collection is an
orphan the next writer drops, then it restarts the rewrite); after 2, generation G+1 is
committed and complete, and the next writer (every writable open) re-points the alias and drops
G. The alias therefore always names a complete collection; between a crash in 2..3 and the
next writer it still names G's. Saves with only additions insert into the serving collection
before the commit; rows above the committed ``next_face_id`` are invisible to searches (a
filter) and deleted by the next writer.

Connection settings come from the environment, never the config or logs: ``MILVUS_URI``
(overrides ``http://HOST:PORT``, e.g. for https), ``MILVUS_TOKEN`` or ``MILVUS_USER`` +
``MILVUS_PASSWORD``, ``MILVUS_DB_NAME``, ``MILVUS_TIMEOUT`` (seconds, default 10).
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
from gallery_tools.store import IdentityInfo, Store
from gallery_tools.vectors import NORM_TOL, CheckReport, Match, normalised

__all__ = ["MilvusGallery"]

DB_NAME = "gallery.sqlite"
LOCK_NAME = "writer.lock"
FORMAT = "facekd-gallery-milvus/1"
BATCH = 4096            # rows per insert during a rewrite
READ_BATCH = 8192       # rows per read by primary key (Milvus returns at most 16,384 per query)
STAGE_ENV = "FACEKD_TEST_MILVUS_STAGE"  # test hook: print a line at a named stage of save()


def _stage(name: str) -> None:
    """Test hook: with ``$FACEKD_TEST_MILVUS_STAGE`` set, print ``stage NAME``; set to
    ``pause:NAME``, also stop there (``$FACEKD_TEST_PAUSE_S``, default 120 s), so that a test's
    SIGKILL lands at that stage and not wherever a loaded machine let the process run on to."""
    value = os.environ.get(STAGE_ENV)
    if value:
        print(f"stage {name}", flush=True)
        if value == f"pause:{name}":
            import time

            time.sleep(float(os.environ.get("FACEKD_TEST_PAUSE_S", "120")))


class MilvusGallery(StoreBacked):
    """A face gallery in Milvus; get one with :meth:`create` or :meth:`open` (module docstring).

    Same contract as :class:`gallery_tools.Gallery`: changes stay in memory until :meth:`save`.
    """

    def __init__(self, *_args, **_kwargs):
        raise TypeError("use MilvusGallery.create(...) or MilvusGallery.open(...)")

    # ------------------------------------------------------------------ construction
    @classmethod
    def _blank(cls, path: Path, spec: BackendSpec) -> "MilvusGallery":
        self = object.__new__(cls)
        self._dir, self._spec = Path(path), spec
        self._store = self._lock = self._client = None
        self._closed = False
        return self

    @classmethod
    def create(cls, path: str | os.PathLike, dim: int, spec: BackendSpec, *,
               encoder_fingerprint: str) -> "MilvusGallery":
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
             lock_timeout: float = 10.0) -> "MilvusGallery":
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

    # ------------------------------------------------------------------ properties
    @property
    def collection(self) -> str:
        """The committed collection (the one the alias serves once this writer is done)."""
        return self._collection

    @property
    def alias(self) -> str:
        return self._spec.name

    def served_collection(self) -> str | None:
        """The collection the alias serves right now (None when there is no alias)."""
        self._require_open()
        return self._alias_target()

    def collections(self) -> list[str]:
        """This gallery's collections in Milvus: the committed one plus any a crash left."""
        self._require_open()
        return sorted([self._collection] + self._stale_collections())

    def __repr__(self) -> str:
        return (f"<MilvusGallery {self._spec} {self._collection} d={self._dim} faces={len(self)} "
                f"generation={self._generation}>")

    def close(self) -> None:
        """Release the lock and the connection; unsaved changes are discarded."""
        if not self._closed:
            self._release()

    # ------------------------------------------------------------------ reads
    def vectors(self, identity: int | None = None) -> np.ndarray:
        """Unit vectors ``(n, d)`` float32 in face-id order, as they will be after the next save."""
        self._require_open()
        if identity is None:
            ids, vecs = self._committed()
        elif self._cache is None:  # one person: a filtered query, not the whole collection
            rows = self._call("query", self._collection, output_fields=["face_id", "vector"],
                              filter=f"identity == {int(identity)} and "
                                     f"face_id < {self._committed_next}")
            ids = np.array([r["face_id"] for r in rows], np.int64)
            vecs = np.asarray([r["vector"] for r in rows], np.float32).reshape(-1, self._dim)
            order = np.argsort(ids)
            ids, vecs = ids[order], vecs[order]
        else:
            ids, vecs = self._committed()
        keep = np.isin(ids, self._ids)  # removed faces (and other identities) left out
        old = self._edit(vecs[keep])
        new = self._new_vecs
        if identity is not None:
            old = old[np.isin(ids[keep], self.face_ids(identity))]
            new = new[self._new_labels == int(identity)]
        return np.concatenate([old, new]).astype(np.float32, copy=False)

    def search(self, queries: Any, k: int = 1, threshold: float | None = None) -> list[list[Match]]:
        """Top-``k`` faces for each of ``(m, d)`` queries (normalised here), best first, by
        cosine similarity; ``threshold`` keeps matches scoring at least that. With unsaved
        changes the search is exact over :meth:`vectors` (what the save will commit)."""
        self._require_open()
        q = normalised(queries, self._dim)
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise GalleryError(f"k must be a positive integer, got {k!r}")
        if len(self._ids) == 0:
            return [[] for _ in range(q.shape[0])]
        k = int(min(k, len(self._ids), 16384))  # Milvus' largest limit
        if self._pending():
            return self._search_memory(q, k, threshold)
        hits = self._call("search", self._collection, data=list(q), limit=k, anns_field="vector",
                          output_fields=["identity"], search_params={"metric_type": "IP"},
                          filter=f"face_id < {self._committed_next}")
        out = []
        for row in hits:
            out.append([Match(int(h["entity"]["identity"]), int(h["face_id"]), float(h["distance"]))
                        for h in row if threshold is None or h["distance"] >= threshold])
        return out

    def _search_memory(self, q: np.ndarray, k: int, threshold: float | None) -> list[list[Match]]:
        vecs = self.vectors()
        scores = q @ vecs.T
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return [[Match(int(self._labels[j]), int(self._ids[j]), float(s[j])) for j in row
                 if threshold is None or s[j] >= threshold] for row, s in zip(top, scores)]

    def _pending(self) -> bool:
        return bool(len(self._removed) or self._erasures or len(self._new_ids))

    # ------------------------------------------------------------------ metadata
    def identities(self) -> list[IdentityInfo]:
        self._require_open()
        return self._store.identities()

    # ------------------------------------------------------------------ changes
    def add(self, vectors: Any, identities: Any, *, names: Sequence[str | None] | None = None,
            sources: Sequence[str | None] | None = None,
            source_sha256: Sequence[str | None] | None = None) -> np.ndarray:
        """Add ``(n, d)`` vectors (normalised here) for ``(n,)`` integer identities; returns the
        new ``(n,)`` int64 face ids (never reused). Same arguments as ``Gallery.add``."""
        self._require_writable()
        x, ident = self._checked_faces(vectors, identities, names, sources, source_sha256)
        n = x.shape[0]
        if n == 0:
            return np.empty(0, dtype=np.int64)
        face_ids = np.arange(self._next_face_id, self._next_face_id + n, dtype=np.int64)
        self._store.add_faces(face_ids, ident, names, sources, source_sha256)
        self._new_ids = np.concatenate([self._new_ids, face_ids])
        self._new_labels = np.concatenate([self._new_labels, ident])
        self._new_vecs = np.concatenate([self._new_vecs, x])
        self._ids = np.concatenate([self._ids, face_ids])
        self._labels = np.concatenate([self._labels, ident])
        self._next_face_id += n
        return face_ids

    def remove(self, identity: int) -> int:
        """Remove every face of ``identity``; returns how many. After :meth:`save` its vectors
        are in no collection (the one that held them is dropped). Unknown -> GalleryError."""
        self._require_writable()
        identity = int(identity)
        rows = np.flatnonzero(self._labels == identity)
        if len(rows) == 0 and not self._store.has_identity(identity):
            raise GalleryError(f"identity {identity} is not in the gallery")
        gone = self._ids[rows]
        self._removed = np.union1d(self._removed, gone[gone < self._committed_next])
        keep_new = ~np.isin(self._new_ids, gone)
        self._new_ids, self._new_labels = self._new_ids[keep_new], self._new_labels[keep_new]
        self._new_vecs = self._new_vecs[keep_new]
        self._ids, self._labels = np.delete(self._ids, rows), np.delete(self._labels, rows)
        n_db = self._store.remove_identity(identity)
        if n_db != len(rows):
            raise GalleryError(f"internal: database removed {n_db} faces, memory {len(rows)}")
        return int(len(rows))

    def apply(self, erasure: Any) -> None:
        """Queue ``normalize(v @ A)`` (the erasure) for every stored vector; the save rewrites
        the collection through it."""
        self._require_writable()
        if getattr(erasure, "d", None) != self._dim or not hasattr(erasure, "apply"):
            raise GalleryError(f"expected an Erasure of dimension {self._dim}, got {erasure!r}")
        if len(self._new_ids):
            self._new_vecs = np.asarray(erasure.apply(self._new_vecs), np.float32)
        self._erasures.append(erasure)

    # ------------------------------------------------------------------ persistence
    def save(self, *, progress: bool | None = None) -> int:
        """Commit every change atomically as a new generation; returns its number.

        ``progress``: a tqdm bar over the rewritten rows (None: only on a terminal).
        """
        self._require_writable()
        new = self._generation + 1
        old = self._collection
        rewrite = bool(len(self._removed) or self._erasures)
        if rewrite:
            target = self._rewrite(new, progress)
        else:
            target = old
            if len(self._new_ids):
                self._insert(old, self._new_ids, self._new_labels, self._new_vecs)
                self._call("flush", old)
        _stage("written")
        self._store.set_settings({"generation": str(new), "collection": target,
                                  "faces": str(len(self._ids)),
                                  "next_face_id": str(self._next_face_id),
                                  "encoder_fingerprint": self._fingerprint})
        self._store.commit()  # <- the commit point of generation `new`
        _stage("committed")
        self._generation, self._collection = new, target
        self._committed_next = self._next_face_id
        self._committed_ids = self._ids
        self._point_alias()
        _stage("aliased")
        if target != old:
            self._call("drop_collection", old)  # the physical deletion of the old rows
            self._store.vacuum()
        self._store.checkpoint()
        _stage("dropped")
        self._reset_pending()
        return new

    def _rewrite(self, generation: int, progress: bool | None) -> str:
        """Write collection ``NAME_g<generation>``: committed rows minus removed faces, through
        the queued erasures, plus the added faces; flushed and counted. Returns its name."""
        from facekd.progress import tqdm

        name = self._collection_name(generation)
        if self._call("has_collection", name):  # a crashed run's half-written copy: restart
            self._call("drop_collection", name)
        self._create_collection(name, self._dim)
        want = len(self._ids)
        bar = tqdm(total=want, desc="rewrite", unit="face", disable=None if progress is None else not progress,
                   leave=False)
        try:
            kept = np.setdiff1d(self._committed_ids, self._removed)
            for ids, labels, vecs in self._batches(self._collection,
                                                   ("face_id", "identity", "vector"), kept):
                self._insert(name, ids, labels, self._edit(vecs))
                bar.update(len(ids))
                _stage("batch")
            self._insert(name, self._new_ids, self._new_labels, self._new_vecs)
            bar.update(len(self._new_ids))
        finally:
            bar.close()
        self._call("flush", name)
        got = int(self._call("get_collection_stats", name)["row_count"])
        if got != want:
            self._call("drop_collection", name)
            raise GalleryError(f"Milvus rewrite wrote {got} rows, expected {want}; nothing was "
                               "committed")
        self._call("load_collection", name)
        return name

    # ------------------------------------------------------------------ reporting
    def stats(self) -> dict:
        """Faces, identities, dim, generation, the committed collection and alias."""
        self._require_open()
        return {"faces": len(self._ids), "identities": len(np.unique(self._labels)),
                "dim": self._dim, "index": "milvus", "generation": self._generation,
                "backend": str(self._spec), "collection": self._collection,
                "alias": self._spec.name, "encoder_fingerprint": self._fingerprint}

    def storage_files(self) -> list[Path]:
        """Every file of the Milvus Lite directory ([] for a server: its storage is remote)."""
        if self._spec.kind != "milvus-lite":
            return []
        return sorted(p for p in Path(self._spec.uri).rglob("*") if p.is_file())

    def check(self, *, hashes: bool = True) -> CheckReport:
        """SQLite and the committed collection hold the same faces (ids and identities), the
        vectors (a sample) are unit rows, the alias serves the committed collection, and no
        other generation's collection (which could hold erased faces) is left. ``hashes`` is
        accepted for interface parity (Milvus keeps its own checksums)."""
        self._require_open()
        report = CheckReport()
        p = report.problems
        integrity = self._store.integrity()
        if integrity != "ok":
            p.append(f"SQLite integrity check: {integrity}")
        if self._store.orphan_identities():
            p.append(f"{len(self._store.orphan_identities())} identities have no face")
        known = {i.identity for i in self._store.identities()}
        if set(np.unique(self._labels).tolist()) - known:
            p.append("some face identities are missing from the identities table")
        if self._pending():
            return report  # unsaved changes: the collection is compared after the save
        parts = list(self._batches(self._collection, ("face_id", "identity"), self._ids))
        ids = np.concatenate([q[0] for q in parts]) if parts else np.empty(0, np.int64)
        labels = np.concatenate([q[1] for q in parts]) if parts else np.empty(0, np.int64)
        order = np.argsort(ids)
        total = self._count(self._collection, "face_id >= 0" if self._writable
                            else f"face_id < {self._committed_next}")
        if not (total == len(self._ids) and np.array_equal(ids[order], self._ids)
                and np.array_equal(labels[order], self._labels)):
            p.append(f"collection {self._collection} holds {total} faces that differ from "
                     f"SQLite's {len(self._ids)}")
        elif len(ids):
            sample = np.unique(np.linspace(0, len(ids) - 1, num=min(len(ids), 256)).astype(np.int64))
            rows = self._call("query", self._collection, output_fields=["vector"],
                              filter=f"face_id in {self._ids[sample].tolist()}")
            norms = np.linalg.norm(np.asarray([r["vector"] for r in rows], np.float32), axis=1)
            if len(rows) != len(sample) or np.abs(norms - 1).max(initial=0) > NORM_TOL:
                p.append("sampled vectors are missing or not unit rows")
        target = self._alias_target()
        if target != self._collection:
            p.append(f"alias {self._spec.name} serves {target}, not the committed "
                     f"{self._collection} (a writer stopped after its commit; any writing "
                     "command re-points it)")
        for stale in self._stale_collections():
            p.append(f"collection {stale} is left from another generation (it may hold erased "
                     "faces; any writing command drops it)")
        if self._count(self._collection, f"face_id >= {self._committed_next}"):
            p.append("the collection holds uncommitted faces (a writer stopped before its "
                     "commit; any writing command deletes them)")
        return report

