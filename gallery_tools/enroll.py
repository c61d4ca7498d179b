"""Enrol a folder-per-identity image tree into a gallery, resumably.

Layout: ``tree/<folder>/<image>``; the folder name is the integer identity id, or ``ids_csv``
maps ``folder,identity[,name]``. Every image is identified by the sha256 of its file bytes:
images whose sha256 is already in the gallery are skipped, so an interrupted run can simply be
started again (after the gallery was saved; pass ``save_every`` to save along the way).
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facekd.faces import IMAGE_SUFFIXES
from gallery_tools.errors import GalleryError


@dataclass
class EnrollResult:
    """What :func:`enroll` did: faces added, images skipped as already enrolled, images skipped
    with a reason ``(path, reason)``, and the identities that received faces (sorted)."""

    added: int = 0
    skipped_existing: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    identities: list[int] = field(default_factory=list)


def read_ids_csv(path: str | Path) -> dict[str, tuple[int, str | None]]:
    """``folder -> (identity, name)`` from a ``folder,identity[,name]`` CSV (header optional)."""
    mapping: dict[str, tuple[int, str | None]] = {}
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            for lineno, row in enumerate(csv.reader(fh), 1):
                if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                    continue
                if len(row) < 2:
                    raise GalleryError(f"{path}:{lineno}: expected folder,identity[,name]")
                try:
                    ident = int(row[1].strip())
                except ValueError:
                    if lineno == 1:  # a header row
                        continue
                    raise GalleryError(f"{path}:{lineno}: identity {row[1]!r} is not an integer") from None
                name = row[2].strip() if len(row) > 2 and row[2].strip() else None
                mapping[row[0].strip()] = (ident, name)
    except OSError as exc:
        raise GalleryError(f"cannot read ids CSV {path}: {exc}") from None
    return mapping


def _identity_folders(tree: Path, ids_csv: str | Path | None) -> list[tuple[Path, int, str | None]]:
    if not tree.is_dir():
        raise GalleryError(f"{tree}: not a directory")
    mapping = read_ids_csv(ids_csv) if ids_csv is not None else {}
    out, unmapped = [], []
    for folder in sorted(p for p in tree.iterdir() if p.is_dir()):
        if folder.name in mapping:
            out.append((folder, *mapping[folder.name]))
        else:
            try:
                out.append((folder, int(folder.name), None))
            except ValueError:
                unmapped.append(folder.name)
    if unmapped:
        raise GalleryError(f"{len(unmapped)} folder(s) are neither integer identities nor in the ids "
                           f"CSV (e.g. {unmapped[0]!r}); pass ids_csv=folder,identity[,name]")
    return out


def _decode_chip(data: bytes, size: int) -> np.ndarray | None:
    """An aligned chip from image bytes: ``(size, size, 3)`` uint8 RGB, or None if unreadable
    (truncated JPEGs included)."""
    from facekd.errors import FaceError
    from facekd.faces import align_chip, decode_image

    try:
        return align_chip(decode_image(data), None, "none", size)
    except FaceError:
        return None


def enroll(tree: str | Path, encoder: Any, gallery: Any, *, ids_csv: str | Path | None = None,
           aligned: bool = False, batch_size: int = 32, progress: bool = True,
           save_every: int | None = None) -> EnrollResult:
    """Embed every image under ``tree`` with ``encoder`` and add it to the writable ``gallery``.

    Args:
        tree: folder-per-identity image tree.
        encoder: a :class:`facekd.encoders.base.Encoder` whose fingerprint and dimension match
            the gallery's.
        gallery: a writable :class:`gallery_tools.Gallery`; it is not saved unless ``save_every``.
        ids_csv: ``folder,identity[,name]`` mapping for non-integer folder names.
        aligned: files are already aligned chips for this encoder (only resized); otherwise faces
            are detected and aligned by ``facekd.faces.chips_from_files`` (largest face per image).
        batch_size: images per embedding batch.
        save_every: save the gallery after about this many added faces (resumable big runs).

    Returns:
        :class:`EnrollResult`. Unreadable or face-less images are skipped with a reason; images
        whose sha256 is already stored are counted in ``skipped_existing``.
    """
    from tqdm.auto import tqdm

    tree = Path(tree)
    if not gallery.writable:
        raise GalleryError("enroll needs a gallery opened with writable=True")
    if int(encoder.dim) != gallery.dim:
        raise GalleryError(f"encoder dimension {encoder.dim} does not match the gallery's {gallery.dim}")
    if encoder.fingerprint != gallery.encoder_fingerprint:
        raise GalleryError(f"gallery holds embeddings of encoder {gallery.encoder_fingerprint}, "
                           f"cannot enrol with encoder {encoder.fingerprint}")
    if batch_size < 1:
        raise GalleryError(f"batch_size must be positive, got {batch_size}")
    folders = _identity_folders(tree, ids_csv)
    files = [(p, ident, name) for folder, ident, name in folders
             for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    result = EnrollResult()
    enrolled: set[int] = set()
    seen: set[str] = set()
    since_save = 0
    size = encoder.input_spec.size
    with tqdm(total=len(files), unit="img", desc="enroll", disable=not progress) as bar:
        for start in range(0, len(files), batch_size):
            batch = files[start:start + batch_size]
            blobs: list[tuple[Path, int, str | None, bytes, str]] = []
            for path, ident, name in batch:
                try:
                    data = path.read_bytes()
                except OSError as exc:
                    result.skipped.append((str(path), f"unreadable file ({exc.strerror})"))
                    continue
                blobs.append((path, ident, name, data, hashlib.sha256(data).hexdigest()))
            known = gallery.known_sources([b[4] for b in blobs])
            todo = []
            for item in blobs:
                if item[4] in known or item[4] in seen:
                    result.skipped_existing += 1
                else:
                    seen.add(item[4])
                    todo.append(item)
            chips, rows = _chips(todo, encoder, size, aligned, result)
            if rows:
                vectors = encoder.embed(np.stack(chips), batch_size=batch_size, progress=False)
                gallery.add(vectors, np.array([todo[r][1] for r in rows], dtype=np.int64),
                            names=[todo[r][2] for r in rows], sources=[str(todo[r][0]) for r in rows],
                            source_sha256=[todo[r][4] for r in rows])
                result.added += len(rows)
                since_save += len(rows)
                enrolled.update(todo[r][1] for r in rows)
                if save_every and since_save >= save_every:
                    gallery.save()
                    since_save = 0
            bar.update(len(batch))
            bar.set_postfix(added=result.added, skipped=len(result.skipped) + result.skipped_existing)
    if save_every and since_save:
        gallery.save()
    result.identities = sorted(enrolled)
    return result


def _chips(todo: list, encoder: Any, size: int, aligned: bool,
           result: EnrollResult) -> tuple[list[np.ndarray], list[int]]:
    """Chips for the images in ``todo`` and, for each chip, its row in ``todo``."""
    chips: list[np.ndarray] = []
    rows: list[int] = []
    if aligned:
        for r, (path, _, _, data, _) in enumerate(todo):
            chip = _decode_chip(data, size)
            if chip is None:
                result.skipped.append((str(path), "unreadable image"))
            else:
                chips.append(chip)
                rows.append(r)
        return chips, rows
    try:
        from facekd.faces import chips_from_files
    except ImportError as exc:
        raise GalleryError(f"face detection is unavailable ({exc}); pass aligned=True for "
                           "pre-aligned chips") from None
    if not todo:
        return chips, rows
    found = chips_from_files([str(t[0]) for t in todo], encoder.input_spec, select="largest",
                             progress=False)
    result.skipped.extend((str(p), str(why)) for p, why in found.skipped)
    for chip, src in zip(found.chips, found.sources):
        chips.append(np.asarray(chip))
        rows.append(int(src))
    return chips, rows
