"""Put an edited recognition model into an insightface model pack where ``FaceAnalysis`` loads it.

insightface's ``FaceAnalysis(name=...)`` globs ``<root>/models/<name>/*.onnx``, sorts the paths,
routes each file by its input/output shapes (``model_zoo.ModelRouter``) and keeps the *first*
model of each task. An edited file saved next to the original (``w600k_r50_edited.onnx``) is
therefore ignored and the erased person is still recognised. :func:`export_to_pack` writes the
edited model under the file name of the pack's recognition model that the workspace's original
encoder came from, in a copy of the pack or in place (with a backup beside the pack, never in
it), updates a ``manifest.json`` checksum when there is one, and refuses when insightface would
load another recognition model first. The routing below mirrors insightface 0.7 / 2.x
(``python-package/insightface/model_zoo/model_zoo.py`` and ``app/face_analysis.py``).
"""

from __future__ import annotations

import datetime as _dt
import glob
import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from facekd.errors import PackError

__all__ = ["route", "pack_models", "insightface_normalisation", "export_to_pack", "MANIFEST"]

MANIFEST = "manifest.json"
_HEAD_NODES = 8  # ArcFaceONNX looks for its Sub/Mul head among the first 8 nodes


def _io(model) -> tuple[list[list[Any]], int]:
    """Input shapes (ints, or None for a symbolic dim) and the number of outputs, as
    onnxruntime's ``session.get_inputs()`` / ``get_outputs()`` would list them."""
    inits = {t.name for t in model.graph.initializer}
    shapes = [[d.dim_value if d.HasField("dim_value") else None
               for d in v.type.tensor_type.shape.dim]
              for v in model.graph.input if v.name not in inits]
    return shapes, len(model.graph.output)


def route(model) -> str | None:
    """The task insightface's ``ModelRouter`` gives an ``onnx.ModelProto``, or ``None``.

    Same tests in the same order: >= 5 outputs detection; 192x192 landmark; 96x96 attribute;
    two inputs at 128x128 inswapper; square, >= 112 and divisible by 16 recognition.
    """
    shapes, n_out = _io(model)
    if not shapes:
        return None
    shape = shapes[0] + [None] * (4 - len(shapes[0]))
    h, w = shape[2], shape[3]
    if n_out >= 5:
        return "detection"
    if h == 192 and w == 192:
        return "landmark"
    if h == 96 and w == 96:
        return "genderage"
    if len(shapes) == 2 and h == 128 and w == 128:
        return "inswapper"
    if isinstance(h, int) and h == w and h >= 112 and h % 16 == 0:
        return "recognition"
    return None  # insightface prints "model not recognized" (a symbolic size included)


def insightface_normalisation(model) -> tuple[float, float]:
    """``(input_mean, input_std)`` insightface's ArcFaceONNX will use: (0, 1) when the first 8
    node *names* include one starting Sub/_minus and one starting Mul/_mul, else (127.5, 127.5)."""
    names = [n.name for n in model.graph.node[:_HEAD_NODES]]
    sub = any(s.startswith(("Sub", "_minus")) for s in names)
    mul = any(s.startswith(("Mul", "_mul")) for s in names)
    return (0.0, 1.0) if sub and mul else (127.5, 127.5)


