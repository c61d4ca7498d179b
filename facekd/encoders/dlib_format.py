"""A pure Python/NumPy reader for dlib's DNN ``.dat`` serialisation (``dlib/serialize.h``).

It reads the stream a ``loss<add_layer<...<input>>>`` network writes: the primitives, the nesting
grammar and the per-layer records that dlib's face-recognition ResNet uses (and the newer record
versions a re-saved file may hold). It does **not** know any topology: tag/skip wrappers are
written without ids, so :mod:`facekd.encoders.dlib_resnet` matches the layer list against the
hard-coded network type. Every error names the byte offset where reading failed.

Format reference: ``docs/dlib-format.md`` sections 1-3 (shared docs of the project).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facekd.errors import EncoderError

__all__ = ["DlibFormatError", "DatReader", "Layer", "DlibNetFile", "parse_dat"]

# float_details exponents that encode the special values (dlib float_details.h)
_EXP_INF, _EXP_NINF, _EXP_NAN = 32000, 32001, 32002


class DlibFormatError(EncoderError):
    """The bytes are not a dlib DNN file this reader understands; ``offset`` says where."""

    def __init__(self, message: str, offset: int):
        super().__init__(f"{message} (at byte offset {offset})")
        self.offset = offset


class DatReader:
    """Cursor over a bytes buffer that decodes dlib's primitive encodings (all little-endian)."""

    def __init__(self, data: bytes, offset: int = 0):
        self.data = memoryview(data)
        self.pos = offset

    # ------------------------------------------------------------------ raw
    def _take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise DlibFormatError(f"truncated file: {what} needs {n} byte(s), "
                                  f"{len(self.data) - self.pos} left", self.pos)
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    @property
    def at_eof(self) -> bool:
        return self.pos == len(self.data)

    # ------------------------------------------------------------------ integers
    def int(self, nbytes: int = 8, what: str = "signed int") -> int:
        """Signed int: control byte ``C`` (``C & 0x0F`` magnitude bytes, ``0x80`` = negative)."""
        start = self.pos
        c = self._take(1, what)[0]
        n = c & 0x0F
        if c & 0x70 or n == 0 or n > nbytes:
            raise DlibFormatError(f"bad control byte 0x{c:02x} for a {nbytes}-byte {what}", start)
        value = int.from_bytes(self._take(n, what), "little")
        return -value if c & 0x80 else value

    def uint(self, nbytes: int = 8, what: str = "unsigned int") -> int:
        """Unsigned int: control byte gives the byte count (``C & 0x8F``), then the bytes."""
        start = self.pos
        c = self._take(1, what)[0]
        n = c & 0x8F
        if n == 0 or n > nbytes:
            raise DlibFormatError(f"bad control byte 0x{c:02x} for a {nbytes}-byte {what}", start)
        return int.from_bytes(self._take(n, what), "little")

    def bool(self, what: str = "bool") -> bool:
        """dlib writes bools as the ASCII characters '0' / '1'."""
        start = self.pos
        b = self._take(1, what)[0]
        if b not in (0x30, 0x31):
            raise DlibFormatError(f"bad {what} byte 0x{b:02x} (expected ASCII '0' or '1')", start)
        return b == 0x31

    def string(self, what: str = "string") -> str:
        n = self.uint(what=f"{what} length")
        return bytes(self._take(n, what)).decode("latin-1")

    def float(self, what: str = "float") -> float:
        """Scalar float/double as ``float_details``: int64 mantissa, int16 exponent."""
        start = self.pos
        if self.pos < len(self.data) and self.data[self.pos] & 0x70:
            raise DlibFormatError(f"{what} uses dlib's legacy ASCII float encoding, "
                                  "which this reader does not support", start)
        mantissa = self.int(8, f"{what} mantissa")
        exponent = self.int(2, f"{what} exponent")
        if exponent == _EXP_INF:
            return math.inf
        if exponent == _EXP_NINF:
            return -math.inf
        if exponent == _EXP_NAN:
            return math.nan
        try:
            return math.ldexp(float(mantissa), exponent)
        except OverflowError:
            raise DlibFormatError(f"{what} out of range ({mantissa}*2**{exponent})",
                                  start) from None

    # ------------------------------------------------------------------ tensors
    def _versioned_shape(self, what: str, expected: int) -> tuple[int, int, int, int]:
        """A version int (must be ``expected``) then the 4-int shape ``n, k, nr, nc``."""
        start = self.pos
        version = self.int(what=f"{what} version")
        if version != expected:
            raise DlibFormatError(f"unsupported {what} version {version} (expected {expected})",
                                  start)
        shape = tuple(self.int(what=f"{what} dimension") for _ in range(4))
        if min(shape) < 0:
            raise DlibFormatError(f"negative {what} shape {shape}", start)
        return shape  # type: ignore[return-value]

    def tensor(self, what: str = "tensor") -> np.ndarray:
        """``resizable_tensor``: version 2, ``n, k, nr, nc``, then raw float32 LE values."""
        shape = self._versioned_shape(what, 2)
        count = math.prod(shape)
        raw = self._take(4 * count, f"{what} data ({shape})")
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def alias(self, what: str = "alias_tensor") -> tuple[int, int, int, int]:
        """``alias_tensor``: version 1 then a shape (no data)."""
        return self._versioned_shape(what, 1)

    def peek_string(self) -> str | None:
        """The next string if one can be read here, without moving (used to spot input layers)."""
        pos = self.pos
        try:
            return self.string()
        except DlibFormatError:
            return None
        finally:
            self.pos = pos


