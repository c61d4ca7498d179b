"""Durable file primitives: atomic writes with fsync, and checked ``.npy`` vector files.

Every file the gallery writes goes through :func:`atomic_write`: a temp file in the same
directory, fsync, ``os.replace``, then an fsync of the directory, so a crash leaves either no
file or the complete file under the final name, never a partial one.
"""

from __future__ import annotations

import hashlib
import io
import os
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import numpy as np

from gallery_tools.errors import GalleryError

_WRITE_ROWS = 16384  # rows per write() call: bounded extra memory while writing millions of rows


def fsync_dir(path: Path) -> None:
    """Make a rename/unlink in ``path`` durable (POSIX needs the directory itself fsynced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _HashingWriter:
    """A file object that hashes and counts what passes through it."""

    def __init__(self, fh: BinaryIO):
        self.fh = fh
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.pool = None  # set (a 1-thread executor): large blocks are hashed while written

    def write(self, data) -> int:
        mv = memoryview(data).cast("B")
        self.size += len(mv)
        if self.pool is None or len(mv) < (1 << 20):
            self.sha256.update(mv)
            return self.fh.write(mv)
        # write() and sha256 both release the GIL: on two cores the block costs the slower one
        hashed = self.pool.submit(self.sha256.update, mv)
        try:
            return self.fh.write(mv)
        finally:
            hashed.result()


TMP_SUFFIX = ".tmp"  # atomic_write's temp files: ``.<name>.<random>.tmp`` (remove_stale finds them)


@contextmanager
def atomic_write(path: Path) -> Iterator[_HashingWriter]:
    """Write ``path`` atomically; yields a writer exposing ``sha256`` and ``size`` afterwards.

    The temp file gets an unpredictable name and is created with ``O_EXCL`` (``mkstemp``), so a
    symlink planted in the directory is never followed, nor is one under the final name:
    ``os.replace`` replaces the link itself. fsync of the file, rename, fsync of the directory.
    The one write primitive of the project (``facekd.fileio.write_atomic`` wraps it).
    """
    import tempfile

    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            writer = _HashingWriter(fh)
            yield writer
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None:  # a failed write() names no file: name the one being written
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_vectors(path: Path, vectors: np.ndarray, *, progress: bool = False) -> tuple[int, str]:
    """Write ``(n, d)`` float32 rows as a ``.npy`` file atomically, streaming in blocks.

    Returns ``(size_bytes, sha256_hex)`` of the file, hashed while it is written (one pass),
    recorded in SQLite so that :func:`open_vectors` can detect truncation cheaply and ``open`` /
    ``check`` can detect corruption.
    """
    vectors = np.asarray(vectors)
    if vectors.dtype != np.float32 or vectors.ndim != 2:
        raise GalleryError(f"internal: vectors must be (n, d) float32, got {vectors.dtype} {vectors.shape}")
    return _write_npy(path, vectors, progress=progress)


def write_rows(path: Path, face_ids: np.ndarray, identities: np.ndarray) -> tuple[int, str]:
    """Write the ``(n, 2)`` int64 ``[face_id, identity]`` table beside the vectors (atomically).

    It is what ``open`` needs from the ``faces`` table, in the shape it needs it: reading it is
    one file read instead of a million SQLite rows turned into Python tuples.
    Returns ``(size_bytes, sha256_hex)``.
    """
    rows = np.empty((len(face_ids), 2), dtype="<i8")
    rows[:, 0], rows[:, 1] = face_ids, identities
    return _write_npy(path, rows)


def _write_npy(path: Path, array: np.ndarray, *, progress: bool = False) -> tuple[int, str]:
    from concurrent.futures import ThreadPoolExecutor

    with atomic_write(path) as out, ThreadPoolExecutor(1) as out.pool:
        header = {"descr": array.dtype.str, "fortran_order": False, "shape": array.shape}
        np.lib.format.write_array_header_1_0(out, header)
        if progress:
            from facekd.progress import tqdm  # only saves of large galleries show progress
        with (tqdm(total=array.shape[0], unit="face", desc=f"write {path.name}", leave=False)
              if progress else _NoBar()) as bar:
            for start in range(0, array.shape[0], _WRITE_ROWS):
                block = np.ascontiguousarray(array[start:start + _WRITE_ROWS])
                out.write(block)
                bar.update(len(block))
    return out.size, out.sha256.hexdigest()


class _NoBar:
    def __enter__(self) -> "_NoBar":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        return None


def read_rows(path: Path, n: int, size: int, sha: str, *,
              verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(face_ids, identities)`` ``(n,)`` int64 from a file of :func:`write_rows`, refused
    (GalleryError) when missing, of another size or shape, or (``verify``) sha256 than recorded."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise GalleryError(f"{path}: face rows file missing (the gallery is incomplete)") from None
    except OSError as exc:
        raise GalleryError(f"{path}: cannot read the face rows file ({exc.strerror or exc})") from None
    if len(data) != size:
        raise GalleryError(f"{path}: face rows file is {len(data)} bytes, expected {size} "
                           "(truncated or overwritten)")
    if verify and hashlib.sha256(data).hexdigest() != sha:
        raise GalleryError(f"{path}: face rows file is damaged (sha256 differs from the one "
                           "recorded at save); restore the gallery from a backup")
    try:
        rows = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:
        raise GalleryError(f"{path}: not a readable face rows file ({exc})") from None
    if rows.dtype != np.int64 or rows.shape != (n, 2):
        raise GalleryError(f"{path}: holds {rows.dtype} {rows.shape}, expected int64 ({n}, 2)")
    return np.ascontiguousarray(rows[:, 0]), np.ascontiguousarray(rows[:, 1])


def npy_data_offset(path: Path | BinaryIO) -> int:
    """Byte offset of the array data in a ``.npy`` file (its header length)."""
    with (open(path, "rb") if isinstance(path, (str, os.PathLike)) else _Rewound(path)) as fh:
        version = np.lib.format.read_magic(fh)
        reader = {(1, 0): np.lib.format.read_array_header_1_0,
                  (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if reader is None:
            raise GalleryError(f"{path}: .npy format version {version} is not supported")
        reader(fh)
        return fh.tell()


class _Rewound:
    """An already open binary file, read from its start and left open afterwards."""

    def __init__(self, fh: BinaryIO):
        self.fh = fh

    def __enter__(self) -> BinaryIO:
        self.fh.seek(0)
        return self.fh

    def __exit__(self, *exc: object) -> None:
        return None


def stream_file(path: Path | BinaryIO, data: np.ndarray | None = None, *, offset: int = 0,
                visit: Callable[[int, np.ndarray], None] | None = None,
                chunk: int = 1 << 24) -> str:
    """One sequential read of ``path`` (or of an open unbuffered binary file, from its start):
    returns its sha256 (hex), hashing every byte as it passes.

    ``data``: a writable C-contiguous array that the bytes from ``offset`` on are read into (e.g.
    a FAISS index's own storage, so loading needs no second copy); ``visit(start_byte, block)``
    is called on each block of those bytes (``uint8`` view), e.g. to check norms while hashing.
    Without ``data`` the file is read through one reused buffer.
    """
    h = hashlib.sha256()
    with (open(path, "rb", buffering=0) if isinstance(path, (str, os.PathLike))
          else _Rewound(path)) as fh:
        h.update(fh.read(offset))
        target = None if data is None else memoryview(data.reshape(-1).view(np.uint8))
        pos = 0
        for pos, block in _read_ahead(fh, target, chunk):
            h.update(block)
            if visit is not None:
                visit(pos, np.frombuffer(block, np.uint8))
            pos += len(block)
        if target is not None:
            if pos != len(target):
                raise GalleryError(f"{path}: shorter than its array (truncated while read)")
            h.update(fh.read())
    return h.hexdigest()


def _read_ahead(fh: BinaryIO, target: memoryview | None, chunk: int
                ) -> Iterator[tuple[int, memoryview]]:
    """``(offset, block)`` of ``fh`` from where it stands, read a block ahead in a second thread
    (file reads and sha256 both release the GIL, so reading and hashing overlap on two cores).
    Into consecutive slices of ``target`` until it is full, else through two alternating buffers."""
    from concurrent.futures import ThreadPoolExecutor

    spare = [memoryview(bytearray(chunk)), memoryview(bytearray(chunk))] if target is None else []

    def region(pos: int, turn: int) -> memoryview:
        return spare[turn % 2] if target is None else target[pos:pos + chunk]

    with ThreadPoolExecutor(1) as pool:
        pos, turn = 0, 0
        dst = region(pos, turn)
        pending = pool.submit(fh.readinto, dst) if len(dst) else None
        while pending is not None:
            k = pending.result()
            if not k:
                return
            block = dst[:k]
            turn += 1
            dst = region(pos + k, turn)
            pending = pool.submit(fh.readinto, dst) if len(dst) else None
            yield pos, block
            pos += k


def open_vectors(path: Path, n: int, d: int, size: int | None, *, mode: str = "r") -> np.ndarray:
    """Memory-map a vector file and verify its shape and size against what SQLite recorded.

    ``mode`` is numpy's ``mmap_mode`` (``"r"`` or ``"c"``, copy-on-write). Raises
    :class:`GalleryError` for a missing, truncated or foreign file.
    """
    path = Path(path)
    if not path.is_file():
        raise GalleryError(f"{path}: vector file missing (the gallery is incomplete)")
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise GalleryError(f"{path}: vector file is {actual} bytes, expected {size} (truncated or "
                           "overwritten)")
    try:
        if n == 0:  # numpy cannot memory-map an empty array
            arr = np.load(path, allow_pickle=False)
        else:
            arr = np.load(path, mmap_mode=mode, allow_pickle=False)
    except Exception as exc:
        raise GalleryError(f"{path}: not a readable vector file ({exc})") from None
    if arr.dtype != np.float32 or arr.shape != (n, d):
        raise GalleryError(f"{path}: holds {arr.dtype} {arr.shape}, the database expects "
                           f"float32 ({n}, {d})")
    return arr


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """sha256 (hex) of a file's bytes, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: Path, sha: str | None, what: str) -> None:
    """Refuse (GalleryError) a committed ``what`` file whose bytes no longer hash to ``sha``, the
    sha256 (hex) its save recorded; an unreadable file is refused too."""
    try:
        actual = file_sha256(path)
    except OSError as exc:
        raise GalleryError(f"{path}: cannot read the {what} file ({exc.strerror or exc})") from None
    if sha is not None and actual != sha:
        raise GalleryError(f"{path}: {what} file is damaged (sha256 differs from the one recorded "
                           "at save); restore the gallery from a backup")
