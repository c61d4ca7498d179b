"""The export parity check above the gates of a gated erasure (issue 23, item 5)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from facekd.core.tail import normalize_rows
from facekd.encoders.export_gated import gate_probes, gated_parity, tail_only_model
from facekd.encoders.onnx_export import export
from facekd.encoders.onnx_model import OnnxEncoder
from facekd.erasure import fit_scramble
from test_onnx_model import DIM, build_torch_model, chips


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    """A tiny ONNX encoder edited by a scramble fitted on photos near one chip's embedding."""
    path = build_torch_model("gemm_bn", tmp_path_factory.mktemp("gated") / "m.onnx")
    enc = OnnxEncoder(path)
    e = normalize_rows(enc.embed(chips(40, seed=9)).astype(np.float64))
    rng = np.random.default_rng(4)
    person = normalize_rows(e[:1] + 0.02 * rng.normal(size=(8, DIM)))
    erasure = fit_scramble(person, e[1:], q=0.99)
    return enc.with_erasure(erasure), erasure


def test_probes_sit_above_every_gate(gated):
    _, erasure = gated
    probes, closed = gate_probes(erasure.tail, np.random.default_rng(0))
    chain = erasure.tail[0]
    assert closed == 0 and len(probes) == 4 * chain.n_gates
    np.testing.assert_allclose(np.linalg.norm(probes, axis=1), 1.0, atol=1e-9)
    assert (chain.gates(probes).max(axis=1) > 0).all()
    assert (chain.gates(probes).max(axis=1) == 1).any()  # some fully open


def test_the_files_tail_alone_is_the_erasures_tail(gated, tmp_path):
    edited, erasure = gated
    model = onnx.load(str(edited.to_onnx(tmp_path / "e.onnx")))
    assert tail_only_model(model) is not None
    check = gated_parity(model, erasure.tail, body_error=0.0)
    assert check["tail_min_cosine"] >= 1 - 1e-6 and check["min_cosine"] >= 1 - 1e-6


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_export_report_covers_gated_faces(gated, tmp_path, fp16):
    edited, erasure = gated
    report = export(edited, tmp_path / "x.onnx", fp16=fp16)
    g = report.to_dict()["gated"]
    assert g["probes"] == 4 * erasure.tail[0].n_gates and g["gates_closed"] == 0
    assert g["tail_min_cosine"] >= 0.99999  # float32 tail in both files
    assert report.passed
    assert "gated faces" in report.message()
    if fp16:  # the body's fp16 error is seen (whatever it does to the stranger, it is reported)
        assert g["body_error"] > 1e-5
    else:
        assert g["body_error"] < 1e-4 and g["min_cosine"] > 0.999
    assert 0.0 <= g["still_strangers"] <= 1.0


def test_an_ungated_export_has_no_gated_report(tmp_path):
    enc = OnnxEncoder(build_torch_model("gemm", tmp_path / "plain.onnx"))
    assert export(enc, tmp_path / "p.onnx").gated is None


def test_report_gives_the_written_files_sha256(tmp_path):
    import hashlib

    enc = OnnxEncoder(build_torch_model("gemm", tmp_path / "plain.onnx"))
    report = export(enc, tmp_path / "p.onnx")
    assert report.file_sha256 == hashlib.sha256((tmp_path / "p.onnx").read_bytes()).hexdigest()
