"""``load_encoder("samples")``: the tiny encoder trained on :mod:`facekd.faces.synthfaces` renders.

A TEST FIXTURE AND DEMO, NOT A FACE MODEL: it has only ever seen synthetic cartoon faces and
knows nothing about real people. It exists so that ``facekd demo`` and the test suite run on any
machine with no photos and no downloads. It is trained by ``samples/train_tiny_encoder.py`` and
shipped as package data (``facekd/data/tiny_face_encoder.onnx``, with its accuracy, training
configuration and sha256 in ``tiny_face_encoder.json`` beside it).

Input: 112x112 RGB chips as rendered (no landmark alignment: ``alignment="none"``), normalised
``(x - 127.5) / 127.5``. Output: ``(n, 128)`` float32, not L2-normalised. The graph ends in one
Gemm, into which :meth:`OnnxEncoder.with_erasure` folds an erasure.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from facekd.encoders.base import InputSpec
from facekd.encoders.onnx_model import OnnxEncoder
from facekd.errors import EncoderError

__all__ = ["SamplesEncoder", "SAMPLES_SPEC", "MODEL_NAME", "model_path", "model_info", "load"]

MODEL_NAME = "tiny_face_encoder.onnx"
SAMPLES_SPEC = InputSpec(112, (127.5,) * 3, (127.5,) * 3, "RGB", alignment="none")


def model_path() -> Path:
    """Path of the shipped ONNX file (package data)."""
    path = Path(str(resources.files("facekd") / "data" / MODEL_NAME))
    if not path.is_file():
        raise EncoderError(f"the samples encoder is missing from the installation ({path}); "
                           "rebuild it with samples/train_tiny_encoder.py")
    return path


def model_info() -> dict:
    """The JSON shipped beside the model: accuracy, training configuration, sha256."""
    return json.loads(model_path().with_suffix(".json").read_text())


class SamplesEncoder(OnnxEncoder):
    """The shipped tiny encoder; an :class:`OnnxEncoder` whose family is ``"samples"``."""

    family = "samples"


def load(arg: str | None = None, **options) -> OnnxEncoder:
    """``load_encoder("samples")``; ``options``: ``providers`` as for :class:`OnnxEncoder`.

    ``arg`` must be empty: the samples encoder is the shipped file (use ``onnx:PATH`` for others).
    """
    if arg:
        raise EncoderError("the samples encoder takes no path; use 'onnx:PATH' for another model")
    unknown = set(options) - {"providers"}
    if unknown:
        raise EncoderError(f"unknown option(s) for the samples encoder: {', '.join(sorted(unknown))}")
    enc = SamplesEncoder(model_path(), input_spec=SAMPLES_SPEC, **options)
    enc.input_spec_source = "the samples encoder's fixed contract"
    return enc
