"""The encoder protocol every face-encoder family implements.

An encoder maps aligned face chips ``(n, H, W, 3)`` uint8 RGB to un-normalised embeddings
``(n, d)`` float32. Encoders know nothing about galleries. An edited encoder is an ordinary
encoder whose last linear layer has the erasure's linear map folded in, followed by the erasure's
gated tail when it has one (applied in numpy by torch encoders, as ONNX nodes in exported and ONNX
encoders), so that ``normalize(edited.embed(x)) == erasure.apply(original.embed(x))``.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from facekd.errors import EncoderError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from facekd.core.erasure import Erasure

__all__ = ["InputSpec", "Encoder", "TorchEncoder", "sha256_arrays", "fold_into_linear",
           "compose_for_fold", "apply_tail", "with_tail_nodes", "erasure_summary"]

PROGRESS_MIN_CHIPS = 256  # show a progress bar from this many chips on


@dataclass(frozen=True)
class InputSpec:
    """What an encoder expects: square ``size`` chips, ``(pixel - mean) / std`` per channel.

    ``alignment`` names the 5-point template ``facekd.faces`` uses to cut chips for this encoder
    (``"dlib"`` 150x150, ``"arcface"`` 112x112, ``"facenet"`` 160x160).
    ``channel_order`` is the order the *network* wants; ``embed`` always takes RGB and reorders.
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: str = "RGB"
    alignment: str = "arcface"

    def to_tensor_array(self, chips: np.ndarray) -> np.ndarray:
        """``(n, H, W, 3)`` uint8 RGB -> ``(n, 3, H, W)`` float32 normalised, network channel order."""
        x = chips.astype(np.float32)
        if self.channel_order == "BGR":
            x = x[..., ::-1]
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def to_dict(self) -> dict:
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std),
                "channel_order": self.channel_order, "alignment": self.alignment}

    def describe(self) -> str:
        """One line: ``160x160 RGB, (x - 127.5) / 128, alignment facenet``."""
        def one(v: tuple[float, ...]) -> str:
            return f"{v[0]:g}" if len(set(v)) == 1 else "(" + ", ".join(f"{x:g}" for x in v) + ")"

        norm = "x" if set(self.mean) == {0.0} else f"(x - {one(self.mean)})"
        if set(self.std) != {1.0}:
            norm = f"{norm} / {one(self.std)}"
        return f"{self.size}x{self.size} {self.channel_order}, {norm}, alignment {self.alignment}"


