"""SIGKILL a Milvus Lite gallery's writer during the erasure rewrite: the serving alias always names
a complete collection (exactly the old or the new faces), the committed metadata is exactly the
old or the new generation, and the next writer finishes or discards the interrupted work.

Each round a child opens the gallery, removes an identity, applies an erasure, sets a meta key and
saves (a rewrite into a new collection); the parent kills it at a named stage of the save (mid
rewrite, rewritten, committed, alias switched) or after a random delay over the measured save,
then compares with a numpy oracle.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="the Milvus backend needs pymilvus (pip install 'facekd[milvus]')")
pytest.importorskip("milvus_lite", reason="the Milvus tests run on milvus-lite (pip install 'facekd[milvus]')")

from facekd.erasure import fit_esc  # noqa: E402
from gallery_tools.backend import create_backend, open_backend  # noqa: E402
from gallery_states import gallery_state, same_state  # noqa: E402

D, N0, IDS = 32, 4000, 150
SPEC = "milvus-lite:lite.db"
STAGES = ["batch", "written", "committed", "aliased"]   # killed right after these
RANDOM_KILLS = 6
REPO = Path(__file__).resolve().parents[1]

CHILD = r'''
import sys, time
import numpy as np
from facekd.erasure import fit_esc
from gallery_tools.backend import open_backend
import pymilvus, milvus_lite.adapter.grpc.server  # imported before its turn: overlaps other rounds

line = sys.stdin.readline().split()          # "go PATH ROUND", sent when it is this child's turn
path, r = line[1], int(line[2])
g = open_backend("%(spec)s", path, writable=True, lock_timeout=30)
present = np.unique(g.labels())
g.remove(int(present[r %% len(present)]))
g.apply(fit_esc(np.random.default_rng(r).normal(size=(6, %(d)d)), k=2))
g.set_meta("round", str(r).encode())
print("saving", flush=True)
t0 = time.perf_counter()
g.save(progress=False)
print(f"saved {time.perf_counter() - t0:.6f}", flush=True)
sys.stdin.readline()                         # wait to be killed
''' % {"spec": SPEC, "d": D}


def _oracle(state: dict, r: int) -> dict:
    present = np.unique(state["labels"])
    keep = state["labels"] != present[r % len(present)]
    e = fit_esc(np.random.default_rng(r).normal(size=(6, D)), k=2)
    return {"face_ids": state["face_ids"][keep], "labels": state["labels"][keep],
            "vectors": e.apply(state["vectors"][keep]), "meta": str(r).encode(),
            "generation": state["generation"] + 1}


def _served_ids(g, candidates: np.ndarray) -> np.ndarray | None:
    """Face ids in the collection the alias serves (read before any writer repairs anything),
    looked up among ``candidates``; None when it also holds rows outside them."""
    target = g.served_collection()
    g._call("load_collection", target)
    ids = [b[0] for b in g._batches(target, ("face_id", "identity"), candidates)]
    ids = np.sort(np.concatenate(ids)) if ids else np.empty(0, np.int64)
    return ids if g._count(target, "face_id >= 0") == len(ids) else None


def _spawn(script: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO),
               FACEKD_TEST_MILVUS_STAGE="1")
    return subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)


def _kill_at(child: subprocess.Popen, stage: str | None, delay: float | None) -> None:
    if stage is not None:
        while child.stdout.readline().strip() != f"stage {stage}":
            pass
    else:
        time.sleep(delay)
    child.send_signal(signal.SIGKILL)
    child.wait()


@pytest.mark.slow
def test_sigkill_during_the_rewrite_leaves_a_complete_served_collection(tmp_path):
    path = tmp_path / "gallery"
    rng = np.random.default_rng(5)
    x = rng.normal(size=(N0, D)).astype(np.float32)
    g = create_backend(SPEC, path, D, encoder_fingerprint="enc")
    g.add(x, rng.integers(0, IDS, size=N0))
    g.save()
    state = gallery_state(g)
    g.close()
    script = tmp_path / "writer.py"
    script.write_text(CHILD)

    kill_rng = np.random.default_rng(2024)
    plan = [(None, None)] + [(s, None) for s in STAGES] + [(None, -1.0)] * RANDOM_KILLS
    outcomes = {"old": 0, "new": 0}
    save_s = None
    ready = [_spawn(script) for _ in range(3)]  # started ahead: their imports overlap earlier rounds
    for r, (stage, delay) in enumerate(plan):
        ready.append(_spawn(script))
        child = ready.pop(0)
        child.stdin.write(f"go {path} {r}\n")
        child.stdin.flush()
        while (line := child.stdout.readline().strip()) != "saving":
            assert line, f"round {r}: the writer died before saving"
        if save_s is None:  # calibration round: let the save finish and time it
            while not (line := child.stdout.readline()).startswith("saved"):
                pass
            save_s = float(line.split()[1])
            child.kill()
            child.wait()
        else:
            if delay is not None:
                delay = float(kill_rng.uniform(0, 1.2 * save_s))
            _kill_at(child, stage, delay)
        child.stdout.close()
        child.stdin.close()
        want_new = _oracle(state, r)

        with open_backend(SPEC, path) as g:  # a reader: nothing repaired yet
            served = _served_ids(g, state["face_ids"])
            found = gallery_state(g)
        assert served is not None and (np.array_equal(served, state["face_ids"])
                or np.array_equal(served, want_new["face_ids"])), \
            f"round {r} ({stage or delay}): the alias serves an incomplete or mixed collection"
        if same_state(found, want_new):
            kind, state = "new", want_new
        else:
            assert same_state(found, state), f"round {r} ({stage or delay}): neither old nor new state"
            kind = "old"
        with open_backend(SPEC, path, writable=True) as g:  # the next writer finishes the work
            report = g.check()
            assert report.ok, f"round {r} ({stage or delay}): {report}"
            assert same_state(gallery_state(g), state)
        if stage is not None or delay is not None:
            outcomes[kind] += 1
        else:
            assert kind == "new"
    for child in ready:
        child.kill()
        child.wait()
        child.stdout.close()
        child.stdin.close()
    print(f"milvus crash test: {outcomes}, save took {save_s:.3f} s")
    assert sum(outcomes.values()) >= 10
    assert outcomes["old"] > 0 and outcomes["new"] > 0, outcomes
    with open_backend(SPEC, path) as g:
        assert g.collections() == [g.collection] == [g.served_collection()]
