"""``facekd demo`` and ``facekd bench``: the end-to-end demo, and the benchmark of erasure
methods on your own photos.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from facekd import methods
from facekd.cli.common import (EXIT_VERIFY_FAILED, _MethodChoice, _fail, _progress, _user_errors,
                               _workspace)


# ------------------------------------------------------------------------------ demo
@click.command()
@click.option("--workspace", "-w", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to build the demo workspace (default: a fresh temp dir).")
@click.option("--identities", "n_ids", type=click.IntRange(3, 100000), default=200, show_default=True)
@click.option("--images", "n_images", type=click.IntRange(4, 1000), default=8, show_default=True)
@click.option("--dataset", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder-per-identity photos to use instead of synthetic faces.")
@click.option("--encoder", default=None, help="Encoder for --dataset (e.g. dlib).")
@click.option("--request-images", type=click.IntRange(0, 1000), default=40, show_default=True,
              help="Synthetic demo: extra photos of the person sent with the deletion request.")
@click.option("--method", type=_MethodChoice(), default=None,
              help="Erasure method (default: scramble, the workspace default).")
@click.option("--k", type=click.IntRange(1, None), default=None,
              help="ESC: erase exactly K directions.")
@click.option("--energy", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="ESC: erase the directions holding this share of the person's energy.")
@click.option("--json", "as_json", is_flag=True, help="Print only JSON on stdout.")
def demo(workspace: Path | None, n_ids: int, n_images: int, dataset: Path | None,
         encoder: str | None, request_images: int, method: str | None, k: int | None,
         energy: float | None, as_json: bool) -> None:
    """End to end: enrol, forget one person, export ONNX, verify, print before/after."""
    from facekd.demo import run_demo

    # -w before or after "demo"; never $FACEKD_WORKSPACE: a demo must not build into a real one.
    workspace = _workspace(workspace, fallback=False)
    log = (lambda msg: click.echo(msg, err=True)) if as_json else click.echo
    try:
        res = run_demo(workspace, identities=n_ids, images=n_images, dataset=dataset,
                       encoder=encoder, method=method, k=k, energy=energy,
                       request_images=request_images, echo=log, progress=_progress())
    except _user_errors() as exc:
        _fail(str(exc))
    if as_json:
        click.echo(json.dumps(res, indent=2, default=str))
    if res["verify"]["status"] == "FAIL":  # INCONCLUSIVE: the demo's few photos cannot decide
        sys.exit(EXIT_VERIFY_FAILED)


# ------------------------------------------------------------------------------ bench
@click.command()
@click.option("--dataset", required=True, type=click.Path(path_type=Path),
              help="Folder-per-identity photo tree (jpg/png/pgm).")
@click.option("--encoder", required=True, metavar="SPEC",
              help="dlib | dlib:PATH | facenet:PATH | onnx:PATH | insightface:DIR | samples")
@click.option("--methods", default=",".join(methods.names()), show_default=True,
              help="Comma-separated erasure methods; a method may carry settings, e.g. "
                   "scramble:alpha=1.1:q=0.9999 or esc:k=8.")
@click.option("--erase", type=click.IntRange(1, None), default=12, show_default=True,
              help="People erased one at a time (single-erasure rows).")
@click.option("--sequential", type=click.IntRange(0, None), default=20, show_default=True,
              help="People erased one after another per method (0 = off).")
@click.option("--fit-photos", default="all,10", show_default=True,
              help="Fit on all non-fresh photos and/or only K of them: all | 10 | 1,2,3,5,all.")
@click.option("--gallery-people", type=click.IntRange(3, None), default=None,
              help="A small workspace: only N identities take part (the erased people and a "
                   "seeded draw of others); default: all. The identities left out play people "
                   "enrolled after the erasure: what it costs them.")
@click.option("--background", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Photos of people enrolled nowhere, a folder per person (what 'facekd "
                   "calibrate' stores): gated methods fit against them, as forget does after "
                   "calibrate. Dataset identities with a background folder of the same name "
                   "stay out of the workspace.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--draws", type=click.IntRange(1, None), default=1, show_default=True,
              help="Run the protocol N times (seeds SEED, SEED+1, ...: new people, split and "
                   "fresh photos each) and pool: one draw of 12 people is a small sample.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default="facekd-bench", show_default=True, help="Output folder.")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Embedding cache root (default $FACEKD_CACHE or ~/.cache/facekd).")
@click.option("--json", "as_json", is_flag=True, help="Print only JSON on stdout.")
def bench(dataset: Path, encoder: str, methods: str, erase: int, sequential: int,
          fit_photos: str, gallery_people: int | None, background: Path | None, seed: int,
          draws: int, out_dir: Path, cache: Path | None, as_json: bool) -> None:
    """Benchmark erasure methods on your own photos: forget, retain, attacks, sequential."""
    from facekd.evaluation.bench import format_markdown, run_bench, write_outputs

    log = (lambda msg: click.echo(msg, err=True)) if as_json else click.echo
    try:
        res = run_bench(dataset, encoder, methods=methods, erase=erase, sequential=sequential,
                        fit_photos=fit_photos, gallery_people=gallery_people, seed=seed,
                        draws=draws, background=background, cache=cache, progress=_progress(),
                        echo=log)
        paths = write_outputs(res, out_dir)
    except _user_errors() as exc:
        _fail(str(exc) or type(exc).__name__)
    except OSError as exc:  # e.g. an unwritable --out
        _fail(f"{exc.filename or ''}: {exc.strerror or exc}")
    log("wrote " + ", ".join(str(p) for p in paths.values()))
    if as_json:
        click.echo(json.dumps(res, indent=2))
    else:
        click.echo("\n" + format_markdown(res))
