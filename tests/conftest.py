"""Shared fixtures. Real-face data is read in place from ../shared/data/faces (never copied)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# Progress lines on a non-terminal stderr (facekd.progress) would interleave with the one-line
# errors the tests read; tests/test_progress.py turns them on where it checks them.
os.environ.setdefault("FACEKD_PROGRESS", "0")
FACES_DIR = Path(os.environ.get("FACEKD_FACES_DIR", REPO.parent / "shared" / "data" / "faces"))


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    """Root of the real-face datasets; skips the test when they are absent."""
    if not (FACES_DIR / "lfw_150px").is_dir():
        pytest.skip(f"real-face data not found at {FACES_DIR} (set FACEKD_FACES_DIR)")
    return FACES_DIR


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# A small synthetic deployment shared by the workspace and CLI tests (rendered once per session).
SYNTH_IDS = list(range(1000, 1030))
SYNTH_TARGET = 1012
SYNTH_IMAGES = 6


@pytest.fixture(scope="session")
def synthetic_photos(tmp_path_factory) -> tuple[Path, Path]:
    """``(tree, held)``: folder-per-identity renders of ``SYNTH_IDS`` (``SYNTH_IMAGES`` each) and
    ``SYNTH_IMAGES`` further renders of ``SYNTH_TARGET`` that are never enrolled
    (``unseen_<j>.png``)."""
    import cv2

    from facekd.synthfaces import render_identity, write_tree

    base = tmp_path_factory.mktemp("synthetic")
    tree = write_tree(base / "tree", SYNTH_IDS, SYNTH_IMAGES, seed=0)
    held = base / "held"
    held.mkdir()
    unseen = render_identity(SYNTH_TARGET, SYNTH_IMAGES, seed=0, image_offset=SYNTH_IMAGES)
    for j, chip in enumerate(unseen):
        cv2.imwrite(str(held / f"unseen_{j}.png"), cv2.cvtColor(chip, cv2.COLOR_RGB2BGR))
    return tree, held


def run_cli(*args, env_workspace: Path | None = None) -> tuple[int, str, str]:
    """``facekd ARGS`` in-process (click's runner: much faster than a subprocess per case), with
    ``$FACEKD_WORKSPACE`` set to ``env_workspace`` or unset; returns (exit status, stdout, stderr)."""
    from click.testing import CliRunner

    from facekd.cli import main

    env = {"FACEKD_WORKSPACE": None if env_workspace is None else str(env_workspace)}
    with CliRunner().isolation(env=env) as streams:
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        return code, streams[0].getvalue().decode(), streams[1].getvalue().decode()
