"""Which onnxruntime execution providers to ask for: TensorRT -> CUDA -> CPU, or the caller's.

Shared by the ONNX encoder (:mod:`facekd.encoders.onnx_model`) and the exporter
(:mod:`facekd.encoders.onnx_export`); imports nothing from the project but :mod:`facekd.errors`.
"""

from __future__ import annotations

from typing import Sequence

import onnxruntime as ort

from facekd.errors import EncoderError

__all__ = ["PROVIDER_PRIORITY", "select_providers"]

#: preference order when nothing is asked for; CPU always closes the list as the fallback
PROVIDER_PRIORITY = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_ALIASES = {"tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider",
            "cuda": "CUDAExecutionProvider", "gpu": "CUDAExecutionProvider",
            "cpu": "CPUExecutionProvider"}


def _canonical(name: str) -> str:
    return _ALIASES.get(name.strip().lower(), name.strip())


def select_providers(available: Sequence[str] | None = None,
                     prefer: str | Sequence[str] | None = None) -> list[str]:
    """Execution providers to hand to ``onnxruntime.InferenceSession``, best first.

    Args:
        available: what onnxruntime offers (default ``onnxruntime.get_available_providers()``).
        prefer: provider names or aliases (``"tensorrt"``, ``"cuda"``, ``"cpu"``), in order; the
            ones available are kept in that order. Default: TensorRT -> CUDA -> CPU.

    Returns:
        A non-empty list that always ends with ``CPUExecutionProvider`` (the fallback for nodes a
        GPU provider cannot run); TensorRT is followed by CUDA when both are there.

    Raises:
        EncoderError: ``prefer`` names only providers this onnxruntime lacks (asking for a GPU
            explicitly and silently getting the CPU would hide a broken install).
    """
    if available is None:
        available = ort.get_available_providers()
    available = list(available)
    if prefer is None:
        wanted = list(PROVIDER_PRIORITY)
    else:
        wanted = [_canonical(p) for p in ([prefer] if isinstance(prefer, str) else list(prefer))]
        if not wanted:
            raise EncoderError("prefer is empty; name at least one execution provider")
        if not any(p in available for p in wanted):
            hint = (" (install onnxruntime-gpu and the CUDA/TensorRT libraries)"
                    if any(p != "CPUExecutionProvider" for p in wanted) else "")
            raise EncoderError(f"none of the requested execution providers {wanted} is available; "
                               f"onnxruntime offers {available}{hint}")
    chosen = [p for p in dict.fromkeys(wanted) if p in available]
    if chosen and chosen[0] == "TensorrtExecutionProvider" and "CUDAExecutionProvider" in available \
            and "CUDAExecutionProvider" not in chosen:
        chosen.insert(1, "CUDAExecutionProvider")
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen
