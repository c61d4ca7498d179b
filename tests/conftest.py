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
# What a gallery check says of files a killed or earlier save left on disk (gallery_tools.gallery).
STALE_FILES = "of an earlier generation or a crashed save"
SYNTH_IMAGES = 6


@pytest.fixture(scope="session")
def synthetic_photos(tmp_path_factory) -> tuple[Path, Path]:
    """``(tree, held)``: folder-per-identity renders of ``SYNTH_IDS`` (``SYNTH_IMAGES`` each) and
    ``SYNTH_IMAGES`` further renders of ``SYNTH_TARGET`` that are never enrolled
    (``unseen_<j>.png``)."""
    import cv2

    from facekd.faces.synthfaces import render_identity, write_tree

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


# ------------------------------------------------------------------ erasures that cover little
def degenerate_workspace(root: Path, *, identities: int = 20, per_id: int = 6,
                         noise: float = 1e-3, seed: int = 0) -> Path:
    """A workspace whose stored faces are what an encoder that cannot tell faces apart gives:
    one shared unit vector plus ``noise`` per coordinate (``identities`` x ``per_id`` faces,
    ids 0..identities-1). forget fits on stored vectors, so no image is needed."""
    from facekd.workspace import Workspace

    rng = np.random.default_rng(seed)
    Workspace.init(root, "samples", aligned=True).close()
    with Workspace.open(root, writable=True) as ws:
        d = ws.base_encoder.dim
        centre = rng.normal(size=d)
        x = centre / np.linalg.norm(centre) + noise * rng.normal(size=(identities * per_id, d))
        ws.gallery.add(x.astype(np.float32), np.repeat(np.arange(identities), per_id))
        ws.commit()
    return root


def write_renders(folder: Path, person: int, n: int, offset: int) -> Path:
    """``n`` synthetic renders of ``person`` (images ``offset``...) as ``folder/<j>.png``."""
    import cv2

    from facekd.faces.synthfaces import render_identity

    folder.mkdir(parents=True, exist_ok=True)
    for j, chip in enumerate(render_identity(person, n, seed=0, image_offset=offset)):
        cv2.imwrite(str(folder / f"{j}.png"), cv2.cvtColor(chip, cv2.COLOR_RGB2BGR))
    return folder


# A person whose erasure fitted on 3 of their photos misses most of their new ones (measured:
# 23 of 24 new renders escape it; a top-up gate on those covers 18 of 23 held out).
FEW_PHOTOS_PERSON = 1003


def erase_from_few_photos(ws_dir: Path, person: int = FEW_PHOTOS_PERSON, keep: int = 3) -> None:
    """Keep only ``keep`` of ``person``'s stored faces, then erase them with --force (a gate
    learnt from 3 photos covers under the floor, so forget alone would refuse it)."""
    from facekd.workspace import Workspace

    with Workspace.open(ws_dir, writable=True) as ws:
        v = np.asarray(ws.gallery.vectors(person))
        ws.gallery.remove(person)
        ws.gallery.add(v[:keep], np.full(keep, person))
        ws.commit()
        with pytest.warns(RuntimeWarning, match="--force given"):
            ws.forget(person, progress=False, force=True)
