"""The dlib .dat reader: primitive encodings, the stream grammar and the real model file."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from facekd.encoders.dlib_format import DatReader, DlibFormatError, parse_dat
from facekd.errors import EncoderError, FacekdError


# ---------------------------------------------------------------------- an independent writer
def sint(v: int) -> bytes:
    mag = abs(v)
    body = mag.to_bytes(max(1, (mag.bit_length() + 7) // 8), "little")
    return bytes([len(body) | (0x80 if v < 0 else 0)]) + body


def uint(v: int) -> bytes:
    body = v.to_bytes(max(1, (v.bit_length() + 7) // 8), "little")
    return bytes([len(body)]) + body


def string(s: str) -> bytes:
    return uint(len(s)) + s.encode()


def flt(mantissa: int, exponent: int) -> bytes:
    return sint(mantissa) + sint(exponent)


def fval(x: float) -> bytes:
    m, e = math.frexp(x)
    return flt(int(m * 2**53), e - 53)


def tensor(arr) -> bytes:
    a = np.asarray(arr, dtype="<f4")
    shape = (a.shape + (1, 1, 1, 1))[:4] if a.size else (0, 0, 0, 0)
    return sint(2) + b"".join(sint(d) for d in shape) + a.tobytes()


def alias(*shape: int) -> bytes:
    return sint(1) + b"".join(sint(d) for d in shape)


EMPTY = tensor(np.zeros(0))


def tiny_network(con_record: str = "con_4") -> bytes:
    """loss_metric_2 <fc_2 <tag <con_4 <input_rgb_image_sized<4>>>>>: the real file's grammar."""
    w = np.arange(2 * 3 * 1 * 1, dtype=np.float32)
    con = (string(con_record) + tensor(np.concatenate([w, [10.0, 20.0]]))
           + b"".join(sint(v) for v in (2, 1, 1, 1, 1, 0, 0))  # filters, kernel, stride, pad
           + alias(2, 3, 1, 1) + alias(1, 2, 1, 1) + fval(1) + fval(1) + fval(1) + fval(0))
    fc_w = np.arange(2 * 3, dtype=np.float32)
    fc = (string("fc_2") + uint(2) + uint(3) + tensor(fc_w) + alias(3, 2, 1, 1) + alias(0, 0, 0, 0)
          + sint(1) + fval(1) + fval(1) + fval(1) + fval(0))
    return (sint(1) + string("loss_metric_2") + fval(0.04) + fval(0.6)
            + sint(2) + sint(1) + sint(3)                               # wrappers, outermost first
            + string("input_rgb_image_sized") + fval(122.5) + fval(117.0) + fval(104.25)
            + uint(4) + uint(4)
            + con + b"110" + EMPTY + EMPTY + EMPTY + uint(1)           # innermost trailer
            + fc + b"100" + EMPTY + EMPTY + EMPTY)                      # outer trailer


# ---------------------------------------------------------------------- primitives
@pytest.mark.parametrize("raw, value", [
    (b"\x01\x02", 2), (b"\x02\x80\x12", 4736), (b"\x81\x1c", -28), (b"\x01\x00", 0),
    (sint(-(2**62)), -(2**62)), (sint(123456789), 123456789),
])
def test_signed_ints_decode_magnitude_and_sign(raw, value):
    r = DatReader(raw)
    assert r.int() == value and r.at_eof


def test_zero_byte_count_and_oversized_ints_are_rejected_with_offset():
    r = DatReader(b"\x01\x00\x00")
    assert r.int() == 0  # zero is written as 01 00; a bare 00 is not an int
    with pytest.raises(DlibFormatError, match="control byte 0x00.*offset 2"):
        r.int()
    with pytest.raises(DlibFormatError, match="offset 0"):
        DatReader(b"\x03\x01\x02\x03").int(nbytes=2)  # an int16 never takes 3 bytes


def test_unsigned_ints_use_the_0x8f_mask():
    assert DatReader(b"\x02\x34\x12").uint() == 0x1234
    with pytest.raises(DlibFormatError):
        DatReader(b"\x82\x34\x12").uint()  # 0x82 & 0x8F = 0x82: more bytes than any integer


def test_bools_are_ascii_digits():
    r = DatReader(b"10")
    assert r.bool() is True and r.bool() is False
    with pytest.raises(DlibFormatError, match="'0' or '1'"):
        DatReader(b"\x01").bool()


def test_strings_are_length_prefixed():
    r = DatReader(b"\x01\x0dloss_metric_2")
    assert r.string() == "loss_metric_2" and r.at_eof