@dataclass
class Layer:
    """One entry of the forward layer list.

    ``kind`` is one of ``con``, ``affine``, ``relu``, ``max_pool``, ``avg_pool``, ``add_prev``,
    ``fc`` or ``wrapper`` (a tag/skip layer: no payload, no id). ``record`` is the version string
    as stored; ``params`` the decoded hyper-parameters and float32 weight arrays.
    """

    kind: str
    record: str
    offset: int
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class DlibNetFile:
    """A parsed file: the loss and input records and the layers in forward (input->output) order."""

    loss: dict[str, Any]
    input: dict[str, Any]
    layers: list[Layer]
    size: int

    @property
    def num_floats(self) -> int:
        """Stored weight values (training-state tensors excluded)."""
        return sum(int(v.size) for layer in self.layers for v in layer.params.values()
                   if isinstance(v, np.ndarray))


# ---------------------------------------------------------------------- records
def _read_multipliers(r: DatReader) -> None:
    for name in ("lr_mult", "wd_mult", "bias_lr_mult", "bias_wd_mult"):
        r.float(name)


def _split_params(params: np.ndarray, first: tuple[int, ...], second: tuple[int, ...],
                  what: str, offset: int) -> tuple[np.ndarray, np.ndarray]:
    flat = params.reshape(-1)
    n1, n2 = math.prod(first), math.prod(second)
    if flat.size != n1 + n2:
        raise DlibFormatError(f"{what}: params hold {flat.size} values, aliases need {n1}+{n2}",
                              offset)
    return flat[:n1].reshape(first), flat[n1:].reshape(second)


def _con(r: DatReader, record: str, offset: int) -> Layer:
    params = r.tensor("con params")
    num_filters, nr, nc, sy, sx, py, px = (r.int(what="con field") for _ in range(7))
    filters_shape = r.alias("con filters")
    biases_shape = r.alias("con biases")
    _read_multipliers(r)
    use_bias = r.bool("con use_bias") if record in ("con_5", "con_6") else True
    use_relu = r.bool("con use_relu") if record == "con_6" else False
    if not use_bias:
        biases_shape = (0, 0, 0, 0)
    weight, bias = _split_params(params, filters_shape, biases_shape, record, offset)
    if filters_shape[0] != num_filters or filters_shape[2:] != (nr, nc):
        raise DlibFormatError(f"{record}: filters alias {filters_shape} disagrees with "
                              f"num_filters={num_filters}, kernel {nr}x{nc}", offset)
    bias = bias.reshape(-1) if use_bias else np.zeros(num_filters, np.float32)
    if bias.size != num_filters:
        raise DlibFormatError(f"{record}: {bias.size} biases for {num_filters} filters", offset)
    return Layer("con", record, offset, {
        "weight": weight, "bias": bias, "num_filters": num_filters, "kernel": (nr, nc),
        "stride": (sy, sx), "padding": (py, px), "use_relu": use_relu})


