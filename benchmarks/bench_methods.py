"""`facekd bench` on the project's reference data, all methods side by side; writes the
``bench:methods`` section of docs/benchmarks.md and its plots to docs/img/.

    python benchmarks/bench_methods.py [--only lfw-dlib,orl-dlib,orl-samples,synthetic-samples]
                                       [--no-write]

Runs: LFW (lfw_150px) + dlib (sequential 50), ORL (att_orl) + dlib, ORL + the tiny `samples`
encoder, and `facekd.faces.synthfaces` renders (160 identities x 30, rendered into a temporary folder) +
the tiny encoder, the cosine-trained encoder's own domain. Embeddings are cached as `facekd bench`
caches them, so a second run costs the erasures alone.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, load_average, machine, versions, write_section

FACES = Path(os.environ.get("FACEKD_FACES_DIR", REPO.parent / "shared" / "data" / "faces"))
IMG = REPO / "docs" / "img"
DEFAULT = "esc,esc-t,scramble"
# On LFW also the scramble's two settings against each other (stranger radius, gate quantile).
LFW = DEFAULT + ",scramble:alpha=1.0,scramble:alpha=1.1,scramble:q=0.9999"
RUNS = {  # name -> (dataset, encoder, sequential, methods)
    "lfw-dlib": ("lfw_150px", "dlib", 50, LFW),
    "orl-dlib": ("att_orl", "dlib", 20, DEFAULT),
    "orl-samples": ("att_orl", "samples", 20, DEFAULT),
    "synthetic-samples": (None, "samples", 50, DEFAULT),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(RUNS))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    from facekd.evaluation.bench import format_markdown, run_bench, write_outputs
    from facekd.faces.synthfaces import write_tree

    load_before, t0 = load_average(), time.perf_counter()
    parts = []
    with tempfile.TemporaryDirectory(prefix="facekd-bench-methods-") as tmp:
        for name in args.only.split(","):
            dataset, encoder, sequential, methods = RUNS[name]
            if dataset is None:
                root = write_tree(Path(tmp) / "synthetic", list(range(5000, 5160)), 30, seed=0)
            else:
                root = FACES / dataset
                if not root.is_dir():
                    print(f"skipping {name}: no {root}", file=sys.stderr)
                    continue
            t = time.perf_counter()
            res = run_bench(root, encoder, methods=methods, sequential=sequential, progress=True,
                            echo=print)
            wall = time.perf_counter() - t
            out = write_outputs(res, Path(tmp) / name)
            md = format_markdown(res).split("\n", 1)[1].replace("## ", "#### ")
            title = "facekd.faces.synthfaces (160 identities x 30)" if dataset is None else dataset
            plots = ""
            if not args.no_write:
                IMG.mkdir(parents=True, exist_ok=True)
                for kind in ("tradeoff", "sequential"):
                    if f"{kind}_png" in out:
                        (IMG / f"bench-{name}-{kind}.png").write_bytes(
                            out[f"{kind}_png"].read_bytes())
                plots = (f"\n![trade-off, {name}](img/bench-{name}-tradeoff.png) "
                         f"![sequential, {name}](img/bench-{name}-sequential.png)\n")
            parts.append(f"### {title} + `{encoder}` ({wall:.0f} s)\n{md}{plots}")
            print(parts[-1], flush=True)
    body = f"""## Erasure methods side by side (`benchmarks/bench_methods.py`, `facekd bench`)

Machine: {machine()}; {versions('facekd', 'numpy', 'scikit-learn', 'onnxruntime', 'dlib')}.
1-minute load average {load_before:.1f} before, {load_average():.1f} after; wall
{time.perf_counter() - t0:.0f} s. Command: `python benchmarks/bench_methods.py --only {args.only}`
(each part is `facekd bench --dataset ... --encoder ... --methods ...` with its defaults and the
`--sequential` shown). Methods: `esc` = published ESC (p = 1.5), `esc-t` = ESC-T with the library's defaults
(normalised step), `scramble` = facekd's gated scramble (the default of `facekd forget`).

{chr(10).join(parts)}"""
    if not args.no_write:
        write_section("methods", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
