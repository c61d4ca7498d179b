"""Any ONNX face encoder (insightface's ArcFace contract first), edited by graph surgery.

An ONNX encoder has one image input ``(N, 3, H, W)`` float and one embedding output ``(N, d)``.
What the input expects is decided, in this order of precedence:

1. an explicit :class:`InputSpec` passed by the caller;
2. the file's ``metadata_props`` (facekd's own ``facekd.input_spec`` JSON, or loose keys such as
   ``input_mean`` / ``input_std`` / ``channel_order`` / ``alignment``);
3. the graph: the input's static ``H``; a head that already subtracts and scales (MXNet-converted
   insightface models, recognised the way insightface's model_zoo does) takes raw pixels;
4. insightface's ArcFace defaults: 112x112, ``(x - 127.5) / 127.5``, RGB, alignment ``arcface``.

Editing (:meth:`OnnxEncoder.with_erasure`) folds the erasure map ``A`` ``(d, d)`` into the
initialisers of a final ``Gemm`` / ``MatMul`` (``+ Add``), through a trailing
``BatchNormalization`` when there is one; any other graph gets one ``MatMul`` appended before the
output. Input/output names, dtypes and the batch axis are untouched, so the edited file drops into
the same serving code (insightface's model_zoo included: one output, no new nodes at the head).
The original final weights are removed from the edited graph, not left behind as dead tensors.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from facekd.encoders.base import (Encoder, InputSpec, compose_for_fold, erasure_summary,
                                  sha256_arrays)
from facekd.errors import EncoderError
from facekd.fileio import write_atomic

if TYPE_CHECKING:  # pragma: no cover
    import onnx

    from facekd.erasure import Erasure

log = logging.getLogger(__name__)

__all__ = ["OnnxEncoder", "load", "ARCFACE_SPEC", "METADATA_KEY", "fold_plan", "write_model",
           "set_metadata", "has_preprocessing_head"]

#: insightface's recognition contract (``ArcFaceONNX`` in insightface.model_zoo).
ARCFACE_SPEC = InputSpec(112, (127.5,) * 3, (127.5,) * 3, "RGB", alignment="arcface")
#: metadata_props key under which facekd records the input contract (JSON of InputSpec.to_dict()).
METADATA_KEY = "facekd.input_spec"
ERASURE_METADATA_KEY = "facekd.erasure"
_FLOAT_TYPES = {1: np.float32, 10: np.float16, 11: np.float64}  # onnx TensorProto elem types
_HEAD_NODES = 8  # insightface inspects the first 8 nodes for a Sub/Mul pre-processing head


# ---------------------------------------------------------------------------- reading the file
def _read_model(source: "str | os.PathLike | onnx.ModelProto",
                ) -> "tuple[onnx.ModelProto, Path | None]":
    import onnx

    if isinstance(source, onnx.ModelProto):
        return source, None
    path = Path(source)
    if not path.is_file():
        raise EncoderError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError, missing external data, ...
        raise EncoderError(f"{path}: not an ONNX model ({type(exc).__name__}: {exc})") from None
    if not model.graph.node or model.ir_version == 0:
        # protobuf happily parses many byte strings (an empty file, say) as an empty ModelProto
        raise EncoderError(f"{path}: not an ONNX model (no graph)")
    return model, path


def _check(model: "onnx.ModelProto", where: str, path: Path | None = None) -> None:
    """onnx.checker on the file when there is one (C++ reads it, external data and > 2 GB
    included), else on the in-memory proto."""
    import onnx

    try:
        onnx.checker.check_model(str(path) if path is not None else model)
    except onnx.checker.ValidationError as exc:
        raise EncoderError(f"{where}: invalid ONNX model: {str(exc).splitlines()[0]}") from None
    except ValueError as exc:  # a > 2 GB in-memory proto cannot be serialised for the checker
        raise EncoderError(f"{where}: cannot check the model in memory ({exc})") from None


def _dims(value_info) -> list[int | str | None]:
    """Shape of a graph input/output: ints for static dims, names/None for dynamic ones."""
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


def _graph_inputs(graph) -> list:
    """Real inputs: older exporters (MXNet, IR < 4) also list every initialiser as an input."""
    inits = {t.name for t in graph.initializer}
    return [v for v in graph.input if v.name not in inits]


def _metadata_spec(model, base: InputSpec) -> InputSpec | None:
    """An InputSpec from ``metadata_props``, or ``None`` when the file says nothing usable."""
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY in props:
        try:
            d = json.loads(props[METADATA_KEY])
            return InputSpec(int(d["size"]), tuple(map(float, d["mean"])), tuple(map(float, d["std"])),
                             str(d.get("channel_order", "RGB")).upper(), str(d.get("alignment", "arcface")))
        except Exception as exc:
            raise EncoderError(f"unreadable {METADATA_KEY} metadata in the model: {exc}") from None

    def triple(*keys: str) -> tuple[float, float, float] | None:
        for key in keys:
            if key in props:
                try:
                    vals = [float(v) for v in props[key].replace("[", "").replace("]", "").split(",")]
                except ValueError:
                    raise EncoderError(f"model metadata {key}={props[key]!r} is not numeric") from None
                if len(vals) == 1:
                    vals *= 3
                if len(vals) != 3:
                    raise EncoderError(f"model metadata {key} needs 1 or 3 values, got {len(vals)}")
                return (vals[0], vals[1], vals[2])
        return None

    mean = triple("input_mean", "mean")
    std = triple("input_std", "std")
    order = next((props[k].upper() for k in ("channel_order", "color_order") if k in props), None)
    align = props.get("alignment")
    if mean is None and std is None and order is None and align is None:
        return None
    if order not in (None, "RGB", "BGR"):
        raise EncoderError(f"model metadata channel_order={order!r}; expected RGB or BGR")
    return InputSpec(base.size, mean or base.mean, std or base.std, order or base.channel_order,
                     align or base.alignment)


def _constant_value(graph, name: str) -> np.ndarray | None:
    """Value of a tensor that is an initialiser, a Constant node's output, or an Identity of one."""
    from onnx import numpy_helper

    for t in graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for node in graph.node:
        if name in node.output:
            if node.op_type == "Constant":
                for a in node.attribute:
                    if a.name == "value":
                        return numpy_helper.to_array(a.t)
                    if a.name in ("value_float", "value_floats"):
                        return np.asarray(a.f if a.name == "value_float" else list(a.floats), np.float32)
            if node.op_type == "Identity":
                return _constant_value(graph, node.input[0])
            return None
    return None


