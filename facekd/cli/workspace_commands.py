"""``facekd init``, ``enroll``, ``calibrate``, ``identities``, ``search``, ``check`` and
``ledger``: create a workspace, fill it, look into it.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import click

from facekd.cli.common import (EXIT_VERIFY_FAILED, IDENTITY, _command, _emit, _open, _progress,
                               _report_skipped, _who)
from facekd.state.receipt import ledger_others_touched
from facekd.terminal import printable


# ------------------------------------------------------------------------------ workspace
@click.command()
@click.option("--encoder", required=True, metavar="SPEC",
              help="dlib | dlib:PATH | facenet:PATH | onnx:PATH | insightface:DIR | samples "
                   "(insightface:DIR: a model-pack folder or a pack name under "
                   "~/.insightface/models; its recognition model, and its detector's 5 "
                   "landmarks for alignment)")
@click.option("--aligned", is_flag=True, help="Images are already aligned chips (no detection).")
@click.option("--index", default="flat", show_default=True, help="FAISS index kind.")
@click.option("--threshold", type=float, default=None,
              help="Match threshold (cosine); default: auto, from the gallery at FAR 1e-3.")
@click.option("--gallery", "backend", default="faiss", show_default=True, metavar="SPEC",
              help="Where the gallery vectors live: faiss (in the workspace), "
                   "milvus://HOST:PORT/NAME (credentials from MILVUS_TOKEN or MILVUS_USER + "
                   "MILVUS_PASSWORD) or milvus-lite:PATH.db (relative to the workspace).")
@_command
def init(workspace: Path, as_json: bool, encoder: str, aligned: bool, index: str,
         threshold: float | None, backend: str) -> None:
    """Create a workspace for an encoder."""
    from facekd.workspace import Workspace

    family, _, arg = encoder.partition(":")
    if family.strip().lower() == "insightface" and arg:
        from facekd.encoders.insightface import resolve_pack

        encoder = f"insightface:{resolve_pack(arg)}"  # later commands run from anywhere
    with Workspace.init(workspace, encoder, aligned=aligned, index=index,
                        match_threshold=threshold, backend=backend) as ws:
        enc = ws.base_encoder
        model_file, file_sha = _model_file(enc)
        data = {"workspace": str(ws.root), "encoder": encoder, "family": enc.family,
                "dim": enc.dim, "fingerprint": enc.fingerprint,
                "model": str(enc.path) if getattr(enc, "path", None) else None,
                "detector": getattr(enc.input_spec, "detector", None),
                "input_spec": enc.input_spec.to_dict(), "input_spec_source": enc.input_spec_source,
                "input_spec_guessed": enc.input_spec_guessed,
                "model_file": model_file, "model_file_sha256": file_sha}
    if enc.input_spec_guessed:
        warnings.warn(f"{model_file or encoder} says nothing about its input (no facekd.input_spec "
                      f"or input_mean/input_std metadata, no preprocessing head): assuming "
                      f"ArcFace's {enc.input_spec.describe()}; if the model expects another, every "
                      "embedding is wrong: add the metadata (docs/cli.md, 'Input contracts')")
    lines = [f"workspace {data['workspace']}: encoder {encoder} "
             f"({enc.family}, d={enc.dim}, weights sha256 {enc.fingerprint[:12]}...)",
             f"  input: {enc.input_spec.describe()}; from {enc.input_spec_source}"]
    label = "recognition model" if family.strip().lower() == "insightface" else "model file"
    if model_file:
        lines.append(f"  {label}: {model_file} (file sha256 {file_sha[:12]}...)")
    if family.strip().lower() == "insightface":
        if data["detector"] and not aligned:
            lines.append(f"  faces: the pack's detector {data['detector']} (5 landmarks, "
                         "insightface's alignment)")
    _emit(as_json, data, "\n".join(printable(line) for line in lines))


def _model_file(enc: Any) -> tuple[str | None, str | None]:
    """``(path, sha256 of its bytes)`` of the file an encoder was loaded from, when it has one
    (the fingerprint hashes the weight arrays instead: it survives re-saving, the file's does not)."""
    source = getattr(enc, "source", None)
    if source:
        return source["file"], source["file_sha256"]
    path = getattr(enc, "path", None)
    if path and Path(path).is_file():
        import hashlib

        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return str(path), h.hexdigest()
    return None, None


def _separation_warning(ws: Any) -> dict | None:
    """The gallery's own identity separation (:mod:`facekd.core.separation`); warns when the encoder
    cannot tell the enrolled people apart, so a broken encoder is not deployed silently."""
    from facekd.core.separation import identity_separation, warning_text

    gallery = ws.gallery
    vectors = gallery.vectors_view() if hasattr(gallery, "vectors_view") else gallery.vectors()
    check = identity_separation(vectors, gallery.labels())
    if check is not None and not check["usable"]:
        warnings.warn(warning_text(check, "the gallery") + "; enrolment and erasure figures "
                      "are meaningless with it")
    return check


@click.command()
@click.argument("tree", type=click.Path(path_type=Path))
@click.option("--ids", "ids_csv", type=click.Path(path_type=Path), default=None,
              help="CSV mapping folder names to integer identity ids.")
@click.option("--merge", is_flag=True,
              help="Allow CSV rows that put a folder under an id already used by another folder "
                   "or an enrolled person (merges them into one identity).")
@_command
def enroll(workspace: Path, as_json: bool, tree: Path, ids_csv: Path | None, merge: bool) -> None:
    """Enrol a folder-per-identity image tree with the deployed (edited) encoder."""
    with _open(workspace, writable=True) as ws:
        res = ws.enroll(tree, ids_csv=ids_csv, progress=_progress(), merge=merge)
        total = len(ws.identities())
        check = _separation_warning(ws) if res.added else None
    _report_skipped(res.skipped)
    data = {"added": int(res.added), "skipped_existing": int(res.skipped_existing),
            "skipped": len(res.skipped), "identities": len(res.identities),
            "gallery_identities": total,
            "assigned": [{"name": name, "identity": int(ident), "new": bool(new)}
                         for name, ident, new in res.assigned], "encoder_check": check}
    summary = (f"enrolled {data['added']} face(s) of {data['identities']} identities "
               f"({data['skipped_existing']} already present, {data['skipped']} skipped); "
               f"gallery holds {total} identities")
    mapping = [f"  {a['identity']:>10}  {printable(a['name'])}{'' if a['new'] else '  (as before)'}"
               for a in data["assigned"]]
    _emit(as_json, data, "\n".join(
        [summary] + (["identity ids for folders named by person:"] + mapping if mapping else [])))


@click.command()
@click.option("--images", type=click.Path(path_type=Path), default=None,
              help="Photos of people enrolled nowhere, one sub-folder per person (replaces any "
                   "stored before).")
@click.option("--clear", is_flag=True, help="Drop the stored photos.")
@_command
def calibrate(workspace: Path, as_json: bool, images: Path | None, clear: bool) -> None:
    """Keep photos of people enrolled nowhere to read the MATCH threshold off (small galleries).

    Without options, report what is stored and the threshold it gives."""
    with _open(workspace, writable=images is not None or clear) as ws:
        res = ws.calibrate(images, clear=clear, progress=_progress())
    _report_skipped(res.pop("skipped"))

    def text() -> str:
        thr = res["threshold"]
        lines = [f"background: {res['photos']} photo(s) of {res['people']} people enrolled "
                 "nowhere" if res["photos"] else "background: none stored"]
        if res["sampled_from"] and res["sampled_from"] > res["photos"]:
            lines.append(f"  sampled from {res['sampled_from']} usable faces")
        how = "extrapolated (a normal tail)" if res["extrapolated"] else "read off them"
        lines.append("one-to-many MATCH threshold: none (too few identities)" if thr is None
                     else f"one-to-many MATCH threshold {thr:.3f} at FPIR "
                          f"{100 * res['fpir']:g} %, {how} from {res['searches']} searches"
                     + (f" (was {res['before']:.3f})" if res["before"] is not None else ""))
        if res["note"]:
            lines.append(f"note: {res['note']}")
        return "\n".join(printable(line) for line in lines)

    _emit(as_json, res, text)


@click.command()
@_command
def identities(workspace: Path, as_json: bool) -> None:
    """List the gallery's identities."""
    with _open(workspace) as ws:
        infos = ws.identities()
    # Built only in the form asked for: 100k identities cost 0.1 s per form.
    _emit(as_json, (lambda: [{"identity": int(i.identity), "name": i.name, "faces": int(i.n_faces)}
                             for i in infos]),
          lambda: "\n".join([f"{'identity':>10}  {'faces':>5}  name"]
                            + [f"{i.identity:>10}  {i.n_faces:>5}  {printable(i.name or '')}"
                               for i in infos]))


@click.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.option("-k", "k", type=click.IntRange(1, 100), default=5, show_default=True)
@click.option("--identity", type=IDENTITY, default=None,
              help="Compare with this identity's faces only (is IMAGE this person?).")
@click.option("--name", default=None, help="As --identity, by the name enrol recorded.")
@_command
def search(workspace: Path, as_json: bool, image: Path, k: int, identity: int | None,
           name: str | None) -> None:
    """Best gallery matches for the largest face in IMAGE."""
    with _open(workspace) as ws:
        res = ws.search(image, k=k, identity=_who(ws, identity, name, required=False))
    thr = res["threshold"]

    def text() -> str:
        image = printable(res["image"])
        how = ("one-to-many, FPIR" if res["threshold_kind"] == "fpir" else "one-to-one, FAR")
        lines = [f"{image}  (match threshold {thr:.3f}, {how})" if thr is not None else image]
        for m in res["matches"]:
            lines.append(f"  {m['identity']:>10}  {m['score']:+.3f}  "
                         f"{'MATCH' if m['match'] else '     '}  {printable(m['name'] or '')}")
        if res.get("threshold_note"):
            lines.append(f"note: {res['threshold_note']}")
        return "\n".join(lines)

    _emit(as_json, res, text)


@click.command()
@click.option("--repair", is_flag=True,
              help="First delete what a writer deletes on open: an earlier generation's files "
                   "(which may hold erased faces) and crashed saves' temp files.")
@_command
def check(workspace: Path, as_json: bool, repair: bool) -> None:
    """Check gallery files, encoder state, ledger and receipts; exit 1 on a problem."""
    if repair:  # a writer's open removes the stale files (gallery_tools.generations)
        _open(workspace, writable=True).close()
    with _open(workspace, verify=False) as ws:  # check reports damaged files, open refuses them
        res = ws.check()
    _emit(as_json, res, "ok" if res["ok"] else "\n".join(
        ["problems:"] + [printable(p) for p in res["problems"]]))
    if not res["ok"]:
        sys.exit(EXIT_VERIFY_FAILED)


@click.command()
@click.option("--receipt", "receipt_id", default=None, help="Print this receipt in full.")
@_command
def ledger(workspace: Path, as_json: bool, receipt_id: str | None) -> None:
    """List committed deletions (hashed identities only), or print one receipt."""
    with _open(workspace) as ws:
        if receipt_id:
            rec = ws.receipt(receipt_id)
            _emit(as_json, rec, lambda: json.dumps(rec, indent=2))
            return
        entries = ws.ledger()
    _emit(as_json, entries, lambda: "\n".join(
        [f"{'receipt':<22} {'identity hash':<18} {'kind':<8} {'method':<8} {'edit':<11} "
         f"{'others':<8} {'later':<8} created"]
        + [f"{e['receipt_id']:<22} {e['identity_hash'][:16]:<18} {e.get('kind', 'erasure'):<8} "
           f"{e['method']:<8} {_edit_size(e):<11} {_others(e):<8} "
           f"{_others(e, 'strangers_touched'):<8} {e['created']}"
           + ("  (forced)" if e.get("forced") else "") for e in entries]
        + _others_total(entries)) if entries
        else "no deletions yet")


def _others(entry: dict, key: str = "others_touched") -> str:
    """A gated entry's share of everyone else's new photos its gate opens on (``key``
    ``"strangers_touched"``: of people enrolled later's; ``-``: not gated, or committed before
    facekd measured it)."""
    share = entry.get(key)
    return "-" if share is None else f"{100 * share:.2f}%"


def _others_total(entries: list[dict]) -> list[str]:
    """The ledger's closing lines: what its gates together cost everyone else, and people enrolled
    later, who meet every gate (summed: gates seldom open on the same photo)."""
    lines = []
    for key, label, whose in (("others_touched", "others", "everyone else's new photos"),
                              ("strangers_touched", "later", "the photos of people enrolled "
                                                             "later (no gate spares them)")):
        total, counted, missing = ledger_others_touched(entries, key)
        if counted:
            lines.append(f"{label}: the share of {whose} a gate opens on (each may "
                         f"then fail to match its owner); all {counted} together about "
                         f"{100 * total:.2f}%" + (f", not counting {missing} older gate(s)"
                                                  if missing else ""))
    return lines


def _edit_size(entry: dict) -> str:
    """A ledger entry's edit: ``1 gate`` for the scramble, ``k=3`` for ESC (older entries: k)."""
    gates = entry.get("gates", 0)
    return f"{gates} gate{'s' * (gates != 1)}" if gates else f"k={entry.get('k', 0)}"
