"""Enrol a folder-per-identity image tree into a gallery, resumably.

Layout: ``tree/<folder>/<image>``; the folder name is the integer identity id, or ``ids_csv``
maps ``folder,identity[,name]``, or (no CSV) a folder named by person, LFW-style, gets an id
assigned automatically (:func:`assign_ids`) and its name recorded with it. Every image is identified by the sha256 of its file bytes:
images whose sha256 is already in the gallery are skipped, so an interrupted run can simply be
started again (after the gallery was saved; pass ``save_every`` to save along the way).

Image reading (:mod:`facekd.faces`, which loads OpenCV) is imported inside the functions that
read images, so ``import gallery_tools`` stays light for commands that never enrol.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from facekd.errors import FaceError
from gallery_tools.errors import GalleryError


@dataclass
class EnrollResult:
    """What :func:`enroll` did: faces added, images skipped as already enrolled, images skipped
    with a reason ``(path, reason)``, and the identities that received faces (sorted)."""

    added: int = 0
    skipped_existing: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    identities: list[int] = field(default_factory=list)
    #: ``(folder name, identity, new)`` for folders named by person (no ids CSV): the id given
    #: to each, and whether it was assigned by this run (``False``: the gallery already had it)
    assigned: list[tuple[str, int, bool]] = field(default_factory=list)


INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1  # SQLite's INTEGER: a larger id cannot be stored
MAX_NAME_CHARS = 1000  # a display name, not a document
MAX_CSV_BYTES = 64_000_000


def parse_identity(text: str, where: str) -> int:
    """An identity id from text: a decimal integer that fits SQLite's signed 64 bits."""
    try:
        ident = int(text.strip())
    except ValueError:
        raise GalleryError(f"{where}: identity {text[:40]!r} is not an integer") from None
    if not INT64_MIN <= ident <= INT64_MAX:
        raise GalleryError(f"{where}: identity {text.strip()[:40]} is outside the signed 64-bit "
                           "range")
    return ident


def read_ids_csv(path: str | Path) -> dict[str, tuple[int, str | None]]:
    """``folder -> (identity, name)`` from a ``folder,identity[,name]`` CSV (header optional).

    UTF-8 (a leading byte-order mark is accepted); a folder listed twice, an id outside 64 bits,
    a name longer than :data:`MAX_NAME_CHARS` or with NUL characters are refused.
    """
    mapping: dict[str, tuple[int, str | None]] = {}
    path = Path(path)
    try:
        if not path.is_file():
            raise GalleryError(f"ids CSV {path}: not a file")
        if path.stat().st_size > MAX_CSV_BYTES:
            raise GalleryError(f"ids CSV {path}: larger than {MAX_CSV_BYTES} bytes")
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise GalleryError(f"ids CSV {path}: not UTF-8 text (byte {exc.start}); save it as "
                           "UTF-8") from None
    except OSError as exc:
        raise GalleryError(f"cannot read ids CSV {path}: {exc.strerror or exc}") from None
    if "\0" in text:
        raise GalleryError(f"ids CSV {path}: contains NUL characters; not a text file")
    import io

    try:
        for lineno, row in enumerate(csv.reader(io.StringIO(text, newline="")), 1):
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            where = f"{path}:{lineno}"
            if len(row) < 2:
                raise GalleryError(f"{where}: expected folder,identity[,name]")
            if lineno == 1 and not row[1].strip().lstrip("+-").isdigit():
                continue  # a header row
            ident = parse_identity(row[1], where)
            name = row[2].strip() if len(row) > 2 and row[2].strip() else None
            if name is not None and len(name) > MAX_NAME_CHARS:
                raise GalleryError(f"{where}: name is {len(name)} characters; at most "
                                   f"{MAX_NAME_CHARS}")
            folder = row[0].strip()
            if folder in mapping:
                raise GalleryError(f"{where}: folder {folder[:80]!r} is listed twice")
            mapping[folder] = (ident, name)
    except csv.Error as exc:
        raise GalleryError(f"ids CSV {path}: not a readable CSV ({exc})") from None
    return mapping