def has_preprocessing_head(graph) -> bool:
    """True when the graph's first nodes already turn raw pixels into normalised input.

    insightface's rule (names of the first 8 nodes starting with Sub/_minus and Mul/_mul), plus the
    structural version of it: a Sub and a Mul/Div with constant operands applied to the input.
    """
    names = [n.name for n in graph.node[:_HEAD_NODES]]
    if (any(s.startswith(("Sub", "_minus")) for s in names)
            and any(s.startswith(("Mul", "_mul")) for s in names)):
        return True
    inputs = _graph_inputs(graph)
    if not inputs:
        return False
    current, ops = inputs[0].name, set()
    for node in graph.node[:_HEAD_NODES]:
        if current in node.input and node.op_type in ("Sub", "Add", "Mul", "Div"):
            other = [i for i in node.input if i != current]
            if other and _constant_value(graph, other[0]) is not None:
                ops.add(node.op_type)
                current = node.output[0]
    return bool(ops & {"Sub", "Add"}) and bool(ops & {"Mul", "Div"})


# ---------------------------------------------------------------------------- graph surgery
class _Graph:
    """Small helpers over an ``onnx.GraphProto`` being edited in place."""

    def __init__(self, graph):
        self.g = graph

    def producer(self, tensor: str):
        for node in self.g.node:
            if tensor in node.output:
                return node
        return None

    def consumers(self, tensor: str) -> list:
        return [n for n in self.g.node if tensor in n.input]

    def is_graph_output(self, tensor: str) -> bool:
        return any(o.name == tensor for o in self.g.output)

    def only_feeds(self, tensor: str, node) -> bool:
        """``tensor`` goes to ``node`` and nowhere else (so changing it changes nothing else)."""
        users = self.consumers(tensor)
        return len(users) == 1 and users[0] is node and not self.is_graph_output(tensor)

    def const(self, name: str) -> np.ndarray | None:
        return _constant_value(self.g, name)

    def fresh_name(self, base: str) -> str:
        taken = {t.name for t in self.g.initializer} | {o for n in self.g.node for o in n.output}
        taken |= {v.name for v in self.g.input}
        name, i = f"{base}_facekd", 0
        while name in taken:
            i += 1
            name = f"{base}_facekd{i}"
        return name

    def set_input(self, node, index: int, value: np.ndarray, dtype) -> None:
        """Feed ``value`` (cast to ``dtype``) to ``node.input[index]`` as a new initialiser."""
        from onnx import numpy_helper

        while len(node.input) <= index:  # optional inputs (a Gemm's bias C) may be absent
            node.input.append("")
        name = self.fresh_name(node.input[index] or f"{node.name or node.op_type}_in{index}")
        self.g.initializer.append(numpy_helper.from_array(np.asarray(value).astype(dtype), name))
        node.input[index] = name

    def prune(self) -> None:
        """Drop initialisers and Constant/Identity nodes nothing uses any more.

        This matters for privacy, not only size: the replaced final weights would otherwise stay
        in the file, and original vs edited weights reveal the erased directions.
        """
        outputs = {o.name for o in self.g.output}
        while True:
            used = {i for n in self.g.node for i in n.input} | outputs
            dead = [n for n in self.g.node
                    if n.op_type in ("Constant", "Identity") and not set(n.output) & used]
            if not dead:
                break
            for n in dead:
                self.g.node.remove(n)
        removed = {t.name for t in self.g.initializer if t.name not in used}
        for t in [t for t in self.g.initializer if t.name in removed]:
            self.g.initializer.remove(t)
        for v in [v for v in self.g.input if v.name in removed]:  # IR < 4 lists them as inputs
            self.g.input.remove(v)


