"""`facekd forget` then `facekd verify --images <fresh photos>` on real faces, end to end through
the workspace: LFW (lfw_150px) + dlib, every identity with >= 40 photos. Writes the
``bench:verify-lfw`` section of docs/benchmarks.md.

    python benchmarks/bench_verify_lfw.py [--method scramble] [--no-write]

The workspace enrols every LFW identity with >= 10 files, holding back 20 photos of each person
with >= 40 files (their "fresh" photos: never enrolled, never fitted). Each such person is then
erased (the fit uses every enrolled photo of theirs, i.e. all their photos but the 20) and verified
with the 20 fresh photos:

* alone: on a copy of the freshly enrolled workspace, one person per copy;
* in sequence: all of them erased one after another in one workspace, each verified right after
  its erasure and again after the last one (later edits must not bring anyone back).

Verify's bounds are facekd's defaults (rank-1 at most 2x chance, genuine TAR@1e-3 at most 5 %).
Photos are read in place (symlinks); nothing is copied into the repository.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import REPO, load_average, machine, versions, write_section

FACES = Path(os.environ.get("FACEKD_FACES_DIR", REPO.parent / "shared" / "data" / "faces"))
HELD = 20


def _tree(root: Path, dataset: Path) -> tuple[Path, Path, dict[int, Path]]:
    """Symlink tree + ids CSV; returns (tree, ids_csv, {id: folder of held-out photos})."""
    folders = sorted(p for p in dataset.iterdir() if p.is_dir())
    tree, held_root = root / "tree", root / "held"
    held: dict[int, Path] = {}
    rows = []
    for i, folder in enumerate(folders):
        ident = 1000 + i
        files = sorted(folder.glob("*.jpg"))
        if len(files) < 10:
            continue
        rows.append([folder.name, ident])
        rng = np.random.default_rng(ident)
        order = rng.permutation(len(files))
        fresh = set(order[:HELD].tolist()) if len(files) >= 40 else set()
        (tree / folder.name).mkdir(parents=True)
        if fresh:
            held[ident] = held_root / str(ident)
            held[ident].mkdir(parents=True)
        for j, f in enumerate(files):
            dst = held[ident] / f"{j:04d}.jpg" if j in fresh else tree / folder.name / f.name
            dst.symlink_to(f.resolve())
    ids_csv = root / "ids.csv"
    with open(ids_csv, "w", newline="") as fh:
        csv.writer(fh).writerows([["folder", "identity"], *rows])
    return tree, ids_csv, held


def _verify_row(ws, ident: int, folder: Path) -> dict:
    v = ws.verify(ident, images=folder, progress=False, record=False)
    a = v.attack["after"]
    return {"passed": v.passed, "status": v.status, "rank1": 100 * a["rank-1"]["estimate"],
            "tar": 100 * a["TAR"]["estimate"], "bound_rank1": 100 * a["rank-1"]["bound"],
            "retained_rank1": v.retained.get("rank1"), "retained_tar": v.retained.get("tar")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="scramble")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    from facekd.operations.measure import gallery_stats
    from facekd.workspace import Workspace

    dataset = FACES / "lfw_150px"
    if not dataset.is_dir():
        print(f"no LFW at {dataset}; set FACEKD_FACES_DIR", file=sys.stderr)
        return 2
    load_before, t_start = load_average(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="facekd-verify-lfw-") as tmp:
        root = Path(tmp)
        tree, ids_csv, held = _tree(root, dataset)
        base = root / "ws"
        Workspace.init(base, "dlib").close()
        t = time.perf_counter()
        with Workspace.open(base, writable=True) as ws:
            res = ws.enroll(tree, ids_csv=ids_csv, progress=True)
            n_ids = len(ws.identities())
        enrol_s = time.perf_counter() - t
        print(f"enrolled {res.added} faces of {n_ids} identities in {enrol_s:.0f} s", flush=True)
        with Workspace.open(base) as ws:
            before = gallery_stats(ws.gallery, ws.config)  # verify's statistics, before any erasure

        alone = {}
        for ident, folder in held.items():
            copy = root / f"alone-{ident}"
            shutil.copytree(base, copy)
            with Workspace.open(copy, writable=True) as ws:
                t = time.perf_counter()
                ws.forget(ident, method=args.method, progress=False)
                forget_s = time.perf_counter() - t
            with Workspace.open(copy) as ws:
                alone[ident] = {**_verify_row(ws, ident, folder), "forget_s": forget_s}
            shutil.rmtree(copy)
            print("alone", ident, alone[ident], flush=True)

        seq_first, seq_last = {}, {}
        for ident, folder in held.items():
            with Workspace.open(base, writable=True) as ws:
                ws.forget(ident, method=args.method, progress=False)
            with Workspace.open(base) as ws:
                seq_first[ident] = _verify_row(ws, ident, folder)
            print("sequence", ident, seq_first[ident], flush=True)
        with Workspace.open(base) as ws:
            for ident, folder in held.items():
                seq_last[ident] = _verify_row(ws, ident, folder)
            gates = ws.erasure.n_gates
            check = ws.check()
    wall = time.perf_counter() - t_start

    def summary(rows: dict) -> str:
        r = list(rows.values())
        return (f"{sum(x['status'] == 'PASS' for x in r)} PASS, "
                f"{sum(x['status'] == 'FAIL' for x in r)} FAIL, "
                f"{sum(x['status'] == 'INCONCLUSIVE' for x in r)} INCONCLUSIVE of {len(r)}; "
                "rank-1 mean "
                f"{np.mean([x['rank1'] for x in r]):.2f} % (max {max(x['rank1'] for x in r):.1f}), "
                f"genuine TAR mean {np.mean([x['tar'] for x in r]):.2f} % "
                f"(max {max(x['tar'] for x in r):.1f})")

    first = next(iter(alone.values()))
    last_ret = list(seq_last.values())[-1]
    table = ["| identity | alone: rank-1 / TAR / pass | in sequence, right after | after all "
             f"{len(held)} |", "|---|---|---|---|"]
    for ident in held:
        a, s1, s2 = alone[ident], seq_first[ident], seq_last[ident]
        table.append(f"| {ident} | {a['rank1']:.1f} / {a['tar']:.1f} / {a['status']} "
                     f"| {s1['rank1']:.1f} / {s1['tar']:.1f} / {s1['status']} "
                     f"| {s2['rank1']:.1f} / {s2['tar']:.1f} / {s2['status']} |")
    body = f"""## Forget + verify on LFW, end to end (`benchmarks/bench_verify_lfw.py`)