def pack_models(pack: str | os.PathLike) -> list[tuple[Path, str | None]]:
    """``(file, task)`` for each ``*.onnx`` in the order FaceAnalysis visits them."""
    import onnx

    pack = Path(pack)
    if not pack.is_dir():
        raise PackError(f"{pack}: not a directory (give the pack folder, e.g. "
                        "~/.insightface/models/buffalo_l)")
    out = []
    for name in sorted(glob.glob(os.path.join(str(pack), "*.onnx"))):  # exactly FaceAnalysis' list
        path = Path(name)
        if not path.is_file():
            raise PackError(f"{path}: not a regular file; insightface's FaceAnalysis stops at it")
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception:  # noqa: BLE001 - insightface cannot route an unreadable file either
            out.append((path, None))
            continue
        out.append((path, route(model)))
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _target(pack: Path, base_fingerprint: str) -> Path:
    """The recognition file the workspace's original encoder came from; refused when FaceAnalysis
    would load another recognition model before it."""
    from facekd.encoders.onnx_model import OnnxEncoder

    recognition = [p for p, task in pack_models(pack) if task == "recognition"]
    if not recognition:
        raise PackError(f"{pack}: no recognition model (square input >= 112, divisible by 16) "
                        "in the pack")
    for i, path in enumerate(recognition):
        try:
            same = OnnxEncoder(path).fingerprint == base_fingerprint
        except Exception:  # noqa: BLE001 - an unusable file is simply not ours
            same = False
        if same:
            if i:
                raise PackError(f"insightface would load {recognition[0].name} before "
                                f"{path.name} (the first recognition model in sorted order "
                                "wins); move it out of the pack first")
            return path
    raise PackError(f"none of the pack's recognition models ({', '.join(p.name for p in recognition)})"
                    " is this workspace's original encoder; the erasure was fitted on that one "
                    "(init the workspace with --encoder onnx:PACK/FILE)")


