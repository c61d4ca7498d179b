"""Enrolment of a folder-per-identity tree: counts, skips with reasons, resumability, id mapping."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from facekd.encoders.base import InputSpec, TorchEncoder, fold_into_linear
from gallery_tools import Gallery, GalleryError, enroll

SIZE = 24


class TinyEncoder(TorchEncoder):
    """A small random conv net (real torch computation) standing in for a face encoder."""

    family = "tiny"

    def __init__(self, seed: int = 0, erasure=None):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, stride=2), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(64, 16))
        super().__init__(net, InputSpec(SIZE, (127.5,) * 3, (64.0,) * 3, alignment="none"), 16,
                         erasure=erasure, device="cpu")
        self.seed = seed

    def with_erasure(self, erasure):
        out = TinyEncoder(self.seed, erasure)
        w, b = fold_into_linear(self.module[-1].weight, self.module[-1].bias, erasure.matrix())
        with torch.no_grad():
            out.module[-1].weight.copy_(w)
            out.module[-1].bias.copy_(b)
        return out


def _write_tree(root: Path, folders: dict[str, int], per_folder: int = 4) -> list[Path]:
    """Distinct synthetic 'faces' (a per-identity pattern plus noise) as PNG files."""
    rng = np.random.default_rng(0)
    files = []
    for folder, n in folders.items():
        base = rng.integers(0, 256, size=(SIZE, SIZE, 3))
        (root / folder).mkdir(parents=True)
        for j in range(n or per_folder):
            img = np.clip(base + rng.normal(0, 20, size=base.shape), 0, 255).astype(np.uint8)
            if j == 0:  # one larger image per identity: enrolment resizes aligned chips
                img = cv2.resize(img, (2 * SIZE, 2 * SIZE))
            p = root / folder / f"img{j}.png"
            cv2.imwrite(str(p), img)
            files.append(p)
    return files


def _expected_vectors(encoder: TinyEncoder, files: list[Path]) -> np.ndarray:
    chips = []
    for p in files:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img.shape[0] != SIZE:
            img = cv2.resize(img, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
        chips.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    v = encoder.embed(np.stack(chips))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def encoder() -> TinyEncoder:
    return TinyEncoder()


def test_enroll_adds_every_readable_image_and_skips_unreadable(tmp_path, encoder):
    files = _write_tree(tmp_path / "tree", {"1042": 0, "7": 0, "12": 0})
    (tmp_path / "tree" / "7" / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    (tmp_path / "tree" / "7" / "notes.txt").write_text("ignored: not an image suffix")
    g = Gallery.create(tmp_path / "g", 16, encoder_fingerprint=encoder.fingerprint)
    res = enroll(tmp_path / "tree", encoder, g, aligned=True, batch_size=5, progress=False)
    assert res.added == 12 and res.skipped_existing == 0 and res.identities == [7, 12, 1042]
    # named, with the reason
    assert res.skipped == [(str(tmp_path / "tree" / "7" / "broken.jpg"),
                            "corrupt or truncated JPEG (no end-of-image marker)")]
    order = sorted(files, key=lambda p: (p.parent.name, p.name))  # folders enrol in name order
    np.testing.assert_allclose(g.vectors(), _expected_vectors(encoder, order), atol=1e-5)
    np.testing.assert_array_equal(g.labels(), [int(p.parent.name) for p in order])
    assert g.has_source(hashlib.sha256(order[0].read_bytes()).hexdigest())
    g.save()
    g.close()
    con = sqlite3.connect(tmp_path / "g" / "gallery.sqlite")
    paths = [r[0] for r in con.execute("SELECT source_path FROM faces ORDER BY face_id")]
    con.close()
    assert paths == [str(p) for p in order]


def test_enroll_is_resumable_by_sha256(tmp_path, encoder):
    files = _write_tree(tmp_path / "tree", {"1": 0, "2": 0})
    g = Gallery.create(tmp_path / "g", 16, encoder_fingerprint=encoder.fingerprint)
    assert enroll(tmp_path / "tree", encoder, g, aligned=True, progress=False).added == 8
    g.save()
    g.close()
    (tmp_path / "tree" / "2" / "copy.png").write_bytes(files[0].read_bytes())  # same bytes again
    extra = np.full((SIZE, SIZE, 3), 90, np.uint8)
    cv2.imwrite(str(tmp_path / "tree" / "2" / "new.png"), extra)
    with Gallery.open(tmp_path / "g", writable=True) as g2:
        res = enroll(tmp_path / "tree", encoder, g2, aligned=True, progress=False)
        assert res.added == 1 and res.skipped_existing == 9 and res.identities == [2]
        assert len(g2) == 9


def test_enroll_maps_folders_with_ids_csv_and_names(tmp_path, encoder):
    _write_tree(tmp_path / "tree", {"alice": 2, "bob": 3})
    csv_path = tmp_path / "ids.csv"
    csv_path.write_text("folder,identity,name\nalice,1042,Alice A\nbob,7,\n")
    g = Gallery.create(tmp_path / "g", 16, encoder_fingerprint=encoder.fingerprint)
    res = enroll(tmp_path / "tree", encoder, g, ids_csv=csv_path, aligned=True, progress=False,
                 save_every=2)
    assert res.added == 5 and res.identities == [7, 1042]
    assert {(i.identity, i.name, i.n_faces) for i in g.identities()} == {(1042, "Alice A", 2), (7, None, 3)}
    assert g.generation >= 1  # save_every saved along the way
    g.close()


def test_enroll_refuses_unmapped_folders_and_foreign_encoders(tmp_path, encoder):
    _write_tree(tmp_path / "tree", {"alice": 1})
    g = Gallery.create(tmp_path / "g", 16, encoder_fingerprint=encoder.fingerprint)
    other_csv = tmp_path / "other.csv"  # a CSV is meant to name everyone: no automatic ids
    other_csv.write_text("bob,7\n")
    with pytest.raises(GalleryError, match="neither integer identities"):
        enroll(tmp_path / "tree", encoder, g, ids_csv=other_csv, aligned=True, progress=False)
    with pytest.raises(GalleryError, match="cannot enrol with encoder"):
        enroll(tmp_path / "tree", TinyEncoder(seed=1), g, aligned=True, progress=False)
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("alice,not-a-number\nalice,x\n")
    with pytest.raises(GalleryError, match="not an integer"):
        enroll(tmp_path / "tree", encoder, g, ids_csv=bad_csv, aligned=True, progress=False)
    with pytest.raises(GalleryError, match="not a directory"):
        enroll(tmp_path / "missing", encoder, g, aligned=True, progress=False)
    g.close()


@pytest.mark.realfaces
@pytest.mark.slow
def test_enroll_real_faces_with_detection(tmp_path, faces_dir):
    """LFW photos (read in place through symlinks) -> dlib detection + alignment -> dlib ResNet."""
    from facekd.encoders import load_encoder

    enc = load_encoder("dlib")
    src = faces_dir / "lfw_150px"
    people = sorted(p for p in src.iterdir() if p.is_dir())[:3]
    tree = tmp_path / "tree"
    rows = []
    for i, person in enumerate(people):
        (tree / person.name).mkdir(parents=True)
        for img in sorted(person.iterdir())[:4]:
            (tree / person.name / img.name).symlink_to(img)
        rows.append(f"{person.name},{100 + i}")
    (tmp_path / "ids.csv").write_text("\n".join(rows) + "\n")
    g = Gallery.create(tmp_path / "g", enc.dim, encoder_fingerprint=enc.fingerprint)
    res = enroll(tree, enc, g, ids_csv=tmp_path / "ids.csv", progress=False)
    assert res.added + len(res.skipped) == 12 and res.added >= 9
    assert all(reason for _, reason in res.skipped)
    v, y = g.vectors(), g.labels()
    sims = v @ v.T
    np.fill_diagonal(sims, -1)
    assert (y[sims.argmax(axis=1)] == y).mean() >= 0.8  # same person is the nearest other face
    g.close()


# ---------------------------------------------------------------------------- named folders
def test_folders_named_by_person_get_the_first_free_ids_in_sorted_name_order(tmp_path, encoder):
    _write_tree(tmp_path / "tree", {"Zoe_Z": 2, "Ann_A": 2, "2": 2, "Bob_B": 2})
    g = Gallery.create(tmp_path / "g", 16, encoder_fingerprint=encoder.fingerprint)
    res = enroll(tmp_path / "tree", encoder, g, aligned=True, progress=False)
    # the integer folder keeps its id; names take 1, 3, 4 in sorted order (2 is taken)
    assert res.assigned == [("Ann_A", 1, True), ("Bob_B", 3, True), ("Zoe_Z", 4, True)]
    assert {(i.identity, i.name, i.n_faces) for i in g.identities()} == {
        (1, "Ann_A", 2), (2, None, 2), (3, "Bob_B", 2), (4, "Zoe_Z", 2)}
    g.close()


def test_automatic_ids_are_stable_when_the_tree_is_enrolled_again_or_grows(tmp_path, encoder):
    _write_tree(tmp_path / "tree", {"Bob_B": 2, "Cy_C": 2})
    g = Gallery.create(tmp_path / "g", 16, encoder_fingerprint=encoder.fingerprint)
    first = enroll(tmp_path / "tree", encoder, g, aligned=True, progress=False)
    assert first.assigned == [("Bob_B", 1, True), ("Cy_C", 2, True)]
    _write_tree(tmp_path / "more", {"x": 2, "y": 2, "Ann_A": 2})  # third pattern: new photos
    (tmp_path / "more" / "Ann_A").rename(tmp_path / "tree" / "Ann_A")
    again = enroll(tmp_path / "tree", encoder, g, aligned=True, progress=False)
    # known names keep their ids; the newcomer sorts first but takes the first *free* id
    assert again.assigned == [("Ann_A", 3, True), ("Bob_B", 1, False), ("Cy_C", 2, False)]
    assert again.added == 2 and again.skipped_existing == 4
    g.close()


def test_reserved_ids_are_never_handed_out(tmp_path, encoder):
    _write_tree(tmp_path / "tree", {"Ann_A": 2})
    g = Gallery.create(tmp_path / "g", 16, encoder_fingerprint=encoder.fingerprint)
    res = enroll(tmp_path / "tree", encoder, g, aligned=True, progress=False,
                 reserved=lambda i: i in (1, 2))  # e.g. erased ids
    assert res.assigned == [("Ann_A", 3, True)]
    g.close()
