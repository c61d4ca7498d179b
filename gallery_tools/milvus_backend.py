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
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gallery_tools.errors import GalleryError
from gallery_tools.milvus_collections import (BATCH, DB_NAME, FORMAT,  # noqa: F401
                                              LOCK_NAME, READ_BATCH, MilvusCollections)
from gallery_tools.store import IdentityInfo
from gallery_tools.vectors import NORM_TOL, CheckReport, Match, normalised

__all__ = ["MilvusGallery"]

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


class MilvusGallery(MilvusCollections):
    """A face gallery in Milvus; get one with :meth:`create` or :meth:`open` (module docstring).

    Same contract as :class:`gallery_tools.Gallery`: changes stay in memory until :meth:`save`.
    """

    def __init__(self, *_args, **_kwargs):
        raise TypeError("use MilvusGallery.create(...) or MilvusGallery.open(...)")

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

