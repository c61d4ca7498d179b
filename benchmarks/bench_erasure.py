"""Benchmark the erasure core and the metrics report; writes the `bench:erasure` section of
docs/benchmarks.md.

    python benchmarks/bench_erasure.py           # full run (a few minutes), updates the docs
    python benchmarks/bench_erasure.py --quick   # sub-minute sanity run, prints only

Timings are medians of repeated runs after one warm-up. `apply` is memory-bound, so it is
compared with a plain numpy copy of the same array measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # synthetic clusters shared with the unit tests

# Run as `python benchmarks/bench_erasure.py`: sys.path[0] is benchmarks/, so the shared helpers
# in benchmarks/_common.py import as a top-level module.
from _common import load_average, machine, versions, write_section  # noqa: E402
from clusters import identity_clusters  # noqa: E402
from facekd.erasure import fit_esc, fit_esc_t, fit_scramble  # noqa: E402
from facekd.core.metrics import erasure_report, split_enrol_probe  # noqa: E402


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_fit(repeats: int) -> list[tuple[str, float, str]]:
    rows = []
    d = 512
    for n in (50, 500):
        E, y = identity_clusters(max(2, n // 50 + 1), n, d, seed=0)
        F = E[y == 0]
        t = median_time(lambda: fit_esc(F), repeats)
        rows.append((f"fit_esc n={n}, d={d} (k=7)", t, "< 5 ms"))
    E, y = identity_clusters(200, 50, d, shared_axis=3.0, seed=1)
    protos = np.stack([E[y == c].mean(axis=0) for c in range(200)])
    F = E[y == 0]
    t = median_time(lambda: fit_esc_t(F, protos, 0, reference=True), max(1, repeats))
    e = fit_esc_t(F, protos, 0, reference=True)
    rows.append((f"fit_esc_t n=50, d={d}, 200 prototypes, reference step (lr 1e-3, raw "
                 f"gradient; {e.params['epochs_run']} epochs run)", t, "< 3 s"))
    t = median_time(lambda: fit_esc_t(F, protos, 0), max(1, repeats))
    e = fit_esc_t(F, protos, 0)
    rows.append((f"fit_esc_t same, library default (normalised step, lr 0.1; "
                 f"{e.params['epochs_run']} epochs run)", t, "< 3 s"))
    gallery, labels = E[y != 0], y[y != 0]
    t = median_time(lambda: fit_scramble(F, gallery, gallery_labels=labels), max(1, repeats))
    rows.append((f"fit_scramble n=50, d={d}, gallery {len(gallery):,} faces of 199 identities "
                 "(4 ridges x identity-grouped cross-validation)", t, "< 3 s"))
    return rows


def bench_apply(n: int, repeats: int) -> tuple[list[tuple[str, float, str]], dict]:
    d = 512
    rng = np.random.default_rng(0)
    E = rng.standard_normal((n, d), dtype=np.float32)
    e = fit_esc(rng.standard_normal((50, d)), k=7)
    buf = np.empty_like(E)
    buf.fill(0.0)  # touch the pages once, so in-place timings exclude first-touch faults
    gb = E.nbytes / 1e9
    copy_into = median_time(lambda: np.copyto(buf, E), repeats)
    copy_new = median_time(lambda: E.copy(), repeats)
    apply_into = median_time(lambda: e.apply(E, out=buf), repeats)
    apply_new = median_time(lambda: e.apply(E), repeats)
    apply_self = median_time(lambda: e.apply(buf, out=buf), repeats)
    label = f"{n:,} x {d} float32 ({gb:.2f} GB)"
    rows = [
        (f"copy into existing array, {label} (bandwidth reference)", copy_into, ""),
        (f"copy to new array, {label}", copy_new, ""),
        (f"apply ESC k=7 into existing array (out=), {label}", apply_into, "< 2 s"),
        (f"apply ESC k=7 in place (out=E), {label}", apply_self, "< 2 s"),
        (f"apply ESC k=7 to new array, {label}", apply_new, "< 2 s"),
    ]
    bw = {"copy_gbps": 2 * gb / copy_into, "apply_gbps": 2 * gb / apply_into,
          "ratio_into": apply_into / copy_into, "ratio_new": apply_new / copy_new}
    return rows, bw


def bench_report(n_ids: int, per_id: int, d: int) -> tuple[str, dict, str]:
    E, y = identity_clusters(n_ids, per_id, d, shared_axis=3.0, seed=2)
    split = split_enrol_probe(y, seed=0)
    e = fit_esc(E[(y == 0) & split])
    r = erasure_report(E, y, [0], e, split)
    return f"{n_ids} ids x {per_id} images, d={d}", r.timings, r.table()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, prints only (< 1 min)")
    ap.add_argument("--write", action="store_true", help="with --quick: still update the docs")
    args = ap.parse_args()
    repeats = 3 if args.quick else 5
    n_apply = 100_000 if args.quick else 1_000_000
    report_size = (40, 10, 128) if args.quick else (158, 27, 128)

    desc = (f"{machine()}; {versions('numpy', 'torch', 'scikit-learn')}; load average "
            f"{load_average():.1f} at start")
    print(desc, flush=True)
    rows = bench_fit(repeats)
    for name, t, goal in rows:
        print(f"{name}: {t * 1e3:.2f} ms (target {goal})", flush=True)
    apply_rows, bw = bench_apply(n_apply, repeats)
    for name, t, goal in apply_rows:
        print(f"{name}: {t:.3f} s {goal}", flush=True)
    print(f"copy bandwidth {bw['copy_gbps']:.1f} GB/s (read+write); apply moves "
          f"{bw['apply_gbps']:.1f} GB/s = {bw['ratio_into']:.2f}x the copy time", flush=True)
    size, timings, table = bench_report(*report_size)
    print(f"erasure_report {size}: " + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()))
    print(table)
    if args.quick and not args.write:
        return

    def fmt(t: float) -> str:
        return f"{t * 1e3:.2f} ms" if t < 1 else f"{t:.2f} s"

    lines = [
        "## Erasure core (`benchmarks/bench_erasure.py`)", "",
        f"Machine: {desc}. Command: `python benchmarks/bench_erasure.py"
        f"{' --quick --write' if args.quick else ''}`. Medians of {repeats} after one warm-up.",
        "The machine is shared with other jobs; the load average above says how busy it was.", "",
        "| operation | median | target |", "|---|---|---|",
    ]
    lines += [f"| {name} | {fmt(t)} | {goal} |" for name, t, goal in rows + apply_rows]
    lines += [
        "",
        f"Bandwidth reference: a plain numpy copy of the same array into an existing array moves "
        f"{bw['copy_gbps']:.1f} GB/s (read + write); apply into an existing array moves "
        f"{bw['apply_gbps']:.1f} GB/s, i.e. it takes {bw['ratio_into']:.2f}x the copy time "
        f"({bw['ratio_new']:.2f}x when both allocate a new array; first-touch page faults of the "
        "new 2 GB array are slow on this VM). apply makes one pass over cache-sized blocks (copy, "
        "project with an in-place BLAS update, normalise; the NaN/inf check reuses the row norms), "
        "threaded over blocks with BLAS pinned to one thread; the remaining gap to the copy is "
        "arithmetic (thin (rows, d) @ (d, k) products and the norms), i.e. CPU-bound on 2 shared "
        "cores, not memory-bound.",
        "",
        f"`erasure_report` ({size}, synthetic clusters with a shared axis, ESC k=1 on one "
        "identity's enrolment half), seconds per stage (before + after):", "",
        "| " + " | ".join(timings) + " |", "|" + "---|" * len(timings),
        "| " + " | ".join(f"{v:.2f}" for v in timings.values()) + " |",
    ]
    path = write_section("erasure", "\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
