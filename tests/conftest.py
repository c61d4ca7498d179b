"""Shared fixtures. Real-face data is read in place from ../shared/data/faces (never copied)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
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
