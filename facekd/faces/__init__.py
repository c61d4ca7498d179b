"""Faces: reading images (``images``), the 5-point schemes and chips (``alignment``), the face
finders (``detect``: dlib's detector, or an insightface pack's SCRFD in ``insightface_det``), the
photos a user passes (``photos``) and the synthetic faces of the tests and the demo
(``synthfaces``).

Every name ``facekd.faces`` held before it became a package stays importable from here (OpenCV
and dlib load on first use only).
"""

from facekd.faces.alignment import (  # noqa: F401
    _DLIB5_MEAN_FACE, _INSIGHTFACE5_MEAN_FACE, ALIGNMENTS, ARCFACE_TEMPLATE, DLIB_PADDING,
    LANDMARK_ORDERS, SELECT_MODES, Face, _check_landmarks, _compose, _resize, _similarity,
    align_chip, dlib_chip_opencv, norm_crop)
from facekd.faces.detect import (  # noqa: F401
    ChipResult, FaceAligner, _import_dlib, chips_from_files, default_aligner, pack_detector_key)
from facekd.faces.images import (  # noqa: F401
    DEFAULT_LIMITS, IMAGE_SUFFIXES, UNSUPPORTED_SUFFIXES, ImageLimits, _as_rgb, current_limits,
    decode_image, image_limits, read_image, read_image_bytes)

__all__ = ["Face", "FaceAligner", "ChipResult", "read_image", "read_image_bytes", "decode_image",
           "chips_from_files", "align_chip", "dlib_chip_opencv", "norm_crop", "ImageLimits",
           "image_limits", "LANDMARK_ORDERS",
           "IMAGE_SUFFIXES", "UNSUPPORTED_SUFFIXES", "ALIGNMENTS", "SELECT_MODES"]
