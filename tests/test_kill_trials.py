"""SIGKILL at random instants during `facekd forget` and `facekd enroll`: every workspace left
behind holds exactly the old or the new state, `check` finds nothing wrong but the killed save's
leftover files (which `check --repair` deletes), and a re-run completes.

20 trials per command; the kill instant is drawn over the command's measured duration, so some
trials land before the commit, some during the save and some after it (the receipt file not yet
written: `check` restores it). Export-onnx has its own trials in tests/test_hardening.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import STALE_FILES, SYNTH_TARGET as TARGET

TRIALS = 20


def _cli(args: list, ws: Path) -> subprocess.Popen:
    env = {**os.environ, "FACEKD_WORKSPACE": str(ws)}
    return subprocess.Popen([sys.executable, "-m", "facekd.cli", *map(str, args)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _state(ws: Path) -> tuple[list, frozenset, int]:
    """(check's problems, enrolled identities, ledger length), read in-process."""
    from facekd.workspace import Workspace

    with Workspace.open(ws) as w:
        problems = w.check()["problems"]
        return problems, frozenset(i.identity for i in w.identities()), len(w.ledger())


def _duration(args: list, ws: Path) -> float:
    t = time.perf_counter()
    assert _cli(args, ws).wait(timeout=300) == 0
    return time.perf_counter() - t


def _trials(base: Path, args: list, tmp_path: Path, old: tuple, new: tuple) -> dict:
    span = _duration(args, tmp_path / "timing")
    rng = np.random.default_rng(0)
    outcomes = {"old": 0, "new": 0}
    for trial in range(TRIALS):
        ws = tmp_path / f"t{trial}"
        shutil.copytree(base, ws)
        proc = _cli(args, ws)
        time.sleep(float(rng.uniform(0.3, 1.05 * span)))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        problems, ids, ledger = _state(ws)
        # a kill between a save's file writes and its clean-up leaves files on disk: check names
        # them (they may hold erased faces) and nothing else may be wrong
        assert all(STALE_FILES in p for p in problems), f"trial {trial}: {problems}"
        if problems:
            assert _cli(["check", "--repair"], ws).wait(timeout=120) == 0
            assert not _state(ws)[0], f"trial {trial}: check --repair left a problem"
        got = (ids, ledger)
        assert got in (old, new), f"trial {trial}: a mixed state {len(ids)} ids, ledger {ledger}"
        outcomes["old" if got == old else "new"] += 1
        if trial % 5 == 4:  # the lock died with the process: a re-run completes
            assert _cli(args, ws).wait(timeout=300) == 0
            assert _state(ws)[1:] == new
        shutil.rmtree(ws)
    return outcomes


@pytest.fixture(scope="module")
def enrolled(synthetic_photos, tmp_path_factory) -> tuple[Path, Path]:
    from facekd.workspace import Workspace

    tree, _ = synthetic_photos
    root = tmp_path_factory.mktemp("kill")
    Workspace.init(root / "empty", "samples", aligned=True).close()
    shutil.copytree(root / "empty", root / "full")
    with Workspace.open(root / "full", writable=True) as ws:
        ws.enroll(tree, progress=False)
    return root / "empty", root / "full"


def test_sigkill_during_forget_leaves_the_old_or_the_new_state(enrolled, tmp_path):
    _, full = enrolled
    shutil.copytree(full, tmp_path / "timing")
    _, ids, _ = _state(full)
    outcomes = _trials(full, ["forget", "--identity", TARGET], tmp_path,
                       old=(ids, 0), new=(ids - {TARGET}, 1))
    assert sum(outcomes.values()) == TRIALS


def test_sigkill_during_enroll_leaves_the_old_or_the_new_state(enrolled, synthetic_photos, tmp_path):
    empty, full = enrolled
    tree, _ = synthetic_photos
    shutil.copytree(empty, tmp_path / "timing")
    _, ids, _ = _state(full)
    outcomes = _trials(empty, ["enroll", tree], tmp_path, old=(frozenset(), 0), new=(ids, 0))
    assert sum(outcomes.values()) == TRIALS
