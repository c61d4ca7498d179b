"""What 50 erasures in sequence cost everyone else, with and without the look-alike guard.

    FACEKD_CACHE=... python benchmarks/bench_guard.py [--dataset DIR] [--encoder dlib] [--seeds 5]
        [--fit 1] [--methods scramble,scramble:q=0.9995] [--no-write]

For each seed, `facekd bench`'s sequential protocol (its people draw, enrol/probe split and
fresh photos; facekd.evaluation.bench internals): 50 people erased one after another with the
gated scramble, each fitted on all their non-fresh photos (or K of them: `--fit K`) against
everyone not yet erased. Reported: everyone else's rank-1 and TAR@1e-3 before and after, and the
50 erased people's fresh re-enrolment rank-1 and TAR under the final composite, with the guard at
its measured setting (``facekd.methods.scramble_defaults.GUARD``, ``GUARD_KEEP``), without, and with
``guard_keep`` 0.97, and the default without sparing (``scramble:spare=0``; or ``--methods``'
settings). Writes ``bench:guard`` (with those four settings and all photos only).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from _common import REPO, load_average, machine, versions, write_section

from facekd.encoders import load_encoder
from facekd.evaluation import bench as B
from facekd.methods.scramble_defaults import GUARD
from facekd.progress import tqdm

FACES = Path(os.environ.get("FACEKD_FACES_DIR", REPO.parent / "shared" / "data" / "faces"))
METHODS = {"no guard (default)": "scramble",
           "no guard, sparing nobody (before)": "scramble:spare=0",
           f"guard {GUARD}, keep all": f"scramble:guard={GUARD}",
           f"guard {GUARD}, keep 0.97": f"scramble:guard={GUARD}:guard_keep=0.97"}


def run_seed(x0: np.ndarray, y: np.ndarray, count: dict, seed: int, n: int, method: str,
             fit: str = "all") -> dict:
    """One seed of `facekd bench`'s sequential run (facekd.evaluation.bench._sequential, its own draw and
    split): everyone else's rank-1 / TAR before and after, the erased people's at the end (%)."""
    seq = B._draw(count, n, np.random.default_rng([seed, 1]))
    split = B.split_enrol_probe(y, seed=seed)
    with tqdm(disable=True) as bar:
        rows, _, _ = B._sequential(x0, y, split, seq.people, seq.held, method, seed, bar, fit)
    first, last = rows[0], rows[-1]
    return {"r0": first["retain_rank1"], "r1": last["retain_rank1"],
            "t0": first["retain_tar"], "t1": last["retain_tar"],
            "forget_r1": last["forget_rank1"], "forget_tar": last["forget_tar"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default=str(FACES / "lfw_150px"))
    ap.add_argument("--encoder", default="dlib")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--people", type=int, default=50)
    ap.add_argument("--fit", default="all",
                    help="photos each erasure is fitted on: all, or K (1: an ID-photo gallery)")
    ap.add_argument("--methods", default=None,
                    help="comma-separated scramble settings instead of the four above, e.g. "
                         "scramble,scramble:q=0.9995 (prints; never writes the guard section)")
    ap.add_argument("--no-write", action="store_true", help="print; leave docs/benchmarks.md")
    a = ap.parse_args()
    methods = METHODS if a.methods is None else {m: m for m in a.methods.split(",")}
    write = not a.no_write and a.methods is None and a.fit == "all"
    load0, t_start = load_average(), time.perf_counter()
    emb = B.embed_dataset(Path(a.dataset), load_encoder(a.encoder))
    E, y, _ = B._usable(emb)
    ids, counts = np.unique(y, return_counts=True)
    count = dict(zip(ids.tolist(), counts.tolist()))
    x0 = B._unit(E)
    rows, res = [], {}
    with threadpool_limits(limits=1, user_api="blas"):
        for seed in range(a.seeds):
            for label, method in methods.items():
                r = run_seed(x0, y, count, seed, a.people, method, a.fit)
                res.setdefault(label, []).append(r)
                rows.append(f"| {seed} | {label} | {r['r0']:.2f} → {r['r1']:.2f} "
                            f"({r['r0'] - r['r1']:.2f}) | {r['t0']:.2f} → {r['t1']:.2f} | "
                            f"{r['forget_r1']:.2f} | {r['forget_tar']:.2f} |")
                print(rows[-1], flush=True)
    summary = []
    for label, rs in res.items():
        loss = [r["r0"] - r["r1"] for r in rs]
        summary.append(f"| {label} | {np.mean(loss):.2f} | {np.max(loss):.2f} | "
                       f"{np.mean([r['forget_r1'] for r in rs]):.2f} | "
                       f"{np.mean([r['forget_tar'] for r in rs]):.2f} |")
    extra = ("" if a.fit == "all" else f" --fit {a.fit}") + (f" --methods {a.methods}"
                                                             if a.methods else "")
    photos = "all their" if a.fit == "all" else f"{a.fit} of their"
    text = "\n".join([
        "## The look-alike guard in sequence (`benchmarks/bench_guard.py`)", "",
        f"Machine: {machine()}; {versions('numpy', 'scikit-learn', 'dlib')}. 1-minute load "
        f"average {load0:.1f} before, {load_average():.1f} after; wall "
        f"{time.perf_counter() - t_start:.0f} s. Command: `python benchmarks/bench_guard.py "
        f"--seeds {a.seeds} --people {a.people}{extra}` ({Path(a.dataset).name} + "
        f"`{a.encoder}`).", "",
        f"{a.people} people erased one after another with the gated scramble ({photos} "
        f"non-fresh photos), `facekd bench`'s sequential protocol, one draw per seed: no guard "
        f"(the default), the guard (`scramble:guard={GUARD}`: a gate opens on at most "
        f"{GUARD} of any one enrolled identity's new photos, never lifted above any of the "
        "person's unseen photos: `guard_keep = 1`) and the stronger `guard_keep=0.97` "
        "(lifted up to the score 97 % of them clear). Every row but \"sparing nobody\" has "
        "gates that let through faces matching one of the enrolled people nearest them "
        "(`[forget] scramble_spare`, facekd.methods.spare; \"sparing nobody\" is the default "
        "before it). Retained = people never erased; forget = "
        "the erased people's fresh photos re-enrolled under the final composite.", "",
        "| guard | everyone else's rank-1 loss, mean (points) | worst seed | erased rank-1 (%) "
        "| erased TAR (%) |", "|---|---|---|---|---|", *summary, "",
        "| seed | guard | everyone else's rank-1 (loss) | TAR@1e-3 | erased rank-1 | erased TAR |",
        "|---|---|---|---|---|---|", *rows])
    print(f"wrote {write_section('guard', text)}" if write else text)


if __name__ == "__main__":
    main()
