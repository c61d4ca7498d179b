"""An erasure's non-linear tail (:mod:`facekd.core.tail`) as ONNX nodes after an encoder's output.

The tail is appended after the graph's single output, which keeps its name, dtype and batch axis:
``normalise -> MatMul(all gates), Add, ReduceMax, Greater -> If(some row gated: [per gate:
MatMul, Add, Clip, ReduceMax, Greater, If((spared rows: MatMul, Sub, Relu, MatMul, Greater,
Where), MatMul, Add, Cos, MatMul, Add, normalise, blend,
normalise | Identity)] | else: Identity) -> output``. Every node is named ``facekd_tail/...`` so that an fp16 conversion can keep
the tail in float32 (:data:`TAIL_PREFIX`): the gate then opens exactly where the float64 reference
opens it, and a scrambled face stays a pseudo-random stranger.

Gates run in order, each on the previous gate's output, as :class:`facekd.core.tail.GateChain` does.
All gates are first evaluated on the chain's input in one ``(d, K)`` product; only a batch in which
some row opens some gate walks the gates one by one (an ``If``), and there each gate's scramble
runs only if it opens for some row (another ``If``). A batch of ordinary faces pays one
``(d, K)`` product (latency against the number of erasures is in docs/benchmarks.md).
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import numpy_helper

from facekd.core.tail import GateChain, LinearStage
from facekd.errors import EncoderError

__all__ = ["append_tail", "split_tail", "TAIL_PREFIX", "tail_node_names", "tail_inputs"]

TAIL_PREFIX = "facekd_tail/"


class _Builder:
    """Appends uniquely named ``facekd_tail/...`` nodes and float32 constants to one graph.

    Builders of ``If`` branches (:meth:`if_changed`) share the name set of the main graph's
    builder, so names stay unique across the whole model (ONNX scoping requires it)."""

    def __init__(self, graph, names: set[str] | None = None) -> None:
        self.g = graph
        if names is None:
            names = {n for node in graph.node for n in (*node.input, *node.output)}
            names |= {t.name for t in graph.initializer} | {i.name for i in graph.input}
        self.names = names

    def name(self, base: str) -> str:
        k = len(self.names)
        while f"{TAIL_PREFIX}{base}_{k}" in self.names:
            k += 1
        self.names.add(f"{TAIL_PREFIX}{base}_{k}")
        return f"{TAIL_PREFIX}{base}_{k}"

    def const(self, base: str, value: np.ndarray) -> str:
        name = self.name(base)
        self.g.initializer.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        out = out or self.name(op.lower())
        self.g.node.append(onnx.helper.make_node(op, inputs, [out], name=self.name(op), **attrs))
        return out

    def normalise(self, x: str, out: str | None = None) -> str:
        return self.node("LpNormalization", [x], out, axis=1, p=2)

    def any_positive(self, x: str, zero: str) -> str:
        """A scalar bool: some entry of ``x`` is > 0 (an ``If`` condition)."""
        return self.node("Greater", [self.node("ReduceMax", [x], keepdims=0), zero])

    def if_changed(self, cond: str, v: str, branch, out: str | None = None) -> str:
        """``If(cond, branch(builder) -> new value, else v)``; ``branch`` writes into a subgraph
        through the builder it is given and returns the name of its result."""
        def graph(body) -> "onnx.GraphProto":
            sub = onnx.helper.make_graph([], self.name("branch"), [], [])
            result = body(_Builder(sub, self.names))
            sub.output.append(onnx.helper.make_tensor_value_info(result, onnx.TensorProto.FLOAT,
                                                                 None))
            return sub

        return self.node("If", [cond], out, then_branch=graph(branch),
                         else_branch=graph(lambda sb: sb.node("Identity", [v])))


def _gate_chain(b: _Builder, v: str, chain, last_out: str | None) -> str:
    """All gates of the chain on the input in one ``(d, K)`` product; only a batch in which some
    row opens some gate runs the exact step-by-step chain (:func:`_gate_steps`), inside an
    ``If``. Rows no gate opens leave the chain unchanged whatever the order, so this is exact."""
    inv = 1.0 / (chain.s1 - chain.t0)
    w_all = b.const("gates_w", chain.weights * inv)                 # (d, K)
    c_all = b.const("gates_c", (chain.bias - chain.t0) * inv)       # (K,)
    scores = b.node("Add", [b.node("MatMul", [v, w_all]), c_all])
    opened = b.any_positive(scores, b.const("zero", np.array(0.0)))
    return b.if_changed(opened, v, lambda sb: _gate_steps(sb, v, chain), last_out)


def _gate_steps(b: _Builder, v: str, chain) -> str:
    """The chain step by step, each gate on the previous one's output: ``g = Clip(v w' + c)``,
    and an ``If`` runs the scramble only when some row of the batch is gated by this step."""
    sc = chain.scrambler
    omega_t = b.const("omega_t", sc.omega.T)          # (d, D)
    phase = b.const("phase", sc.phase)                # (D,)
    mix = b.const("mix", sc.mix)                      # (D, d)
    mean = b.const("mean", sc.mean)                   # (d,)
    zero, one = b.const("zero", np.array(0.0)), b.const("one", np.array(1.0))
    for i in range(chain.n_gates):
        inv = 1.0 / (chain.s1[i] - chain.t0[i])
        # g = clip((v . w + b - t0) / (s1 - t0), 0, 1), the affine folded into one MatMul + Add
        w = b.const("gate_w", (chain.weights[:, i] * inv)[:, None])
        c = b.const("gate_c", np.array([(chain.bias[i] - chain.t0[i]) * inv]))
        g = b.node("Clip", [b.node("Add", [b.node("MatMul", [v, w]), c]), zero, one])
        known = (b.const("known", chain.known[i].T), b.const("known_t", chain.known_t[i]),
                 b.const("ones", np.ones((chain.n_known, 1)))) if chain.n_known else None

        def scramble(sb: _Builder, v: str = v, g: str = g, known=known) -> str:
            if known is not None:
                # Only where this gate opens on some row: a row is spared when its cosine to one
                # of the step's enrolled mean faces is above its known_t (any of (n, M) positive,
                # as a sum of ReLUs: no opset-dependent ReduceMax axes).
                over = sb.node("Relu", [sb.node("Sub", [sb.node("MatMul", [v, known[0]]),
                                                        known[1]])])
                spared = sb.node("Greater", [sb.node("MatMul", [over, known[2]]), zero])
                g = sb.node("Where", [spared, zero, g])
            u = sb.node("Cos", [sb.node("Add", [sb.node("MatMul", [v, omega_t]), phase])])
            t = sb.normalise(sb.node("Add", [sb.node("MatMul", [u, mix]), mean]))
            return sb.normalise(sb.node("Add", [v, sb.node("Mul", [g, sb.node("Sub", [t, v])])]))

        v = b.if_changed(b.any_positive(g, zero), v, scramble)
    return v


def append_tail(model: "onnx.ModelProto", stages: list) -> "onnx.ModelProto":
    """Append ``stages`` (a :class:`facekd.core.tail` stage list) after ``model``'s only output, in place.

    The output keeps its name; its values become unit vectors (the tail normalises).
    """
    graph = model.graph
    if len(graph.output) != 1:
        raise EncoderError(f"the graph has {len(graph.output)} outputs; a tail needs exactly one")
    if not stages:
        return model
    out = graph.output[0]
    elem = out.type.tensor_type.elem_type
    if elem != onnx.TensorProto.FLOAT:
        raise EncoderError("a gated tail needs a float32 embedding output (export fp32, then "
                           "convert to fp16 keeping the tail in float32)")
    b = _Builder(graph)
    pre = b.name("pre_tail")
    for node in graph.node:  # the producer now writes to `pre`; the tail writes the output
        node.output[:] = [pre if o == out.name else o for o in node.output]
    v = b.normalise(pre)
    for k, stage in enumerate(stages):
        last_out = out.name if k == len(stages) - 1 else None
        if isinstance(stage, GateChain):
            v = _gate_chain(b, v, stage, last_out)
        elif isinstance(stage, LinearStage):
            v = b.normalise(b.node("MatMul", [v, b.const("linear", stage.matrix)]), last_out)
        else:
            raise EncoderError(f"unknown tail stage {type(stage).__name__}")
    return model


def split_tail(model: "onnx.ModelProto"):
    """``(body, reattach)``: a copy of ``model`` without its tail (output = the tail's input), and
    a function that puts the original tail back onto a (converted) body. Without a tail,
    ``body`` is ``model`` and ``reattach`` returns its argument."""
    graph = model.graph
    tail = [n for n in graph.node if n.name.startswith(TAIL_PREFIX)]
    if not tail:
        return model, lambda m: m
    pre = tail[0].input[0]  # the first tail node normalises the body's raw output
    used = tail_inputs(model)
    body = copy.deepcopy(model)
    keep = [n for n in body.graph.node if not n.name.startswith(TAIL_PREFIX)]
    del body.graph.node[:]
    body.graph.node.extend(keep)
    body_needs = {i for n in keep for i in n.input}
    inits = [t for t in body.graph.initializer if not (t.name in used and t.name not in body_needs)]
    del body.graph.initializer[:]
    body.graph.initializer.extend(inits)
    out = body.graph.output[0]
    final = out.name
    out.name = pre
    tail_inits = [copy.deepcopy(t) for t in graph.initializer
                  if t.name in used and t.name not in body_needs]

    def reattach(converted: "onnx.ModelProto") -> "onnx.ModelProto":
        converted.graph.node.extend(copy.deepcopy(tail))
        converted.graph.initializer.extend(tail_inits)
        converted.graph.output[0].name = final
        return converted

    return body, reattach


def _nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g is not None and attr.g.node:
                yield from _nodes(attr.g)


def tail_node_names(model: "onnx.ModelProto") -> list[str]:
    """Names of the tail's nodes, subgraphs included (for an fp16 converter's block list)."""
    return [n.name for n in _nodes(model.graph) if n.name.startswith(TAIL_PREFIX)]


def tail_inputs(model: "onnx.ModelProto") -> set[str]:
    """Every tensor name the tail's nodes read (subgraphs included)."""
    return {i for n in _nodes(model.graph) if n.name.startswith(TAIL_PREFIX) for i in n.input}
