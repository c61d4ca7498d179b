"""Every workspace command at 100k and 1M faces, as a ratio to the cost of touching the vectors once.

Builds (once, cached under ``~/.cache/facekd/bench/million``) workspaces of 10,000 and 100,000
identities x 10 faces, d = 128 (the ``samples`` encoder; dlib-sized), clustered unit vectors
added through ``Workspace``/``Gallery.add`` and one ``save``. Then, each from a fresh process
(``python -m facekd``, imports included):

* ``open``: ``facekd identities`` (opens the workspace and prints every identity);
* ``forget``: ``facekd forget --identity X --json`` end to end, on a fresh copy of the workspace;
* ``check``: ``facekd check --json`` (sha256 of every file, SQLite against the arrays);
* ``search``: ``facekd search IMAGE -k 5`` for one aligned chip.

In the same run it times the floor: a copy of the vectors file with fsync (read + write the
vectors once), one pass of the forget's erasure over every vector (``Erasure.apply`` in 65,536-row
blocks), and a sha256 of the vectors file. Every step is reported as a ratio to
``copy + apply``. Writes the ``bench:million`` section of docs/benchmarks.md.

    python benchmarks/bench_million.py                 # 100k and 1M
    python benchmarks/bench_million.py --sizes 100000  # 100k only
    python benchmarks/bench_million.py --profile DIR   # also a pyinstrument profile per command
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _common import load_average, machine, versions, write_section

D = 128
PER_ID = 10
CACHE = Path(os.environ.get("FACEKD_BENCH_CACHE", Path.home() / ".cache" / "facekd" / "bench")) / "million"
BUILD_FORMAT = os.environ.get("FACEKD_BENCH_BUILD", "2")  # bump when the build (or format) changes


def _clustered(n_ids: int, start: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(n_ids * PER_ID, D)`` float32 unit vectors around one random centre per identity, under a
    shared axis (the narrow cone of dlib's space), and their ``(n,)`` int64 identities."""
    axis = np.random.default_rng(99).normal(size=D)
    axis /= np.linalg.norm(axis)
    centres = rng.normal(size=(n_ids, D))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    centres = centres + 0.8 * axis
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(start, start + n_ids, dtype=np.int64), PER_ID)
    x = centres[labels - start] + 0.35 * rng.normal(size=(len(labels), D)) / np.sqrt(D)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels


