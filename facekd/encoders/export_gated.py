"""The export parity check where the edit acts: faces above each gate of a gated erasure.

Ordinary check chips open no gate, so they cannot tell whether an exported file scrambles the
erased person as the in-process encoder does. Chips that open a gate cannot be made, but the tail
is a function of the body's output alone, so it is checked on *embeddings* placed above every gate:

1. probes: for gate ``i`` with discriminant ``s(v) = v . w + b`` and hinge ``t0 < s1``, unit
   vectors at angle ``theta`` from ``w`` in random orthogonal directions, ``cos theta`` spread from
   where the gate starts to open to 1 (partly and fully open gates);
2. the exported file's tail (the ``facekd_tail/`` nodes, run alone by onnxruntime) against
   :func:`facekd.core.tail.apply_stages` on the probes: must agree as fp32 parity does (the tail is
   float32 in fp16 exports too);
3. the body's own error, measured on the check chips with both tails cut off (L2 distance of
   normalised outputs, worst chip; a gate would amplify it), added to the probes in random directions: how much the file's output for a gated face
   differs from the in-process edit. An fp16 body moves a gated face by ~1e-3, the scrambler's
   ``sigma`` ~ 200 turns that into another pseudo-random stranger: the report says so, with the
   share of outputs still below every gate (strangers to the edit, not the person back).
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import TensorProto, helper

from facekd.core.tail import GateChain, apply_stages, normalize_rows
from facekd.encoders.tail_onnx import split_tail

__all__ = ["gate_probes", "tail_only_model", "gated_parity", "body_error"]

PROBES_PER_GATE = 4
TRIALS = 4  # random body-error directions per probe


def gate_probes(stages: list, rng: np.random.Generator,
                per_gate: int = PROBES_PER_GATE) -> tuple[np.ndarray, int]:
    """``(probes (m, d) unit float64, gates that cannot open on the unit sphere)`` for the gates
    of the tail's first stage (later stages' gates see already-moved rows)."""
    if not stages or not isinstance(stages[0], GateChain):
        return np.zeros((0, stages[0].d if stages else 0)), 0
    chain = stages[0]
    out, closed = [], 0
    for i in range(chain.n_gates):
        w, b, t0 = chain.weights[:, i], chain.bias[i], chain.t0[i]
        norm = float(np.linalg.norm(w))
        c_open = (t0 - b) / norm if norm > 0 else np.inf  # cos(theta) where g starts to rise
        if c_open >= 1:
            closed += 1
            continue
        c_open = max(c_open, -1.0)
        u = w / norm
        for f in np.linspace(1.0, 0.0, per_gate, endpoint=False):  # 1, 0.75, 0.5, 0.25
            c = c_open + (1 - c_open) * f
            z = rng.normal(size=u.shape)
            z -= (z @ u) * u
            out.append(c * u + np.sqrt(max(1 - c * c, 0.0)) * z / np.linalg.norm(z))
    return (np.asarray(out) if out else np.zeros((0, chain.d))), closed


def tail_only_model(model: "onnx.ModelProto") -> "onnx.ModelProto | None":
    """The file's tail alone: input = the body's raw output ``(N, d)`` float32, output as in the
    file; ``None`` when the file has no tail."""
    body, reattach = split_tail(model)
    if body is model:
        return None
    pre = body.graph.output[0].name
    dims = body.graph.output[0].type.tensor_type.shape.dim
    d = dims[1].dim_value if len(dims) == 2 and dims[1].dim_value > 0 else None
    graph = helper.make_graph([], "facekd_tail_only",
                              [helper.make_tensor_value_info(pre, TensorProto.FLOAT, ["N", d])],
                              [helper.make_tensor_value_info(pre, TensorProto.FLOAT, ["N", d])])
    tail = helper.make_model(graph, opset_imports=copy.deepcopy(list(model.opset_import)))
    tail.ir_version = model.ir_version
    return reattach(tail)


def body_error(reference: "onnx.ModelProto", exported: "onnx.ModelProto", x_reference: np.ndarray,
               x_exported: np.ndarray, providers: list[str]) -> float:
    """Worst L2 distance between the normalised outputs of the two files' bodies (tails cut off)
    on the same chips: the error the exported body adds, before any gate can amplify it.

    ``reference``: the encoder's own float32 graph; ``x_*``: the chips as each file takes them
    (they differ when a preprocessing head was baked in).
    """
    import onnxruntime as ort

    outs = []
    for model, x in ((reference, x_reference), (exported, x_exported)):
        body, _ = split_tail(model)
        session = ort.InferenceSession(body.SerializeToString(), providers=providers)
        name = session.get_inputs()[0].name
        outs.append(normalize_rows(np.concatenate(
            [session.run(None, {name: x[i:i + 8]})[0] for i in range(0, len(x), 8)]
        ).astype(np.float64)))
    return float(np.linalg.norm(outs[0] - outs[1], axis=1).max())


def gated_parity(model: "onnx.ModelProto", stages: list, body_error: float,
                 seed: int = 0) -> dict | None:
    """Check the file's tail above every gate and the effect of ``body_error`` there.

    Args:
        model: the exported file's ``ModelProto`` (fp32 or fp16 body, float32 tail).
        stages: the encoder's erasure tail (:attr:`facekd.core.erasure.Erasure.tail`).
        body_error: worst L2 distance between the normalised outputs of the file's body and the
            encoder's float32 body on the check chips (:func:`body_error`).

    Returns ``None`` without a gated tail, else ``{"probes", "gates", "gates_closed",
    "tail_min_cosine", "body_error", "min_cosine", "mean_cosine", "still_strangers"}``:
    ``min/mean_cosine`` between the in-process edit and the edit of probes moved by
    ``body_error``; ``still_strangers`` the share of those outputs below every gate.
    """
    import onnxruntime as ort

    tail_model = tail_only_model(model)
    if tail_model is None or not stages:
        return None
    rng = np.random.default_rng(seed)
    probes, closed = gate_probes(stages, rng)
    n_gates = stages[0].n_gates if isinstance(stages[0], GateChain) else 0
    result = {"probes": int(len(probes)), "gates": n_gates, "gates_closed": closed,
              "body_error": float(body_error)}
    if len(probes) == 0:
        return result | {"tail_min_cosine": None, "min_cosine": None, "mean_cosine": None,
                         "still_strangers": None}
    session = ort.InferenceSession(tail_model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    want = apply_stages(stages, probes)
    got = normalize_rows(session.run(None, {name: probes.astype(np.float32)})[0].astype(np.float64))
    tail_cos = np.sum(got * want, axis=1)
    moved = np.repeat(probes, TRIALS, axis=0)
    noise = rng.normal(size=moved.shape)
    moved = normalize_rows(moved + body_error * noise / np.linalg.norm(noise, axis=1, keepdims=True))
    edited = apply_stages(stages, moved)
    cos = np.sum(edited * np.repeat(want, TRIALS, axis=0), axis=1)
    chain = stages[0]
    below = (chain.gates(edited) <= 0).all(axis=1) if isinstance(chain, GateChain) else None
    return result | {"tail_min_cosine": float(tail_cos.min()), "min_cosine": float(cos.min()),
                     "mean_cosine": float(cos.mean()),
                     "still_strangers": None if below is None else float(below.mean())}
