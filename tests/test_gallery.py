"""Gallery round trips, erasure without images, removal without trace, corruption, locking, GPU choice."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from facekd.errors import FacekdError
from facekd.erasure import fit_esc
from gallery_tools import Gallery, GalleryError, Match
from gallery_tools import index as gindex
from clusters import identity_clusters

D = 32


def _clusters(n_ids: int, per_id: int, d: int = D, seed: int = 0):
    """``(n_ids*per_id, d)`` float32 unit vectors of identity clusters, labels 1000..1000+n_ids-1."""
    x, y = identity_clusters(n_ids, per_id, d, spread=0.25, seed=seed)
    return x, y + 1000


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(params=["flat", "ivf"])
def kind(request) -> str:
    return request.param


def _filled(path: Path, kind: str = "flat", n_ids: int = 40, per_id: int = 12) -> tuple[Gallery, np.ndarray, np.ndarray]:
    x, y = _clusters(n_ids, per_id)
    g = Gallery.create(path, D, encoder_fingerprint="enc-A", index=kind)
    g.add(x, y, names=[f"person-{i}" for i in y], sources=[f"/img/{i}/{j}.jpg" for j, i in enumerate(y)],
          source_sha256=[_sha(f"img-{j}") for j in range(len(y))])
    return g, x, y


def test_gallery_error_is_a_facekd_error():
    assert issubclass(GalleryError, FacekdError)


def test_add_search_round_trip_survives_save_and_reopen(tmp_path, kind):
    g, x, y = _filled(tmp_path / "g", kind)
    probes = x[::12] + 0.01
    before = g.search(probes, k=3)
    assert [hits[0].identity for hits in before] == list(y[::12])
    assert all(isinstance(m, Match) and -1.01 <= m.score <= 1.01 for hits in before for m in hits)
    assert g.save() == 1 and g.generation == 1
    g.close()
    with Gallery.open(tmp_path / "g", encoder_fingerprint="enc-A") as r:
        assert len(r) == len(y) and r.generation == 1 and r.index_type == kind
        after = r.search(probes, k=3)
        assert [[m.face_id for m in h] for h in after] == [[m.face_id for m in h] for h in before]
        np.testing.assert_allclose(np.linalg.norm(r.vectors(), axis=1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(r.labels(), y)
        assert r.check().ok


def test_vectors_are_normalised_and_in_face_id_order(tmp_path):
    g, x, y = _filled(tmp_path / "g")
    v = g.vectors()
    np.testing.assert_allclose(v, x / np.linalg.norm(x, axis=1, keepdims=True), atol=1e-6)
    ids = g.face_ids()
    assert (np.diff(ids) > 0).all()
    np.testing.assert_array_equal(g.vectors(1003), v[y == 1003])
    np.testing.assert_array_equal(g.face_ids(1003), ids[y == 1003])
    g.close()


def test_threshold_drops_weak_matches(tmp_path):
    g, x, _ = _filled(tmp_path / "g")
    hits = g.search(x[:5], k=50, threshold=0.9)
    assert all(m.score >= 0.9 for h in hits for m in h)
    assert all(len(h) < 50 for h in hits)
    assert g.search(x[:2], k=10_000)[0][-1].score <= hits[0][-1].score  # k > N is clipped
    g.close()


def test_identities_names_and_sources(tmp_path):
    g, _, y = _filled(tmp_path / "g")
    infos = {i.identity: i for i in g.identities()}
    assert set(infos) == set(y.tolist())
    assert infos[1005].name == "person-1005" and infos[1005].n_faces == 12
    assert g.has_identity(1005) and not g.has_identity(5)
    assert g.has_source(_sha("img-0")) and not g.has_source(_sha("nope"))
    g.close()


def test_face_ids_are_never_reused_after_remove(tmp_path):
    g, x, y = _filled(tmp_path / "g")
    last = int(g.face_ids().max())
    g.remove(int(y[-1]))
    new = g.add(x[:3], np.array([7, 7, 7]))
    assert new.min() > last
    g.save()
    g.close()
    with Gallery.open(tmp_path / "g", writable=True) as g2:
        assert g2.add(x[:1], np.array([8]))[0] > new.max()


def test_remove_leaves_no_trace_in_search_vectors_sqlite_or_files(tmp_path, kind):
    path = tmp_path / "g"
    g, x, y = _filled(path, kind)
    g.set_meta("ledger", b"kept-ledger")
    g.save()
    victim = 1007
    rows = np.flatnonzero(y == victim)
    victim_vec = g.vectors(victim)[0].tobytes()
    assert g.remove(victim) == len(rows)
    g.save()
    # in memory and in search
    assert not g.has_identity(victim) and victim not in g.labels()
    assert all(m.identity != victim for h in g.search(x[rows], k=20) for m in h)
    g.close()
    # in SQLite
    con = sqlite3.connect(path / "gallery.sqlite")
    assert con.execute("SELECT COUNT(*) FROM faces WHERE identity=?", (victim,)).fetchone()[0] == 0
    assert con.execute("SELECT COUNT(*) FROM identities WHERE identity=?", (victim,)).fetchone()[0] == 0
    assert con.execute("SELECT value FROM meta WHERE key='ledger'").fetchone()[0] == b"kept-ledger"
    con.close()
    # in any byte of any file: name, source paths, hashes, the raw vector, an older generation
    blob = b"".join(p.read_bytes() for p in path.iterdir() if p.is_file())
    assert b"person-1007" not in blob
    for j in rows:
        assert f"/img/1007/{j}.jpg".encode() not in blob
        assert _sha(f"img-{j}").encode() not in blob
    assert victim_vec not in blob
    assert b"person-1008" in blob  # the scan does see what is still there
    assert sorted(p.name for p in path.glob("vectors-*")) == ["vectors-00000002.npy"]
    with Gallery.open(path) as r:
        assert r.check().ok and len(r) == len(y) - len(rows)


def test_remove_unknown_identity_raises(tmp_path):
    g, _, _ = _filled(tmp_path / "g")
    with pytest.raises(GalleryError, match="identity 4242"):
        g.remove(4242)
    g.close()


def test_apply_erasure_projects_every_vector_without_images(tmp_path, kind):
    path = tmp_path / "g"
    g, x, y = _filled(path, kind)
    forget = 1003
    e = fit_esc(g.vectors(forget), k=3)
    expected = e.apply(g.vectors())
    g.apply(e)
    np.testing.assert_allclose(g.vectors(), expected, atol=1e-6)
    assert np.abs(g.vectors() @ e.basis).max() < 1e-5   # nothing left along erased directions
    g.save()
    g.close()
    with Gallery.open(path) as r:
        np.testing.assert_allclose(r.vectors(), expected, atol=1e-6)
        assert r.check().ok
        # search runs on the edited vectors (index rebuilt for IVF)
        top = r.search(expected[y == 1010][:3], k=1)
        assert all(h[0].identity == 1010 for h in top)


def test_unsaved_changes_are_invisible_and_discarded(tmp_path):
    path = tmp_path / "g"
    g, x, y = _filled(path)
    g.set_meta("a", b"1")
    g.save()
    g.remove(1001)
    g.add(x[:4], np.array([1, 2, 3, 4]))
    g.set_meta("a", b"2")
    with Gallery.open(path) as reader:  # a reader sees the committed generation only
        assert len(reader) == len(y) and reader.get_meta("a") == b"1" and reader.has_identity(1001)
    g.close()  # no save
    with Gallery.open(path) as r:
        assert len(r) == len(y) and r.get_meta("a") == b"1" and r.generation == 1


def test_reader_keeps_its_generation_while_a_writer_saves(tmp_path):
    path = tmp_path / "g"
    g, x, y = _filled(path)
    g.save()
    reader = Gallery.open(path)
    g.remove(1002)
    g.set_meta("k", b"new")
    g.save()
    assert reader.generation == 1 and reader.has_identity(1002) and reader.get_meta("k") is None
    assert len(reader.search(x[y == 1002][:1], k=1)[0]) == 1
    reader.close()
    g.close()
    with Gallery.open(path) as r:
        assert r.generation == 2 and not r.has_identity(1002) and r.get_meta("k") == b"new"


def test_meta_and_fingerprint_commit_with_the_generation(tmp_path):
    path = tmp_path / "g"
    g = Gallery.create(path, D, encoder_fingerprint="enc-A")
    g.set_meta("receipt:1", b"\x00\x01")
    g.set_encoder_fingerprint("enc-B")
    g.delete_meta("missing")
    assert g.save() == 1
    g.close()
    with Gallery.open(path, encoder_fingerprint="enc-B") as r:
        assert r.get_meta("receipt:1") == b"\x00\x01" and r.encoder_fingerprint == "enc-B"
    with pytest.raises(GalleryError, match="enc-B.*enc-A"):
        Gallery.open(path, encoder_fingerprint="enc-A")


def test_save_without_vector_changes_links_instead_of_copying(tmp_path):
    path = tmp_path / "g"
    g, _, _ = _filled(path)
    g.save()
    ino = (path / "vectors-00000001.npy").stat().st_ino
    g.set_meta("x", b"y")
    g.save()
    assert (path / "vectors-00000002.npy").stat().st_ino == ino
    assert not (path / "vectors-00000001.npy").exists()
    assert g.check().ok
    g.close()


def test_stats_report_sizes(tmp_path, kind):
    g, x, y = _filled(tmp_path / "g", kind)
    g.save()
    s = g.stats()
    assert s["faces"] == len(y) and s["identities"] == 40 and s["dim"] == D and s["index"] == kind
    assert s["generation"] == 1 and s["bytes_on_disk"] >= x.nbytes and s["bytes_in_ram"] > 0
    g.close()


@pytest.mark.parametrize("bad", [
    lambda g: g.add(np.zeros((2, D)), [1, 2]),
    lambda g: g.add(np.ones((2, D + 1)), [1, 2]),
    lambda g: g.add(np.full((1, D), np.nan), [1]),
    lambda g: g.add(np.ones((2, D)), [1.5, 2.0]),
    lambda g: g.add(np.ones((2, D)), [1]),
    lambda g: g.add(np.ones((2, D)), [1, 2], names=["a"]),
    lambda g: g.search(np.ones((1, D)), k=0),
    lambda g: g.apply(fit_esc(np.random.default_rng(0).normal(size=(5, D + 2)), k=1)),
    lambda g: g.set_meta("k", "not bytes"),
])
def test_bad_input_raises_gallery_error(tmp_path, bad):
    g, _, _ = _filled(tmp_path / "g", n_ids=3, per_id=2)
    with pytest.raises(GalleryError):
        bad(g)
    g.close()


def test_read_only_gallery_refuses_changes(tmp_path):
    g, x, y = _filled(tmp_path / "g")
    g.save()
    g.close()
    with Gallery.open(tmp_path / "g") as r:
        for change in (lambda: r.add(x[:1], [1]), lambda: r.remove(1001), lambda: r.save(),
                       lambda: r.set_meta("a", b"b"), lambda: r.apply(fit_esc(x[:5], k=1))):
            with pytest.raises(GalleryError, match="read-only"):
                change()


def test_create_refuses_a_non_empty_path(tmp_path):
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "x").write_text("x")
    with pytest.raises(GalleryError, match="not an empty directory"):
        Gallery.create(tmp_path / "g", D, encoder_fingerprint="e")
    with pytest.raises(GalleryError, match="index must be"):
        Gallery.create(tmp_path / "h", D, encoder_fingerprint="e", index="hnsw")


# ---------------------------------------------------------------------- corrupt and missing files
def _saved(path: Path, kind: str = "flat") -> None:
    g, _, _ = _filled(path, kind)
    g.save()
    g.close()


def test_truncated_index_raises(tmp_path):
    path = tmp_path / "g"
    _saved(path, "ivf")
    idx = path / "index-00000001.faiss"
    idx.write_bytes(idx.read_bytes()[:1000])
    with pytest.raises(GalleryError, match="index file"):
        Gallery.open(path)


def test_truncated_vector_file_raises(tmp_path, kind):
    path = tmp_path / "g"
    _saved(path, kind)
    vec = path / "vectors-00000001.npy"
    vec.write_bytes(vec.read_bytes()[:-100])
    with pytest.raises(GalleryError, match="truncated"):
        Gallery.open(path)


def test_missing_vector_file_raises(tmp_path, kind):
    path = tmp_path / "g"
    _saved(path, kind)
    (path / "vectors-00000001.npy").unlink()
    with pytest.raises(GalleryError, match="vector file missing"):
        Gallery.open(path)


def test_foreign_sqlite_file_raises(tmp_path):
    path = tmp_path / "g"
    _saved(path)
    (path / "gallery.sqlite").unlink()
    for extra in path.glob("gallery.sqlite-*"):
        extra.unlink()
    con = sqlite3.connect(path / "gallery.sqlite")
    con.execute("CREATE TABLE faces (x)")
    con.commit()
    con.close()
    with pytest.raises(GalleryError, match="foreign SQLite"):
        Gallery.open(path)


def test_garbage_database_and_missing_gallery_raise(tmp_path):
    path = tmp_path / "g"
    _saved(path)
    with pytest.raises(GalleryError, match="not a gallery"):
        Gallery.open(tmp_path / "nowhere")
    for extra in path.glob("gallery.sqlite*"):
        extra.unlink()
    (path / "gallery.sqlite").write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(GalleryError):
        Gallery.open(path)


def test_flipped_bytes_in_vectors_fail_check(tmp_path):
    path = tmp_path / "g"
    _saved(path)
    vec = path / "vectors-00000001.npy"
    data = bytearray(vec.read_bytes())
    data[-7] ^= 0xFF
    vec.write_bytes(bytes(data))
    with pytest.raises(GalleryError, match="damaged"):  # a writer reads them at open
        Gallery.open(path, writable=True)
    with Gallery.open(path) as r:  # a reader refuses them on first use: never searched
        assert len(r.identities()) > 0  # listing identities does not read the vectors
        with pytest.raises(GalleryError, match="damaged"):
            r.search(np.ones((1, r.dim), np.float32))
        with pytest.raises(GalleryError, match="damaged"):
            r.vectors()
    with Gallery.open(path, verify=False) as r:  # check opens unverified and reports
        report = r.check()
    assert not report.ok and any("sha256" in p or "unit" in p for p in report.problems)


def test_check_cli_exit_status(tmp_path):
    from gallery_tools.__main__ import main

    path = tmp_path / "g"
    _saved(path)
    assert main(["check", str(path)]) == 0
    (path / "vectors-00000001.npy").unlink()
    assert main(["check", str(path)]) == 2


def test_stale_files_are_reported_by_check_and_removed_by_the_next_writer(tmp_path):
    path = tmp_path / "g"
    _saved(path)
    (path / "vectors-00000002.npy").write_bytes(b"half-written")
    (path / ".vectors-00000002.npy.x1y2z3.tmp").write_bytes(b"x")
    (path / ".vectors-00000002.npy.tmp-99").write_bytes(b"x")  # the old temp-name scheme
    with Gallery.open(path) as r:  # readers never delete anything, but check says so
        problems = r.check().problems
    assert len(problems) == 1 and "3 file(s) of an earlier generation" in problems[0]
    assert (path / "vectors-00000002.npy").exists()
    with Gallery.open(path, writable=True) as w:
        assert w.generation == 1 and w.check().ok
    assert sorted(p.name for p in path.glob("*vectors*")) == ["vectors-00000001.npy"]


def test_a_symlink_planted_where_a_save_writes_is_replaced_not_followed(tmp_path):
    path = tmp_path / "g"
    g, _, _ = _filled(path)
    g.save()
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    # the next generation's name, and the old predictable temp names, all pointing outside
    for name in ("vectors-00000002.npy", *(f".vectors-00000002.npy.tmp-{os.getpid() + i}"
                                           for i in range(-2, 3))):
        (path / name).symlink_to(victim)
    g.add(np.eye(D, dtype=np.float32)[:1], np.array([99]))
    g.save()
    g.close()
    assert victim.read_bytes() == b"keep me"
    assert not (path / "vectors-00000002.npy").is_symlink()


def test_file_records_pointing_outside_the_gallery_or_at_symlinks_are_refused(tmp_path):
    import json
    import sqlite3

    path = tmp_path / "g"
    _saved(path)
    db = sqlite3.connect(path / "gallery.sqlite")
    files = json.loads(db.execute("SELECT value FROM gallery WHERE key='files'").fetchone()[0])
    good = dict(files)
    files["vectors"] = ["../../etc/passwd", *files["vectors"][1:]]
    db.execute("UPDATE gallery SET value=? WHERE key='files'", (json.dumps(files),))
    db.commit()
    with pytest.raises(GalleryError, match="not a file of this gallery"):
        Gallery.open(path)
    db.execute("UPDATE gallery SET value=? WHERE key='files'", (json.dumps(good),))
    db.commit()
    db.close()
    real = path / good["vectors"][0]
    moved = tmp_path / "elsewhere.npy"
    real.rename(moved)
    real.symlink_to(moved)
    with pytest.raises(GalleryError, match="symbolic link"):
        Gallery.open(path)


def test_a_symlinked_gallery_database_is_refused(tmp_path):
    path = tmp_path / "g"
    _saved(path)
    (path / "gallery.sqlite").rename(tmp_path / "db.sqlite")
    (path / "gallery.sqlite").symlink_to(tmp_path / "db.sqlite")
    with pytest.raises(GalleryError, match="symbolic link"):
        Gallery.open(path)


# ---------------------------------------------------------------------- writers
def test_second_writer_waits_for_lock_timeout_then_raises(tmp_path):
    path = tmp_path / "g"
    first, _, _ = _filled(path)
    first.save()
    t0 = time.monotonic()
    with pytest.raises(GalleryError, match="writer lock"):
        Gallery.open(path, writable=True, lock_timeout=0.5)
    assert time.monotonic() - t0 >= 0.45
    with Gallery.open(path) as reader:  # readers never block
        assert len(reader) == len(first)
    first.close()
    with Gallery.open(path, writable=True, lock_timeout=0.5) as second:
        assert second.generation == 1


def test_second_writer_gets_the_lock_when_the_first_closes_in_time(tmp_path):
    path = tmp_path / "g"
    first, _, _ = _filled(path)
    first.save()
    threading.Timer(0.3, first.close).start()
    with Gallery.open(path, writable=True, lock_timeout=10) as second:
        assert second.generation == 1 and second.writable


# ---------------------------------------------------------------------- GPU selection
class _FakeFaissGpu:
    """Stands in for the faiss module's GPU attributes only; the index passed through is real."""

    def __init__(self, n_gpus: int, fail: bool = False):
        self.n, self.fail, self.copies = n_gpus, fail, 0

    def get_num_gpus(self):
        if self.fail:
            raise RuntimeError("no CUDA driver")
        return self.n

    class StandardGpuResources:
        pass

    def index_cpu_to_gpu(self, res, device, index):
        self.copies += 1
        return index


