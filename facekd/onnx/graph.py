"""ONNX graph surgery: small functions over an ``onnx.ModelProto`` / ``GraphProto``.

What the ONNX encoder (:mod:`facekd.encoders.onnx_model`), the exporter (:mod:`facekd.encoders.onnx_export`)
and the pre-processing head (:mod:`facekd.encoders.onnx_head`) share: reading a graph's shapes and
constants, folding an erasure map ``A`` ``(d, d)`` into the final ``Gemm`` / ``MatMul`` (``+ Add``,
``+ BatchNormalization``) or appending a ``MatMul``, pruning what the edit left unused, ordering
nodes, metadata and atomic writes. The functions edit the graph they are given in place and hold no
state; they import nothing from the project but :mod:`facekd.errors` and :mod:`facekd.fileio`.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from facekd.errors import EncoderError
from facekd.fileio import write_atomic

__all__ = ["METADATA_KEY", "ERASURE_METADATA_KEY", "FLOAT_TYPES", "tensor_dims", "graph_inputs",
           "output_dim", "constant_value", "has_preprocessing_head", "fold_matrix", "fold_plan",
           "append_matmul", "fresh_name", "prune", "toposort", "set_metadata", "write_model"]

#: metadata_props key under which facekd records the input contract (JSON of InputSpec.to_dict()).
METADATA_KEY = "facekd.input_spec"
#: metadata_props key of an edited model's erasure summary (its size, never its directions).
ERASURE_METADATA_KEY = "facekd.erasure"
FLOAT_TYPES = {1: np.float32, 10: np.float16, 11: np.float64}  # onnx TensorProto elem types
HEAD_NODES = 8  # insightface inspects the first 8 nodes for a Sub/Mul pre-processing head


# ---------------------------------------------------------------------------- reading a graph
def tensor_dims(value_info: Any) -> list[int | str | None]:
    """Shape of a graph input/output: ints for static dims, names/None for dynamic ones."""
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


def graph_inputs(graph: Any) -> list:
    """Real inputs: older exporters (MXNet, IR < 4) also list every initialiser as an input."""
    inits = {t.name for t in graph.initializer}
    return [v for v in graph.input if v.name not in inits]


def output_dim(model: "onnx.ModelProto") -> int | None:
    """The declared width ``d`` of the only output ``(N, d)``, or ``None``."""
    shape = tensor_dims(model.graph.output[0]) if len(model.graph.output) == 1 else []
    return shape[-1] if shape and isinstance(shape[-1], int) and shape[-1] > 0 else None


def constant_value(graph: Any, name: str) -> np.ndarray | None:
    """Value of a tensor that is an initialiser, a Constant node's output, or an Identity of one."""
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
                return constant_value(graph, node.input[0])
            return None
    return None


def has_preprocessing_head(graph: Any) -> bool:
    """True when the graph's first nodes already turn raw pixels into normalised input.

    insightface's rule (names of the first 8 nodes starting with Sub/_minus and Mul/_mul), plus the
    structural version of it: a Sub and a Mul/Div with constant operands applied to the input.
    """
    names = [n.name for n in graph.node[:HEAD_NODES]]
    if (any(s.startswith(("Sub", "_minus")) for s in names)
            and any(s.startswith(("Mul", "_mul")) for s in names)):
        return True
    inputs = graph_inputs(graph)
    if not inputs:
        return False
    current, ops = inputs[0].name, set()
    for node in graph.node[:HEAD_NODES]:
        if current in node.input and node.op_type in ("Sub", "Add", "Mul", "Div"):
            other = [i for i in node.input if i != current]
            if other and constant_value(graph, other[0]) is not None:
                ops.add(node.op_type)
                current = node.output[0]
    return bool(ops & {"Sub", "Add"}) and bool(ops & {"Mul", "Div"})


def producer(graph: Any, tensor: str) -> Any:
    """The node that writes ``tensor``, or ``None`` (a graph input or initialiser)."""
    return next((node for node in graph.node if tensor in node.output), None)


def only_feeds(graph: Any, tensor: str, node: Any) -> bool:
    """``tensor`` goes to ``node`` and nowhere else (so changing it changes nothing else)."""
    users = [n for n in graph.node if tensor in n.input]
    return (len(users) == 1 and users[0] is node
            and not any(o.name == tensor for o in graph.output))


# ---------------------------------------------------------------------------- editing a graph
def fresh_name(graph: Any, base: str) -> str:
    """``base_facekd`` (or ``base_facekdN``): a tensor name not yet used in ``graph``."""
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    taken |= {v.name for v in graph.input}
    name, i = f"{base}_facekd", 0
    while name in taken:
        i += 1
        name = f"{base}_facekd{i}"
    return name


def set_input(graph: Any, node: Any, index: int, value: np.ndarray, dtype: Any) -> None:
    """Feed ``value`` (cast to ``dtype``) to ``node.input[index]`` as a new initialiser."""
    while len(node.input) <= index:  # optional inputs (a Gemm's bias C) may be absent
        node.input.append("")
    name = fresh_name(graph, node.input[index] or f"{node.name or node.op_type}_in{index}")
    graph.initializer.append(numpy_helper.from_array(np.asarray(value).astype(dtype), name))
    node.input[index] = name


