"""The consistency checks of a FAISS + SQLite gallery (:meth:`gallery_tools.Gallery.check`).

Each function appends human-readable problems to a list and never raises for an inconsistency:
a check reports what it finds. The invariants checked (module docstring of
:mod:`gallery_tools.gallery`): the index, the vectors and SQLite hold the same face ids in the
same ascending order; every vector is a finite unit row; every face's identity is in the
identities table and every identity has a face; every committed file has the size and sha256
recorded at save.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from gallery_tools import index as _ix
from gallery_tools.errors import GalleryError
from gallery_tools.files import file_sha256, npy_data_offset, stream_file
from gallery_tools.vectors import members, unit_rows

if TYPE_CHECKING:
    from gallery_tools.store import Store

ROWS_PER_BLOCK = 65536  # rows per norm check: bounds the temporaries of a million-face check
IVF_SAMPLE = 256        # faces whose IVF codes are compared with the stored vectors


def check_metadata(store: Store, ids: np.ndarray, labels: np.ndarray, next_face_id: int,
                   p: list[str]) -> None:
    """SQLite is intact and agrees with the in-memory ``(N,)`` int64 face ``ids`` and identity
    ``labels``: same rows, ascending ids below ``next_face_id``, identities all known and used."""
    integrity = store.integrity()
    if integrity != "ok":
        p.append(f"SQLite integrity check: {integrity}")
    db_ids, db_labels = store.face_rows()
    if not np.array_equal(db_ids, ids) or not np.array_equal(db_labels, labels):
        p.append(f"face rows differ between SQLite ({len(db_ids)}) and memory ({len(ids)})")
    if len(ids) > 1 and not (np.diff(ids) > 0).all():
        p.append("face ids are not strictly increasing")
    if len(ids) and ids[-1] >= next_face_id:
        p.append("next_face_id is not above every stored face id")
    orphans = store.orphan_identities()
    if orphans:
        p.append(f"{len(orphans)} identities have no face")
    known = store.identity_names()[0]
    missing = np.unique(labels[~members(labels, known)])
    if missing.size:
        p.append(f"{missing.size} face identities are missing from the identities table")


def check_vectors(vec: np.ndarray, n: int, d: int, p: list[str]) -> None:
    """``vec`` is ``(n, d)`` and every row a finite unit vector (checked block by block)."""
    if vec.shape != (n, d):
        p.append(f"vectors have shape {vec.shape}, expected ({n}, {d})")
        return
    for start in range(0, vec.shape[0], ROWS_PER_BLOCK):
        if not unit_rows(vec[start:start + ROWS_PER_BLOCK]):
            p.append(f"vectors in rows {start}.. are not finite unit vectors")
            return


def scan_vector_file(path: Path, size: int, d: int, p: list[str]) -> dict[str, str]:
    """Hash a committed ``.npy`` vector file and check its ``(n, d)`` float32 rows' norms in one
    streamed read; returns ``{file name: sha256}`` (empty when the file is missing or not
    ``size`` bytes, which :func:`check_files` reports)."""
    if not path.is_file() or path.stat().st_size != size:
        return {}
    row_bytes = 4 * d
    bad: list[int] = []

    def visit(start: int, block: np.ndarray) -> None:
        if not bad and not unit_rows(block.view(np.float32).reshape(-1, d)):
            bad.append(start // row_bytes)

    try:
        digest = stream_file(path, offset=npy_data_offset(path), visit=visit,
                             chunk=max(1, (1 << 24) // row_bytes) * row_bytes)
    except (OSError, ValueError, GalleryError) as exc:  # e.g. shrank while being read
        p.append(f"{path.name}: unreadable ({exc})")
        return {}
    if bad:
        p.append(f"vectors in rows {bad[0]}.. are not finite unit vectors")
    return {path.name: digest}


def check_index(kind: str, index: Any, ids: np.ndarray, vecs: Any, *, index_dirty: bool,
                vectors_dirty: bool, p: list[str]) -> None:
    """The FAISS ``index`` holds exactly the face ``ids`` ``(N,)``: a flat one by its id map; an
    IVF one by its count and, for a sample, codes that decode to ``vecs`` ``(N, d)``."""
    n = len(ids)
    if kind == "flat":
        id_map = _ix._faiss().vector_to_array(index.id_map)
        if not np.array_equal(id_map, ids):
            p.append("flat index ids differ from the database's face ids")
        return
    if index is None or index_dirty:
        if n and not vectors_dirty:
            p.append("IVF gallery has faces but no index")
        return
    if index.ntotal != n:
        p.append(f"IVF index holds {index.ntotal} faces, expected {n}")
        return
    if n:
        sample = np.unique(np.linspace(0, n - 1, num=min(n, IVF_SAMPLE)).astype(np.int64))
        try:
            rec = np.stack([index.reconstruct(int(ids[r])) for r in sample])
        except RuntimeError:
            p.append("IVF index lacks some of the database's face ids")
            return
        err = np.abs(rec - np.asarray(vecs[sample])).max()
        if err > 0.05:  # 8-bit codes of unit vectors are far more precise than this
            p.append(f"IVF codes do not match the stored vectors (max error {err:.3f})")


def check_files(directory: Path, records: Sequence[Sequence[Any]], p: list[str],
                digests: dict[str, str] | None = None) -> None:
    """Size and sha256 of every committed file ``[name, size, sha256]`` in ``directory``
    (``digests``: ``{name: sha256}`` of files already hashed, not read again)."""
    digests = digests or {}
    for name, size, sha in records:
        f = directory / name
        if not f.is_file():
            p.append(f"{name}: missing")
        elif f.stat().st_size != size:
            p.append(f"{name}: {f.stat().st_size} bytes, recorded {size}")
        elif (digests.get(name) or file_sha256(f)) != sha:
            p.append(f"{name}: sha256 differs from the one recorded at save")
