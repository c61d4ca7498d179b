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
output (the graph surgery is :func:`facekd.onnx.graph.fold_matrix`). Input/output names, dtypes and the batch axis are untouched, so the edited file drops into
the same serving code (insightface's model_zoo included: one output, no new nodes at the head).
The original final weights are removed from the edited graph, not left behind as dead tensors.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from facekd.encoders.base import (Encoder, InputSpec, compose_for_fold, erasure_summary,
                                  sha256_arrays)
from facekd.encoders.tail_onnx import append_tail
from facekd.errors import EncoderError
from facekd.onnx.graph import (ERASURE_METADATA_KEY, FLOAT_TYPES, METADATA_KEY, fold_matrix,
                               fold_plan, graph_inputs, has_preprocessing_head, output_dim,
                               set_metadata, tensor_dims, write_model)
from facekd.onnx.providers import select_providers

if TYPE_CHECKING:  # pragma: no cover
    from facekd.core.erasure import Erasure

log = logging.getLogger(__name__)

__all__ = ["OnnxEncoder", "load", "ARCFACE_SPEC", "METADATA_KEY", "fold_plan", "write_model",
           "set_metadata", "has_preprocessing_head"]

#: insightface's recognition contract (``ArcFaceONNX`` in insightface.model_zoo).
ARCFACE_SPEC = InputSpec(112, (127.5,) * 3, (127.5,) * 3, "RGB", alignment="arcface")


# ---------------------------------------------------------------------------- reading the file
def _read_model(source: "str | os.PathLike | onnx.ModelProto",
                ) -> "tuple[onnx.ModelProto, Path | None]":
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
    try:
        onnx.checker.check_model(str(path) if path is not None else model)
    except onnx.checker.ValidationError as exc:
        raise EncoderError(f"{where}: invalid ONNX model: {str(exc).splitlines()[0]}") from None
    except ValueError as exc:  # a > 2 GB in-memory proto cannot be serialised for the checker
        raise EncoderError(f"{where}: cannot check the model in memory ({exc})") from None


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


# ---------------------------------------------------------------------------- the encoder
class OnnxEncoder(Encoder):
    """An :class:`Encoder` running an ONNX model with onnxruntime.

    Args:
        path: the ``.onnx`` file (or an in-memory ``onnx.ModelProto``).
        input_spec: overrides everything the file says about size and normalisation.
        providers: onnxruntime execution providers; default :func:`facekd.encoders.onnx_export.select_providers`.

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
        inputs = graph_inputs(graph)
        if len(inputs) != 1:
            raise EncoderError(f"{where}: expected one image input, found {len(inputs)} "
                               f"({', '.join(v.name for v in inputs)})")
        if len(graph.output) != 1:
            raise EncoderError(f"{where}: expected one embedding output, found {len(graph.output)} "
                               f"({', '.join(v.name for v in graph.output)}); a face encoder has one")
        self.input_name, self.output_name = inputs[0].name, graph.output[0].name
        in_type = inputs[0].type.tensor_type.elem_type
        if in_type not in FLOAT_TYPES:
            raise EncoderError(f"{where}: input {self.input_name!r} must be a float tensor "
                               f"(got ONNX element type {in_type})")
        self._input_dtype = FLOAT_TYPES[in_type]
        dims = tensor_dims(inputs[0])
        if len(dims) != 4:
            raise EncoderError(f"{where}: input {self.input_name!r} has rank {len(dims)}; "
                               "expected (N, 3, H, W)")
        if isinstance(dims[1], int) and dims[1] != 3:
            raise EncoderError(f"{where}: input {self.input_name!r} has {dims[1]} channels in "
                               "axis 1; expected NCHW with 3 channels")
        out_dims = tensor_dims(graph.output[0])
        if out_dims and len(out_dims) != 2:
            raise EncoderError(f"{where}: output {self.output_name!r} has shape {out_dims}; "
                               "expected an (N, d) embedding")
        self._fixed_batch = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else None

        if input_spec is not None:
            self.input_spec, self.input_spec_source = input_spec, "given by the caller"
        else:
            self.input_spec, self.input_spec_source = self._infer_spec(model, dims, where)
            self.input_spec_guessed = self.input_spec_source.startswith("ArcFace default")
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
        self.dim = output_dim(model) or self._probe_dim(where)

    # -------------------------------------------------------------- contract inference
    @staticmethod
    def _infer_spec(model, dims, where: str) -> tuple[InputSpec, str]:
        """``(spec, where it came from)``: metadata, else a recognised head, else ArcFace's."""
        h, w = dims[2], dims[3]
        if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 and h != w:
            raise EncoderError(f"{where}: input is {h}x{w}; facekd feeds square chips")
        size = h if isinstance(h, int) and h > 0 else ARCFACE_SPEC.size
        base = InputSpec(size, ARCFACE_SPEC.mean, ARCFACE_SPEC.std, "RGB", alignment="arcface")
        source = "ArcFace default: the file has no input metadata and no recognised head"
        if has_preprocessing_head(model.graph):
            base = InputSpec(size, (0.0,) * 3, (1.0,) * 3, "RGB", alignment="arcface")
            source = "a recognised preprocessing head: Sub/Mul nodes take raw pixels"
        meta = _metadata_spec(model, base)
        if meta is None:
            return base, source
        keys = {p.key for p in model.metadata_props}
        return meta, "file metadata: " + (METADATA_KEY if METADATA_KEY in keys else
                                          "input_mean / input_std / channel_order keys")

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
            kind = fold_matrix(untailed, matrix)
        model = copy.deepcopy(untailed) if composed.tail else untailed
        if composed.tail:
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
        edited.input_spec_source, edited.input_spec_guessed = (self.input_spec_source,
                                                               self.input_spec_guessed)
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
            arrays = [numpy_helper.to_array(t) for t in self.model.graph.initializer]
            arrays += [numpy_helper.to_array(a.t) for n in self.model.graph.node
                       if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
            self._fingerprint = sha256_arrays(arrays)
        return self._fingerprint


def load(arg: str | None, **options) -> OnnxEncoder:
    """``load_encoder("onnx:PATH")``: options ``input_spec`` and ``providers`` as for OnnxEncoder."""
    if not arg:
        raise EncoderError("the onnx encoder needs a model path: 'onnx:/path/to/model.onnx'")
    unknown = set(options) - {"input_spec", "providers"}
    if unknown:
        raise EncoderError(f"unknown option(s) for the onnx encoder: {', '.join(sorted(unknown))}")
    return OnnxEncoder(arg, **options)