def prune(graph: Any) -> None:
    """Drop initialisers and Constant/Identity nodes nothing uses any more.

    This matters for privacy, not only size: the replaced final weights would otherwise stay
    in the file, and original vs edited weights reveal the erased directions.
    """
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node
                if n.op_type in ("Constant", "Identity") and not set(n.output) & used]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    removed = {t.name for t in graph.initializer if t.name not in used}
    for t in [t for t in graph.initializer if t.name in removed]:
        graph.initializer.remove(t)
    for v in [v for v in graph.input if v.name in removed]:  # IR < 4 lists them as inputs
        graph.input.remove(v)


def affine_of_linear(graph: Any, node: Any) -> tuple[np.ndarray, np.ndarray, Any] | None:
    """``(W, b, dtype)`` with ``node(x) == x @ W + b`` for a constant Gemm/MatMul/MatMul+Add.

    ``W`` is ``(d_in, d)`` float64 and ``b`` ``(d,)`` float64; ``None`` if ``node`` is not such a layer.
    """
    if node.op_type == "Gemm":
        attrs = {a.name: a for a in node.attribute}
        w = constant_value(graph, node.input[1])
        if w is None or w.ndim != 2 or w.dtype.kind != "f":
            return None
        alpha = attrs["alpha"].f if "alpha" in attrs else 1.0
        beta = attrs["beta"].f if "beta" in attrs else 1.0
        trans_b = attrs["transB"].i if "transB" in attrs else 0
        w64 = (w.T if trans_b else w).astype(np.float64) * alpha
        d = w64.shape[1]
        b = np.zeros(d)
        if len(node.input) > 2 and node.input[2]:
            c = constant_value(graph, node.input[2])
            if c is None or c.size not in (1, d):
                return None  # a batch-shaped or computed bias cannot be folded
            b = np.broadcast_to(c.astype(np.float64).reshape(-1), (d,)) * beta
        return w64, b, w.dtype
    if node.op_type == "MatMul":
        w = constant_value(graph, node.input[1])
        if w is None or w.ndim != 2 or w.dtype.kind != "f":
            return None
        return w.astype(np.float64), np.zeros(w.shape[1]), w.dtype
    return None


def rewrite_gemm(graph: Any, node: Any, w: np.ndarray, b: np.ndarray, dtype: Any) -> None:
    """Make the Gemm ``node`` compute ``x @ w + b`` (same name, input, output, transA/transB)."""
    attrs = {a.name: a for a in node.attribute}
    trans_b = attrs["transB"].i if "transB" in attrs else 0
    for name in ("alpha", "beta"):  # alpha and beta are folded into the new tensors
        if name in attrs:
            node.attribute.remove(attrs[name])
    node.attribute.extend([onnx.helper.make_attribute("alpha", 1.0),
                           onnx.helper.make_attribute("beta", 1.0)])
    set_input(graph, node, 1, w.T if trans_b else w, dtype)
    set_input(graph, node, 2, b, dtype)


def _trailing_batchnorm(graph: Any, last: Any, d: int) -> tuple[Any, np.ndarray, np.ndarray] | None:
    """``(bn node, scale (d,), shift (d,))`` when the output is a BatchNormalization over ``(N, d)``
    with constant parameters fed by a node nothing else reads: ``y = z * scale + shift``."""
    if last is None or last.op_type != "BatchNormalization" or len(last.output) != 1:
        return None
    params = [constant_value(graph, i) for i in last.input[1:5]]
    if not (all(p is not None and p.shape == (d,) for p in params)
            and producer(graph, last.input[0]) is not None
            and only_feeds(graph, last.input[0], last)):
        return None
    gamma, beta, mean, var = (p.astype(np.float64) for p in params)
    eps = next((x.f for x in last.attribute if x.name == "epsilon"), 1e-5)
    scale = gamma / np.sqrt(var + eps)
    return last, scale, beta - mean * scale


def _bias_add(graph: Any, layer: Any, d: int) -> tuple[tuple[Any, int, np.ndarray], Any] | None:
    """``((add node, bias input index, bias), matmul)`` for a ``MatMul + Add(constant bias)``."""
    if layer is None or layer.op_type != "Add":
        return None
    for k, name in enumerate(layer.input):
        src = producer(graph, name)
        other = constant_value(graph, layer.input[1 - k])
        if src is not None and src.op_type == "MatMul" and other is not None \
                and other.size == d and only_feeds(graph, name, layer):
            return (layer, 1 - k, other), src
    return None