def _affine_of_linear(gr: _Graph, node) -> tuple[np.ndarray, np.ndarray, Any] | None:
    """``(W, b, dtype)`` with ``node(x) == x @ W + b`` for a constant Gemm/MatMul/MatMul+Add.

    ``W`` is ``(d_in, d)`` float64 and ``b`` ``(d,)`` float64; ``None`` if ``node`` is not such a layer.
    """
    if node.op_type == "Gemm":
        attrs = {a.name: a for a in node.attribute}
        w = gr.const(node.input[1])
        if w is None or w.ndim != 2 or w.dtype.kind != "f":
            return None
        alpha = attrs["alpha"].f if "alpha" in attrs else 1.0
        beta = attrs["beta"].f if "beta" in attrs else 1.0
        trans_b = attrs["transB"].i if "transB" in attrs else 0
        w64 = (w.T if trans_b else w).astype(np.float64) * alpha
        d = w64.shape[1]
        b = np.zeros(d)
        if len(node.input) > 2 and node.input[2]:
            c = gr.const(node.input[2])
            if c is None or c.size not in (1, d):
                return None  # a batch-shaped or computed bias cannot be folded
            b = np.broadcast_to(c.astype(np.float64).reshape(-1), (d,)) * beta
        return w64, b, w.dtype
    if node.op_type == "MatMul":
        w = gr.const(node.input[1])
        if w is None or w.ndim != 2 or w.dtype.kind != "f":
            return None
        return w.astype(np.float64), np.zeros(w.shape[1]), w.dtype
    return None