def test_gpu_selection(monkeypatch):
    import faiss

    assert gindex.gpu_available(faiss) == (hasattr(faiss, "StandardGpuResources")
                                          and faiss.get_num_gpus() > 0)
    assert gindex.gpu_available(_FakeFaissGpu(1))
    assert not gindex.gpu_available(_FakeFaissGpu(0))
    assert not gindex.gpu_available(_FakeFaissGpu(1, fail=True))
    assert not gindex.gpu_available(object())  # a CPU-only build
    monkeypatch.setenv(gindex.GPU_ENV, "0")
    assert not gindex.gpu_available(_FakeFaissGpu(1))


def test_search_uses_a_cached_gpu_copy_that_changes_invalidate(tmp_path, monkeypatch):
    fake = _FakeFaissGpu(1)
    g, x, y = _filled(tmp_path / "g")
    g._device = gindex.SearchDevice(fake)
    assert g._device.use_gpu
    g.search(x[:2]); g.search(x[:2])
    assert fake.copies == 1
    g.add(x[:1], [1])
    g.search(x[:2])
    assert fake.copies == 2
    g.save()  # saves through the CPU index regardless
    g.close()


def test_ivf_remove_retrains_so_no_centroid_keeps_the_removed_face(tmp_path):
    import faiss

    x, y = _clusters(30, 10)
    victim = np.tile(x[y == 1000][:1], (120, 1)) + 0.01 * np.random.default_rng(1).normal(size=(120, D))
    g = Gallery.create(tmp_path / "g", D, encoder_fingerprint="enc-A", index="ivf")
    g.add(np.vstack([x[y != 1000], victim]), np.r_[y[y != 1000], np.full(120, 1000)])
    g.save()
    g.remove(1000)
    g.save()
    g.close()
    index = faiss.read_index(str(next((tmp_path / "g").glob("index-*.faiss"))))
    ivf = faiss.extract_index_ivf(index)
    centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)
    mean = victim.mean(0) / np.linalg.norm(victim.mean(0))
    cos = centroids @ mean / np.linalg.norm(centroids, axis=1)
    others = x[y != 1000] @ mean
    assert cos.max() <= others.max() + 0.05  # no centroid closer to the victim than a stranger is


def test_a_path_with_uri_characters_keeps_the_database_inside_the_gallery(tmp_path):
    path = tmp_path / "a#b?c%41"
    x, y = _clusters(3, 2)
    with Gallery.create(path, D, encoder_fingerprint="enc-A") as g:
        g.add(x, y)
        g.save()
    assert (path / "gallery.sqlite").is_file() and not (tmp_path / "a").exists()
    with Gallery.open(path) as g:
        assert len(g) == len(y)


def test_a_failed_add_leaves_nothing_half_recorded(tmp_path):
    x, y = _clusters(3, 2)
    g = Gallery.create(tmp_path / "g", D, encoder_fingerprint="enc-A")
    g.add(x[:2], y[:2])
    with pytest.raises(GalleryError):
        g.add(x[2:4], y[2:4], sources=["ok.jpg", "bad-\ud800.jpg"])  # SQLite cannot encode it
    g.add(x[4:], y[4:])
    g.save()
    g.close()
    with Gallery.open(tmp_path / "g") as g2:
        assert len(g2) == 4 and g2.check().ok
