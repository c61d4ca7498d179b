"""A Sub/Mul preprocessing head baked into an ONNX graph, so the file takes raw RGB pixels.

insightface's ``ArcFaceONNX`` decides how to normalise a recognition model's input by node
*names*: when the first 8 nodes include one named ``Sub...`` (or ``_minus...``) and one named
``Mul...`` (or ``_mul...``) it feeds raw pixels (mean 0, std 1), otherwise ``(x - 127.5) / 127.5``.
A facekd export of a facenet (mean 127.5, std 128) or dlib (per-channel mean, std 256) encoder
therefore only gets the right input inside insightface when the graph normalises by itself;
:func:`bake_preprocessing` prepends exactly such a head (and a channel swap for BGR networks,
since insightface always feeds RGB).
"""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
from onnx import numpy_helper

from facekd.encoders.base import InputSpec
from facekd.errors import EncoderError
from facekd.onnx.graph import FLOAT_TYPES, METADATA_KEY, graph_inputs, set_metadata

__all__ = ["bake_preprocessing", "raw_pixel_spec"]


def raw_pixel_spec(spec: InputSpec) -> InputSpec:
    """The contract of a graph with ``spec``'s normalisation baked in: raw RGB pixels in."""
    return InputSpec(spec.size, (0.0,) * 3, (1.0,) * 3, "RGB", alignment=spec.alignment)


def bake_preprocessing(model: "onnx.ModelProto", spec: InputSpec) -> "onnx.ModelProto":
    """``model`` (changed in place and returned) with ``spec``'s normalisation as its first nodes.

    The input keeps its name, shape and dtype but now takes raw RGB pixels ``0..255``; the
    ``facekd.input_spec`` metadata is rewritten to say so. A spec that already means raw pixels
    (mean 0, std 1, RGB) leaves the model as it is.
    """
    raw = raw_pixel_spec(spec)
    if spec == raw:
        return model
    graph = model.graph
    inputs = graph_inputs(graph)
    if len(inputs) != 1:
        raise EncoderError(f"cannot bake preprocessing: the graph has {len(inputs)} inputs, not 1")
    name = inputs[0].name
    dtype = FLOAT_TYPES.get(inputs[0].type.tensor_type.elem_type)
    if dtype is None:
        raise EncoderError("cannot bake preprocessing: the input is not a float tensor")
    taken = ({t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
             | {n.name for n in graph.node})

    def fresh(base: str) -> str:
        out, i = base, 0
        while out in taken:
            i += 1
            out = f"{base}_{i}"
        taken.add(out)
        return out

    head, current = [], name
    if spec.channel_order == "BGR":  # insightface feeds RGB; the network wants BGR
        order = fresh("facekd_rgb_to_bgr")
        graph.initializer.append(numpy_helper.from_array(np.array([2, 1, 0], np.int64), order))
        out = fresh("facekd_bgr_input")
        head.append(onnx.helper.make_node("Gather", [current, order], [out], axis=1,
                                          name=fresh("Gather_facekd_rgb_to_bgr")))
        current = out
    # InputSpec's mean/std are in network channel order (applied after the swap), as here.
    mean = np.asarray(spec.mean, np.float64)
    scale = 1.0 / np.asarray(spec.std, np.float64)
    for op, value, what in (("Sub", mean, "mean"), ("Mul", scale, "scale")):
        const = fresh(f"facekd_input_{what}")
        graph.initializer.append(numpy_helper.from_array(value.reshape(1, 3, 1, 1).astype(dtype),
                                                         const))
        out = fresh(f"facekd_input_{what}d")
        # The node names are what insightface looks for (see the module docstring).
        head.append(onnx.helper.make_node(op, [current, const], [out],
                                          name=fresh(f"{op}_facekd_input_{what}")))
        current = out
    for node in graph.node:  # everything that read the input now reads the normalised tensor
        for i, inp in enumerate(node.input):
            if inp == name:
                node.input[i] = current
    nodes = head + [copy.deepcopy(n) for n in graph.node]  # copies: del would drop them
    del graph.node[:]
    graph.node.extend(nodes)
    set_metadata(model, METADATA_KEY, json.dumps(raw.to_dict()))
    return model
