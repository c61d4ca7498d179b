"""Encoders say what they are: the input contract and its source, what each sha256 hashes, and a
warning (bench, enroll) when the encoder cannot tell people apart."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import onnx
import torch

from conftest import SYNTH_IDS, run_cli
from facekd.core.separation import bench_banner, bench_check, identity_separation
from facekd.encoders.base import InputSpec
from facekd.encoders.facenet import FACENET_SPEC
from facekd.encoders.onnx_model import OnnxEncoder
from test_onnx_model import build_mxnet_style, build_torch_model, export_torch


def test_describe_says_size_channels_normalisation_and_alignment():
    assert FACENET_SPEC.describe() == "160x160 RGB, (x - 127.5) / 128, alignment facenet"
    raw = InputSpec(112, (0.0,) * 3, (1.0,) * 3, "RGB", alignment="arcface")
    assert raw.describe() == "112x112 RGB, x, alignment arcface"
    dlib = InputSpec(150, (122.782, 117.001, 104.298), (256.0,) * 3, "RGB", alignment="dlib")
    assert dlib.describe() == "150x150 RGB, (x - (122.782, 117.001, 104.298)) / 256, alignment dlib"


def test_onnx_contract_source_is_metadata_head_caller_or_the_arcface_default(tmp_path):
    plain = OnnxEncoder(build_torch_model("gemm", tmp_path / "plain.onnx"))
    assert plain.input_spec_guessed and plain.input_spec_source.startswith("ArcFace default")
    head = OnnxEncoder(build_mxnet_style(tmp_path / "mxnet.onnx"))
    assert not head.input_spec_guessed and "preprocessing head" in head.input_spec_source
    exported = OnnxEncoder(plain.to_onnx(tmp_path / "exported.onnx"))  # writes facekd.input_spec
    assert not exported.input_spec_guessed
    assert exported.input_spec_source == "file metadata: facekd.input_spec"
    model = onnx.load(str(tmp_path / "plain.onnx"))
    prop = model.metadata_props.add()
    prop.key, prop.value = "input_std", "128"
    onnx.save(model, str(tmp_path / "loose.onnx"))
    assert OnnxEncoder(tmp_path / "loose.onnx").input_spec_source.startswith("file metadata: input_")
    given = OnnxEncoder(tmp_path / "plain.onnx", input_spec=InputSpec(112, (0.0,) * 3, (1.0,) * 3))
    assert given.input_spec_source == "given by the caller" and not given.input_spec_guessed


def test_init_prints_the_contract_its_source_and_what_each_sha256_hashes(tmp_path):
    path = build_torch_model("gemm", tmp_path / "no_metadata.onnx")
    code, out, err = run_cli("--workspace", tmp_path / "ws", "init", "--encoder", f"onnx:{path}")
    assert code == 0, err
    assert "weights sha256 " in out
    assert "input: 112x112 RGB, (x - 127.5) / 127.5, alignment arcface; from ArcFace default" in out
    assert f"file sha256 {hashlib.sha256(path.read_bytes()).hexdigest()[:12]}" in out
    assert "warning:" in err and "says nothing about its input" in err


def _people(n_people: int, per: int, spread: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_people, 64))
    x = np.repeat(centres, per, axis=0) + spread * rng.normal(size=(n_people * per, 64))
    return x, np.repeat(np.arange(n_people), per)


def test_separation_passes_a_face_encoder_and_fails_noise():
    good = identity_separation(*_people(20, 5, spread=0.3))
    assert good["usable"] and good["rank1"] == 100.0 and good["d_prime"] > 3
    bad = identity_separation(*_people(20, 5, spread=30.0))
    assert not bad["usable"] and bad["rank1"] < 50
    assert identity_separation(*_people(1, 5, spread=0.3)) is None  # one person: nothing to tell
    assert identity_separation(*_people(20, 1, spread=0.3)) is None  # one photo each


def test_bench_says_its_figures_are_meaningless_for_an_encoder_that_cannot_separate():
    said: list[str] = []
    check = bench_check(*_people(20, 5, spread=30.0), "lfw", said.append)
    assert said and said[0].startswith("warning: the encoder cannot separate identities on lfw")
    assert "meaningless" in said[0]
    assert "NOT RESULTS" in "\n".join(bench_banner({"encoder_check": check}))
    said.clear()
    check = bench_check(*_people(20, 5, spread=0.3), "lfw", said.append)
    assert not said and bench_banner({"encoder_check": check}) == []


class _Blind(torch.nn.Module):
    """The same embedding for every face (an encoder that cannot tell anyone apart)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(16, generator=torch.Generator().manual_seed(0)))

    def forward(self, x):
        return x[:, :1, 0, 0] * 0.0 + self.w


def test_enroll_warns_when_the_gallery_cannot_be_told_apart(synthetic_photos, tmp_path):
    tree, _ = synthetic_photos
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export_torch(_Blind(), tmp_path / "blind.onnx")
    ws = tmp_path / "ws"
    assert run_cli("--workspace", ws, "init", "--encoder", f"onnx:{path}", "--aligned")[0] == 0
    code, out, err = run_cli("--workspace", ws, "enroll", tree)
    assert code == 0, err
    assert f"of {len(SYNTH_IDS)} identities" in out
    assert "cannot separate identities on the gallery" in err
