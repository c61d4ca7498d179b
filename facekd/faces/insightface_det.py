"""insightface's SCRFD face detector (``det_10g.onnx`` and kin) run as insightface runs it.

An insightface model pack's detector is an ONNX graph with 6, 9, 10 or 15 outputs: per feature
stride a score map, box distances and (9 / 15 outputs) five landmarks, anchor-centre relative.
:class:`ScrfdDetector` decodes them exactly as insightface 2.1's ``SCRFD.detect`` does (letterbox
resize, ``(rgb - 127.5) / 128``, per-stride decoding, score threshold 0.5, greedy NMS at IoU 0.4,
candidates of every detection size pooled before NMS), so a face's five points are the ``Face.kps``
``FaceAnalysis.get`` would give, and :func:`facekd.faces.norm_crop` cuts the same 112x112 chip
as insightface's ``face_align.norm_crop``. Written from ``model_zoo/scrfd.py`` (MIT), not copied.

Points are in insightface's order: image-left eye, image-right eye, nose tip, image-left and
image-right mouth corner.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from facekd.errors import FaceError, PackError
from facekd.faces.alignment import SELECT_MODES, Face, align_chip
from facekd.faces.images import _as_rgb

__all__ = ["ScrfdDetector", "DEFAULT_DET_SIZES"]

# insightface 2.1 FaceAnalysis: a graph without a fixed input size is run at both sizes
# (small faces filling a photo are found at 128, the rest at 640) and the candidates pooled.
DEFAULT_DET_SIZES = ((128, 128), (640, 640))


class ScrfdDetector:
    """Faces and their 5 insightface landmarks from an SCRFD ONNX graph.

    Args:
        path: the detector ``.onnx`` (a pack's detection model).
        norm: ``(mean, std)`` the graph is fed: ``(rgb - mean) / std`` (insightface: 127.5, 128).
        det_thresh / nms_thresh: insightface's defaults (``FaceAnalysis.prepare``, ``SCRFD``).
        sizes: ``(width, height)`` letterbox sizes; default the graph's fixed size, else
            :data:`DEFAULT_DET_SIZES`.
        select: ``"largest"`` / ``"all"`` / ``"first"`` as :class:`facekd.faces.FaceAligner`.

    Raises:
        PackError: the graph cannot be opened or has no 5-landmark SCRFD layout.
    """

    def __init__(self, path: str | os.PathLike, *, norm: tuple[float, float] = (127.5, 128.0),
                 det_thresh: float = 0.5, nms_thresh: float = 0.4,
                 sizes: Sequence[tuple[int, int]] | None = None, select: str = "largest",
                 providers: Sequence[str] | None = None):
        import onnxruntime as ort

        from facekd.encoders.insightface_pack import scrfd_layout
        from facekd.encoders.onnx_export import select_providers

        self.path = Path(path)
        try:
            self.session = ort.InferenceSession(str(self.path),
                                                providers=select_providers(prefer=providers))
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own error types
            raise PackError(f"{self.path}: onnxruntime cannot open the detector "
                            f"({str(exc).splitlines()[0]})") from None
        outputs = self.session.get_outputs()
        layout = scrfd_layout(len(outputs))
        if layout is None or not layout[2]:
            raise PackError(f"{self.path}: not an SCRFD detector with 5 landmarks "
                            f"({len(outputs)} outputs; 9 or 15 expected)")
        self.strides, self.anchors, _ = layout
        self.batched = len(outputs[0].shape) == 3
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in outputs]
        shape = self.session.get_inputs()[0].shape
        fixed = (len(shape) == 4 and all(isinstance(v, int) and v > 0 for v in shape[2:4]))
        if sizes is None:
            sizes = [(int(shape[3]), int(shape[2]))] if fixed else list(DEFAULT_DET_SIZES)
        self.sizes = [tuple(int(v) for v in s) for s in sizes]
        self.mean, self.std = float(norm[0]), float(norm[1])
        self.det_thresh, self.nms_thresh = float(det_thresh), float(nms_thresh)
        if select not in SELECT_MODES:
            raise FaceError(f"select must be one of {', '.join(SELECT_MODES)}, got {select!r}")
        self.select = select
        self._centres: dict[tuple[int, int, int], np.ndarray] = {}

    # ---------------------------------------------------------------- insightface's decoding
    def _anchor_centres(self, height: int, width: int, stride: int) -> np.ndarray:
        """``(height * width * anchors, 2)`` float32 (x, y), location-major, anchor-minor."""
        key = (height, width, stride)
        if key not in self._centres:
            centres = np.stack(np.mgrid[:height, :width][::-1], axis=-1).astype(np.float32)
            centres = (centres * stride).reshape(-1, 2)
            if self.anchors > 1:
                centres = np.stack([centres] * self.anchors, axis=1).reshape(-1, 2)
            self._centres[key] = centres
        return self._centres[key]

    def _forward(self, det_img: np.ndarray) -> tuple[list, list, list]:
        """Scores, boxes and landmarks above the threshold, per stride, in ``det_img`` pixels."""
        blob = (det_img.astype(np.float32) - np.float32(self.mean)) * np.float32(1.0 / self.std)
        blob = np.ascontiguousarray(blob.transpose(2, 0, 1)[None])
        outs = self.session.run(self.output_names, {self.input_name: blob})
        fmc = len(self.strides)
        scores_l, boxes_l, kps_l = [], [], []
        for i, stride in enumerate(self.strides):
            scores, dist, kdist = outs[i], outs[i + fmc], outs[i + 2 * fmc]
            if self.batched:
                scores, dist, kdist = scores[0], dist[0], kdist[0]
            centres = self._anchor_centres(blob.shape[2] // stride, blob.shape[3] // stride, stride)
            dist, kdist = dist * stride, kdist * stride
            keep = np.where(scores >= self.det_thresh)[0]
            boxes = np.stack([centres[:, 0] - dist[:, 0], centres[:, 1] - dist[:, 1],
                              centres[:, 0] + dist[:, 2], centres[:, 1] + dist[:, 3]], axis=-1)
            kps = np.stack([centres[:, k % 2] + kdist[:, k] for k in range(kdist.shape[1])],
                           axis=-1).reshape(len(centres), -1, 2)
            scores_l.append(scores[keep])
            boxes_l.append(boxes[keep])
            kps_l.append(kps[keep])
        return scores_l, boxes_l, kps_l

    def _candidates(self, img: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Letterbox ``img`` into ``size`` (top-left, aspect kept) and decode: ``(n, 5)`` boxes
        + scores in image pixels, best first, and ``(n, 5, 2)`` landmarks."""
        im_ratio = img.shape[0] / img.shape[1]
        if im_ratio > size[1] / size[0]:
            new_h = size[1]
            new_w = int(new_h / im_ratio)
        else:
            new_w = size[0]
            new_h = int(new_w * im_ratio)
        scale = new_h / img.shape[0]
        det_img = np.zeros((size[1], size[0], 3), np.uint8)
        det_img[:new_h, :new_w] = cv2.resize(img, (new_w, new_h))
        scores_l, boxes_l, kps_l = self._forward(det_img)
        if sum(s.size for s in scores_l) == 0:
            return np.empty((0, 5), np.float32), np.empty((0, 5, 2), np.float32)
        scores = np.vstack(scores_l)
        order = np.argsort(-scores.ravel(), kind="stable")
        det = np.hstack((np.vstack(boxes_l) / scale, scores)).astype(np.float32, copy=False)
        return det[order], (np.vstack(kps_l) / scale)[order]

    def _nms(self, dets: np.ndarray) -> list[int]:
        """Greedy NMS with insightface's +1 pixel box convention."""
        x1, y1, x2, y2, scores = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
        areas = (x2 - x1 + 1) * (y2 - y1 + 1)
        order = np.argsort(-scores, kind="stable")
        keep = []
        while order.size > 0:
            i = order[0]
            keep.append(int(i))
            w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
            h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
            inter = w * h
            overlap = inter / (areas[i] + areas[order[1:]] - inter)
            order = order[np.where(overlap <= self.nms_thresh)[0] + 1]
        return keep

    def detect_raw(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """insightface's ``SCRFD.detect(img, max_num=0)`` on an RGB image (insightface takes
        BGR and swaps; the graph sees the same RGB blob): ``(n, 5)`` float32 boxes + scores,
        ``(n, 5, 2)`` float32 landmarks, best score first after NMS."""
        dets, kpss = [], []
        for size in self.sizes:
            det, kps = self._candidates(image, size)
            if len(det):
                dets.append(det)
                kpss.append(kps)
        if not dets:
            return np.empty((0, 5), np.float32), np.empty((0, 5, 2), np.float32)
        det = np.vstack(dets).astype(np.float32, copy=False)
        order = np.argsort(-det[:, 4], kind="stable")
        det, kps = det[order], np.vstack(kpss)[order]
        keep = self._nms(det)
        return det[keep], kps[keep].astype(np.float32, copy=False)

    # ---------------------------------------------------------------- the FaceAligner interface
    def detect(self, image: np.ndarray, *, select: str | None = None) -> list[Face]:
        """Faces in ``image`` ((H, W, 3) uint8 RGB) with insightface-order landmarks."""

        select = select or self.select
        if select not in SELECT_MODES:
            raise FaceError(f"select must be one of {', '.join(SELECT_MODES)}, got {select!r}")
        det, kps = self.detect_raw(_as_rgb(image))
        faces = [Face(tuple(int(round(float(v))) for v in d[:4]), k, float(d[4]),
                      order="insightface") for d, k in zip(det, kps)]
        if not faces:
            return []
        if select == "first":
            return faces[:1]  # best score first, as FaceAnalysis.get lists them
        faces.sort(key=lambda f: f.area, reverse=True)
        return faces if select == "all" else faces[:1]

    def chip(self, image: np.ndarray, face: Face, alignment: str, size: int) -> np.ndarray:
        """``(size, size, 3)`` uint8 RGB chip; ``"arcface"`` is insightface's ``norm_crop``."""
        return align_chip(image, face.landmarks, alignment, size, order=face.order)