def _rewrite_gemm(gr: _Graph, node, w: np.ndarray, b: np.ndarray, dtype) -> None:
    """Make the Gemm ``node`` compute ``x @ w + b`` (same name, input, output, transA/transB)."""
    import onnx

    attrs = {a.name: a for a in node.attribute}
    trans_b = attrs["transB"].i if "transB" in attrs else 0
    for name in ("alpha", "beta"):  # alpha and beta are folded into the new tensors
        if name in attrs:
            node.attribute.remove(attrs[name])
    node.attribute.extend([onnx.helper.make_attribute("alpha", 1.0),
                           onnx.helper.make_attribute("beta", 1.0)])
    gr.set_input(node, 1, w.T if trans_b else w, dtype)
    gr.set_input(node, 2, b, dtype)


def fold_plan(model: "onnx.ModelProto", dim: int | None = None) -> str:
    """How :meth:`OnnxEncoder.with_erasure` would edit ``model`` (embedding width ``dim``, default
    the declared output width): ``"gemm+batchnorm"``, ``"gemm"``, ``"matmul+add"``, ``"matmul"``,
    ``"matmul+batchnorm"``... (folded) or ``"appended-matmul"``."""
    d = dim or _output_dim(model)
    if d is None:
        raise EncoderError("the model does not declare its output width; pass dim")
    return _edit(model, np.eye(d), dry_run=True)  # a dry run reads, never writes


def _output_dim(model) -> int | None:
    dims = _dims(model.graph.output[0]) if len(model.graph.output) == 1 else []
    return dims[-1] if dims and isinstance(dims[-1], int) and dims[-1] > 0 else None


def _edit(model: "onnx.ModelProto", a: np.ndarray, *, dry_run: bool = False) -> str:
    """Fold ``y -> y @ a`` into ``model`` in place; return the kind of edit made."""
    gr = _Graph(model.graph)
    out = model.graph.output[0].name
    last = gr.producer(out)
    d = a.shape[0]

    # Trailing BatchNormalization over (N, d): y = z * s + c, folded through into the layer below.
    bn_scale = np.ones(d)
    bn_shift = np.zeros(d)
    bn = None
    layer = last
    if last is not None and last.op_type == "BatchNormalization" and len(last.output) == 1:
        params = [gr.const(i) for i in last.input[1:5]]
        src = gr.producer(last.input[0])
        if all(p is not None and p.shape == (d,) for p in params) and src is not None \
                and gr.only_feeds(last.input[0], last):
            gamma, beta, mean, var = (p.astype(np.float64) for p in params)
            eps = next((x.f for x in last.attribute if x.name == "epsilon"), 1e-5)
            bn_scale = gamma / np.sqrt(var + eps)
            bn_shift = beta - mean * bn_scale
            bn, layer = last, src
    bias_add = None
    if layer is not None and layer.op_type == "Add":  # MatMul + Add(bias)
        for k, name in enumerate(layer.input):
            src = gr.producer(name)
            other = gr.const(layer.input[1 - k])
            if src is not None and src.op_type == "MatMul" and other is not None \
                    and other.size == d and gr.only_feeds(name, layer):
                bias_add, layer = (layer, 1 - k, other), src
                break
    affine = _affine_of_linear(gr, layer) if layer is not None else None
    if affine is not None and affine[0].shape[1] != d:
        affine = None

    if affine is None:
        kind = "appended-matmul"
        if dry_run:
            return kind
        _append_matmul(gr, out, a, _FLOAT_TYPES.get(model.graph.output[0].type.tensor_type.elem_type,
                                                    np.float32))
        return kind

    w, b, dtype = affine
    if bias_add is not None:
        b = b + bias_add[2].astype(np.float64).reshape(-1)
    kind = {"Gemm": "gemm", "MatMul": "matmul+add" if bias_add is not None else "matmul"}[layer.op_type]
    if bn is not None:
        kind += "+batchnorm"
    if dry_run:
        return kind
    # (x W + b) * s + c, then @ A  ==  x (W diag(s) A) + (b * s + c) A
    w_new = (w * bn_scale) @ a
    b_new = (b * bn_scale + bn_shift) @ a
    if layer.op_type == "Gemm":
        _rewrite_gemm(gr, layer, w_new, b_new, dtype)
        shift = np.zeros(d)
    else:
        gr.set_input(layer, 1, w_new, dtype)
        if bias_add is not None:
            gr.set_input(bias_add[0], bias_add[1], b_new.reshape(bias_add[2].shape), bias_add[2].dtype)
            shift = np.zeros(d)
        else:
            shift = b_new  # a bare MatMul has no bias: the BN (if any) carries the shift
    if bn is not None:
        # The BN becomes y = x + shift: scale 1, mean 0, var + eps == 1.
        eps = next((x.f for x in bn.attribute if x.name == "epsilon"), 1e-5)
        bdt = gr.const(bn.input[1]).dtype
        gr.set_input(bn, 1, np.ones(d), bdt)
        gr.set_input(bn, 2, shift, bdt)
        gr.set_input(bn, 3, np.zeros(d), bdt)
        gr.set_input(bn, 4, np.full(d, 1.0 - eps), bdt)
    gr.prune()
    return kind


