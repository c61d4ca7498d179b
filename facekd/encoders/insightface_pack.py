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
import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from facekd.errors import PackError
from gallery_tools.files import file_sha256

__all__ = ["route", "pack_models", "insightface_normalisation", "export_to_pack", "MANIFEST",
           "PackModels", "select_models", "scrfd_layout"]

MANIFEST = "manifest.json"
_HEAD_NODES = 8  # ArcFaceONNX looks for its Sub/Mul head among the first 8 nodes
# insightface 2.x's manifest defaults (model_zoo/package_manifest.py, _DEFAULT_PREPROCESSING)
_V2_REQUIRED = ("manifest_version", "model_id", "tasks", "license")
_V2_DEFAULT_NORM = {"detection": (127.5, 128.0), "recognition": (127.5, 127.5)}
SCRFD_NORM = (127.5, 128.0)  # what SCRFD feeds its graph outside a manifest
# SCRFD's output layouts (scrfd.py, SCRFD._init_vars): outputs -> (strides, anchors, landmarks)
_SCRFD_LAYOUTS = {6: ((8, 16, 32), 2, False), 9: ((8, 16, 32), 2, True),
                  10: ((8, 16, 32, 64, 128), 1, False), 15: ((8, 16, 32, 64, 128), 1, True)}


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


def scrfd_layout(n_outputs: int) -> tuple[tuple[int, ...], int, bool] | None:
    """``(strides, anchors per location, has 5 landmarks)`` SCRFD reads off its output count,
    or ``None`` for a count SCRFD cannot decode."""
    return _SCRFD_LAYOUTS.get(n_outputs)


def pack_models(pack: str | os.PathLike, *, strict: bool = False) -> list[tuple[Path, str | None]]:
    """``(file, task)`` for each ``*.onnx`` in the order FaceAnalysis visits them.

    ``strict``: an unreadable ``.onnx`` raises :class:`PackError` (FaceAnalysis fails on it when
    it opens its session) instead of being listed with task ``None``.
    """
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
        except Exception as exc:  # noqa: BLE001 - insightface cannot route an unreadable file either
            if strict:
                raise PackError(f"{path}: not a readable ONNX model ({type(exc).__name__}); "
                                "insightface's FaceAnalysis fails on it too") from None
            out.append((path, None))
            continue
        out.append((path, route(model)))
    return out


def _target(pack: Path, base_fingerprint: str) -> Path:
    """The recognition file the workspace's original encoder came from; refused when FaceAnalysis
    would load another recognition model before it."""
    from facekd.encoders.onnx_model import OnnxEncoder

    if _manifest_v2(pack):  # the manifest names the one recognition file insightface loads
        chosen = select_models(pack).recognition
        recognition = [chosen] if chosen is not None else []
    else:
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


