"""A benchmark dataset embedded once: every image of a folder-per-identity tree detected, aligned
(or a whole-image fallback for small face crops) and embedded, cached as ``.npz`` under
``$FACEKD_CACHE``/bench, keyed by the encoder's fingerprint and the files' paths and sizes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from facekd.evaluation.settings import BenchError, MIN_FACES
from facekd.fileio import write_atomic


# A photo this small with no detected face is taken to be a face crop already (ORL: 92x112);
# larger ones are scenes whose face the detector missed, and are skipped.
FALLBACK_MAX_SIDE = 128
CACHE_FORMAT = 1         # bump when the cached arrays change meaning
CHUNK_FILES = 256        # files per detect + embed round: bounds the chips held in memory


# ---------------------------------------------------------------------- embeddings
@dataclass
class Embedded:
    """Every usable face of a dataset, embedded once.

    E: ``(n, d)`` float32 raw encoder outputs. labels: ``(n,)`` int64 index of the identity folder
    (sorted folder order). fallback: ``(n,)`` bool, True = whole image used as the chip.
    info: counts, timings and cache status.
    """

    E: np.ndarray
    labels: np.ndarray
    fallback: np.ndarray
    info: dict


def identity_folders(root: Path) -> list[Path]:
    """The identity folders of a folder-per-identity tree, in label order (sorted by name)."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan(root: Path, what: str = "dataset") -> tuple[list[Path], list[int], int]:
    """Image files of a folder-per-identity tree: ``(files, folder index per file, folders)``."""
    from facekd.faces import IMAGE_SUFFIXES

    if not root.is_dir():
        raise BenchError(f"{root}: no such {what} directory")
    folders = identity_folders(root)
    files, owner = [], []
    for i, folder in enumerate(folders):
        for f in sorted(folder.iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                files.append(f)
                owner.append(i)
    if not files:
        raise BenchError(f"{root}: no identity folders with images (expected DIR/<person>/<photo>)")
    return files, owner, len(folders)


def _cache_dir(cache: str | os.PathLike | None) -> Path:
    base = Path(cache) if cache else Path(os.environ.get("FACEKD_CACHE") or
                                          Path.home() / ".cache" / "facekd")
    return base.expanduser() / "bench"


def _cache_key(encoder: Any, root: Path, files: Sequence[Path]) -> str:
    from facekd.faces import pack_detector_key

    listing = [(f.relative_to(root).as_posix(), f.stat().st_size) for f in files]
    finder = pack_detector_key(encoder.input_spec)  # an insightface pack's detector cuts other chips
    blob = json.dumps([CACHE_FORMAT, encoder.fingerprint, encoder.input_spec.to_dict(), listing]
                      + ([finder] if finder else []))
    return hashlib.sha256(blob.encode()).hexdigest()


def _chips(files: Sequence[Path], spec: Any) -> tuple[np.ndarray, list[int], np.ndarray, int]:
    """Detect + align one batch of files: ``(chips (m, S, S, 3) uint8, file index per chip,
    fallback (m,) bool, files skipped)``; the largest face per image."""
    from facekd.faces import align_chip, chips_from_files, read_image

    res = chips_from_files(files, spec, select="largest")
    chips, sources, fallback = list(res.chips), list(res.sources), [False] * len(res.sources)
    skipped = 0
    index = {str(f): i for i, f in enumerate(files)}
    for path, reason in res.skipped:
        if reason != "no face found":
            skipped += 1
            continue
        image = read_image(path)
        if max(image.shape[:2]) > FALLBACK_MAX_SIDE:
            skipped += 1
            continue
        chips.append(align_chip(image, None, "none", int(spec.size)))
        sources.append(index[path])
        fallback.append(True)
    size = int(spec.size)
    arr = np.stack(chips) if chips else np.zeros((0, size, size, 3), np.uint8)
    return arr, sources, np.asarray(fallback, bool), skipped


def embed_dataset(root: str | os.PathLike, encoder: Any, *, cache: str | os.PathLike | None = None,
                  progress: bool = False) -> Embedded:
    """Embed every image of ``root`` with ``encoder`` (cached; see the module docstring)."""
    from facekd.progress import tqdm

    root = Path(root).expanduser()
    files, owner, folders = _scan(root)
    path = _cache_dir(cache) / f"{_cache_key(encoder, root, files)[:32]}.npz"
    info = {"folders": folders, "images": len(files), "cache_path": str(path)}
    if path.is_file():
        try:
            with np.load(path) as z:
                info.update(cache="hit", images_skipped=int(z["skipped"]),
                            embed_s=float(z["embed_s"]))
                return Embedded(z["E"], z["labels"], z["fallback"], info)
        except (OSError, KeyError, ValueError):  # damaged cache file: embed again
            pass
    t = time.perf_counter()
    parts, labels, fallback, skipped = [], [], [], 0
    with tqdm(total=len(files), unit="img", desc="embed", disable=not progress) as bar:
        for s in range(0, len(files), CHUNK_FILES):
            chunk = files[s:s + CHUNK_FILES]
            chips, sources, fb, sk = _chips(chunk, encoder.input_spec)
            if len(chips):
                parts.append(encoder.embed(chips, progress=False).astype(np.float32))
            labels += [owner[s + i] for i in sources]
            fallback.append(fb)
            skipped += sk
            bar.update(len(chunk))
    d = int(encoder.dim)
    E = np.vstack(parts) if parts else np.zeros((0, d), np.float32)
    emb = Embedded(E, np.asarray(labels, np.int64), np.concatenate(fallback), info)
    info.update(cache="miss", images_skipped=skipped, embed_s=time.perf_counter() - t)
    buf = io.BytesIO()
    np.savez(buf, E=emb.E, labels=emb.labels, fallback=emb.fallback, skipped=skipped,
             embed_s=info["embed_s"])
    try:
        write_atomic(path, buf.getvalue())
    except OSError:  # an unwritable cache costs the next run time, not this one its result
        info["cache"] = "miss (not written)"
    return emb


# ---------------------------------------------------------------------- the benchmark
def _usable(emb: Embedded) -> tuple[np.ndarray, np.ndarray, int]:
    """``(E, labels)`` of identities with >= MIN_FACES faces, and how many were dropped."""
    ids, counts = np.unique(emb.labels, return_counts=True)
    keep_ids = ids[counts >= MIN_FACES]
    dropped = emb.info["folders"] - len(keep_ids)
    keep = np.isin(emb.labels, keep_ids)
    return emb.E[keep], emb.labels[keep], dropped


def embed_background(root: str | os.PathLike, encoder: Any, dataset: Path, *,
                     cache: str | os.PathLike | None = None, progress: bool = False
                     ) -> tuple[Any, np.ndarray]:
    """``facekd bench --background DIR``: photos of people enrolled nowhere (what ``facekd
    calibrate`` stores), a folder per person, embedded as the dataset is (cached).

    Returns ``(background, shared)``: a :class:`facekd.core.background.Background` of unit rows
    (any number of faces per person), and the labels of ``dataset``'s identities whose folder
    name is also a background folder's: one person cannot be enrolled and enrolled nowhere, so
    the bench leaves them out of the workspace."""
    from facekd.core.background import Background
    from facekd.methods import unit_rows

    root = Path(root).expanduser()
    _scan(root, "background")
    emb = embed_dataset(root, encoder, cache=cache, progress=progress)
    if not len(emb.E):
        raise BenchError(f"{root}: no usable face among the background's photos")
    people = np.unique(emb.labels, return_inverse=True)[1].astype(np.int64)
    theirs = {p.name for p in identity_folders(root)}
    shared = [i for i, p in enumerate(identity_folders(dataset)) if p.name in theirs]
    return Background(unit_rows(emb.E), people), np.asarray(shared, np.int64)