Machine: {machine()}; {versions('facekd', 'numpy', 'onnxruntime', 'dlib')}. 1-minute load average
{load_before:.1f} before, {load_average():.1f} after; wall {wall:.0f} s (enrolment {enrol_s:.0f} s).
Command: `python benchmarks/bench_verify_lfw.py --method {args.method}`.

A workspace of lfw_150px (every identity with >= 10 files: {n_ids} identities, {res.added} faces
enrolled) with the dlib encoder; the {len(held)} people with >= 40 files have {HELD} photos held back
(never enrolled, never fitted). Each is erased with `forget --method {args.method}` (fit = all their
enrolled photos) and checked with `verify --images` on the {HELD} held-back photos (10 re-enrolled by
the attacker, 10 probes, averaged over every split; bound: rank-1 <= {first['bound_rank1']:.2f} %
= 2x the larger of chance and what unrelated strangers reach, genuine TAR@1e-3 <= 5 %, each
judged by its 95 % interval: PASS / FAIL / INCONCLUSIVE, docs/cli.md). Identities are the tree's
integer ids (names are not printed).

- Alone (each erased from the freshly enrolled workspace): {summary(alone)}.
- In sequence, verified right after each erasure: {summary(seq_first)}.
- In sequence, all re-verified after the last of {len(held)} erasures ({gates} gates in one chain):
  {summary(seq_last)}; `facekd check`: {'ok' if check['ok'] else check['problems']}.
- Retained identities (verify's own statistics after all {len(held)} erasures): rank-1
  {last_ret['retained_rank1'] * 100 if last_ret['retained_rank1'] is not None else float('nan'):.2f} %,
  TAR@1e-3 {last_ret['retained_tar'] * 100 if last_ret['retained_tar'] is not None else float('nan'):.2f} %
  (before any erasure, same statistics: rank-1 {100 * before['rank1']:.2f} %, TAR@1e-3
  {100 * before['tar']:.2f} %).

Per person (re-enrolment rank-1 % / genuine TAR@1e-3 % / verdict):

{chr(10).join(table)}"""
    print(body)
    if not args.no_write:
        write_section("verify-lfw", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