def sha256_arrays(arrays: Iterable[np.ndarray]) -> str:
    """Fingerprint of a sequence of weight arrays (order, shape, dtype and bytes)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def validate_chips(chips: np.ndarray, size: int) -> np.ndarray:
    """Check ``chips`` is ``(n, size, size, 3)`` uint8 (a single chip gets a batch axis)."""
    chips = np.asarray(chips)
    if chips.ndim == 3:
        chips = chips[None]
    if chips.ndim != 4 or chips.shape[1:] != (size, size, 3):
        raise EncoderError(f"expected chips of shape (n, {size}, {size}, 3), got {chips.shape}")
    if chips.dtype != np.uint8:
        raise EncoderError(f"expected uint8 RGB chips, got dtype {chips.dtype}")
    return chips


class Encoder(ABC):
    """Base class: batching, validation and progress live here; families supply the network."""

    #: short family name ("dlib", "facenet", "onnx", "samples")
    family: str = "encoder"
    input_spec: InputSpec
    #: embedding dimension d
    dim: int
    #: the erasure folded into this encoder (``None`` for an original encoder)
    erasure: "Erasure | None" = None
    #: where ``input_spec`` came from, in words (``init`` prints it)
    input_spec_source: str = "fixed by the encoder family"
    #: ``True`` when nothing in the model said what input it expects and a default was assumed
    input_spec_guessed: bool = False

    def embed(self, chips: np.ndarray, *, batch_size: int = 32, progress: bool | None = None) -> np.ndarray:
        """Embed aligned chips.

        Args:
            chips: ``(n, size, size, 3)`` uint8 RGB, aligned with ``input_spec.alignment``.
            batch_size: chips per forward pass.
            progress: show a tqdm bar; default: only for ``n >= PROGRESS_MIN_CHIPS``.

        Returns:
            ``(n, dim)`` float32, *not* L2-normalised.
        """
        chips = validate_chips(chips, self.input_spec.size)
        n = chips.shape[0]
        out = np.empty((n, self.dim), dtype=np.float32)
        show = (n >= PROGRESS_MIN_CHIPS) if progress is None else progress
        from facekd.progress import tqdm

        with tqdm(total=n, unit="face", desc=f"embed ({self.family})", disable=not show,
                  leave=False) as bar:
            for start in range(0, n, batch_size):
                batch = chips[start:start + batch_size]
                out[start:start + len(batch)] = self._embed_batch(batch)
                bar.update(len(batch))
        return out

    @abstractmethod
    def _embed_batch(self, chips: np.ndarray) -> np.ndarray:
        """``(b, size, size, 3)`` uint8 -> ``(b, dim)`` float32."""

    @abstractmethod
    def with_erasure(self, erasure: "Erasure") -> "Encoder":
        """A new encoder with ``erasure`` folded into its weights (composed with any existing one)."""

    @abstractmethod
    def to_onnx(self, path: str | Path, *, opset: int = 17) -> Path:
        """Write a single-file ONNX model: one input ``(N, 3, size, size)`` float32 (normalised as
        ``input_spec`` says), one output ``(N, dim)``, dynamic batch axis."""

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """sha256 (hex) of the weights; changes when an erasure is folded in."""

    def onnx_metadata(self) -> dict[str, str]:
        """``metadata_props`` every ONNX file written from this encoder carries: the input
        contract (so ``load_encoder("onnx:...")`` preprocesses as this encoder does) and, when
        edited, the size of the edit."""
        from facekd.onnx.graph import ERASURE_METADATA_KEY, METADATA_KEY

        meta = {METADATA_KEY: json.dumps(self.input_spec.to_dict())}
        if self.erasure is not None:
            meta[ERASURE_METADATA_KEY] = json.dumps(erasure_summary(self.erasure))
        return meta

    def __repr__(self) -> str:
        edited = f", erasure k={self.erasure.k}" if self.erasure is not None else ""
        return f"<{type(self).__name__} d={self.dim} size={self.input_spec.size}{edited}>"


def fold_into_linear(weight: "torch.Tensor", bias: "torch.Tensor | None", matrix: np.ndarray):
    """Fold ``y -> y @ A`` into a ``torch.nn.Linear`` (``y = x W^T + b``).

    Returns ``(W', b')`` with ``W' = A^T W`` and ``b' = b @ A``, computed in float64 and cast back,
    so ``x W'^T + b' == (x W^T + b) @ A``.
    """
    import torch

    a = torch.as_tensor(matrix, dtype=torch.float64)
    if weight.shape[0] != a.shape[0]:
        raise EncoderError(f"erasure dimension {a.shape[0]} does not match the layer's "
                           f"{weight.shape[0]} outputs")
    w = (a.T @ weight.detach().double()).to(weight.dtype)
    b = None if bias is None else (bias.detach().double() @ a).to(bias.dtype)
    return w, b


class TorchEncoder(Encoder):
    """An encoder backed by a torch ``nn.Module`` that maps normalised NCHW input to ``(n, d)``."""

    def __init__(self, module: "torch.nn.Module", input_spec: InputSpec, dim: int,
                 erasure: "Erasure | None" = None, device: str | None = None):
        import torch

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.module = module.eval().to(self.device)
        self.input_spec = input_spec
        self.dim = int(dim)
        self.erasure = erasure
        self._fingerprint: str | None = None

    def _embed_batch(self, chips: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(self.input_spec.to_tensor_array(chips)).to(self.device)
        with torch.inference_mode():
            out = self.module(x).float().cpu().numpy()
        return apply_tail(self.erasure, out)

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            arrays = [t.detach().cpu().numpy() for t in self.module.state_dict().values()]
            if self.erasure is not None and self.erasure.tail:  # the tail is part of the model
                arrays.append(np.frombuffer(_tail_arrays_bytes(self.erasure), np.uint8))
            self._fingerprint = sha256_arrays(arrays)
        return self._fingerprint

    def onnx_model(self, *, opset: int = 17):
        """The encoder as an in-memory ``onnx.ModelProto``: the network (:meth:`_onnx_body`) and,
        for a gated erasure, its tail appended after the output."""
        return with_tail_nodes(self._onnx_body(opset=opset), self.erasure)

    def _onnx_body(self, *, opset: int = 17):
        """The network alone: input ``input``, output ``embedding``, dynamic batch, one file.

        Written by the TorchScript exporter (opset 17), on purpose, while this torch has it. The
        torch.export-based exporter was measured on dlib's ResNet (torch 2.13, docs/cli.md,
        "ONNX exporter"): the same operators and parity 2.7e-7, but it needs onnxscript (not a
        core dependency), writes opset 18 (older runtimes and insightface packs expect 17) and took
        4.6x as long (17 s against 3.7 s). When the TorchScript exporter is gone from torch, or
        ``$FACEKD_ONNX_EXPORTER=dynamo``, the torch.export one is used (``pip install
        facekd[export]`` brings onnxscript).
        """
        import io
        import os
        import warnings

        import onnx
        import torch

        size = self.input_spec.size
        dummy = torch.zeros((1, 3, size, size), dtype=torch.float32, device=self.device)
        if os.environ.get("FACEKD_ONNX_EXPORTER") != "dynamo":
            buf = io.BytesIO()
            try:
                with warnings.catch_warnings():
                    # torch >= 2.9 flags the TorchScript exporter as deprecated (see above)
                    warnings.simplefilter("ignore", DeprecationWarning)
                    torch.onnx.export(self.module, dummy, buf, dynamo=False,
                                      opset_version=opset, input_names=["input"],
                                      output_names=["embedding"],
                                      dynamic_axes={"input": {0: "N"}, "embedding": {0: "N"}})
                return onnx.load_from_string(buf.getvalue())
            except (TypeError, NotImplementedError, AttributeError):
                pass  # this torch no longer has the TorchScript exporter
        return _dynamo_export(self.module, dummy, max(opset, 18))

    def to_onnx(self, path: str | Path, *, opset: int = 17) -> Path:
        import onnx

        from facekd.onnx.graph import set_metadata
        from facekd.fileio import write_atomic

        model = self.onnx_model(opset=opset)
        for key, value in self.onnx_metadata().items():
            set_metadata(model, key, value)
        onnx.checker.check_model(model)
        # Atomic: an interrupted export never leaves a partial model under the final name.
        return write_atomic(path, model.SerializeToString())


def _dynamo_export(module: Any, dummy: Any, opset: int):
    """``module`` through torch's torch.export-based ONNX exporter (dynamic batch, one file)."""
    import logging

    import torch

    try:
        import onnxscript  # noqa: F401  (the exporter's own dependency)
    except ImportError:
        raise EncoderError("ONNX export needs onnxscript with this torch: pip install "
                           "'facekd[export]'") from None
    # It lists every torchvision operator it cannot register; not facekd's concern.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    program = torch.onnx.export(module.eval(), (dummy,), dynamo=True, opset_version=opset,
                                input_names=["input"], output_names=["embedding"],
                                dynamic_shapes=({0: torch.export.Dim("N", min=1, max=65536)},))
    program.optimize()
    return program.model_proto


