"""The files of one gallery generation: their names, how a save writes them, and clean-up.

Generation ``G`` of a FAISS gallery is three files beside ``gallery.sqlite``, recorded in its
settings as ``{"vectors": [name, size, sha256], "rows": [...], "index": [...] or None}``::

    vectors-GGGGGGGG.npy    (N, d) float32 unit rows in face-id order
    rows-GGGGGGGG.npy       (N, 2) int64 [face_id, identity] of those rows
    index-GGGGGGGG.faiss    IVF galleries with faces only

:func:`write_generation` writes generation ``G+1``'s files next to ``G``'s (each atomically:
temp file, fsync, rename; an unchanged one as a hard link to the same durable bytes) and returns
their records; the caller commits them in SQLite, and only then :func:`remove_stale` deletes
every other generation's files (and any temp file a crash left).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

from gallery_tools.files import atomic_write, fsync_dir, write_rows, write_vectors
from gallery_tools.index import serialize

PROGRESS_MIN_FACES = 250_000  # saves of galleries this large show a progress bar
KINDS = ("vectors", "index", "rows")
_GEN_FILE = re.compile(r"^(vectors-\d{8}\.npy|rows-\d{8}\.npy|index-\d{8}\.faiss|"
                       r"\..+\.tmp(-\d+)?)$")
_RECORD_NAME = {"vectors": re.compile(r"^vectors-\d{8}\.npy$"),
                "rows": re.compile(r"^rows-\d{8}\.npy$"),
                "index": re.compile(r"^index-\d{8}\.faiss$")}


def vectors_name(generation: int) -> str:
    return f"vectors-{generation:08d}.npy"


def rows_name(generation: int) -> str:
    return f"rows-{generation:08d}.npy"


def index_name(generation: int) -> str:
    return f"index-{generation:08d}.faiss"


def confine(directory: Path, files: dict) -> None:
    """Refuse file records that could lead outside ``directory``: each must be a generation
    file name of its kind (no path, no ``..``), and the file must not be a symbolic link.
    Raises :class:`~gallery_tools.errors.GalleryError`."""
    from gallery_tools.errors import GalleryError

    for kind in KINDS:
        rec = files.get(kind)
        if not rec:
            continue
        name = rec[0] if isinstance(rec, (list, tuple)) and rec else None
        if not isinstance(name, str) or not _RECORD_NAME[kind].match(name):
            raise GalleryError(f"{directory}: gallery settings name a {kind} file "
                               f"{str(name)[:80]!r} that is not a file of this gallery; refusing "
                               "it (restore the gallery from a backup)")
        if (directory / name).is_symlink():
            raise GalleryError(f"{directory / name}: is a symbolic link; a gallery file must be "
                               "a regular file inside the gallery (refusing it)")


def stale_files(directory: Path, files: dict) -> list[Path]:
    """Generation files in ``directory`` that ``files`` (the committed records) does not name:
    an earlier generation's vectors and rows left by a kill between a commit and its clean-up,
    or a crashed save's temp files. They may hold faces erased since (check reports them; the
    next writer, or ``check --repair``, deletes them)."""
    keep = {rec[0] for rec in records(files)}
    return sorted(p for p in directory.iterdir() if _GEN_FILE.match(p.name)
                  and p.name not in keep)


def records(files: dict) -> list[list]:
    """The ``[name, size, sha256]`` records of a generation's files that exist."""
    return [files[k] for k in KINDS if files.get(k)]


def write_generation(directory: Path, new: int, old: dict, *,
                     vectors: Callable[[], np.ndarray] | None, ids: np.ndarray,
                     labels: np.ndarray, rows_dirty: bool, index: Any = None) -> dict:
    """Write generation ``new``'s files beside ``old``'s (its records) and return their records.

    ``vectors``: returns the ``(N, d)`` float32 rows to write, or None when they are unchanged
    since ``old`` (then hard-linked, like the rows file unless ``rows_dirty``). ``ids`` and
    ``labels``: ``(N,)`` int64 face ids and identities. ``index``: the CPU FAISS index of an
    IVF gallery with faces (None otherwise); rewritten when the vectors changed or ``old`` has
    none, else linked. Nothing is committed here: the caller records the result in SQLite.
    """
    vec_name = vectors_name(new)
    if vectors is not None:
        vec_rec = [vec_name, *write_vectors(directory / vec_name, vectors(),
                                            progress=len(ids) >= PROGRESS_MIN_FACES)]
    else:  # unchanged: a hard link is a new name for the same durable bytes
        vec_rec = _link(directory, old["vectors"], vec_name)
    name = rows_name(new)
    if rows_dirty or not old.get("rows"):
        rows_rec = [name, *write_rows(directory / name, ids, labels)]
    else:
        rows_rec = _link(directory, old["rows"], name)
    idx_rec = None
    if index is not None:
        name = index_name(new)
        if vectors is not None or not old.get("index"):
            data = serialize(index)  # always from the CPU index
            with atomic_write(directory / name) as out:
                out.write(data)
            idx_rec = [name, out.size, out.sha256.hexdigest()]
            del data
        else:
            idx_rec = _link(directory, old["index"], name)
    return {"vectors": vec_rec, "index": idx_rec, "rows": rows_rec}


def _link(directory: Path, old_rec: list, new: str) -> list:
    """Hard-link the file of record ``old_rec`` under the name ``new``; returns its record."""
    target = directory / new
    target.unlink(missing_ok=True)
    os.link(directory / old_rec[0], target)
    fsync_dir(directory)
    return [new, *old_rec[1:]]


def remove_stale(directory: Path, files: dict) -> None:
    """Delete every generation file in ``directory`` not named in ``files`` (the committed
    generation's records): crashed saves' files and temp files, or old generations a crash
    left behind."""
    stale = stale_files(directory, files)
    for p in stale:
        p.unlink(missing_ok=True)
    if stale:
        fsync_dir(directory)
