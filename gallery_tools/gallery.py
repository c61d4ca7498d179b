"""A durable face gallery: FAISS index + float32 vectors + SQLite metadata, saved as generations.

On disk, a gallery is a directory::

    gallery.sqlite          faces, identities, settings, meta (WAL mode); the commit point
    vectors-GGGGGGGG.npy    (N, d) float32, L2-normalised, rows in face-id order
    rows-GGGGGGGG.npy       (N, 2) int64 [face_id, identity] of those rows: what open needs of
                            the faces table, as one array (galleries saved before it existed
                            are read from SQLite and gain the file at their next save)
    index-GGGGGGGG.faiss    IVF galleries only (a flat index *is* its vectors: nothing to add)
    writer.lock             the single-writer lock (filelock)

``save()`` writes the files of generation G+1 next to those of G (temp file, fsync, rename), then
commits one SQLite transaction holding every metadata change, the generation number and the new
files' sizes and hashes, and only then deletes generation G's files. A crash before the commit
leaves G (SQLite rolls back; the orphan files are deleted by the next writer); after it, G+1.

Removal is physical: after the save that follows ``remove()``, the faces are gone from the index,
the vector file (a new one is written and the old generation deleted), and SQLite (rows zeroed by
``secure_delete``, then VACUUM, then the WAL checkpointed and truncated). Two honest limits: a
reader still open on an older generation keeps that generation's pages (its RAM, its open file,
the WAL frames its snapshot needs) until it closes and the next writer save or close
checkpoints; and a crash between the commit and the clean-up leaves the old generation's files
until the next writer opens the gallery (it deletes them first thing).

What is verified when: ``open`` checks every committed file's size and the ``.npy`` header of
the vectors, and the sha256 of the face rows file (small) and of an IVF index; the vectors' sha256
is checked by the one streamed read that fills the flat index from the file, before any vector is
used (a writer at open, a reader on its first search or ``vectors()`` call), so damaged rows are
refused, never searched, re-hashed or saved as good, and a reader that only lists identities
never reads them. ``verify=False`` skips the sha256 comparisons (``check`` reports instead).
:meth:`Gallery.check` re-hashes every file, checks every vector's norm in the same read, and
compares the arrays with SQLite's rows.

Invariants (checked by :meth:`Gallery.check`): the index, the vectors and SQLite hold the same
face ids in the same (ascending) order; every vector has unit norm; every face's identity is in
the identities table and every identity has a face.

This module is the :class:`Gallery` itself: the changes held in memory, search and the commit;
creating and opening a generation is its base :class:`~gallery_tools.opening.GalleryFiles`. Its
parts live beside it: :mod:`gallery_tools.generations` (a generation's files: names, writing G+1,
deleting the others), :mod:`gallery_tools.files` (atomic writes, checked ``.npy`` files,
hashing), :mod:`gallery_tools.store` (SQLite),
:mod:`gallery_tools.index` (FAISS: build, read, CPU or GPU search), :mod:`gallery_tools.check`
(the invariant checks), and, shared with the Milvus backend, :mod:`gallery_tools.metadata`
(:class:`~gallery_tools.metadata.StoreBacked`, the SQLite half) and :mod:`gallery_tools.vectors`
(validation, ``Match``, ``CheckReport``).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from gallery_tools import check as _check
from gallery_tools import generations as _gen
from gallery_tools import index as _ix
from gallery_tools.errors import GalleryError
from gallery_tools.files import open_vectors
from gallery_tools.opening import DB_NAME, FORMAT, LOCK_NAME, GalleryFiles  # noqa: F401
from gallery_tools.store import IdentityInfo, dumps
from gallery_tools.vectors import CheckReport, Match, members, normalised

if TYPE_CHECKING:
    import faiss  # imported where an index is built or read (gallery_tools.index._faiss)

__all__ = ["Gallery", "Match", "CheckReport", "IdentityInfo", "GalleryError"]

_APPLY_ROWS = 65536  # rows per erasure block: bounds the validation temporaries of Erasure.apply


class Gallery(GalleryFiles):
    """A face gallery; get one with :meth:`create` or :meth:`open` (see the module docstring).

    Changes made in memory (add, remove, apply, meta, fingerprint) are invisible on disk until
    :meth:`save`. ``with Gallery.open(...) as g:`` closes on exit and does **not** save.
    """

    def __init__(self, *_args, **_kwargs):
        raise TypeError("use Gallery.create(...) or Gallery.open(...)")

    # ------------------------------------------------------------------ properties
    @property
    def index_type(self) -> str:
        return self._kind

    def __repr__(self) -> str:
        mode = "closed" if self._closed else ("writable" if self._writable else "read-only")
        return (f"<Gallery {self._dir} {self._kind} d={self._dim} faces={len(self)} "
                f"generation={self._generation} {mode}>")

    def close(self) -> None:
        """Release the lock and files; unsaved changes are discarded."""
        if not self._closed:
            self._release()
            self._close_vec_file()
            self._index = None
            self._vecs = None
            self._device.invalidate()

    # ------------------------------------------------------------------ vectors
    def _all_vectors(self) -> np.ndarray:
        """``(N, d)`` float32 rows in face-id order; a view of the live storage (not a copy)."""
        if self._kind == "flat":
            self._ensure_vectors()
            return _ix.flat_view(self._index, self._dim)
        return self._vecs

    def vectors(self, identity: int | None = None) -> np.ndarray:
        """Stored unit vectors ``(n, d)`` float32 in face-id order (all faces when ``identity`` is None).

        Always a copy: the storage moves when the gallery changes.
        """
        self._require_open()
        allv = self._all_vectors()
        if identity is None:
            return np.array(allv, dtype=np.float32, copy=True)
        return np.array(allv[self._labels == int(identity)], dtype=np.float32)

    def vectors_view(self) -> np.ndarray:
        """Read-only ``(N, d)`` float32 view of every stored vector (no copy of the gallery).

        Valid only until the next change (add, remove, apply, save): the storage moves or is
        edited in place then. For reading the whole gallery once, e.g. to measure it.
        """
        self._require_open()
        view = self._all_vectors().view()
        view.flags.writeable = False
        return view

    # ------------------------------------------------------------------ metadata
    def identities(self) -> list[IdentityInfo]:
        """Every identity, ascending, with its name and face count.

        Names come from SQLite's ``identities`` table, counts from the in-memory labels (the same
        rows as the ``faces`` table, without a million-row GROUP BY).
        """
        self._require_open()
        ids, names = self._store.identity_names()
        known = members(self._labels, ids)  # a label missing from the table counts nowhere
        at = np.searchsorted(ids, self._labels[known])
        n = np.bincount(at, minlength=len(ids))
        return list(map(IdentityInfo, ids.tolist(), names, n.tolist()))

    # ------------------------------------------------------------------ changes
    def add(self, vectors: Any, identities: Any, *, names: Sequence[str | None] | None = None,
            sources: Sequence[str | None] | None = None,
            source_sha256: Sequence[str | None] | None = None) -> np.ndarray:
        """Add ``(n, d)`` vectors (L2-normalised on the way in) for ``(n,)`` integer identities.

        ``names`` gives a display name per face (the identity's name; None leaves it), ``sources``
        the image path and ``source_sha256`` the image file's sha256 (hex). Returns the new
        ``(n,)`` int64 face ids, which are never reused, even after removal.
        """
        self._require_writable()
        x, ident = self._checked_faces(vectors, identities, names, sources, source_sha256)
        n = x.shape[0]
        if n == 0:
            return np.empty(0, dtype=np.int64)
        face_ids = np.arange(self._next_face_id, self._next_face_id + n, dtype=np.int64)
        self._ensure_vectors()
        self._store.add_faces(face_ids, ident, names, sources, source_sha256)
        if self._kind == "flat":
            self._index.add_with_ids(x, face_ids)
        else:
            self._vecs = np.concatenate([np.asarray(self._vecs), x]) if len(self._ids) else x
            if self._index is not None and not self._index_dirty and len(self._ids) + n <= 4 * self._trained_n:
                self._index.add_with_ids(x, face_ids)
            else:
                self._index_dirty = True  # untrained, or grown past its training: rebuild
        self._ids = np.concatenate([self._ids, face_ids])
        self._labels = np.concatenate([self._labels, ident])
        self._next_face_id += n
        self._vectors_dirty = self._rows_dirty = True
        self._device.invalidate()
        return face_ids

    def remove(self, identity: int) -> int:
        """Remove every face of ``identity`` from index, vectors and SQLite; returns how many.

        After :meth:`save` nothing of it remains on disk (deleted rows are zeroed and the database
        vacuumed; the previous generation's files are deleted). Unknown identity -> GalleryError.
        """
        self._require_writable()
        identity = int(identity)
        rows = np.flatnonzero(self._labels == identity)
        if len(rows) == 0 and not self._store.has_identity(identity):
            raise GalleryError(f"identity {identity} is not in the gallery")
        gone = self._ids[rows]
        self._ensure_vectors()
        if self._kind == "flat":
            removed = self._index.remove_ids(_ix._faiss().IDSelectorBatch(gone))
            if removed != len(rows):
                raise GalleryError(f"internal: index removed {removed} of {len(rows)} faces")
        else:
            keep = np.ones(len(self._ids), dtype=bool)
            keep[rows] = False
            self._vecs = np.ascontiguousarray(np.asarray(self._vecs)[keep])
            # Not remove_ids: the coarse centroids and the SQ8 ranges were trained on the removed
            # faces (a centroid sat at cosine 0.999 to a removed person's mean), so the index is
            # retrained from the remaining vectors before the next search or save.
            self._index = None
            self._index_dirty = True
        self._ids = np.delete(self._ids, rows)
        self._labels = np.delete(self._labels, rows)
        n_db = self._store.remove_identity(identity)
        if n_db != len(rows):
            raise GalleryError(f"internal: database removed {n_db} faces, memory {len(rows)}")
        self._vectors_dirty = self._rows_dirty = True
        self._removed_since_save = True
        self._device.invalidate()
        return int(len(rows))

    def apply(self, erasure: Any) -> None:
        """Apply an erasure to every stored vector in place: ``normalize(v @ A)``, O(N d k) for ESC.

        The flat index is edited through its own storage (nothing to rebuild); an IVF index is
        retrained and rebuilt from the edited vectors (at the next search or save).
        """
        self._require_writable()
        if getattr(erasure, "d", None) != self._dim or not hasattr(erasure, "apply"):
            raise GalleryError(f"expected an Erasure of dimension {self._dim}, got {erasure!r}")
        if self._kind == "ivf":
            self._vecs = np.require(self._vecs, np.float32, ["C", "W"])  # copy-on-write: file untouched
        allv = self._all_vectors()
        for start in range(0, allv.shape[0], _APPLY_ROWS):
            block = allv[start:start + _APPLY_ROWS]
            erasure.apply(block, out=block)
        if self._kind == "ivf":
            self._index_dirty = True
        self._vectors_dirty = True
        self._device.invalidate()

    def _ensure_index(self) -> None:
        """Build or rebuild an IVF index when changes made it stale (flat indexes never are)."""
        if self._kind == "flat":
            self._ensure_vectors()
            return
        if len(self._ids) == 0:
            return
        if self._index is None or self._index_dirty:
            self._index = _ix.build_ivf(np.asarray(self._vecs), self._ids)
            self._trained_n = len(self._ids)
            self._index_dirty = False
            self._device.invalidate()

    # ------------------------------------------------------------------ search
    def search(self, queries: Any, k: int = 1, threshold: float | None = None) -> list[list[Match]]:
        """Top-``k`` faces for each of ``(m, d)`` queries (normalised here), best first.

        ``threshold`` keeps only matches with cosine similarity >= threshold.
        """
        self._require_open()
        q = normalised(queries, self._dim)
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise GalleryError(f"k must be a positive integer, got {k!r}")
        if len(self._ids) == 0:
            return [[] for _ in range(q.shape[0])]
        self._ensure_index()
        scores, fids = self._device.index_for_search(self._index).search(q, int(min(k, len(self._ids))))
        valid = fids >= 0
        rows = np.searchsorted(self._ids, np.where(valid, fids, 0))
        idents = self._labels[np.minimum(rows, len(self._ids) - 1)]
        if threshold is not None:
            valid &= scores >= threshold
        # tolist() + Match._make: the per-hit Python work is what separates this from raw FAISS
        rows_i, rows_f, rows_s = idents.tolist(), fids.tolist(), scores.tolist()
        make = Match._make
        if valid.all():
            return [list(map(make, zip(a, b, c))) for a, b, c in zip(rows_i, rows_f, rows_s)]
        return [[make(t) for t, ok in zip(zip(a, b, c), v) if ok]
                for a, b, c, v in zip(rows_i, rows_f, rows_s, valid.tolist())]

    @property
    def faiss_index(self) -> faiss.Index:
        """The CPU FAISS index (read-only use: benchmarks, diagnostics)."""
        self._require_open()
        self._ensure_index()
        return self._index

    # ------------------------------------------------------------------ persistence
    def save(self) -> int:
        """Commit every change atomically as a new generation; returns its number."""
        self._require_writable()
        self._ensure_index()
        new = self._generation + 1
        ivf = self._kind == "ivf" and len(self._ids) > 0
        files = _gen.write_generation(self._dir, new, self._files,
                                      vectors=self._all_vectors if self._vectors_dirty else None,
                                      ids=self._ids, labels=self._labels,
                                      rows_dirty=self._rows_dirty,
                                      index=self._index if ivf else None)
        vec_rec = files["vectors"]
        self._store.set_settings({"generation": str(new), "faces": str(len(self._ids)),
                                  "next_face_id": str(self._next_face_id),
                                  "encoder_fingerprint": self._fingerprint, "files": dumps(files)})
        self._store.commit()  # <- the commit point of generation `new`
        self._generation, self._files = new, files
        self._after_commit()
        if ivf:
            # Re-map the just-written file so the RAM copy can be dropped (pages come back lazily).
            self._vecs = open_vectors(self._dir / vec_rec[0], len(self._ids), self._dim,
                                      vec_rec[1], mode="c")
        if self._vectors_dirty:
            self._vec_digest = vec_rec[2]  # hashed while written: what the index holds
        self._vectors_dirty = self._removed_since_save = self._rows_dirty = False
        return new

    def _after_commit(self) -> None:
        """Clean-up after the commit point: delete the earlier generation's files, vacuum away
        removed rows, checkpoint the WAL. The new generation is committed already, so a failure
        here (a full disk, a file-size limit) must not read as a failed save: it is a warning,
        and `check` reports what is left (the next writer, or `check --repair`, finishes it)."""
        import warnings

        try:
            _gen.remove_stale(self._dir, self._files)
            if self._removed_since_save:
                self._store.vacuum()
            self._store.checkpoint()
        except (OSError, sqlite3.Error, GalleryError) as exc:
            warnings.warn(f"{self._dir}: generation {self._generation} is committed, but the "
                          f"clean-up after it failed ({exc}); `facekd check` reports what is "
                          "left and `facekd check --repair` finishes it", RuntimeWarning,
                          stacklevel=3)

    # ------------------------------------------------------------------ reporting
    def stats(self) -> dict:
        """Faces, identities, dim, index type, generation, bytes on disk and in RAM.

        ``bytes_in_ram`` counts the index and the id arrays (for IVF an estimate, plus the float32
        vectors once they were loaded into memory by add/remove/apply); SQLite's cache is excluded.
        """
        self._require_open()
        disk = sum(p.stat().st_size for p in self._dir.iterdir() if p.is_file())
        n = len(self._ids)
        if self._kind == "flat":
            index_ram = n * self._dim * 4 + n * 8  # codes + id map (the rev map adds ~50 B/face)
            vec_ram = 0                            # the codes are the vectors
        else:
            # codes + ids + the direct map's hashtable (~32 B/entry) + centroids: an estimate
            idx = self._index
            index_ram = 0 if idx is None else (idx.ntotal * (idx.code_size + 8 + 32)
                                               + idx.nlist * self._dim * 4)
            vec_ram = 0 if isinstance(self._vecs, np.memmap) else n * self._dim * 4
        return {"faces": n, "identities": len(np.unique(self._labels)), "dim": self._dim,
                "index": self._kind, "generation": self._generation,
                "encoder_fingerprint": self._fingerprint, "bytes_on_disk": disk,
                "bytes_in_ram": index_ram + vec_ram + self._ids.nbytes + self._labels.nbytes,
                "raw_vector_bytes": n * self._dim * 4}

    def check(self, *, hashes: bool = True) -> CheckReport:
        """Verify that index, vectors and SQLite agree (and, with ``hashes``, the file hashes).

        Checks what is in memory against the database and the committed files
        (:mod:`gallery_tools.check`); never raises for an inconsistency, it reports it.
        """
        self._require_open()
        report = CheckReport()
        p = report.problems
        scan = None
        if self._kind == "flat" and self._index is None:
            # A reader that has not searched: check the committed file itself, hashing it and
            # checking every row's norm in one read (nothing is loaded into an index). In a
            # second thread: hashing and SQLite's scans both release the GIL.
            from concurrent.futures import ThreadPoolExecutor

            name, size, _ = self._files["vectors"]
            pool = ThreadPoolExecutor(1)
            file_problems: list[str] = []
            scan = pool.submit(_check.scan_vector_file, self._dir / name, size, self._dim,
                               file_problems)
            pool.shutdown(wait=False)
        _check.check_metadata(self._store, self._ids, self._labels, self._next_face_id, p)
        digests: dict[str, str] = {}
        if scan is not None:
            digests = scan.result()
            p += file_problems
        else:
            _check.check_vectors(self._all_vectors(), len(self._ids), self._dim, p)
            _check.check_index(self._kind, self._index, self._ids, self._vecs,
                               index_dirty=self._index_dirty, vectors_dirty=self._vectors_dirty,
                               p=p)
        if hashes and not self._vectors_dirty:
            _check.check_files(self._dir, _gen.records(self._files), p, digests)
        stale = _gen.stale_files(self._dir, self._files)
        if stale:
            p.append(f"{len(stale)} file(s) of an earlier generation or a crashed save are still "
                     f"on disk ({', '.join(f.name for f in stale[:4])}): they may hold the vectors "
                     "of faces erased since; the next forget or enroll deletes them, or run "
                     "`facekd check --repair`")
        return report

    def remove_stale(self) -> int:
        """Delete the files :meth:`check` reports as stale (a writer only); returns how many."""
        self._require_writable()
        stale = _gen.stale_files(self._dir, self._files)
        _gen.remove_stale(self._dir, self._files)
        return len(stale)

    def storage_files(self) -> list[Path]:
        """Every file of the gallery directory: what a byte scan for an erased face's vectors
        reads (:func:`gallery_tools.backend.find_traces`)."""
        return sorted(p for p in self._dir.rglob("*") if p.is_file())
