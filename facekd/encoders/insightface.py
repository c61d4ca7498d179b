"""``load_encoder("insightface:DIR")``: an insightface model pack as facekd's encoder.

The pack's recognition model is the one insightface's ``FaceAnalysis`` would load
(:func:`facekd.encoders.insightface_pack.select_models`: a version-2 task manifest, else the sorted glob
and insightface's shape routing), run as an :class:`~facekd.encoders.onnx_model.OnnxEncoder`
with the normalisation insightface feeds it. When the pack's detector is an SCRFD graph with
5 landmarks, the encoder's input spec carries it (:class:`PackInputSpec`) and facekd finds and
aligns faces with it exactly as ``FaceAnalysis.get`` does (``Face.kps`` + ``norm_crop``);
otherwise faces are found by facekd's own path (dlib's detector + 5-point predictor) and a
warning says so once per process.

``DIR`` is a folder, or a pack name under ``~/.insightface/models`` (``insightface:buffalo_l``),
as ``FaceAnalysis(name=...)`` takes it.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from facekd.encoders.base import InputSpec
from facekd.errors import EncoderError, PackError

__all__ = ["PackInputSpec", "load", "resolve_pack", "INSIGHTFACE_ROOT"]

INSIGHTFACE_ROOT = "~/.insightface"  # FaceAnalysis' default root; packs live in ROOT/models/NAME
_WARNED: set[str] = set()


@dataclass(frozen=True, eq=False)
class PackInputSpec(InputSpec):
    """An :class:`InputSpec` plus the pack detector that finds and aligns faces for it.

    ``detector``: the SCRFD ``.onnx`` path; ``detector_norm``: ``(mean, std)`` it is fed.
    Equality, hashing and ``to_dict`` (written into exported ONNX files) are the plain input
    contract's: where faces come from is not part of what the network expects.
    """

    detector: str | None = None
    detector_norm: tuple[float, float] = (127.5, 128.0)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, InputSpec):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))


def resolve_pack(arg: str) -> Path:
    """The pack folder ``arg`` names: a folder path, else ``~/.insightface/models/<arg>``."""
    path = Path(arg).expanduser()
    if path.is_dir():
        return path.resolve()
    named = Path(INSIGHTFACE_ROOT).expanduser() / "models" / arg
    if os.sep not in arg and named.is_dir():
        return named.resolve()
    raise PackError(f"{arg}: no such insightface model-pack folder (give the folder holding the "
                    f".onnx files, or a pack name under {INSIGHTFACE_ROOT}/models)")


def load(arg: str | None, **options):
    """``insightface:DIR``; option ``providers`` as for the onnx family.

    Raises:
        PackError: no such folder, no recognition model, a manifest checksum mismatch, an
            unreadable ONNX file FaceAnalysis would open, a broken version-2 manifest.
        EncoderError: the recognition model is not a usable face encoder.
    """
    from facekd.encoders.onnx_model import OnnxEncoder
    from facekd.encoders.insightface_pack import select_models

    if not arg:
        raise EncoderError("the insightface encoder needs a model-pack folder: "
                           "'insightface:~/.insightface/models/buffalo_l'")
    unknown = set(options) - {"providers"}
    if unknown:
        raise EncoderError(f"unknown option(s) for the insightface encoder: {', '.join(sorted(unknown))}")
    pack = resolve_pack(arg)
    models = select_models(pack)
    if models.recognition is None:
        raise PackError(f"{pack}: no recognition model (insightface routes a square input "
                        ">= 112, divisible by 16, with one output, to recognition)")
    mean, std = models.recognition_norm
    detector = None
    if models.detector_has_landmarks:
        detector = str(models.detection)
    elif str(pack) not in _WARNED:
        _WARNED.add(str(pack))
        why = ("has no detector" if models.detection is None else
               f"detector {models.detection.name} gives no 5 landmarks")
        warnings.warn(f"insightface pack {pack.name} {why}: faces are found and aligned by "
                      "facekd's own path (dlib's detector + 5-point predictor), not as "
                      "FaceAnalysis would", stacklevel=2)
    spec = PackInputSpec(models.recognition_size, (mean,) * 3, (std,) * 3, "RGB",
                         alignment="arcface", detector=detector,
                         detector_norm=models.detection_norm)
    try:
        enc = OnnxEncoder(models.recognition, input_spec=spec, **options)
    except EncoderError as exc:
        raise EncoderError(f"insightface pack {pack.name}: {exc}") from None
    enc.input_spec_source = ("the insightface pack: normalisation as insightface's model_zoo "
                             "decides it for the recognition model")
    return enc
