"""``facekd export-onnx`` and ``facekd report``: the edited encoder as ONNX (or into an insightface
pack), and a receipt as HTML.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from facekd.cli.common import _command, _emit, _fail, _open
from facekd.terminal import printable


# ------------------------------------------------------------------------------ outputs
@click.command("export-onnx")
@click.argument("out", type=click.Path(path_type=Path), required=False)
@click.option("--fp16", is_flag=True, help="Store weights in float16.")
@click.option("--original", is_flag=True, help="Export the unedited encoder (it still knows everyone).")
@click.option("--force", is_flag=True, help="Replace OUT even if it is not an ONNX model.")
@click.option("--bake-preprocessing", is_flag=True,
              help="Prepend a Sub/Mul head: the file takes raw RGB pixels (as insightface feeds "
                   "a model whose graph normalises its own input).")
@click.option("--insightface-pack", "pack", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="An insightface model pack folder: write the edited model into "
                                 "a copy of it at OUT (a new folder), under the file name "
                                 "FaceAnalysis loads.")
@click.option("--in-place", is_flag=True,
              help="With --insightface-pack: edit the pack itself (no OUT); the replaced file "
                   "and manifest.json are backed up beside the pack.")
@_command
def export_onnx(workspace: Path, as_json: bool, out: Path | None, fp16: bool, original: bool,
                force: bool, bake_preprocessing: bool, pack: Path | None, in_place: bool) -> None:
    """Export the deployed (edited) encoder to ONNX, with a parity report.

    OUT must lie outside the workspace; an existing OUT is replaced (atomically) only when it is
    an ONNX model, or with --force. With --insightface-pack, OUT is the folder for the edited
    copy of the pack (or absent, with --in-place)."""
    if pack is not None:
        if in_place == (out is not None):
            _fail("with --insightface-pack give OUT (a new folder for the edited copy) or "
                  "--in-place, not both")
        with _open(workspace) as ws:
            res = ws.export_to_insightface_pack(pack, out=out, in_place=in_place, fp16=fp16,
                                                original=original)
        _emit(as_json, res, lambda: "\n".join(
            [f"wrote {printable(res['file'])} (replacing the pack's {printable(res['replaced'])})",
             f"  insightface FaceAnalysis loads: {printable(res['loaded_by_insightface'])}"]
            + ([f"  original backed up in {printable(res['backup'])}"] if res["backup"] else [])
            + (["  manifest.json sha256 updated"] if res["manifest_updated"] else [])
            + (["  a Sub/Mul preprocessing head was baked in (insightface feeds raw pixels)"]
               if res["baked_head"] else [])
            + ([f"  note: the encoder's chips are aligned as {res['alignment']!r}; FaceAnalysis.get "
                "aligns with the ArcFace template"] if res["alignment"] != "arcface" else [])
            + [f"  parity: min cosine {res['export']['min_cosine']:.6f}, max |diff| "
               f"{res['export']['max_abs_diff']:.2e}"]))
        return
    if in_place:
        _fail("--in-place only applies with --insightface-pack")
    if out is None:
        _fail("missing argument OUT (the .onnx file to write)")
    with _open(workspace) as ws:
        rep = ws.export_onnx(out, fp16=fp16, original=original, force=force,
                             bake_preprocessing=bake_preprocessing)
    data = rep.to_dict() if hasattr(rep, "to_dict") else {"path": str(out)}
    data.setdefault("path", str(out))
    _emit(as_json, data, lambda: f"wrote {printable(out)}\n" + "\n".join(
        f"  {key}: {val}" for key, val in data.items() if key != "path"))


@click.command()
@click.option("--html", "html_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="HTML file to write (default WORKSPACE/report.html).")
@click.option("--receipt", "receipt_id", default=None, help="Receipt id (default: the latest).")
@click.option("--bench", "bench_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="A `facekd bench --out` folder whose plots to include (default: WORKSPACE/bench, "
                   "then facekd-bench beside the workspace, then ./facekd-bench, when present).")
@_command
def report(workspace: Path, as_json: bool, html_out: Path | None, receipt_id: str | None,
           bench_dir: Path | None) -> None:
    """An HTML page for a deletion receipt: a one-screen summary, plots, bench plots, receipt."""
    from facekd.evaluation.report import write_report

    with _open(workspace) as ws:
        res = write_report(ws, html_out=html_out, receipt_id=receipt_id, bench_dir=bench_dir)
    data = {key: str(v) if isinstance(v, Path) else v for key, v in res.items()}
    _emit(as_json, data, lambda: "\n".join(
        [f"wrote {v}" for key, v in data.items() if key in ("html", "histograms_png", "metrics_png")]
        + ([f"  with the bench plots from {data['bench']}"] if data.get("bench") else [])))
