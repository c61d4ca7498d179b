"""Reading images safely: file types facekd reads, size limits checked before decoding, and
decoding to ``(H, W, 3)`` uint8 RGB. Every failure is a :class:`~facekd.errors.FaceError` that
says why the file is unusable; nothing here finds or aligns faces (:mod:`facekd.faces.alignment`,
:mod:`facekd.faces`).

OpenCV is imported by :func:`decode_image`, the one function that needs it, so that importing the
workspace (every CLI command does) does not load it."""

from __future__ import annotations

import os
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from facekd.errors import FaceError

__all__ = ["read_image", "read_image_bytes", "decode_image", "ImageLimits", "DEFAULT_LIMITS",
           "image_limits", "current_limits", "IMAGE_SUFFIXES", "UNSUPPORTED_SUFFIXES"]

# File types read as images by enrolment, search and verify.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".pbm", ".webp",
                            ".tif", ".tiff"})
# Image types people keep next to photos that facekd does not read: reported, never ignored.
UNSUPPORTED_SUFFIXES = frozenset({".gif", ".heic", ".heif", ".avif", ".jxl", ".svg", ".ico"})


@dataclass(frozen=True)
class ImageLimits:
    """Largest image file (bytes) and image (width x height pixels) facekd will decode.

    Checked before decoding, from the file size and the image header, so a huge or
    decompression-bomb file costs a header read, not gigabytes of memory.
    """

    max_bytes: int = 50_000_000
    max_pixels: int = 50_000_000


DEFAULT_LIMITS = ImageLimits()
_limits = [DEFAULT_LIMITS]  # the limits in force (a workspace sets its own; see image_limits)


@contextmanager
def image_limits(limits: ImageLimits) -> Iterator[None]:
    """Apply ``limits`` to every :func:`read_image` / :func:`decode_image` inside the block."""
    _limits.append(limits)
    try:
        yield
    finally:
        _limits.pop()


def current_limits() -> ImageLimits:
    return _limits[-1]


def _jpeg_has_end(raw: bytes) -> bool:
    """Whether an end-of-image marker follows the first start-of-scan of a JPEG.

    Walks the header segments by their lengths, so an EXIF thumbnail's own markers and data
    appended after the image (motion photos, MPF) are not mistaken for the main image's.
    """
    pos = 2
    while pos + 4 <= len(raw):
        if raw[pos] != 0xFF:
            return False
        marker = raw[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:  # start of scan: entropy-coded data follows, then EOI
            return raw.find(b"\xff\xd9", pos + 2) != -1
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            pos += 2
            continue
        pos += 2 + int.from_bytes(raw[pos + 2:pos + 4], "big")
    return False


def read_image_bytes(path: str | os.PathLike) -> bytes:
    """A file's bytes for decoding, refusing (:class:`FaceError`) a file above the byte limit
    before reading it (a sparse multi-gigabyte ``.jpg`` costs a ``stat``)."""
    p = Path(path)
    if p.is_dir():
        raise FaceError(f"{p}: is a directory, not an image")
    try:
        st = p.stat()
    except FileNotFoundError:
        raise FaceError(f"{p}: no such file") from None
    except OSError as exc:
        raise FaceError(f"{p}: cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "a device"
                if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a socket"
                if stat.S_ISSOCK(st.st_mode) else "a special file")
        raise FaceError(f"{p}: not a regular file ({kind}), skipped")
    limit = current_limits().max_bytes
    if st.st_size > limit:
        raise FaceError(f"{p}: file too large ({st.st_size} bytes; the limit is {limit})")
    if p.suffix.lower() in UNSUPPORTED_SUFFIXES:
        raise FaceError(f"{p}: {p.suffix.lower().lstrip('.').upper()} images are not supported "
                        f"(use one of {', '.join(sorted(IMAGE_SUFFIXES))})")
    try:
        with open(p, "rb") as fh:
            return fh.read(limit + 1)  # never more than the limit, even if the file grew
    except OSError as exc:
        raise FaceError(f"{p}: cannot be read ({exc.strerror or exc})") from None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB (grey and alpha images become RGB;
    EXIF orientation is applied). Raises :class:`FaceError` saying why a file is unusable."""
    return decode_image(read_image_bytes(path), str(path))


def _header_size(raw: bytes, label: str) -> tuple[int, int]:
    """``(width, height)`` from the image header alone (Pillow opens lazily: no pixel decoding)."""
    import io
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: we apply our own limit
            with Image.open(io.BytesIO(raw)) as im:
                fmt, size = im.format, im.size
    except Image.DecompressionBombError:
        raise FaceError(f"{label}: image too large (its header claims more pixels than "
                        f"{current_limits().max_pixels})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        raise FaceError(f"{label}: not an image, or a corrupt one (cannot be decoded)") from None
    if fmt in ("GIF", "ICO"):
        raise FaceError(f"{label}: {fmt} images are not supported")
    return int(size[0]), int(size[1])


def decode_image(raw: bytes, label: str = "image") -> np.ndarray:
    """Decode image file bytes as ``(H, W, 3)`` uint8 RGB; :class:`FaceError` (naming ``label``)
    says why they are unusable. The limits in force (:func:`image_limits`) are checked first."""
    import cv2
    limits = current_limits()
    if len(raw) == 0:
        raise FaceError(f"{label}: empty file")
    if len(raw) > limits.max_bytes:
        raise FaceError(f"{label}: file too large ({len(raw)} bytes; the limit is "
                        f"{limits.max_bytes})")
    if raw[:6] in (b"GIF87a", b"GIF89a"):
        raise FaceError(f"{label}: GIF images are not supported")
    # libjpeg decodes a truncated JPEG without complaint (grey bottom rows): the scan data must
    # be followed by an end-of-image marker.
    is_jpeg = raw[:2] == b"\xff\xd8"
    if is_jpeg and not _jpeg_has_end(raw):
        raise FaceError(f"{label}: corrupt or truncated JPEG (no end-of-image marker)")
    width, height = _header_size(raw, label)
    if width * height > limits.max_pixels:
        raise FaceError(f"{label}: image too large ({width}x{height} pixels; the limit is "
                        f"{limits.max_pixels})")
    image = cv2.imdecode(np.frombuffer(raw, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise FaceError(f"{label}: not an image, or a corrupt one (cannot be decoded)")
    # A cut baseline JPEG with an end marker appended decodes "fine": libjpeg fills the missing
    # blocks with zero coefficients, i.e. exact mid-grey (128) rows at the bottom.
    if is_jpeg and image.shape[0] >= 8 and bool((image[-2:] == 128).all()):
        raise FaceError(f"{label}: corrupt or truncated JPEG (the bottom rows are missing)")
    return np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))


def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise FaceError(f"expected a uint8 image, got dtype {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise FaceError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    return np.ascontiguousarray(image)