def test_float_details_negative_exponent_and_specials():
    assert DatReader(b"\x03\x0a\xd7\xa3\x81\x1c").float() == pytest.approx(0.04, rel=1e-6)
    assert DatReader(flt(-3, -1)).float() == -1.5
    assert DatReader(flt(1, 32000)).float() == math.inf
    assert DatReader(flt(1, 32001)).float() == -math.inf
    assert math.isnan(DatReader(flt(1, 32002)).float())
    with pytest.raises(DlibFormatError, match="legacy ASCII"):
        DatReader(b"0.5 ").float()


def test_tensors_are_raw_float32_and_may_be_empty():
    data = np.array([[1.5, -2.0], [3.25, 1e-30]], dtype=np.float32)
    out = DatReader(tensor(data.reshape(1, 1, 2, 2))).tensor()
    assert out.dtype == np.float32 and out.shape == (1, 1, 2, 2)
    np.testing.assert_array_equal(out.reshape(2, 2), data)
    assert DatReader(EMPTY).tensor().size == 0
    with pytest.raises(DlibFormatError, match="tensor version 3"):
        DatReader(sint(3) + EMPTY[1:]).tensor()


# ---------------------------------------------------------------------- the grammar
def test_tiny_network_parses_into_forward_order():
    net = parse_dat(tiny_network())
    assert [layer.kind for layer in net.layers] == ["con", "wrapper", "fc"]
    assert net.loss["dist_thresh"] == pytest.approx(0.6)
    assert net.input["mean"] == (122.5, 117.0, 104.25) and net.input["rows"] == 4
    con = net.layers[0].params
    assert con["weight"].shape == (2, 3, 1, 1) and list(con["bias"]) == [10.0, 20.0]
    fc = net.layers[2].params
    assert fc["weight"].shape == (3, 2) and fc["bias"] is None  # stored (in, out)


def test_newer_con_record_with_use_bias_false_reads():
    stream = tiny_network("con_5").replace(
        fval(0) + b"110", fval(0) + b"1" + b"110", 1)  # con_5 adds a use_bias bool
    net = parse_dat(stream)
    assert net.layers[0].record == "con_5"


def test_truncated_stream_names_the_byte_offset():
    full = tiny_network()
    for cut in (1, 20, len(full) // 2, len(full) - 1):
        with pytest.raises(DlibFormatError, match=r"truncated file.*byte offset \d+") as info:
            parse_dat(full[:cut])
        assert 0 <= info.value.offset <= cut


def test_unknown_layer_version_string_is_named_with_offset():
    stream = tiny_network().replace(b"con_4", b"con_9")
    offset = stream.index(b"con_9") - 2  # the string's length prefix
    with pytest.raises(DlibFormatError, match=rf"'con_9'.*offset {offset}\)"):
        parse_dat(stream)


def test_trailing_bytes_after_the_network_are_an_error():
    stream = tiny_network()
    with pytest.raises(DlibFormatError, match=f"trailing.*offset {len(stream)}"):
        parse_dat(stream + b"\x00")


def test_format_errors_are_user_errors():
    assert issubclass(DlibFormatError, EncoderError) and issubclass(DlibFormatError, FacekdError)


# ---------------------------------------------------------------------- the shipped file
@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    import face_recognition_models as frm
    with open(frm.face_recognition_model_location(), "rb") as fh:
        return fh.read()


def test_real_file_structure_matches_the_spec(model_bytes):
    net = parse_dat(model_bytes)
    assert len(net.layers) == 130
    assert Counter(layer.record for layer in net.layers) == {
        "con_4": 29, "affine_": 29, "relu_": 29, "tag/skip": 22, "add_prev_": 14,
        "avg_pool_2": 5, "max_pool_2": 1, "fc_2": 1}
    assert net.num_floats == 5_614_592  # weights only: the training-state tensors are empty
    assert net.loss["record"] == "loss_metric_2"
    assert net.loss["dist_thresh"] == pytest.approx(0.6)
    assert net.loss["margin"] == pytest.approx(0.04)
    assert net.input["rows"] == net.input["cols"] == 150
    np.testing.assert_allclose(net.input["mean"], (122.782, 117.001, 104.298), atol=1e-5)


def test_real_file_truncated_mid_tensor_reports_offset(model_bytes):
    cut = 1_000_000
    with pytest.raises(DlibFormatError, match="truncated file") as info:
        parse_dat(model_bytes[:cut])
    assert 0 < info.value.offset <= cut


def test_real_file_with_unknown_loss_version_is_rejected(model_bytes):
    bad = model_bytes.replace(b"loss_metric_2", b"loss_metric_7", 1)
    with pytest.raises(DlibFormatError, match=r"'loss_metric_7'.*offset 2\)"):
        parse_dat(bad)
