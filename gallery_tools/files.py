"""Durable file primitives: atomic writes with fsync, and checked ``.npy`` vector files.

Every file the gallery writes goes through :func:`atomic_write`: a temp file in the same
directory, fsync, ``os.replace``, then an fsync of the directory, so a crash leaves either no
file or the complete file under the final name, never a partial one.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

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

    def write(self, data) -> int:
        mv = memoryview(data).cast("B")
        self.sha256.update(mv)
        self.size += len(mv)
        return self.fh.write(mv)


@contextmanager
def atomic_write(path: Path) -> Iterator[_HashingWriter]:
    """Write ``path`` atomically; yields a writer exposing ``sha256`` and ``size`` afterwards."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            writer = _HashingWriter(fh)
            yield writer
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_vectors(path: Path, vectors: np.ndarray, *, progress: bool = False) -> tuple[int, str]:
    """Write ``(n, d)`` float32 rows as a ``.npy`` file atomically, streaming in blocks.

    Returns ``(size_bytes, sha256_hex)`` of the file, recorded in SQLite so that :func:`open_vectors`
    can detect truncation cheaply and ``check`` can detect corruption.
    """
    vectors = np.asarray(vectors)
    if vectors.dtype != np.float32 or vectors.ndim != 2:
        raise GalleryError(f"internal: vectors must be (n, d) float32, got {vectors.dtype} {vectors.shape}")
    with atomic_write(path) as out:
        header = {"descr": "<f4", "fortran_order": False, "shape": vectors.shape}
        np.lib.format.write_array_header_1_0(out, header)
        from tqdm.auto import tqdm

        with tqdm(total=vectors.shape[0], unit="face", desc=f"write {path.name}", leave=False,
                  disable=not progress) as bar:
            for start in range(0, vectors.shape[0], _WRITE_ROWS):
                block = np.ascontiguousarray(vectors[start:start + _WRITE_ROWS])
                out.write(block)
                bar.update(len(block))
    return out.size, out.sha256.hexdigest()


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
