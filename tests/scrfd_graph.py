"""A tiny detector graph with SCRFD's output layout (9 outputs: strides 8/16/32, 2 anchors each,
score / box / 5-landmark heads), for building insightface model packs in tests.

Each stride is one Conv with a ``stride x stride`` kernel on the normalised input, reshaped as
SCRFD's heads are (``(h * w * anchors, C)``, location-major, anchor-minor). The score head of
stride 32 fires where a cell is red (``sigmoid(GAIN * (mean R - mean B) - BIAS)``); strides 8 and
16 never fire, so a red square covering exactly one stride-32 cell of the letterboxed image is one
face. Box distances and landmark offsets are the heads' biases (in stride units, as SCRFD's are)
plus ``noise`` times seeded random weights (``noise=0``: exactly the biases).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

STRIDES = (8, 16, 32)
ANCHORS = 2
GAIN, BIAS = 4.0, 4.0
BOX = (2.0, 2.0, 2.0, 2.0)  # left, top, right, bottom distances, stride units
# insightface's landmark order, stride units from the anchor (image-left eye first)
KPS = ((-0.6, -0.4), (0.6, -0.4), (0.0, 0.2), (-0.5, 0.8), (0.5, 0.8))


def build_scrfd(path: Path, *, noise: float = 0.0, seed: int = 0, fixed: tuple[int, int] | None = None,
                landmarks: bool = True) -> Path:
    """Write the detector to ``path``; ``fixed=(h, w)`` fixes its input size (else symbolic);
    ``landmarks=False`` writes the 6-output layout (no landmark heads)."""
    rng = np.random.default_rng(seed)
    h, w = fixed if fixed else ("height", "width")
    x = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, h, w])
    nodes, inits, outputs = [], [], {"score": [], "bbox": [], "kps": []}
    heads = {"score": 1, "bbox": 4, "kps": 10} if landmarks else {"score": 1, "bbox": 4}
    for s in STRIDES:
        for head, c in heads.items():
            weight = (noise * rng.standard_normal((ANCHORS * c, 3, s, s)) / (s * s)).astype(np.float32)
            if head == "score":
                bias = np.full(ANCHORS, -BIAS if s == 32 else -20.0, np.float32)
                if s == 32:
                    weight[:, 0] += GAIN / (s * s)  # + mean red
                    weight[:, 2] -= GAIN / (s * s)  # - mean blue
            else:
                per_anchor = np.asarray(BOX if head == "bbox" else KPS, np.float32).ravel()
                bias = np.tile(per_anchor, ANCHORS)
            name = f"{head}{s}"
            inits += [numpy_helper.from_array(weight, f"{name}_w"),
                      numpy_helper.from_array(bias, f"{name}_b"),
                      numpy_helper.from_array(np.array([-1, c], np.int64), f"{name}_shape")]
            nodes += [helper.make_node("Conv", ["input.1", f"{name}_w", f"{name}_b"], [f"{name}_c"],
                                       kernel_shape=[s, s], strides=[s, s]),
                      helper.make_node("Transpose", [f"{name}_c"], [f"{name}_t"], perm=[0, 2, 3, 1]),
                      helper.make_node("Reshape", [f"{name}_t", f"{name}_shape"],
                                       [name if head != "score" else f"{name}_r"])]
            if head == "score":
                nodes.append(helper.make_node("Sigmoid", [f"{name}_r"], [name]))
            outputs[head].append(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                               [f"n{s}", c]))
    outs = [o for head in heads for o in outputs[head]]
    model = helper.make_model(helper.make_graph(nodes, "scrfd_tiny", [x], outs, inits),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def face_image(height: int = 320, width: int = 320, cell: tuple[int, int] = (3, 5),
               seed: int = 0) -> np.ndarray:
    """``(height, width, 3)`` uint8 RGB: seeded grey texture with a red square that covers
    exactly stride-32 cell ``cell`` (row, column) once the image is letterboxed to 640 wide
    (the image must be at most as tall as it is wide)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(90, 160, size=(height, width, 3), dtype=np.uint8)
    img[..., 0] = img[..., 2]  # grey-ish: red and blue equal outside the square
    scale = 640 / width
    side = 32 / scale
    top, left = cell[0] * side, cell[1] * side
    img[int(round(top)):int(round(top + side)), int(round(left)):int(round(left + side))] = (250, 10, 10)
    return img


def expected_face(cell: tuple[int, int], width: int = 320) -> tuple[np.ndarray, np.ndarray]:
    """The box ``(4,)`` and landmarks ``(5, 2)`` (image pixels) the graph with ``noise=0`` gives
    for :func:`face_image`'s square: the anchor is the cell's top-left corner."""
    scale = 640 / width
    anchor = np.array([cell[1] * 32, cell[0] * 32], np.float64)
    box = np.array([anchor[0] - BOX[0] * 32, anchor[1] - BOX[1] * 32,
                    anchor[0] + BOX[2] * 32, anchor[1] + BOX[3] * 32]) / scale
    kps = (anchor + np.asarray(KPS) * 32) / scale
    return box, kps
