"""``facekd demo``: the whole product end to end on data that needs no download.

Default: synthetic identities (:mod:`facekd.faces.synthfaces`) and the tiny ``samples`` encoder; ids start
at 1000 so identity 1042 exists. Steps: init, enrol, forget 1042, export the edited encoder to
ONNX, verify with fresh renders of 1042 (images the gallery never held), print before/after.

With ``dataset=DIR`` (folder per identity, e.g. LFW) and ``encoder="dlib"`` the same runs on
photos: folders map to ids 1000+ in sorted order (the CSV is written into the workspace), the
erased identity is 1042 if present, else the one with most images; half of its photos are held
back from enrolment and used to verify. The erased person's name is never printed, and after the
deletion it is removed from the demo's own mapping file and image links.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from facekd.workspace import IMAGE_SUFFIXES, Workspace, WorkspaceError

__all__ = ["run_demo", "TARGET", "FIRST_ID"]

FIRST_ID = 1000
TARGET = 1042
# Rows of the before/after table: (label, report key). Values are percentages.
_ROWS = [("re-enrolment rank-1, erased", "rank1_forget"),
         ("re-enrolment rank-1, retained", "rank1_retain"),
         ("TAR@1e-3, erased", "tar@0.001_forget"),
         ("TAR@1e-3, retained", "tar@0.001_retain"),
         ("linear probe (KR), erased", "kr_linear_forget"),
         ("5-NN probe (KR), erased", "kr_knn_forget"),
         ("MIA accuracy (50 = ideal)", "mia")]


def _fresh_root(workspace: str | os.PathLike | None) -> Path:
    if workspace is None:
        return Path(tempfile.mkdtemp(prefix="facekd-demo-"))
    root = Path(workspace)
    if root.exists() and any(root.iterdir()):
        raise WorkspaceError(f"{root}: the demo needs a new or empty directory")
    root.mkdir(parents=True, exist_ok=True)
    return root


def _synthetic_data(root: Path, n_ids: int, n_images: int, target: int,
                    request_images: int) -> tuple[Path, Path | None, Path]:
    """Render the enrolment tree, the photos sent with the deletion request, and verify photos.

    The three sets of the target are disjoint renders (different image indices), so verification
    uses faces that neither the gallery nor the erasure fit ever saw.
    """
    from facekd.faces.synthfaces import render_identity, write_tree

    import cv2

    def write(folder: Path, chips) -> Path:
        folder.mkdir(parents=True)
        for j, chip in enumerate(chips):
            cv2.imwrite(str(folder / f"{j:04d}.png"), cv2.cvtColor(chip, cv2.COLOR_RGB2BGR))
        return folder

    ids = list(range(FIRST_ID, FIRST_ID + n_ids))
    tree = write_tree(root / "data" / "faces", ids, n_images, seed=0)
    request = None
    if request_images:
        request = write(root / "data" / f"request-{target}",
                        render_identity(target, request_images, seed=0, image_offset=n_images))
    held_out = write(root / "data" / f"verify-{target}",
                     render_identity(target, n_images, seed=0,
                                     image_offset=n_images + request_images))
    return tree, request, held_out


def _photo_data(root: Path, dataset: Path) -> tuple[Path, Path, Path, int, list[Path]]:
    """Link the dataset into a tree of per-file symlinks, holding back half of the target's photos.

    Returns ``(tree, held_out, ids_csv, target_id, target_links)``; no image is copied.
    """
    if not dataset.is_dir():
        raise WorkspaceError(f"{dataset}: not a directory")
    folders = sorted(p for p in dataset.iterdir() if p.is_dir())
    images = {f: sorted(p for p in f.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) for f in folders}
    folders = [f for f in folders if images[f]]
    if len(folders) < 3:
        raise WorkspaceError(f"{dataset}: needs at least 3 identity folders with images")
    ids = {f: FIRST_ID + i for i, f in enumerate(folders)}
    by_id = {v: f for f, v in ids.items()}
    target = TARGET if TARGET in by_id and len(images[by_id[TARGET]]) >= 4 else \
        ids[max(folders, key=lambda f: (len(images[f]), f.name))]
    if len(images[by_id[target]]) < 4:
        raise WorkspaceError("the demo needs an identity with at least 4 photos")
    tree, held_out = root / "data" / "tree", root / "data" / f"verify-{target}"
    held_out.mkdir(parents=True)
    target_links: list[Path] = []
    for f in folders:
        dst = tree / f.name
        dst.mkdir(parents=True)
        files = images[f]
        if ids[f] == target:
            keep = files[: len(files) // 2]
            for j, src in enumerate(files[len(files) // 2:]):
                link = held_out / f"{j:04d}{src.suffix.lower()}"  # no name in the file name
                link.symlink_to(src.resolve())
                target_links.append(link)
            files = keep
            target_links.append(dst)
        for src in files:
            (dst / src.name).symlink_to(src.resolve())
    ids_csv = root / "ids.csv"
    with open(ids_csv, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["folder", "identity"])
        w.writerows([f.name, ids[f]] for f in folders)
    return tree, held_out, ids_csv, target, target_links


def _scrub_mapping(ids_csv: Path, target: int) -> None:
    """Drop the erased person's row from the demo's mapping CSV (it holds their folder name)."""
    with open(ids_csv, newline="") as fh:
        rows = [r for r in csv.reader(fh) if len(r) < 2 or r[1] != str(target)]
    from facekd.state.receipt import write_atomic
    import io

    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    write_atomic(ids_csv, buf.getvalue().encode())


def _table(report: dict, verify: dict) -> str:
    before, after = report["before"], report["after"]

    def pct(v: float | None) -> str:
        return "   n/a" if v is None else f"{v:6.1f}"

    # The person's stored faces (enrol half against probe half): new photos are verify's.
    lines = ["forget's own measurement, on the gallery's stored faces (percent):",
             f"{'':<32} {'before':>6} {'after':>6}"]
    for label, key in _ROWS:
        if key in before and (before[key], after.get(key)) != (None, None):
            lines.append(f"{label:<32} {pct(before[key])} {pct(after.get(key))}")
    lines.append(f"chance rank-1: {100 * report['chance_rank1']:.2f}%")
    a = verify.get("attack")
    if a is not None:
        def fig(state: str, name: str) -> str:
            f = a[state].get(name)
            return "n/a" if f is None else (f"{100 * f['estimate']:.1f}% [{100 * f['low']:.1f}, "
                                             f"{100 * f['high']:.1f}]")

        lines += ["", f"verify with {a['photos']} photos the gallery never saw, every split, "
                      "95% intervals:",
                  f"  re-enrolment rank-1  before {fig('before', 'rank-1')}  after "
                  f"{fig('after', 'rank-1')}  (bound {100 * verify['bound']['max_rank1']:.2f}%)",
                  f"  genuine TAR@1e-3     before {fig('before', 'TAR')}  after "
                  f"{fig('after', 'TAR')}  (bound {100 * verify['bound']['max_tar']:.1f}%)"]
    e = verify.get("erased_photos")
    if e is not None:
        lines.append(f"  {e['erased']} of {e['photos']} photos erased (scrambled by the gate)")
    lines.append(f"verify: {verify['status']}: {verify['reason']}")
    return "\n".join(lines)


def run_demo(workspace: str | os.PathLike | None = None, *, identities: int = 200, images: int = 8,
             dataset: str | os.PathLike | None = None, encoder: str | None = None,
             k: int | None = None, energy: float | None = None, request_images: int = 40,
             method: str | None = None, echo: Callable[[str], None] = print,
             progress: bool = True) -> dict:
    """Run the demo; returns a JSON-ready summary (no names, no embeddings, no image paths).

    The synthetic demo models a deletion request that comes with ``request_images`` extra photos of
    the person: an erasure fitted on a person's few gallery faces alone does not generalise to new
    photos of them on this encoder (see docs/benchmarks.md, "How many photos and directions").
    It erases with the workspace's default method (the gated scramble) unless ``method`` is
    given; ``k`` or ``energy`` select published ESC with that many directions.
    """
    t_start = time.perf_counter()
    if dataset is None and encoder not in (None, "samples"):
        raise WorkspaceError("--encoder is for --dataset; the synthetic demo uses the samples encoder")
    root = _fresh_root(workspace)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    if dataset is None:
        echo(f"demo workspace {root}: {identities} synthetic identities x {images} images")
        # 1042 when it exists (the README's example), else a middle id of a smaller set.
        target = TARGET if identities > TARGET - FIRST_ID else FIRST_ID + identities // 2
        tree, request, held_out = _synthetic_data(root, identities, images, target, request_images)
        ids_csv, target_links, spec, aligned = None, [], "samples", True
    else:
        spec, aligned = encoder or "dlib", False
        echo(f"demo workspace {root}: photos from {dataset}, encoder {spec}")
        tree, held_out, ids_csv, target, target_links = _photo_data(root, Path(dataset))
        request = None
    timings["data"] = time.perf_counter() - t

    t = time.perf_counter()
    ws_dir = root / "workspace"
    Workspace.init(ws_dir, spec, aligned=aligned).close()
    with Workspace.open(ws_dir, writable=True) as ws:
        res = ws.enroll(tree, ids_csv=ids_csv, progress=progress)
        n_ids = len(ws.identities())
        echo(f"enrolled {res.added} faces of {n_ids} identities")
        timings["enrol"] = time.perf_counter() - t

        t = time.perf_counter()
        extra = f" with {request_images} photos sent with the request" if request else ""
        echo(f"forgetting identity {target}{extra} ...")
        fr = ws.forget(target, method=method, k=k, energy=energy, images=request,
                       progress=progress)
        timings["forget"] = time.perf_counter() - t
    if ids_csv is not None:  # the demo's own helper files must not keep the erased name either
        _scrub_mapping(ids_csv, target)
        for link in target_links:
            if link.is_dir() and not link.is_symlink():
                shutil.rmtree(link)
    edit = (f"method {fr.receipt['method']}, {fr.receipt['model']['gates_total']} gate(s)"
            if fr.receipt["method"] == "scramble" else
            f"method {fr.receipt['method']}, {fr.receipt['model']['k_added']} direction(s) erased")
    echo(f"receipt {fr.receipt['receipt_id']}: {fr.removed_faces} faces removed, {edit}")
    from facekd.operations.measure import coverage_text

    if (line := coverage_text(fr.coverage)) is not None:  # why some new photos may escape
        echo(line)
    cost = fr.receipt["model"].get("others_touched")
    if cost is not None:  # what the gate costs everyone else (the fit's held-out estimate)
        echo(f"everyone else: the gate changes about {100 * cost:.2f} % of their new photos")

    with Workspace.open(ws_dir) as ws:
        t = time.perf_counter()
        onnx_path = root / "encoder-edited.onnx"
        export = ws.export_onnx(onnx_path)
        timings["export"] = time.perf_counter() - t
        t = time.perf_counter()
        vr = ws.verify(target, images=held_out, progress=progress)
        timings["verify"] = time.perf_counter() - t
    if ids_csv is not None:
        shutil.rmtree(held_out)  # links to the erased person's photos
    timings["total"] = time.perf_counter() - t_start
    verify = vr.to_dict()
    verify.pop("images", None)  # per-file rows are for the verify command, not the summary
    summary = {"workspace": str(ws_dir), "identity_hash": fr.receipt["identity_hash"],
               "receipt_id": fr.receipt["receipt_id"], "metrics": fr.receipt["metrics"],
               "coverage": fr.coverage, "verify": verify,
               "onnx": export.to_dict() if hasattr(export, "to_dict") else str(onnx_path),
               "timings_s": {key: round(v, 2) for key, v in timings.items()}}
    echo("")
    echo(_table(fr.receipt["metrics"], verify))
    echo(f"\nedited encoder exported to {onnx_path}")
    echo(f"total {timings['total']:.1f} s; try: facekd ledger -w {ws_dir}")
    return summary
