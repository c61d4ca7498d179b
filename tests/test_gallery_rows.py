"""The face rows file beside the vectors, lazy loading of a reader's flat index, and check's
single streamed pass: what open reads, what it verifies, and that galleries saved before the
rows file existed still open and gain it at their next save."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from gallery_tools import Gallery, GalleryError
from gallery_tools.files import npy_data_offset
from gallery_tools.store import Store

from clusters import identity_clusters

D = 32


def _saved(path: Path, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    x, y = identity_clusters(30, 8, D, seed=3)
    if labels is not None:
        y = labels
    g = Gallery.create(path, D, encoder_fingerprint="enc")
    g.add(x, y, names=[f"p{i}" for i in y])
    g.save()
    g.close()
    return x, y


def _settings(path: Path) -> dict:
    con = sqlite3.connect(path / "gallery.sqlite")
    try:
        return dict(con.execute("SELECT key, value FROM gallery"))
    finally:
        con.close()


def _set_files(path: Path, files: dict) -> None:
    con = sqlite3.connect(path / "gallery.sqlite")
    con.execute("UPDATE gallery SET value=? WHERE key='files'", (json.dumps(files, sort_keys=True),))
    con.commit()
    con.close()


def _as_old_format(path: Path) -> None:
    """Make a saved gallery look like one written before the rows file existed."""
    files = json.loads(_settings(path)["files"])
    (path / files.pop("rows")[0]).unlink()
    _set_files(path, files)


def test_save_writes_face_ids_and_identities_beside_the_vectors(tmp_path):
    path = tmp_path / "g"
    _, y = _saved(path)
    rows = np.load(path / "rows-00000001.npy")
    assert rows.dtype == np.int64 and rows.shape == (len(y), 2)
    assert np.array_equal(rows[:, 1], y) and np.array_equal(rows[:, 0], np.arange(len(y)))
    with Gallery.open(path) as g:
        assert np.array_equal(g.labels(), y)


def test_a_gallery_saved_before_the_rows_file_opens_and_gains_it_at_its_next_save(tmp_path):
    path = tmp_path / "g"
    x, y = _saved(path)
    with Gallery.open(path) as g:
        hits_new = g.search(x[:5], k=3)
    _as_old_format(path)
    assert not list(path.glob("rows-*.npy"))
    with Gallery.open(path) as g:  # read from SQLite's rows
        assert np.array_equal(g.labels(), y) and g.search(x[:5], k=3) == hits_new
        assert g.check().ok
    with Gallery.open(path, writable=True) as g:
        g.save()  # nothing changed but the format: the file is written now
    assert (path / "rows-00000002.npy").is_file()
    assert "rows" in json.loads(_settings(path)["files"])
    with Gallery.open(path) as g:
        assert np.array_equal(g.labels(), y) and g.search(x[:5], k=3) == hits_new
        assert g.check().ok


def test_an_unchanged_rows_file_is_linked_and_a_changed_one_rewritten(tmp_path):
    path = tmp_path / "g"
    _, y = _saved(path)
    first = (path / "rows-00000001.npy").read_bytes()
    with Gallery.open(path, writable=True) as g:
        g.set_meta("k", b"v")
        g.save()
        assert (path / "rows-00000002.npy").read_bytes() == first
        g.remove(int(y[0]))
        g.save()
    assert not (path / "rows-00000002.npy").exists()  # the old generation's file is deleted
    rows = np.load(path / "rows-00000003.npy")
    assert int(y[0]) not in rows[:, 1] and len(rows) == int((y != y[0]).sum())


def test_damaged_rows_file_is_refused_by_open_and_reported_by_check(tmp_path):
    path = tmp_path / "g"
    _saved(path)
    rows = path / "rows-00000001.npy"
    data = bytearray(rows.read_bytes())
    data[-3] ^= 0x01  # an identity changes by a bit, the file keeps its size
    rows.write_bytes(bytes(data))
    with pytest.raises(GalleryError, match="face rows file is damaged"):
        Gallery.open(path)
    with Gallery.open(path, verify=False) as g:
        report = g.check()
    assert any("rows-00000001.npy: sha256" in p for p in report.problems)
    assert any("face rows differ between SQLite" in p for p in report.problems)


def test_missing_rows_file_is_refused(tmp_path):
    path = tmp_path / "g"
    _saved(path)
    (path / "rows-00000001.npy").unlink()
    with pytest.raises(GalleryError, match="face rows file missing"):
        Gallery.open(path)


def test_a_reader_loads_the_index_only_when_it_uses_the_vectors(tmp_path):
    path = tmp_path / "g"
    x, y = _saved(path)
    with Gallery.open(path) as g:
        assert g._index is None  # noqa: SLF001  (what open did not read)
        assert [i.n_faces for i in g.identities()] == [8] * 30
        assert g._index is None  # noqa: SLF001
        assert g.search(x[:1], k=1)[0][0].identity == y[0]
        assert g._index is not None  # noqa: SLF001
    with Gallery.open(path, writable=True) as g:  # a writer reads them at open
        assert g._index is not None  # noqa: SLF001


def test_identities_counts_match_the_database_grouping(tmp_path):
    path = tmp_path / "g"
    labels = np.repeat([-(2 ** 63), -5, 0, 7, 2 ** 63 - 1], [3, 1, 2, 5, 4]).astype(np.int64)
    x, _ = identity_clusters(5, 3, D, seed=1)
    g = Gallery.create(path, D, encoder_fingerprint="enc")
    g.add(np.resize(x, (len(labels), D)) + 0.01 * np.arange(len(labels))[:, None], labels,
          names=[None if i == 0 else f"n{i}" for i in labels])
    assert g.identities() == g._store.identities()  # noqa: SLF001  (before the first save)
    g.save()
    g.remove(7)
    assert g.identities() == g._store.identities()  # noqa: SLF001  (inside the open transaction)
    g.close()


def test_face_rows_parses_extreme_ids_like_the_row_by_row_read(tmp_path):
    path = tmp_path / "g"
    labels = np.array([-(2 ** 63), 2 ** 63 - 1, -1, 0, 12345678901234], np.int64)
    x, _ = identity_clusters(5, 1, D, seed=2)
    g = Gallery.create(path, D, encoder_fingerprint="enc")
    g.add(x, labels)
    g.save()
    g.close()
    store = Store.open(path / "gallery.sqlite", writable=False)
    try:
        ids, labs = store.face_rows()
        slow = np.array(store._conn.execute(  # noqa: SLF001
            "SELECT face_id, identity FROM faces ORDER BY face_id").fetchall(), np.int64)
    finally:
        store.close()
    assert np.array_equal(ids, slow[:, 0]) and np.array_equal(labs, slow[:, 1])
    assert labs.dtype == np.int64 and np.array_equal(labs, labels)


def test_check_finds_a_non_unit_row_in_the_file_of_a_reader(tmp_path):
    """A vector file that hashes to its record but holds a non-unit row (written by a bug, not
    damaged on disk): check's single streamed pass checks every norm, not only the hash."""
    import hashlib

    path = tmp_path / "g"
    _saved(path)
    vec = path / "vectors-00000001.npy"
    data = bytearray(vec.read_bytes())
    start = npy_data_offset(vec) + 17 * D * 4
    data[start:start + D * 4] = (np.full(D, 3.0, np.float32)).tobytes()
    vec.write_bytes(bytes(data))
    files = json.loads(_settings(path)["files"])
    files["vectors"][2] = hashlib.sha256(bytes(data)).hexdigest()
    _set_files(path, files)
    with Gallery.open(path) as g:
        report = g.check()
    assert report.problems == ["vectors in rows 0.. are not finite unit vectors"]


def test_writer_refuses_a_damaged_database_before_changing_anything(tmp_path):
    path = tmp_path / "g"
    _saved(path)
    db = path / "gallery.sqlite"
    data = bytearray(db.read_bytes())
    page = 4096
    data[2 * page:3 * page] = bytes(range(256)) * 16  # a b-tree page turned to garbage
    db.write_bytes(bytes(data))
    with pytest.raises(GalleryError):
        Gallery.open(path, writable=True)
