"""Photos a user hands a command (``--images DIR``, ``search IMAGE``): list them, embed them.

Embedding is with the encoder the caller passes, normally the workspace's deployed (edited) one,
under the configured image limits; vectors come back L2-normalised like the gallery's.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from facekd.errors import FaceError, WorkspaceError
from facekd.faces import IMAGE_SUFFIXES, UNSUPPORTED_SUFFIXES, ImageLimits, image_limits

__all__ = ["list_images", "embed_images", "embed_images_with", "normalize"]


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted); raises if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WorkspaceError(f"{folder}: not a directory of images")
    # Unsupported image types (GIF...) are listed too: reading them fails with a reason that is
    # reported, instead of the files being silently left out.
    wanted = IMAGE_SUFFIXES | UNSUPPORTED_SUFFIXES
    # Special files (a FIFO, a link to /dev/zero) are listed too: reading them is refused with
    # the reason (facekd.faces.images.read_image_bytes), never attempted, and reported by name.
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in wanted and not p.is_dir())
    if not paths:
        raise WorkspaceError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return paths


def normalize(x: np.ndarray) -> np.ndarray:
    """``(n, d)`` rows scaled to unit length, as float32 (a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def embed_images(encoder, paths: list[Path], *, aligned: bool, limits: ImageLimits,
                 progress: bool = True) -> tuple[np.ndarray, list, list]:
    """Embed image files with ``encoder``.

    Returns ``((m, d) float32 unit rows, source paths (m,), skipped [(path, reason)])``.
    With ``aligned`` the files are taken as aligned chips (resized only, as enrolment does);
    otherwise the largest face of each image is detected and aligned.
    """
    (vecs,), sources, skipped = embed_images_with([encoder], paths, aligned=aligned,
                                                  limits=limits, progress=progress)
    return vecs, sources, skipped


def embed_images_with(encoders: list, paths: list[Path], *, aligned: bool, limits: ImageLimits,
                      progress: bool = True) -> tuple[list[np.ndarray], list, list]:
    """As :func:`embed_images`, with several encoders sharing one input contract (an edited
    encoder and its base): faces are found and aligned once, then embedded by each.

    Returns ``([(m, d) float32 unit rows per encoder], source paths (m,), skipped)``.
    """
    spec = encoders[0].input_spec
    with image_limits(limits):
        if aligned:
            chips, sources, skipped = _aligned_chips(paths, spec.size)
        else:
            from facekd.faces import chips_from_files

            res = chips_from_files([str(p) for p in paths], spec, select="largest",
                                   progress=progress)
            chips = list(res.chips)
            # sources may be indices into the input list or the paths themselves
            sources = [paths[int(s)] if isinstance(s, (int, np.integer)) else Path(str(s))
                       for s in res.sources]
            skipped = list(res.skipped)
        if len(chips) == 0:
            return [np.zeros((0, e.dim), np.float32) for e in encoders], [], skipped
        batch = np.stack(chips)
        vecs = [normalize(e.embed(batch, progress=progress and len(chips) >= 64))
                for e in encoders]
    return vecs, sources, skipped


def _aligned_chips(paths: list[Path], size: int) -> tuple[list[np.ndarray], list[Path], list]:
    """Already-aligned chip files -> ``(size, size, 3)`` uint8 RGB, resized like enrolment does."""
    from facekd.faces import align_chip, read_image

    chips, sources, skipped = [], [], []
    for p in paths:
        try:
            chips.append(align_chip(read_image(p), None, "none", size))
        except FaceError as exc:
            skipped.append((str(p), str(exc).removeprefix(f"{p}: ")))
            continue
        sources.append(Path(p))
    return chips, sources, skipped