def _affine(r: DatReader, record: str, offset: int) -> Layer:
    params = r.tensor("affine params")
    gamma_shape, beta_shape = r.alias("affine gamma"), r.alias("affine beta")
    mode = r.int(what="affine mode")
    disabled = r.bool("affine disabled") if record == "affine_2" else False
    gamma, beta = _split_params(params, gamma_shape, beta_shape, record, offset)
    return Layer("affine", record, offset, {"gamma": gamma, "beta": beta, "mode": mode,
                                            "disabled": disabled})


def _batchnorm(r: DatReader, record: str, offset: int) -> Layer:
    """A saved training batch-norm; dlib turns it into an affine on load, and so do we."""
    params = r.tensor("bn params")
    gamma_shape, beta_shape = r.alias("bn gamma"), r.alias("bn beta")
    for name in ("means", "invstds"):
        r.tensor(f"bn {name}")
    running_mean = r.tensor("bn running_means").reshape(-1)
    running_var = r.tensor("bn running_variances").reshape(-1)
    r.uint(what="bn num_updates")
    r.uint(what="bn running_stats_window_size")
    _read_multipliers(r)
    eps = r.float("bn eps")
    gamma, beta = _split_params(params, gamma_shape, beta_shape, record, offset)
    g = gamma.reshape(-1).astype(np.float64) / np.sqrt(running_var.astype(np.float64) + eps)
    b = beta.reshape(-1) - g * running_mean
    return Layer("affine", record, offset, {
        "gamma": g.astype(np.float32).reshape(gamma.shape),
        "beta": b.astype(np.float32).reshape(beta.shape),
        "mode": 0 if record == "bn_con2" else 1, "disabled": False})


def _pool(kind: str):
    def read(r: DatReader, record: str, offset: int) -> Layer:
        nr, nc, sy, sx, py, px = (r.int(what=f"{kind} field") for _ in range(6))
        return Layer(kind, record, offset, {"kernel": (nr, nc), "stride": (sy, sx),
                                            "padding": (py, px)})
    return read


def _fc(r: DatReader, record: str, offset: int) -> Layer:
    num_outputs = r.uint(what="fc num_outputs")
    num_inputs = r.uint(what="fc num_inputs")
    params = r.tensor("fc params")
    weights_shape, biases_shape = r.alias("fc weights"), r.alias("fc biases")
    bias_mode = r.int(what="fc bias_mode")
    _read_multipliers(r)
    use_bias = r.bool("fc use_bias") if record == "fc_3" else bias_mode == 0
    weight, bias = _split_params(params, weights_shape, biases_shape if use_bias else (0, 0, 0, 0),
                                 record, offset)
    if weights_shape[:2] != (num_inputs, num_outputs):
        raise DlibFormatError(f"{record}: weights alias {weights_shape} disagrees with "
                              f"{num_inputs} inputs x {num_outputs} outputs", offset)
    # dlib stores (in, out) row-major and computes y = x @ W.
    weight = weight.reshape(num_inputs, num_outputs)
    return Layer("fc", record, offset, {"weight": weight,
                                        "bias": bias.reshape(-1) if use_bias else None,
                                        "num_inputs": num_inputs, "num_outputs": num_outputs})


def _relu(r: DatReader, record: str, offset: int) -> Layer:
    disabled = r.bool("relu disabled") if record == "relu_2" else False
    return Layer("relu", record, offset, {"disabled": disabled})


_LAYER_READERS = {
    "con_4": _con, "con_5": _con, "con_6": _con,
    "affine_": _affine, "affine_2": _affine,
    "bn_con2": _batchnorm, "bn_fc2": _batchnorm,
    "relu_": _relu, "relu_2": _relu,
    "max_pool_2": _pool("max_pool"), "avg_pool_2": _pool("avg_pool"),
    "add_prev_": lambda r, rec, off: Layer("add_prev", rec, off),
    "fc_2": _fc, "fc_3": _fc,
}