def erasure_summary(erasure: "Erasure", **extra: str) -> dict:
    """What an exported file may say about its edit: only its size, never the erased directions
    (they are a person's template)."""
    linear_stages = sum(1 for st in erasure.tail if st.kind == "linear")
    return {"method": erasure.name, "k": erasure.directions, "gates": erasure.n_gates,
            "linear_stages_after_gates": linear_stages, "steps": len(erasure.history), **extra}


def apply_tail(erasure: "Erasure | None", out: np.ndarray) -> np.ndarray:
    """An encoder's raw ``(n, d)`` output run through ``erasure``'s tail (unit rows), if any.

    The linear part is already folded into the weights; the tail is a function of the normalised
    output, so torch encoders apply it here with the same code that edits stored vectors.
    """
    if erasure is None or not erasure.tail:
        return out
    from facekd.core.tail import apply_stages, normalize_rows

    return apply_stages(erasure.tail, normalize_rows(out.astype(np.float64))).astype(np.float32)


def with_tail_nodes(model, erasure: "Erasure | None"):
    """``model`` (an ``onnx.ModelProto``) with ``erasure``'s tail appended as graph nodes."""
    if erasure is None or not erasure.tail:
        return model
    from facekd.encoders.tail_onnx import append_tail

    return append_tail(model, erasure.tail)


def _tail_arrays_bytes(erasure: "Erasure") -> bytes:
    """The tail's arrays in a fixed order (timestamps and versions excluded), for fingerprints."""
    parts = []
    for i, stage in enumerate(erasure.tail):
        for key, arr in sorted(stage.arrays(f"{i}_").items()):
            parts.append(key.encode() + np.ascontiguousarray(arr, np.float64).tobytes())
    return b"".join(parts)


def compose_for_fold(previous: "Erasure | None", erasure: "Erasure",
                     dim: int) -> tuple["Erasure", np.ndarray]:
    """``(composed erasure, (d, d) matrix to fold into weights that already carry previous)``.

    For encoders that fold into their *current* weights (not the original ones). Two ESC
    projectors compose to the projector off the union of their spans; that union contains the old
    span, so ``P_old @ P_union == P_union`` and folding ``P_union`` is exact whatever the new
    erasure was fitted on. A step involving ESC-T composes as a matrix product, so the new step's
    own matrix is the one to fold.
    """
    from facekd.core.erasure import Erasure

    if not isinstance(erasure, Erasure):
        raise EncoderError(f"expected a facekd Erasure, got {type(erasure).__name__}")
    if erasure.d != dim:
        raise EncoderError(f"erasure dimension {erasure.d} does not match the encoder's "
                           f"embedding dimension {dim}")
    if previous is None:
        return erasure, erasure.matrix()
    composed = previous.then(erasure)
    if previous.tail:
        # Linear steps after a gate live in the tail (Erasure.then): the weights stay as they are.
        return composed, np.eye(dim)
    linear = previous.then(erasure.linear_part())
    return composed, linear.matrix() if linear.method == "esc" else erasure.matrix()