def _checksums(data: Any, name: str, replace: tuple[str, int] | None = None) -> list[str]:
    """The sha256 values a manifest (any JSON layout) records for file ``name``; with ``replace``
    = ``(sha256, size)`` each is rewritten in place (sizes too; stale md5/sha1 are dropped)."""
    found: list[str] = []

    def names_it(value: Any) -> bool:
        return isinstance(value, str) and (value == name or value.replace("\\", "/")
                                           .endswith("/" + name))

    def fix(entry: dict) -> None:
        for key in list(entry):
            if key.lower() in ("sha256", "sha256sum", "checksum"):
                found.append(entry[key])
                if replace:
                    entry[key] = replace[0]
            elif replace and key.lower() in ("size", "bytes", "size_bytes") and isinstance(entry[key], int):
                entry[key] = replace[1]
            elif replace and key.lower() in ("md5", "sha1"):
                entry.pop(key)  # stale, and facekd writes only sha256: drop rather than lie

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if any(names_it(v) for v in node.values()):
                fix(node)
            for key, value in list(node.items()):
                if names_it(key) and isinstance(value, str) and len(value) == 64:
                    found.append(value)  # {"w600k_r50.onnx": "<sha256>"}
                    if replace:
                        node[key] = replace[0]
                elif names_it(key) and isinstance(value, dict):
                    fix(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(data)
    return found


def _update_manifest(manifest: Path, name: str, sha256: str, size: int) -> bool:
    """Point every checksum entry for ``name`` in ``manifest`` at the new file; True if any."""
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PackError(f"{manifest}: unreadable ({exc}); nothing was changed") from None
    found = bool(_checksums(data, name, (sha256, size)))
    if found:
        from facekd.fileio import write_atomic

        write_atomic(manifest, (json.dumps(data, indent=2) + "\n").encode())
    return found


@dataclass(frozen=True)
class PackModels:
    """What insightface's ``FaceAnalysis`` runs from a pack folder.

    ``recognition`` / ``detection``: the files it would load for those tasks (``None``: none).
    ``recognition_norm``: the ``(mean, std)`` it feeds the recognition model (RGB,
    ``(x - mean) / std``): the manifest's under a version-2 manifest, else read off the node
    names (:func:`insightface_normalisation`). ``detection_norm`` likewise for the detector.
    ``detection_outputs``: the detector's output count (its SCRFD layout, :func:`scrfd_layout`).
    ``recognition_size``: the recognition input's side. ``manifest_v2``: routed by a task
    manifest rather than the sorted glob. ``checksums``: file name -> sha256 values the
    manifest records (checked by :func:`select_models`).
    """

    pack: Path
    recognition: Path | None
    detection: Path | None
    recognition_norm: tuple[float, float] = (127.5, 127.5)
    detection_norm: tuple[float, float] = SCRFD_NORM
    detection_outputs: int = 0
    recognition_size: int = 112
    manifest_v2: bool = False
    checksums: dict = field(default_factory=dict)

    @property
    def detector_has_landmarks(self) -> bool:
        layout = scrfd_layout(self.detection_outputs)
        return self.detection is not None and layout is not None and layout[2]


def _read_manifest(pack: Path) -> Any:
    """The manifest's JSON, or ``None`` (absent or not JSON: insightface ignores it then)."""
    try:
        return json.loads((pack / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None


def _v2_norm(entry: dict, task: str, where: str) -> tuple[float, float]:
    value = entry.get("preprocessing", None)
    if value is None:
        return _V2_DEFAULT_NORM[task]
    if value == "embedded":
        return (0.0, 1.0)
    if (isinstance(value, dict) and set(value) == {"mean", "std"}
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values())
            and value["std"] > 0):
        return (float(value["mean"]), float(value["std"]))
    raise PackError(f"{where}: tasks.{task}.preprocessing must be \"embedded\" or "
                    "{\"mean\": m, \"std\": s} (insightface refuses the pack)")


def _v2_file(pack: Path, entry: Any, task: str, where: str) -> Path:
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
        raise PackError(f"{where}: tasks.{task}.file is missing (insightface refuses the pack)")
    rel = PurePosixPath(entry["file"])
    if rel.is_absolute() or ".." in rel.parts or rel.suffix.lower() != ".onnx":
        raise PackError(f"{where}: tasks.{task}.file {entry['file']!r} is not an .onnx file "
                        "inside the pack (insightface refuses the pack)")
    return pack / Path(*rel.parts)


def _io_of(path: Path) -> tuple[list[list[Any]], int]:
    import onnx

    try:
        return _io(onnx.load(str(path), load_external_data=False))
    except Exception as exc:  # noqa: BLE001 - any parse failure: the file is unusable
        raise PackError(f"{path}: not a readable ONNX model ({type(exc).__name__}); "
                        "insightface's FaceAnalysis fails on it too") from None


def _side(shapes: list[list[Any]]) -> int:
    dims = (shapes[0] + [None] * 4)[:4] if shapes else [None] * 4
    return dims[2] if isinstance(dims[2], int) and dims[2] > 0 else 112


def select_models(pack: str | os.PathLike) -> PackModels:
    """The recognition and detection files FaceAnalysis would load from ``pack``, checked.

    A version-2 task manifest decides when there is one; otherwise the sorted glob and
    insightface's shape routing (first model per task). Raises :class:`PackError` for a missing
    folder, a broken version-2 manifest, an unreadable ONNX file FaceAnalysis would open, and a
    chosen file whose sha256 differs from what the manifest records.
    """
    import onnx

    pack = Path(pack).expanduser()
    if not pack.is_dir():
        raise PackError(f"{pack}: no such model-pack folder (give the folder holding the .onnx "
                        "files, e.g. ~/.insightface/models/buffalo_l)")
    manifest = _read_manifest(pack)
    where = str(pack / MANIFEST)
    if isinstance(manifest, dict) and type(manifest.get("manifest_version")) is int \
            and manifest["manifest_version"] == 2:
        missing = [k for k in _V2_REQUIRED if k not in manifest]
        tasks = manifest.get("tasks")
        if missing or not isinstance(tasks, dict):
            raise PackError(f"{where}: a version-2 manifest without "
                            f"{', '.join(missing) or 'a tasks object'} (insightface refuses it)")
        files = {t: _v2_file(pack, tasks[t], t, where) for t in ("recognition", "detection")
                 if t in tasks}
        for task, path in files.items():
            if not path.is_file():
                raise PackError(f"{where}: tasks.{task}.file {path.name} does not exist")
        rec, det = files.get("recognition"), files.get("detection")
        sums = {path.name: [tasks[t]["sha256"]] for t, path in files.items()
                if isinstance(tasks[t].get("sha256"), str)}
        models = PackModels(
            pack, rec, det,
            recognition_norm=_v2_norm(tasks["recognition"], "recognition", where) if rec else (127.5, 127.5),
            detection_norm=_v2_norm(tasks["detection"], "detection", where) if det else SCRFD_NORM,
            detection_outputs=_io_of(det)[1] if det else 0,
            recognition_size=_side(_io_of(rec)[0]) if rec else 112,
            manifest_v2=True, checksums=sums)
    else:
        routed = pack_models(pack, strict=True)
        rec = next((p for p, task in routed if task == "recognition"), None)
        det = next((p for p, task in routed if task == "detection"), None)
        rec_model = onnx.load(str(rec), load_external_data=False) if rec else None
        sums = {p.name: _checksums(manifest, p.name) for p in (rec, det) if p is not None}
        models = PackModels(
            pack, rec, det,
            recognition_norm=insightface_normalisation(rec_model) if rec_model else (127.5, 127.5),
            detection_outputs=_io_of(det)[1] if det else 0,
            recognition_size=_side(_io(rec_model)[0]) if rec_model else 112,
            checksums={k: v for k, v in sums.items() if v})
    for path in (p for p in (models.recognition, models.detection) if p is not None):
        wanted = [str(w).lower() for w in models.checksums.get(path.name, [])]
        got = file_sha256(path) if wanted else None
        for want in wanted:
            if want != got:
                raise PackError(f"{path}: sha256 {got[:16]}... does not match the {want[:16]}... "
                                f"that {where} records; insightface refuses a file that changed "
                                "after its manifest (restore the file, or re-export it with "
                                "facekd export-onnx --insightface-pack, which updates the manifest)")
    return models


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
        fp16: float16 weights (see :func:`facekd.encoders.onnx_export.export`).
        protect: folders the pack or copy must not lie in (the workspace).
        keep: files ``in_place`` must not replace (the workspace's original model: every command
            checks its fingerprint, so overwriting it would lock the workspace).

    Returns:
        A dict: ``pack``, ``file``, ``backup``, ``manifest_updated``, ``baked_head``, the export
        report, and ``loaded_by_insightface`` (the file FaceAnalysis will now pick).
    """
    from facekd.encoders.onnx_export import export

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
    # the graph already expects exactly that. Under a version-2 manifest (m, s) is the
    # manifest's, whatever the graph's head: a baked head would be fed normalised input.
    if _manifest_v2(pack):
        mean, std = select_models(pack).recognition_norm
        if not _spec_is(spec, mean, std):
            raise PackError(f"{pack / MANIFEST} tells insightface to feed (x - {mean:g}) / {std:g};"
                            f" this encoder expects mean {spec.mean}, std {spec.std} "
                            f"({spec.channel_order}); set tasks.recognition.preprocessing to match")
        bake = False
    else:
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
        sha, size = file_sha256(written), written.stat().st_size
        manifest = dest / MANIFEST
        updated = _update_manifest(manifest, target.name, sha, size) if manifest.is_file() else None
        chosen = select_models(dest).recognition  # checks the manifest's new sha256 too
        if chosen is None or chosen.name != target.name:  # what the whole exercise is for
            raise PackError(f"after writing, insightface would load {chosen} instead of {written}")
        if not _normalisation_matches(dest, report):
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


def _manifest_v2(pack: Path) -> bool:
    data = _read_manifest(Path(pack))
    return isinstance(data, dict) and type(data.get("manifest_version")) is int \
        and data["manifest_version"] == 2


def _spec_is(spec: Any, mean: float, std: float) -> bool:
    """Whether ``spec`` is RGB ``(x - mean) / std`` on every channel."""
    return spec.channel_order == "RGB" and tuple(spec.mean) == (mean,) * 3 \
        and tuple(spec.std) == (std,) * 3


def _fed_correctly(encoder: Any, spec: Any) -> bool:
    """Whether insightface would feed the exported graph what ``spec`` asks for, as it is."""
    import onnx

    model = encoder.onnx_model() if hasattr(encoder, "onnx_model") else getattr(encoder, "model", None)
    if model is None or not isinstance(model, onnx.ModelProto):
        return False
    return _spec_is(spec, *insightface_normalisation(model))


def _normalisation_matches(pack: Path, report: Any) -> bool:
    """Whether the written file's contract is what insightface will feed it from ``pack``."""
    mean, std = select_models(pack).recognition_norm
    want = report.input_spec
    return (want["channel_order"] == "RGB" and list(want["mean"]) == [mean] * 3
            and list(want["std"]) == [std] * 3)