def _layer_details(r: DatReader) -> Layer:
    offset = r.pos
    record = r.string("layer version string")
    reader = _LAYER_READERS.get(record)
    if reader is None:
        raise DlibFormatError(f"unknown layer record {record!r}", offset)
    return reader(r, record, offset)


def _loss_details(r: DatReader) -> dict[str, Any]:
    offset = r.pos
    record = r.string("loss version string")
    if record == "loss_metric_2":
        return {"record": record, "margin": r.float("margin"),
                "dist_thresh": r.float("dist_thresh")}
    if record == "loss_metric_":
        return {"record": record, "margin": 0.1, "dist_thresh": 0.75}
    raise DlibFormatError(f"unknown loss record {record!r} (expected loss_metric_2)", offset)


def _input_details(r: DatReader) -> dict[str, Any]:
    offset = r.pos
    record = r.string("input version string")
    if record not in ("input_rgb_image_sized", "input_rgb_image"):
        raise DlibFormatError(f"unknown input record {record!r} "
                              "(expected input_rgb_image_sized)", offset)
    mean = tuple(r.float(f"avg_{c}") for c in ("red", "green", "blue"))
    out: dict[str, Any] = {"record": record, "mean": mean, "rows": None, "cols": None}
    if record == "input_rgb_image_sized":
        out["rows"], out["cols"] = r.uint(what="input rows"), r.uint(what="input cols")
    return out


def _trailer(r: DatReader, version: int, *, innermost: bool) -> None:
    """Skip the training state an add_layer writes after its details (section 2 of the spec)."""
    for name in ("setup_called", "gradient_input_is_stale",
                 "get_output_and_gradient_input_disabled"):
        r.bool(name)
    r.tensor("x_grad")
    r.tensor("cached_output")
    if innermost:
        r.tensor("grad_final")
        if version >= 3:
            r.uint(what="sample_expansion_factor")
    elif version == 2:
        r.tensor("params_grad")


# ---------------------------------------------------------------------- the stream
def parse_dat(data: bytes) -> DlibNetFile:
    """Parse a whole dlib DNN file; the file must end exactly after the last layer.

    Returns the layers in forward order: ``layers[0]`` is the layer on the input, wrappers (tag and
    skip layers) appear as ``Layer("wrapper", ...)`` placeholders where they sit.
    """
    r = DatReader(data)
    offset = r.pos
    loss_version = r.int(what="loss layer version")
    if loss_version != 1:
        raise DlibFormatError(f"unsupported add_loss_layer version {loss_version} (expected 1)",
                              offset)
    loss = _loss_details(r)

    # Wrapper versions arrive outermost first; 3 (or a 2 followed by an input record) ends them.
    stack: list[tuple[int, int]] = []
    while True:
        offset = r.pos
        version = r.int(what="layer wrapper version")
        if version not in (1, 2, 3):
            raise DlibFormatError(f"unknown layer wrapper version {version}", offset)
        stack.append((version, offset))
        if version == 3:
            break
        if version == 2 and (r.peek_string() or "").startswith("input_"):
            break
    inner_version = stack[-1][0]
    net_input = _input_details(r)
    layers = [_layer_details(r)]
    _trailer(r, inner_version, innermost=True)
    for version, offset in reversed(stack[:-1]):
        if version == 1:
            layers.append(Layer("wrapper", "tag/skip", offset))
        elif version == 2:
            layers.append(_layer_details(r))
            _trailer(r, version, innermost=False)
        else:
            raise DlibFormatError("input add_layer (version 3) found above the innermost layer",
                                  offset)
    if not r.at_eof:
        raise DlibFormatError(f"{len(data) - r.pos} unexpected trailing byte(s) after the network",
                              r.pos)
    return DlibNetFile(loss=loss, input=net_input, layers=layers, size=len(data))