def assign_ids(names: list[str], gallery: Any = None, *, taken: set[int] = frozenset(),
               reserved: Callable[[int], bool] | None = None) -> list[tuple[str, int, bool]]:
    """``(name, identity, new)`` for folders named by person, in sorted name order.

    A name the gallery already holds keeps its identity (a re-run of the same enrolment maps
    every folder as before); every other name, in sorted order, gets the first id from 1 up that
    is not in ``taken``, not enrolled, and not ``reserved`` (e.g. an erased id, whose ledger
    entry would otherwise describe the newcomer). So ids are stable for a given tree and gallery.
    """
    known: dict[str, list[int]] = {}
    for info in (gallery.identities() if gallery is not None else []):
        if info.name is not None:
            known.setdefault(info.name, []).append(int(info.identity))
    used = set(taken) | ({int(i.identity) for i in gallery.identities()} if gallery else set())
    out, candidate = [], 1
    for name in sorted(names):
        ids = known.get(name, [])
        if len(ids) > 1:
            raise GalleryError(f"the gallery holds {len(ids)} identities named {name[:80]!r} "
                               f"({', '.join(map(str, sorted(ids)[:3]))}); pass an ids CSV to "
                               "say which one this folder is")
        if ids:
            out.append((name, ids[0], False))
            continue
        while candidate in used or (reserved is not None and reserved(candidate)):
            candidate += 1
        used.add(candidate)
        out.append((name, candidate, True))
    return out


def _identity_folders(tree: Path, ids_csv: str | Path | None, gallery: Any = None,
                      merge: bool = False, reserved: Callable[[int], bool] | None = None,
                      ) -> tuple[list[tuple[Path, int, str | None]], list[tuple[str, int, bool]]]:
    if not tree.is_dir():
        raise GalleryError(f"{tree}: not a directory")
    mapping = read_ids_csv(ids_csv) if ids_csv is not None else {}
    out, unmapped = [], []
    for folder in sorted(p for p in tree.iterdir() if p.is_dir()):
        if folder.name in mapping:
            out.append((folder, *mapping[folder.name]))
        elif folder.name.strip().lstrip("+-").isdigit():
            out.append((folder, parse_identity(folder.name, f"{tree}: folder"), None))
        else:
            unmapped.append(folder)
    assigned: list[tuple[str, int, bool]] = []
    if unmapped and ids_csv is not None:  # a CSV was meant to say who everyone is
        raise GalleryError(f"{len(unmapped)} folder(s) are neither integer identities nor in the ids "
                           f"CSV (e.g. {unmapped[0].name!r}); add them as folder,identity[,name]")
    if unmapped:
        odd = [f.name for f in unmapped if not _utf8(f.name)]
        if odd:  # the name could not be stored (SQLite text is UTF-8)
            raise GalleryError(f"folder name {odd[0]!r} is not valid UTF-8; rename it or map it "
                               "in an ids CSV (folder,identity[,name])")
        assigned = assign_ids([f.name for f in unmapped], gallery,
                              taken={ident for _, ident, _ in out}, reserved=reserved)
        by_name = {name: ident for name, ident, _ in assigned}
        out += [(f, by_name[f.name], f.name) for f in unmapped]
        out.sort(key=lambda row: row[0].name)
    if not merge:
        _refuse_merges(out, gallery, mapping)
    return out, assigned


def _refuse_merges(folders: list[tuple[Path, int, str | None]], gallery: Any,
                   mapping: dict[str, tuple[int, str | None]]) -> None:
    """Refuse a CSV that would silently put two people under one id: two folders on one id, or
    a mapped folder whose id is already enrolled from a different folder (``merge`` allows it)."""
    by_id: dict[int, str] = {}
    for folder, ident, _ in folders:
        if ident in by_id:
            raise GalleryError(f"folders {by_id[ident]!r} and {folder.name!r} both map to identity "
                               f"{ident}; that would merge two people (pass --merge if they are "
                               "one person)")
        by_id[ident] = folder.name
    if gallery is None:
        return
    for folder, ident, _ in folders:
        if folder.name in mapping and gallery.has_identity(ident) \
                and not gallery.identity_has_folder(ident, folder.name):
            raise GalleryError(f"folder {folder.name!r} maps to identity {ident}, which is already "
                               "enrolled from other photos; that would merge two people (pass "
                               "--merge if they are one person)")


