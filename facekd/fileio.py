"""Atomic file writes: a crash leaves either the old file or the complete new one, never a mix.

One primitive for the whole project: :func:`gallery_tools.files.atomic_write` (an unpredictable
temp name created with ``O_EXCL`` in the target folder, fsync, rename, fsync of the folder), so
a symlink planted in a workspace is never written through.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

__all__ = ["write_atomic"]


def write_atomic(path: str | os.PathLike, data: bytes | Iterable[bytes]) -> Path:
    """Write ``data`` (bytes, or an iterable of bytes-like chunks) to ``path`` atomically (see
    the module docstring); the temp file is removed on any failure."""
    from gallery_tools.files import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    chunks = (data,) if isinstance(data, (bytes, bytearray, memoryview)) else data
    with atomic_write(path) as out:
        for chunk in chunks:
            out.write(chunk)
    return path