def build(faces: int) -> Path:
    """The cached workspace of ``faces`` faces (built through the public API when absent)."""
    from facekd.workspace import Workspace

    root = CACHE / f"ws-{faces}-b{BUILD_FORMAT}"
    stamp = root / ".built"
    if stamp.is_file() and stamp.read_text() == BUILD_FORMAT:
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    Workspace.init(root, "samples", aligned=True).close()
    rng = np.random.default_rng(faces)
    with Workspace.open(root, writable=True) as ws:
        n_ids, step = faces // PER_ID, 10_000
        for start in range(0, n_ids, step):
            x, y = _clustered(min(step, n_ids - start), start, rng)
            ws.gallery.add(x, y)
        ws.gallery.save()
    stamp.write_text(BUILD_FORMAT)
    print(f"built {root} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return root


def _chip(folder: Path) -> Path:
    """One 112 x 112 RGB chip (the samples encoder reads aligned chips as they are)."""
    from PIL import Image

    path = folder / "probe.png"
    if not path.is_file():
        rgb = np.random.default_rng(5).integers(0, 256, size=(112, 112, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(path)
    return path


def _run(args: list[str], profile: Path | None, name: str) -> tuple[float, dict | None]:
    """Wall time of ``python -m facekd ARGS`` in a fresh process (and its JSON output)."""
    cmd = [sys.executable]
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
        cmd += ["-m", "pyinstrument", "-o", str(profile / f"{name}.txt")]
    cmd += ["-c", "import sys; from facekd.cli import main; main(sys.argv[1:])"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd + args, capture_output=True, text=True, env={**os.environ})
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"facekd {' '.join(args)} failed ({out.returncode}): {out.stderr[-2000:]}")
    try:
        return wall, json.loads(out.stdout)
    except ValueError:
        return wall, None


def _floor(root: Path, erasure_bytes: bytes, work: Path) -> dict:
    """Copy of the vectors file with fsync, one blocked pass of the erasure, sha256 of the file."""
    from facekd.erasure import Erasure

    vec = max((root / "gallery").glob("vectors-*.npy"))
    dst = work / "floor-copy.npy"
    t0 = time.perf_counter()
    with open(vec, "rb") as src, open(dst, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 22)
        out.flush()
        os.fsync(out.fileno())
    copy_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    h = hashlib.sha256()
    with open(vec, "rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    hash_s = time.perf_counter() - t0
    x = np.load(dst)
    erasure = Erasure.from_bytes(erasure_bytes)
    t0 = time.perf_counter()
    for s in range(0, len(x), 65536):
        blk = x[s:s + 65536]
        erasure.apply(blk, out=blk)
    apply_s = time.perf_counter() - t0
    dst.unlink()
    return {"copy_fsync_s": copy_s, "apply_s": apply_s, "sha256_s": hash_s,
            "floor_s": copy_s + apply_s, "vector_bytes": vec.stat().st_size}


def measure(faces: int, profile: Path | None, repeats: int) -> dict:
    root = build(faces)
    work = CACHE / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    chip = _chip(CACHE)
    ws_s = str(root)
    target = 12345 % (faces // PER_ID)
    prof = (lambda name: None) if profile is None else (lambda name: profile / f"{faces}")  # noqa: E731
    res: dict = {"faces": faces, "identities": faces // PER_ID}
    best = lambda xs: float(min(xs))  # noqa: E731
    res["open_s"] = best(_run(["identities", "-w", ws_s], prof("open"), "open")[0]
                         for _ in range(repeats))
    res["check_s"] = best(_run(["check", "--json", "-w", ws_s], prof("check"), "check")[0]
                          for _ in range(repeats))
    res["search_s"] = best(_run(["search", str(chip), "-k", "5", "--json", "-w", ws_s],
                                prof("search"), "search")[0] for _ in range(repeats))
    forget, receipt = [], None
    for _ in range(repeats):
        copy = work / "ws"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(root, copy)
        wall, out = _run(["forget", "--identity", str(target), "--json", "-w", str(copy)],
                         prof("forget"), "forget")
        forget.append(wall)
        receipt = (out or {}).get("receipt")
    res["forget_s"] = best(forget)
    if receipt:
        res["forget_timings"] = receipt.get("timings_s", {})
        res["metric_counts"] = receipt.get("metrics", {}).get("counts", {})
    from facekd.workspace import Workspace

    with Workspace.open(work / "ws") as ws:
        erasure = bytes(ws.gallery.get_meta("erasure"))
    res.update(_floor(root, erasure, work))
    shutil.rmtree(work, ignore_errors=True)
    for step in ("open", "forget", "check", "search"):
        res[f"{step}_ratio"] = res[f"{step}_s"] / res["floor_s"]
    return res


def _table(rows: list[dict]) -> list[str]:
    lines = ["| faces | identities | open (`identities`) | forget | check | search (1 query) "
             "| floor: copy+fsync | floor: apply | sha256 of vectors |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cell = lambda k: f"{r[k + '_s']:.2f} s ({r[k + '_ratio']:.1f}x)"  # noqa: E731
        lines.append(f"| {r['faces']:,} | {r['identities']:,} | {cell('open')} | {cell('forget')} "
                     f"| {cell('check')} | {cell('search')} | {r['copy_fsync_s']:.2f} s "
                     f"| {r['apply_s']:.2f} s | {r['sha256_s']:.2f} s |")
    lines.append("")
    lines.append("Forget stages (s, from the receipt; `fit` is the erasure's own fit, `metrics` "
                 "includes the twin refit the receipt measures):")
    for r in rows:
        t = ", ".join(f"{k} {v:.2f}" for k, v in r.get("forget_timings", {}).items())
        lines.append(f"- {r['faces']:,} faces: {t}")
    return lines


def markdown(rows: list[dict], label: str, before: list[dict] | None = None,
             before_label: str = "") -> str:
    lines = ["## A million faces: every command against the cost of touching the vectors once "
             "(`benchmarks/bench_million.py`)", "",
             f"Machine: {machine()}; {versions('numpy', 'faiss', 'scikit-learn')}. Workspaces of "
             f"100k and 1M faces (10 per identity, d = {D}, clustered unit vectors, the `samples` "
             "encoder) built through `Workspace`/`Gallery.add`; every command is a fresh "
             "`facekd` process (imports included), best of the runs. Ratios (in parentheses) are "
             "to the floor timed in the same run: copy + fsync of the vectors file plus one pass "
             "of the forget's erasure over every vector.", ""]
    if before:
        lines += [f"Before ({before_label}):", ""] + _table(before) + [""]
        lines += [f"After ({label}):", ""]
    else:
        lines += [f"{label}:", ""]
    return "\n".join(lines + _table(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--repeats", type=int, default=2, help="best of N fresh processes per step")
    ap.add_argument("--profile", type=Path, default=None, help="pyinstrument profiles here")
    ap.add_argument("--label", default=None, help="a note written above the table")
    ap.add_argument("--no-write", action="store_true", help="print; leave docs/benchmarks.md")
    ap.add_argument("--json-out", type=Path, default=None, help="also write the rows here")
    ap.add_argument("--before", type=Path, default=None,
                    help="rows (--json-out) of an earlier run, e.g. of the previous release")
    ap.add_argument("--before-label", default="the code before this change")
    args = ap.parse_args()
    rows = [measure(int(s), args.profile, args.repeats) for s in args.sizes.split(",")]
    for r in rows:
        print(json.dumps(r, indent=1))
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=1))
    before = json.loads(args.before.read_text()) if args.before else None
    label = args.label or f"this run, load average {load_average():.1f}"
    text = markdown(rows, label, before, args.before_label)
    print(text)
    if not args.no_write:
        write_section("million", text)


if __name__ == "__main__":
    main()