def _append_matmul(gr: _Graph, out: str, a: np.ndarray, dtype) -> None:
    import onnx
    from onnx import numpy_helper

    pre = gr.fresh_name(f"{out}_pre_erasure")
    for node in gr.g.node:  # rename the output tensor where it is produced and consumed
        for i, name in enumerate(node.output):
            if name == out:
                node.output[i] = pre
        for i, name in enumerate(node.input):
            if name == out:
                node.input[i] = pre
    mat = gr.fresh_name("erasure_matrix")
    gr.g.initializer.append(numpy_helper.from_array(a.astype(dtype), mat))
    gr.g.node.append(onnx.helper.make_node("MatMul", [pre, mat], [out], name="facekd_erasure"))


# ---------------------------------------------------------------------------- the encoder
class OnnxEncoder(Encoder):
    """An :class:`Encoder` running an ONNX model with onnxruntime.

    Args:
        path: the ``.onnx`` file (or an in-memory ``onnx.ModelProto``).
        input_spec: overrides everything the file says about size and normalisation.
        providers: onnxruntime execution providers; default :func:`facekd.onnx_export.select_providers`.

    Raises:
        EncoderError: not an ONNX file, not exactly one input and one output, input not
            ``(N, 3, H, W)`` float, output not ``(N, d)``.
    """

    family = "onnx"

    def __init__(self, path: "str | os.PathLike | onnx.ModelProto", *,
                 input_spec: InputSpec | None = None, providers: Sequence[str] | None = None,
                 _checked: bool = False):
        model, self.path = _read_model(path)
        where = str(self.path) if self.path else "ONNX model"
        if not _checked:  # with_erasure checks its result itself
            _check(model, where, self.path)
        graph = model.graph
        inputs = _graph_inputs(graph)
        if len(inputs) != 1:
            raise EncoderError(f"{where}: expected one image input, found {len(inputs)} "
                               f"({', '.join(v.name for v in inputs)})")
        if len(graph.output) != 1:
            raise EncoderError(f"{where}: expected one embedding output, found {len(graph.output)} "
                               f"({', '.join(v.name for v in graph.output)}); a face encoder has one")
        self.input_name, self.output_name = inputs[0].name, graph.output[0].name
        in_type = inputs[0].type.tensor_type.elem_type
        if in_type not in _FLOAT_TYPES:
            raise EncoderError(f"{where}: input {self.input_name!r} must be a float tensor "
                               f"(got ONNX element type {in_type})")
        self._input_dtype = _FLOAT_TYPES[in_type]
        dims = _dims(inputs[0])
        if len(dims) != 4:
            raise EncoderError(f"{where}: input {self.input_name!r} has rank {len(dims)}; "
                               "expected (N, 3, H, W)")
        if isinstance(dims[1], int) and dims[1] != 3:
            raise EncoderError(f"{where}: input {self.input_name!r} has {dims[1]} channels in "
                               "axis 1; expected NCHW with 3 channels")
        out_dims = _dims(graph.output[0])
        if out_dims and len(out_dims) != 2:
            raise EncoderError(f"{where}: output {self.output_name!r} has shape {out_dims}; "
                               "expected an (N, d) embedding")
        self._fixed_batch = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else None

        self.input_spec = input_spec or self._infer_spec(model, dims, where)
        static = [x for x in dims[2:] if isinstance(x, int) and x > 0]
        if static and any(x != self.input_spec.size for x in static):
            raise EncoderError(f"{where}: input is {dims[2]}x{dims[3]} but the input spec says "
                               f"{self.input_spec.size}x{self.input_spec.size}")
        self.model = model
        self.providers = list(providers) if providers else None
        self.erasure = None
        self.surgery: str | None = None  # how the erasure was folded (see fold_plan)
        self._untailed = None  # with a gated tail: the graph before it (the linear part folded)
        self._session = None
        self._fingerprint: str | None = None
        self.dim = _output_dim(model) or self._probe_dim(where)

    # -------------------------------------------------------------- contract inference
    @staticmethod
    def _infer_spec(model, dims, where: str) -> InputSpec:
        h, w = dims[2], dims[3]
        if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 and h != w:
            raise EncoderError(f"{where}: input is {h}x{w}; facekd feeds square chips")
        size = h if isinstance(h, int) and h > 0 else ARCFACE_SPEC.size
        base = InputSpec(size, ARCFACE_SPEC.mean, ARCFACE_SPEC.std, "RGB", alignment="arcface")
        if has_preprocessing_head(model.graph):
            base = InputSpec(size, (0.0,) * 3, (1.0,) * 3, "RGB", alignment="arcface")
        return _metadata_spec(model, base) or base

    def _probe_dim(self, where: str) -> int:
        """Output width of a graph whose output shape is not declared: run one zero chip."""
        s = self.input_spec.size
        try:
            y = self._run(np.zeros((self._fixed_batch or 1, 3, s, s), np.float32))
        except EncoderError:
            raise
        except Exception as exc:
            raise EncoderError(f"{where}: the model does not run on a (1, 3, {s}, {s}) input: "
                               f"{str(exc).splitlines()[0]}") from None
        return int(y.shape[1])

    # -------------------------------------------------------------- inference
    @property
    def session(self):
        """The onnxruntime session (created on first use)."""
        if self._session is None:
            import onnxruntime as ort

            from facekd.onnx_export import select_providers

            providers = select_providers(prefer=self.providers)  # aliases, clear errors
            try:
                if self.path is not None and self.erasure is None:
                    self._session = ort.InferenceSession(str(self.path), providers=providers)
                else:
                    self._session = ort.InferenceSession(self.model.SerializeToString(),
                                                         providers=providers)
            except Exception as exc:
                raise EncoderError(f"onnxruntime cannot run this model: "
                                   f"{str(exc).splitlines()[0]}") from None
        return self._session

    @property
    def providers_used(self) -> list[str]:
        """Execution providers onnxruntime actually bound, best first (it can fall back to CPU)."""
        return list(self.session.get_providers())

    def _run(self, x: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        step = self._fixed_batch or n
        parts = []
        for start in range(0, n, step):
            chunk = x[start:start + step]
            if self._fixed_batch and len(chunk) < step:  # a static batch axis: pad the tail
                chunk = np.concatenate([chunk, np.zeros((step - len(chunk),) + chunk.shape[1:],
                                                        chunk.dtype)])
            y = self.session.run([self.output_name],
                                 {self.input_name: chunk.astype(self._input_dtype, copy=False)})[0]
            parts.append(y[:min(step, n - start)])
        y = np.concatenate(parts).astype(np.float32, copy=False)
        if y.ndim != 2:
            raise EncoderError(f"the model's output has shape {y.shape}; expected (N, d)")
        return y

    def _embed_batch(self, chips: np.ndarray) -> np.ndarray:
        return self._run(self.input_spec.to_tensor_array(chips))

    # -------------------------------------------------------------- editing and export
    def with_erasure(self, erasure: "Erasure") -> "OnnxEncoder":
        """A new in-memory encoder with ``erasure`` folded into the graph (see module docstring).

        ``normalize(edited.embed(x)) == erasure.apply(self.embed(x))``; on an encoder already
        edited, the new erasure is composed with the old one (``old.then(erasure)``).
        """
        composed, matrix = compose_for_fold(self.erasure, erasure, self.dim)
        # The linear part is folded into the graph as it was before any tail; the tail (gated
        # scramble) is rebuilt from the composed erasure each time, after the output.
        untailed = copy.deepcopy(self._untailed if self._untailed is not None else self.model)
        if np.array_equal(matrix, np.eye(self.dim)):
            kind = self.surgery or "none"
        else:
            kind = _edit(untailed, matrix)
        model = copy.deepcopy(untailed) if composed.tail else untailed
        if composed.tail:
            from facekd.encoders.tail_onnx import append_tail

            append_tail(model, composed.tail)
        set_metadata(model, ERASURE_METADATA_KEY, json.dumps(erasure_summary(composed, surgery=kind)))
        _check(model, "edited ONNX model")
        if kind == "appended-matmul":
            log.warning("the graph does not end in a foldable Gemm/MatMul (+BatchNormalization); "
                        "the erasure was appended as a separate MatMul node, which a model file "
                        "editor can strip, and whose matrix I - QQ^T reveals the erased "
                        "directions: ship the folded form where the architecture allows")
        edited = type(self)(model, input_spec=self.input_spec, providers=self.providers,
                             _checked=True)
        edited.erasure = composed
        edited._untailed = untailed if composed.tail else None
        edited.surgery = kind
        return edited

    def to_onnx(self, path: str | os.PathLike, *, opset: int = 17) -> Path:
        """Write the (edited) model to ``path`` atomically and return the path.

        The graph keeps its own opset (``opset`` is accepted for protocol compatibility; facekd
        does not convert opsets). ``facekd.input_spec`` metadata records the input contract.
        """
        # Metadata is not part of the fingerprint; setting it in place avoids copying the weights.
        for key, value in self.onnx_metadata().items():
            set_metadata(self.model, key, value)
        return write_model(self.model, path)

    def onnx_metadata(self) -> dict[str, str]:
        meta = super().onnx_metadata()
        if self.erasure is not None:  # how the edit was folded, as with_erasure recorded it
            meta[ERASURE_METADATA_KEY] = json.dumps(
                erasure_summary(self.erasure, surgery=self.surgery or "none"))
        return meta

    @property
    def fingerprint(self) -> str:
        """sha256 of the initialisers and Constant-node tensors, in graph order."""
        if self._fingerprint is None:
            from onnx import numpy_helper

            arrays = [numpy_helper.to_array(t) for t in self.model.graph.initializer]
            arrays += [numpy_helper.to_array(a.t) for n in self.model.graph.node
                       if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
            self._fingerprint = sha256_arrays(arrays)
        return self._fingerprint


def set_metadata(model, key: str, value: str) -> None:
    for p in model.metadata_props:
        if p.key == key:
            p.value = value
            return
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value


def write_model(model: "onnx.ModelProto", path: str | os.PathLike) -> Path:
    """Serialise ``model`` to ``path`` atomically (temp file + fsync + os.replace)."""
    path = Path(path)
    try:
        data = model.SerializeToString()
    except ValueError as exc:  # > 2 GB protos need external data, which a single file cannot hold
        raise EncoderError(f"model too large for a single ONNX file: {exc}") from None
    return write_atomic(path, data)


def load(arg: str | None, **options) -> OnnxEncoder:
    """``load_encoder("onnx:PATH")``: options ``input_spec`` and ``providers`` as for OnnxEncoder."""
    if not arg:
        raise EncoderError("the onnx encoder needs a model path: 'onnx:/path/to/model.onnx'")
    unknown = set(options) - {"input_spec", "providers"}
    if unknown:
        raise EncoderError(f"unknown option(s) for the onnx encoder: {', '.join(sorted(unknown))}")
    return OnnxEncoder(arg, **options)
