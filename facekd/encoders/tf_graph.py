"""A frozen TensorFlow ``GraphDef`` (``.pb``) read without TensorFlow: nodes and their constants.

Only what a frozen inference graph needs is decoded, straight from the protobuf wire format
(``tensorflow/core/framework/{graph,node_def,attr_value,tensor,tensor_shape}.proto``):

* ``GraphDef.node`` (1) -> ``NodeDef``: ``name`` (1), ``op`` (2), ``input`` (3), ``attr`` (5, a
  map entry: key 1, ``AttrValue`` 2);
* ``AttrValue``: ``list`` (1), ``s`` (2), ``i`` (3), ``f`` (4), ``b`` (5), ``type`` (6),
  ``tensor`` (8); ``ListValue``: ``s`` (2), ``i`` (3, packed);
* ``TensorProto``: ``dtype`` (1), ``tensor_shape`` (2: ``dim`` 2: ``size`` 1), ``tensor_content``
  (4, raw little-endian), ``float_val`` (5) / ``int_val`` (7) for small or splatted constants.

Anything malformed raises :class:`~facekd.errors.EncoderError`, never an ``IndexError`` from deep
inside the decoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from facekd.errors import EncoderError

__all__ = ["TfNode", "read_graph", "tensor_value"]

#: TensorFlow DataType enum -> numpy dtype (the ones frozen float graphs use)
_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 9: np.int64}


@dataclass
class TfNode:
    """One ``NodeDef``: attributes stay raw ``AttrValue`` bytes until asked for."""

    name: str
    op: str
    inputs: list[str] = field(default_factory=list)
    attrs: dict[str, bytes] = field(default_factory=dict)

    def attr(self, key: str) -> Any:
        """The attribute decoded: str, int, float, bool, a list, or an ndarray for tensors."""
        if key not in self.attrs:
            raise EncoderError(f"graph node {self.name!r} ({self.op}) has no attribute {key!r}")
        return _attr_value(self.attrs[key])


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, i


def _fields(buf: memoryview) -> Iterator[tuple[int, int, Any]]:
    """``(field number, wire type, value)``; value is an int (varint) or a memoryview."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            length, i = _varint(buf, i)
            value, i = buf[i:i + length], i + length
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if i > n:
            raise ValueError("truncated field")
        yield number, wire, value


def _node(buf: memoryview) -> TfNode:
    node = TfNode(name="", op="")
    for number, _, value in _fields(buf):
        if number == 1:
            node.name = bytes(value).decode()
        elif number == 2:
            node.op = bytes(value).decode()
        elif number == 3:
            node.inputs.append(bytes(value).decode())
        elif number == 5:
            entry = dict((n, v) for n, _, v in _fields(value))
            node.attrs[bytes(entry.get(1, b"")).decode()] = bytes(entry.get(2, b""))
    return node


def _repeated(items: list[tuple[int, Any]], fmt: str) -> list:
    """Repeated scalars, packed (one length-delimited run) or one field each; ``fmt`` is a numpy
    little-endian format or ``"varint"``."""
    out: list = []
    for wire, v in items:
        if fmt != "varint":
            out.extend(np.frombuffer(bytes(v), fmt).tolist())
        elif wire == 2:
            out.extend(_varints(v))
        else:
            out.append(_signed(v))
    return out


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _varints(buf: memoryview) -> list[int]:
    out, i = [], 0
    while i < len(buf):
        v, i = _varint(buf, i)
        out.append(_signed(v))
    return out


def tensor_value(buf: bytes) -> np.ndarray:
    """A serialised ``TensorProto`` -> ndarray with its declared shape."""
    dtype_code, shape, content = 1, [], None
    scalars: list[tuple[int, Any]] = []
    for number, wire, value in _fields(memoryview(buf)):
        if number == 1:
            dtype_code = value
        elif number == 2:
            for n, _, dim in _fields(value):
                if n == 2:
                    shape.append(dict((k, v) for k, _, v in _fields(dim)).get(1, 0))
        elif number == 4:
            content = bytes(value)
        elif number in (5, 6, 7, 10):
            scalars.append((wire, value))
    if dtype_code not in _DTYPES:
        raise EncoderError(f"unsupported tensor dtype code {dtype_code} in the graph")
    dtype = np.dtype(_DTYPES[dtype_code]).newbyteorder("<")
    count = int(np.prod(shape, dtype=np.int64))
    if content is not None:
        arr = np.frombuffer(content, dtype)
    else:
        fmt = {np.float32: "<f4", np.float64: "<f8"}.get(_DTYPES[dtype_code], "varint")
        arr = np.asarray(_repeated(scalars, fmt), dtype)
        if arr.size == 1 and count > 1:  # TF splats a single value over the whole shape
            arr = np.full(count, arr[0], dtype)
    if arr.size != count:
        raise EncoderError(f"tensor holds {arr.size} values, its shape {shape} needs {count}")
    return arr.astype(dtype.newbyteorder("="), copy=False).reshape(shape)


def _attr_value(buf: bytes) -> Any:
    for number, wire, value in _fields(memoryview(buf)):
        if number == 2:
            return bytes(value).decode(errors="replace")
        if number in (3, 6):
            return _signed(value)
        if number == 4:
            return float(np.frombuffer(bytes(value), "<f4")[0])
        if number == 5:
            return bool(value)
        if number == 8:
            return tensor_value(bytes(value))
        if number == 1:  # ListValue: the ints (strides, ksize) or strings it holds
            items = list(_fields(value))
            ints = _repeated([(w, v) for n, w, v in items if n == 3], "varint")
            strings = [bytes(v).decode(errors="replace") for n, _, v in items if n == 2]
            return ints or strings
    return None


def read_graph(data: bytes, where: str = "graph") -> dict[str, TfNode]:
    """Name -> node of a serialised ``GraphDef`` (nodes in file order)."""
    nodes: dict[str, TfNode] = {}
    try:
        for number, wire, value in _fields(memoryview(data)):
            if number == 1 and wire == 2:
                node = _node(value)
                nodes[node.name] = node
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        raise EncoderError(f"{where}: not a TensorFlow GraphDef (.pb): {exc}") from None
    if not nodes or any(not n.name or not n.op for n in nodes.values()):
        raise EncoderError(f"{where}: not a TensorFlow GraphDef (.pb): no named graph nodes")
    return nodes