def _not_regular(p: Path) -> str:
    """Why an image-named path that is not a regular file is skipped (never opened: a FIFO
    would block, a device would stream forever)."""
    import stat

    try:
        mode = p.stat().st_mode
    except OSError:
        return "a broken symbolic link" if p.is_symlink() else "cannot be read"
    kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode)
            or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
    return f"not an image file: {kind}"


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes in a file name (surrogate escapes)
        return False
    return True


def _decode_chip(data: bytes, size: int) -> np.ndarray | str:
    """An aligned chip from image bytes: ``(size, size, 3)`` uint8 RGB, or why it is unusable
    (truncated JPEGs, images over the limits...)."""
    from facekd.faces import align_chip, decode_image

    try:
        return align_chip(decode_image(data, ""), None, "none", size)
    except FaceError as exc:
        return str(exc).removeprefix(": ")


def enroll(tree: str | Path, encoder: Any, gallery: Any, *, ids_csv: str | Path | None = None,
           aligned: bool = False, batch_size: int = 32, progress: bool = True,
           save_every: int | None = None, merge: bool = False,
           reserved: Callable[[int], bool] | None = None) -> EnrollResult:
    """Embed every image under ``tree`` with ``encoder`` and add it to the writable ``gallery``.

    Args:
        tree: folder-per-identity image tree.
        encoder: a :class:`facekd.encoders.base.Encoder` whose fingerprint and dimension match
            the gallery's.
        gallery: a writable :class:`gallery_tools.Gallery`; it is not saved unless ``save_every``.
        ids_csv: ``folder,identity[,name]`` mapping for non-integer folder names; without it,
            such folders are named by person and get ids from :func:`assign_ids`.
        aligned: files are already aligned chips for this encoder (only resized); otherwise faces
            are detected and aligned by ``facekd.faces.chips_from_files`` (largest face per image).
        batch_size: images per embedding batch.
        save_every: save the gallery after about this many added faces (resumable big runs).
        merge: allow CSV rows that put a folder under an id another folder or an enrolled
            person already has (otherwise GalleryError: that silently merges two people).
        reserved: ids automatic assignment must not hand out (besides enrolled ones).

    Returns:
        :class:`EnrollResult`. Unreadable or face-less images are skipped with a reason; images
        whose sha256 is already stored are counted in ``skipped_existing``.
    """
    from facekd.progress import tqdm

    from facekd.faces import IMAGE_SUFFIXES, UNSUPPORTED_SUFFIXES, read_image_bytes

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
    folders, assigned = _identity_folders(tree, ids_csv, gallery, merge, reserved)
    result = EnrollResult(assigned=assigned)
    files = []
    for folder, ident, name in folders:
        for p in sorted(folder.iterdir()):
            suffix = p.suffix.lower()
            if p.is_file() and suffix in IMAGE_SUFFIXES:
                if not _utf8(str(p)):  # SQLite stores text as UTF-8: the path cannot be recorded
                    result.skipped.append((str(p), "file name is not valid UTF-8; rename it"))
                else:
                    files.append((p, ident, name))
            elif suffix in UNSUPPORTED_SUFFIXES:  # an image the user expects in: say so
                result.skipped.append((str(p), f"{suffix[1:].upper()} images are not supported"))
            elif suffix in IMAGE_SUFFIXES and not p.is_dir():  # a FIFO, a device, a dead link
                result.skipped.append((str(p), _not_regular(p)))
    enrolled: set[int] = set()
    seen: set[str] = set()
    if not files and not result.skipped:
        raise GalleryError(f"{tree}: no image files in its identity folders "
                           f"({', '.join(sorted(IMAGE_SUFFIXES))})")
    since_save = 0
    size = encoder.input_spec.size
    with tqdm(total=len(files), unit="img", desc="enroll", disable=not progress) as bar:
        for start in range(0, len(files), batch_size):
            batch = files[start:start + batch_size]
            blobs: list[tuple[Path, int, str | None, bytes, str]] = []
            for path, ident, name in batch:
                try:
                    data = read_image_bytes(path)
                except FaceError as exc:
                    result.skipped.append((str(path), str(exc).removeprefix(f"{path}: ")))
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
            if isinstance(chip, str):
                result.skipped.append((str(path), chip))
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
