"""Opening a FAISS gallery: :class:`GalleryFiles`, the base of :class:`gallery_tools.gallery.Gallery`.

Creating a gallery, opening a committed generation (the writer lock, SQLite, the face rows, the
size and sha256 checks described in :mod:`gallery_tools.gallery`), and filling the flat index
from the vector file on first use. The changes, search and the commit are :class:`Gallery`'s.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

from gallery_tools import generations as _gen
from gallery_tools import index as _ix
from gallery_tools.errors import GalleryError
from gallery_tools.files import open_vectors, read_rows, verify_sha256, write_vectors
from gallery_tools.metadata import StoreBacked
from gallery_tools.store import Store, dumps

DB_NAME = "gallery.sqlite"
LOCK_NAME = "writer.lock"
FORMAT = "facekd-gallery/1"


class GalleryFiles(StoreBacked):
    """A gallery's files opened: :meth:`create`, :meth:`open` and the loading behind them."""

    # ------------------------------------------------------------------ construction
    @classmethod
    def _blank(cls) -> "GalleryFiles":
        self = object.__new__(cls)
        self._store = None
        self._lock = None
        self._closed = False
        self._vec_file = None
        self._device = _ix.SearchDevice()
        return self

    @classmethod
    def create(cls, path: str | os.PathLike, dim: int, *, encoder_fingerprint: str,
               index: str = "flat") -> "GalleryFiles":
        """Create an empty gallery at ``path`` (generation 0) and return it open for writing.

        Raises GalleryError when ``path`` exists and is not an empty directory.
        """
        path = Path(path)
        if index not in _ix.KINDS:
            raise GalleryError(f"index must be one of {_ix.KINDS}, got {index!r}")
        if not isinstance(dim, (int, np.integer)) or dim < 1:
            raise GalleryError(f"dim must be a positive integer, got {dim!r}")
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise GalleryError(f"{path}: exists and is not an empty directory")
        path.mkdir(parents=True, exist_ok=True)
        self = cls._blank()
        self._dir = path
        self._acquire_lock(10.0)
        try:
            vec_name = _gen.vectors_name(0)
            size, sha = write_vectors(path / vec_name, np.empty((0, int(dim)), np.float32))
            settings = {"format": FORMAT, "dim": str(int(dim)), "index": index,
                        "encoder_fingerprint": str(encoder_fingerprint), "generation": "0",
                        "faces": "0", "next_face_id": "0",
                        "files": dumps({"vectors": [vec_name, size, sha], "index": None})}
            self._store = Store.create(path / DB_NAME, settings)
            self._load(writable=True)
        except BaseException:
            self._release()
            raise
        return self

    @classmethod
    def open(cls, path: str | os.PathLike, *, encoder_fingerprint: str | None = None,
             writable: bool = False, lock_timeout: float = 10.0, verify: bool = True) -> "GalleryFiles":
        """Open the last saved generation.

        ``writable=True`` takes the single-writer lock (waiting up to ``lock_timeout`` seconds,
        then GalleryError) until :meth:`close`. Readers take no lock and see the generation they
        loaded even while a writer saves newer ones. A given ``encoder_fingerprint`` that differs
        from the stored one raises GalleryError naming both. ``verify`` (default) refuses files
        whose sha256 differs from the one recorded at save (a flat reader's vectors: when first
        used; see the module docstring); ``verify=False`` is for :meth:`check`, which reports
        that instead.
        """
        path = Path(path)
        if not (path / DB_NAME).is_file():
            raise GalleryError(f"{path}: not a gallery (no {DB_NAME})")
        if (path / DB_NAME).is_symlink():
            raise GalleryError(f"{path / DB_NAME}: is a symbolic link; the gallery database must "
                               "be a regular file inside the gallery (refusing it)")
        self = cls._blank()
        self._dir = path
        self._verify = bool(verify)
        try:
            if writable:
                self._acquire_lock(lock_timeout)
            self._store = Store.open(path / DB_NAME, writable=writable)
            for attempt in range(3):
                try:
                    self._load(writable=writable)
                    break
                except GalleryError:
                    # A reader can race a writer that commits and deletes the files the reader's
                    # snapshot names; a newer snapshot names files that exist. Retry only then.
                    if writable or attempt == 2:
                        raise
                    before = self._store.settings().get("generation")
                    self._store.pin_snapshot()
                    if self._store.settings().get("generation") == before:
                        raise
            if encoder_fingerprint is not None and encoder_fingerprint != self._fingerprint:
                raise GalleryError(f"{path}: gallery was built with encoder {self._fingerprint}, "
                                   f"but encoder {encoder_fingerprint} was given")
            if writable:
                _gen.remove_stale(self._dir, self._files)
        except BaseException:
            self._release()
            raise
        return self

    def _acquire_lock(self, timeout: float) -> None:
        lock_path = self._dir / LOCK_NAME
        if lock_path.exists() and not lock_path.is_file():
            raise GalleryError(f"{lock_path}: is not a regular file (a directory?); remove it")
        lock = FileLock(str(lock_path), timeout=timeout)
        try:
            lock.acquire()
        except Timeout:
            raise GalleryError(f"{self._dir}: another process holds the writer lock "
                               f"(waited {timeout:g} s); open read-only or retry later") from None
        except OSError as exc:  # read-only file system, no permission, lock is a directory
            raise GalleryError(f"{self._dir}: cannot take the writer lock, the gallery is not "
                               f"writable ({exc.strerror or exc})") from None
        self._lock = lock

    def _close_backend(self) -> None:
        self._close_vec_file()

    def _load(self, *, writable: bool) -> None:
        """Read settings, face rows, vectors and index of the committed generation."""
        st = self._store.settings()
        try:
            if st.get("format") != FORMAT:
                raise KeyError("format")
            self._dim = int(st["dim"])
            self._kind = st["index"]
            self._generation = int(st["generation"])
            self._fingerprint = st["encoder_fingerprint"]
            self._next_face_id = int(st["next_face_id"])
            n = int(st["faces"])
            files = json.loads(st["files"])
        except (KeyError, ValueError) as exc:
            raise GalleryError(f"{self._dir}: gallery settings are damaged ({exc})") from None
        self._writable = writable
        _gen.confine(self._dir, files)
        self._files = files
        if files.get("rows"):
            name, size, sha = files["rows"]
            ids, labels = read_rows(self._dir / name, n, size, sha,
                                    verify=getattr(self, "_verify", True))
        else:  # saved before the rows file existed: SQLite's rows (the next save writes the file)
            ids, labels = self._store.face_rows()
            if len(ids) != n:
                raise GalleryError(f"{self._dir}: database lists {len(ids)} faces, generation "
                                   f"{self._generation} recorded {n}")
        self._ids, self._labels = ids, labels
        self._rows_dirty = not files.get("rows")
        vec_name, vec_size, vec_sha = files["vectors"]
        mm = open_vectors(self._dir / vec_name, n, self._dim, vec_size,
                          mode="c" if self._kind == "ivf" else "r")
        self._vecs = None
        self._index = None
        self._vec_digest = None  # sha256 of the vector file as read by this object, once known
        verify = getattr(self, "_verify", False)
        if self._kind == "flat":
            del mm
            # The flat index's storage is the only in-RAM copy of the vectors, filled by one read
            # of the file that also hashes it (damaged rows are refused before any is used). A
            # writer fills it now; a reader on its first use of the vectors (search, vectors(),
            # check), so commands that never read them (identities, ledger) never pay for it.
            # The open file keeps this generation readable after a writer deletes it.
            self._close_vec_file()
            self._vec_file = open(self._dir / vec_name, "rb", buffering=0)
            if writable or n == 0:
                self._fill_flat(check_sha=verify)
        else:
            # The file is read in full below anyway: hashing it once costs a second sequential
            # read and means damaged rows are refused, never searched, re-hashed or saved as good.
            if verify:
                verify_sha256(self._dir / vec_name, vec_sha, "vector")
            self._vecs = mm  # copy-on-write map: pages load on first touch, edits stay private
            self._index = None
            if files.get("index"):
                name, size, sha = files["index"]
                self._index = _ix.read_ivf(self._dir / name, size, sha, n, verify=verify)
            elif n:
                raise GalleryError(f"{self._dir}: IVF gallery with {n} faces but no index file")
        self._vectors_dirty = False
        self._index_dirty = False   # IVF: must be rebuilt (after apply, or grown far past training)
        self._removed_since_save = False
        self._trained_n = int(n)
        self._device.invalidate()

    def _refuse_if_damaged(self, vec_name: str, vec_sha: str | None) -> None:
        if vec_sha is not None and self._vec_digest != vec_sha:
            raise GalleryError(f"{self._dir / vec_name}: vector file is damaged (sha256 differs "
                               "from the one recorded at save); restore the gallery from a backup")

    def _fill_flat(self, *, check_sha: bool) -> None:
        """Build the flat index from the committed vector file: one read straight into the
        index's own storage, hashed as it passes (no intermediate copy)."""
        vec_name, _, vec_sha = self._files["vectors"]
        index, digest = _ix.read_flat(self._vec_file, self._dim, self._ids)
        if digest is not None:
            if self._vec_digest is not None and digest != self._vec_digest:
                raise GalleryError(f"{self._dir / vec_name}: vector file changed since it was "
                                   "verified")
            self._vec_digest = digest
            if check_sha:
                self._refuse_if_damaged(vec_name, vec_sha)
        self._index = index
        self._close_vec_file()

    def _close_vec_file(self) -> None:
        fh, self._vec_file = getattr(self, "_vec_file", None), None
        if fh is not None:
            fh.close()

    def _ensure_vectors(self) -> None:
        """Load a reader's flat index on first use (see :meth:`_load`)."""
        if self._index is None and self._kind == "flat":
            self._require_open()
            self._fill_flat(check_sha=getattr(self, "_verify", False))
            self._device.invalidate()
