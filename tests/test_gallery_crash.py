"""Crash safety: SIGKILL a writer at random instants during save(); every gallery left behind must
load, pass check(), and be exactly the previous or the new generation.

Each round a child process opens the gallery, adds faces, removes an identity, sometimes applies
an ESC erasure, sets a meta key, announces "saving" and calls save(); the parent kills it after a
random delay drawn over the measured save duration. The parent predicts the new state with plain
numpy (an oracle independent of the gallery's storage) and compares.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from facekd.erasure import fit_esc
from conftest import STALE_FILES
from gallery_states import gallery_state, same_state
from gallery_tools import Gallery

D = 32
N0 = 10_000
KILLS = 24
REPO = Path(__file__).resolve().parents[1]

CHILD = r'''
import sys, time, hashlib
import numpy as np
from facekd.erasure import fit_esc
from gallery_tools import Gallery

def mutate(g, r):
    rng = np.random.default_rng(1000 + r)
    x = rng.normal(size=(300, %(D)d)).astype(np.float32)
    ids = rng.integers(0, 300, size=300)
    g.add(x, ids, sources=[f"r{r}-{i}.jpg" for i in range(300)],
          source_sha256=[hashlib.sha256(f"r{r}-{i}".encode()).hexdigest() for i in range(300)])
    present = np.unique(g.labels())
    g.remove(int(present[r %% len(present)]))
    if r %% 2 == 0:
        present = np.unique(g.labels())
        g.apply(fit_esc(g.vectors(int(present[(3 * r) %% len(present)])), k=2))
    g.set_meta("round", str(r).encode())

line = sys.stdin.readline().split()          # "go PATH ROUND", sent when it is this child's turn
path, r = line[1], int(line[2])
g = Gallery.open(path, writable=True, lock_timeout=30)
mutate(g, r)
print("saving", flush=True)
t0 = time.perf_counter()
g.save()
print(f"saved {time.perf_counter() - t0:.6f}", flush=True)
sys.stdin.readline()                         # wait to be killed (or told to exit)
''' % {"D": D}


def _oracle(state: dict, r: int) -> dict:
    """The state after the child's mutate(r), computed on plain arrays."""
    rng = np.random.default_rng(1000 + r)
    x = rng.normal(size=(300, D)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = rng.integers(0, 300, size=300).astype(np.int64)
    new_ids = np.arange(state["next"], state["next"] + 300, dtype=np.int64)
    face_ids = np.concatenate([state["face_ids"], new_ids])
    labels = np.concatenate([state["labels"], ids])
    vecs = np.concatenate([state["vectors"], x])
    present = np.unique(labels)
    keep = labels != present[r % len(present)]
    face_ids, labels, vecs = face_ids[keep], labels[keep], vecs[keep]
    if r % 2 == 0:
        present = np.unique(labels)
        e = fit_esc(vecs[labels == present[(3 * r) % len(present)]], k=2)
        vecs = e.apply(vecs)
    return {"face_ids": face_ids, "labels": labels, "vectors": vecs, "meta": str(r).encode(),
            "next": state["next"] + 300, "generation": state["generation"] + 1}


def _spawn(script: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow
def test_sigkill_during_save_leaves_old_or_new_generation(tmp_path):
    path = tmp_path / "g"
    rng = np.random.default_rng(7)
    x0 = rng.normal(size=(N0, D)).astype(np.float32)
    g = Gallery.create(path, D, encoder_fingerprint="enc")
    g.add(x0, rng.integers(0, 300, size=N0),
          source_sha256=[hashlib.sha256(str(i).encode()).hexdigest() for i in range(N0)])
    g.save()
    state = {**gallery_state(g), "next": N0}
    g.close()
    script = tmp_path / "writer.py"
    script.write_text(CHILD)

    kill_rng = np.random.default_rng(2024)
    outcomes = {"old": 0, "new": 0}
    save_s = None
    # Children are started two rounds ahead, so their imports overlap earlier rounds.
    ready = [_spawn(script), _spawn(script)]
    r = 0
    while outcomes["old"] + outcomes["new"] < KILLS:
        ready.append(_spawn(script))
        child = ready.pop(0)
        child.stdin.write(f"go {path} {r}\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "saving"
        if save_s is None:  # calibration round: let the save finish and time it
            save_s = float(child.stdout.readline().split()[1])
            delay = None
        else:
            delay = float(kill_rng.uniform(0, 1.2 * save_s))
            time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        child.stdin.close()
        want_new = _oracle(state, r)
        with Gallery.open(path) as g:
            report = g.check()
            # a kill mid-save leaves that save's files: check names them (they are the next
            # writer's to delete), and nothing else may be wrong
            assert all(STALE_FILES in p for p in report.problems), \
                f"round {r}, kill after {delay}s: {report}"
            found = gallery_state(g)
        if same_state(found, want_new):
            kind = "new"
            state = want_new
        else:
            assert same_state(found, state), f"round {r}: gallery is neither the old nor the new generation"
            kind = "old"
        if delay is not None:
            outcomes[kind] += 1
        else:
            assert kind == "new"
        r += 1
    for child in ready:
        child.kill()
        child.wait()
        child.stdout.close()
        child.stdin.close()
    print(f"crash test: {outcomes} after {r} rounds, save took {save_s:.3f} s")
    # Both outcomes occurred, so kills really landed before and after the commit point.
    assert outcomes["old"] > 0 and outcomes["new"] > 0, outcomes
    with Gallery.open(path, writable=True) as g:  # a writer after all that cleans up and works
        assert g.check().ok
        g.save()
    names = sorted(p.name for p in path.iterdir() if p.name.startswith(("vectors-", "index-", ".")))
    assert names == [f"vectors-{state['generation'] + 1:08d}.npy"]