def fold_matrix(model: "onnx.ModelProto", a: np.ndarray, *, dry_run: bool = False) -> str:
    """Fold ``y -> y @ a`` (``a`` ``(d, d)``) into ``model`` in place; return the kind of edit
    (``"gemm"``, ``"matmul+add+batchnorm"``, ... or ``"appended-matmul"``). ``dry_run`` only
    reads."""
    graph = model.graph
    out = graph.output[0].name
    last = producer(graph, out)
    d = a.shape[0]
    bn = _trailing_batchnorm(graph, last, d)
    bn_scale, bn_shift = (bn[1], bn[2]) if bn is not None else (np.ones(d), np.zeros(d))
    layer = producer(graph, last.input[0]) if bn is not None else last
    found = _bias_add(graph, layer, d)
    bias_add, layer = found if found is not None else (None, layer)
    affine = affine_of_linear(graph, layer) if layer is not None else None
    if affine is not None and affine[0].shape[1] != d:
        affine = None

    if affine is None:
        if not dry_run:
            append_matmul(graph, out, a, FLOAT_TYPES.get(graph.output[0].type.tensor_type.elem_type,
                                                         np.float32))
        return "appended-matmul"

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
        rewrite_gemm(graph, layer, w_new, b_new, dtype)
        shift = np.zeros(d)
    else:
        set_input(graph, layer, 1, w_new, dtype)
        if bias_add is not None:
            set_input(graph, bias_add[0], bias_add[1], b_new.reshape(bias_add[2].shape),
                      bias_add[2].dtype)
            shift = np.zeros(d)
        else:
            shift = b_new  # a bare MatMul has no bias: the BN (if any) carries the shift
    if bn is not None:
        # The BN becomes y = x + shift: scale 1, mean 0, var + eps == 1.
        node = bn[0]
        eps = next((x.f for x in node.attribute if x.name == "epsilon"), 1e-5)
        bdt = constant_value(graph, node.input[1]).dtype
        set_input(graph, node, 1, np.ones(d), bdt)
        set_input(graph, node, 2, shift, bdt)
        set_input(graph, node, 3, np.zeros(d), bdt)
        set_input(graph, node, 4, np.full(d, 1.0 - eps), bdt)
    prune(graph)
    return kind


def fold_plan(model: "onnx.ModelProto", dim: int | None = None) -> str:
    """How :func:`fold_matrix` would edit ``model`` (embedding width ``dim``, default the declared
    output width): ``"gemm+batchnorm"``, ``"gemm"``, ``"matmul+add"``, ``"matmul"``,
    ``"matmul+batchnorm"``... (folded) or ``"appended-matmul"``."""
    d = dim or output_dim(model)
    if d is None:
        raise EncoderError("the model does not declare its output width; pass dim")
    return fold_matrix(model, np.eye(d), dry_run=True)  # a dry run reads, never writes


def append_matmul(graph: Any, out: str, a: np.ndarray, dtype: Any) -> None:
    """``out <- out @ a`` as one new ``MatMul`` node before the output (the output keeps its name)."""
    pre = fresh_name(graph, f"{out}_pre_erasure")
    for node in graph.node:  # rename the output tensor where it is produced and consumed
        for i, name in enumerate(node.output):
            if name == out:
                node.output[i] = pre
        for i, name in enumerate(node.input):
            if name == out:
                node.input[i] = pre
    mat = fresh_name(graph, "erasure_matrix")
    graph.initializer.append(numpy_helper.from_array(a.astype(dtype), mat))
    graph.node.append(onnx.helper.make_node("MatMul", [pre, mat], [out], name="facekd_erasure"))


def _needed(node: Any) -> set[str]:
    """A node's inputs plus the outer-scope names its subgraphs (If/Loop bodies) read."""
    names = set(node.input)
    for attr in node.attribute:
        if attr.g is not None and attr.g.node:
            made = {o for n in attr.g.node for o in n.output} | {t.name for t in attr.g.initializer}
            names |= {i for n in attr.g.node for i in _needed(n)} - made
    return names


def toposort(graph: Any) -> None:
    """Reorder nodes topologically in place (the fp16 converter appends its input Casts last,
    which onnxruntime tolerates but onnx.checker and stricter consumers reject)."""
    ready = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    needs = {id(n): _needed(n) for n in pending}
    while pending:
        still = [n for n in pending if not needs[id(n)] <= ready]
        done = [n for n in pending if needs[id(n)] <= ready]
        if not done:  # a cycle or a dangling input: leave the rest as it was for the checker
            ordered += still
            break
        for n in done:
            ready.update(n.output)
        ordered += done
        pending = still
    nodes = [copy.deepcopy(n) for n in ordered]
    del graph.node[:]
    graph.node.extend(nodes)


# ---------------------------------------------------------------------------- metadata and files
def set_metadata(model: "onnx.ModelProto", key: str, value: str) -> None:
    """Set ``metadata_props[key] = value`` in place (replacing an existing entry)."""
    for p in model.metadata_props:
        if p.key == key:
            p.value = value
            return
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value


def write_model(model: "onnx.ModelProto", path: str | os.PathLike) -> Path:
    """Serialise ``model`` to ``path`` atomically (temp file + fsync + os.replace)."""
    try:
        data = model.SerializeToString()
    except ValueError as exc:  # > 2 GB protos need external data, which a single file cannot hold
        raise EncoderError(f"model too large for a single ONNX file: {exc}") from None
    return write_atomic(Path(path), data)