def _update_manifest(manifest: Path, name: str, sha256: str, size: int) -> bool:
    """Point every checksum entry for ``name`` in ``manifest`` at the new file; True if any."""
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PackError(f"{manifest}: unreadable ({exc}); nothing was changed") from None
    found = False

    def names_it(value: Any) -> bool:
        return isinstance(value, str) and (value == name or value.replace("\\", "/")
                                           .endswith("/" + name))

    def fix(entry: dict) -> None:
        nonlocal found
        for key in list(entry):
            if key.lower() in ("sha256", "sha256sum", "checksum"):
                entry[key], found = sha256, True
            elif key.lower() in ("size", "bytes", "size_bytes") and isinstance(entry[key], int):
                entry[key] = size
            elif key.lower() in ("md5", "sha1"):
                entry.pop(key)  # stale, and facekd writes only sha256: drop rather than lie

    def walk(node: Any) -> None:
        nonlocal found
        if isinstance(node, dict):
            if any(names_it(v) for v in node.values()):
                fix(node)
            for key, value in list(node.items()):
                if names_it(key) and isinstance(value, str) and len(value) == 64:
                    node[key], found = sha256, True  # {"w600k_r50.onnx": "<sha256>"}
                elif names_it(key) and isinstance(value, dict):
                    fix(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(data)
    if found:
        from facekd.fileio import write_atomic

        write_atomic(manifest, (json.dumps(data, indent=2) + "\n").encode())
    return found


def export_to_pack(encoder: Any, base_fingerprint: str, pack: str | os.PathLike, *,
                   out: str | os.PathLike | None = None, in_place: bool = False,
                   fp16: bool = False, protect: tuple = (), keep: tuple = ()) -> dict:
    """Write ``encoder`` (an edited insightface-compatible encoder) into an insightface pack.

    Args:
        encoder: what to write (the workspace's deployed encoder).
        base_fingerprint: the workspace's original encoder fingerprint: picks the pack file.
        pack: the pack folder (``~/.insightface/models/NAME``).
        out: the new pack folder (absent or empty) for a copy; ``None`` with ``in_place``.
        in_place: replace the file in ``pack`` itself, after copying the original file (and
            ``manifest.json``) to a backup folder beside the pack.
        fp16: float16 weights (see :func:`facekd.onnx_export.export`).
        protect: folders the pack or copy must not lie in (the workspace).
        keep: files ``in_place`` must not replace (the workspace's original model: every command
            checks its fingerprint, so overwriting it would lock the workspace).

    Returns:
        A dict: ``pack``, ``file``, ``backup``, ``manifest_updated``, ``baked_head``, the export
        report, and ``loaded_by_insightface`` (the file FaceAnalysis will now pick).
    """
    from facekd.onnx_export import export

    pack = Path(pack).expanduser()
    if in_place == (out is not None):
        raise PackError("give a folder for the edited copy of the pack, or --in-place (not both)")
    target = _target(pack, base_fingerprint)
    spec = encoder.input_spec
    if not (spec.size >= 112 and spec.size % 16 == 0):
        raise PackError(f"insightface only loads square recognition inputs >= 112 and divisible "
                        f"by 16; this encoder takes {spec.size}x{spec.size}")
    for root in protect:
        for p in (pack, Path(out).expanduser() if out else None):
            if p is not None and (p.resolve() == Path(root).resolve()
                                  or Path(root).resolve() in p.resolve().parents):
                raise PackError(f"{p}: lies inside the workspace {root}")
    if in_place and any(Path(k).exists() and os.path.samefile(k, target) for k in keep):
        raise PackError(f"--in-place would overwrite {target}, the workspace's original encoder "
                        "(every command checks it); write an edited copy of the pack instead, or "
                        "init the workspace from a copy of that file outside the pack")
    # insightface feeds RGB (x - m) / s with (m, s) read off the node names; bake a head unless
    # the graph already expects exactly that.
    bake = not _fed_correctly(encoder, spec)
    backup = None
    if in_place:
        dest = pack
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        backup = pack.parent / f"{pack.name}.facekd-backup-{stamp}"
        backup.mkdir(parents=False, exist_ok=False)
        shutil.copy2(target, backup / target.name)
        if (pack / MANIFEST).is_file():
            shutil.copy2(pack / MANIFEST, backup / MANIFEST)
    else:
        dest = Path(out).expanduser()
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise PackError(f"{dest}: exists and is not an empty folder; give a new folder for "
                            "the edited pack")
        created = not dest.exists()
        shutil.copytree(pack, dest, dirs_exist_ok=True)
    written = dest / target.name
    try:
        report = export(encoder, written, fp16=fp16, bake_preprocessing=bake)
        sha, size = _sha256(written), written.stat().st_size
        manifest = dest / MANIFEST
        updated = _update_manifest(manifest, target.name, sha, size) if manifest.is_file() else None
        chosen = next((p for p, task in pack_models(dest) if task == "recognition"), None)
        if chosen is None or chosen.name != target.name:  # what the whole exercise is for
            raise PackError(f"after writing, insightface would load {chosen} instead of {written}")
        if not _normalisation_matches(written, report):
            raise PackError(f"{written}: insightface would feed it the wrong normalisation")
    except BaseException:
        if backup is not None:  # put the pack back as it was; the backup stays for inspection
            for name in (target.name, MANIFEST):
                if (backup / name).is_file():
                    shutil.copy2(backup / name, pack / name)
        else:  # the copy is ours: remove it (its contents only, if the folder was given empty)
            shutil.rmtree(dest, ignore_errors=True)
            if not created:
                dest.mkdir(exist_ok=True)
        raise
    if updated is False:
        warnings.warn(f"{manifest} has no checksum entry for {target.name}; left as it was")
    return {"pack": str(dest), "file": str(written), "replaced": target.name,
            "backup": str(backup) if backup else None, "manifest_updated": updated,
            "baked_head": bake, "sha256": sha, "loaded_by_insightface": str(chosen),
            "alignment": spec.alignment, "export": report.to_dict()}


def _fed_correctly(encoder: Any, spec: Any) -> bool:
    """Whether insightface would feed the exported graph what ``spec`` asks for, as it is."""
    import onnx

    model = encoder.onnx_model() if hasattr(encoder, "onnx_model") else getattr(encoder, "model", None)
    if model is None or not isinstance(model, onnx.ModelProto):
        return False
    mean, std = insightface_normalisation(model)
    return (spec.channel_order == "RGB" and spec.mean == (mean,) * 3 and spec.std == (std,) * 3)


def _normalisation_matches(path: Path, report: Any) -> bool:
    """Whether the written file's contract is what insightface will feed it."""
    import onnx

    mean, std = insightface_normalisation(onnx.load(str(path), load_external_data=False))
    want = report.input_spec
    return (want["channel_order"] == "RGB" and list(want["mean"]) == [mean] * 3
            and list(want["std"]) == [std] * 3)
