"""The synthetic face renderer: deterministic, identity-stable, aligned 112x112 RGB chips."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from facekd.errors import FacekdError
from facekd.faces.synthfaces import (SIZE, identity_params, render_dataset, render_identity,
                                     write_tree)

REPO = Path(__file__).resolve().parents[1]


def test_same_seed_renders_identical_bytes():
    a = render_identity(1042, 4, seed=3)
    b = render_identity(1042, 4, seed=3)
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, render_identity(1042, 4, seed=4))


def test_identity_look_is_independent_of_the_rendered_set():
    alone, _ = render_dataset([1042], 3)
    crowd, labels = render_dataset(list(range(1030, 1050)), 3)
    assert np.array_equal(crowd[labels == 1042], alone)
    assert identity_params(1042) == identity_params(1042)
    assert identity_params(1042) != identity_params(1043)


def test_image_offset_selects_the_same_images():
    full = render_identity(7, 5, seed=1)
    tail = render_identity(7, 2, seed=1, image_offset=3)
    assert np.array_equal(full[3:], tail)


def test_chips_are_aligned_size_rgb_uint8_with_identity_labels():
    chips, labels = render_dataset([5, 9, 2], 4)
    assert chips.shape == (12, SIZE, SIZE, 3) and chips.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == [5] * 4 + [9] * 4 + [2] * 4
    # images of one identity vary (nuisance) and are not blank
    assert all(chips[i].std() > 10 for i in range(12))
    assert not np.array_equal(chips[0], chips[1])


def test_images_of_one_identity_are_closer_than_images_of_others_on_average():
    """Learnable: same-identity chips are more alike than different-identity chips (in pixels)."""
    chips, labels = render_dataset(list(range(300, 330)), 4)
    x = chips.reshape(len(chips), 28, 4, 28, 4, 3).astype(np.float32).mean((2, 4))
    x = x.reshape(len(chips), -1)
    x -= x.mean(1, keepdims=True)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    s = x @ x.T
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(len(x), dtype=bool)
    assert s[same & off].mean() > s[~same].mean() + 0.1


def test_write_tree_makes_integer_identity_folders_that_read_back(tmp_path):
    out = write_tree(tmp_path / "faces", [1000, 1001, 1002], 2, seed=5)
    assert sorted(p.name for p in out.iterdir()) == ["1000", "1001", "1002"]
    files = sorted((out / "1001").iterdir())
    assert [f.name for f in files] == ["0000.png", "0001.png"]
    back = cv2.cvtColor(cv2.imread(str(files[1])), cv2.COLOR_BGR2RGB)
    assert np.array_equal(back, render_identity(1001, 2, seed=5)[1])  # PNG is lossless
    assert [p.name for p in tmp_path.iterdir()] == ["faces"]  # no temporary left behind


def test_write_tree_refuses_a_non_empty_directory_and_leaves_it_alone(tmp_path):
    out = tmp_path / "faces"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FacekdError, match="not an empty directory"):
        write_tree(out, [1], 1)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["faces"]


def test_write_tree_fills_an_existing_empty_directory(tmp_path):
    out = tmp_path / "faces"
    out.mkdir()
    write_tree(out, [3], 1, fmt="jpg")
    assert (out / "3" / "0000.jpg").is_file()


@pytest.mark.parametrize("ids, n, kwargs, msg", [
    ([-1], 2, {}, ">= 0"),
    ([1, 1], 2, {}, "unique"),
    ([1], 0, {}, "n_images"),
    (["x"], 2, {}, "non-negative integers"),
    ([1], 2, {"seed": -3}, "seed"),
])
def test_bad_arguments_raise_a_library_error(ids, n, kwargs, msg):
    with pytest.raises(FacekdError, match=msg):
        render_dataset(ids, n, **kwargs)


def test_bad_format_and_offset_raise_a_library_error(tmp_path):
    with pytest.raises(FacekdError, match="format"):
        write_tree(tmp_path / "f", [1], 1, fmt="gif")
    with pytest.raises(FacekdError, match="image_offset"):
        render_identity(1, 1, image_offset=-1)


def test_cli_writes_a_tree_and_reports_errors(tmp_path):
    script = REPO / "samples" / "synthfaces.py"
    out = tmp_path / "cli"
    run = subprocess.run([sys.executable, str(script), "--out", str(out), "--identities", "2",
                          "--images", "1", "--seed", "2"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in out.iterdir()) == ["1000", "1001"]
    again = subprocess.run([sys.executable, str(script), "--out", str(out), "--identities", "1"],
                           capture_output=True, text=True)
    assert again.returncode == 2 and "error:" in again.stderr and "Traceback" not in again.stderr
