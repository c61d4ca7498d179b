"""Hostile and careless input (issue 11): every bad input exits 2 with one ``error:`` line on
stderr and no traceback, and leaves the workspace as it was (``check`` passes, ``identities``
and ``ledger`` print the same before and after).

One workspace is built per session and copied per test; the CLI runs in-process through
click's runner (``facekd.cli.main``), subprocesses only where a real process is needed
(SIGKILL). Read-only and full disks use ``mount`` when running as root and skip otherwise.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import SYNTH_IDS as IDS, SYNTH_TARGET as TARGET, run_cli as run

KNOWN = IDS[0]


# ---------------------------------------------------------------------------- helpers


def snapshot(ws: Path) -> tuple[str, str]:
    """(identities, ledger) as printed; asserts ``check`` passes."""
    code, out, err = run("check", "-w", ws)
    assert code == 0 and out.strip() == "ok", (out, err)
    ids = run("identities", "--json", "-w", ws)
    led = run("ledger", "--json", "-w", ws)
    assert ids[0] == 0 and led[0] == 0, (ids, led)
    return ids[1], led[1]


def one_error_line(code: int, err: str, needle: str | None = None) -> str:
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    if needle is not None:
        assert needle.lower() in lines[0].lower(), lines[0]
    return lines[0]


def refused(ws: Path, *args, needle: str | None = None, damage=None, undo=None) -> str:
    """Run ``facekd ARGS -w ws``; assert exit 2, one error line, and an unchanged workspace
    (``damage()`` runs after the first snapshot, ``undo()`` repairs it before the second)."""
    before = snapshot(ws)
    if damage is not None:
        damage()
    code, _, err = run(*args, "-w", ws)
    line = one_error_line(code, err, needle)
    if undo is not None:
        undo()
    assert snapshot(ws) == before
    return line


def png_bytes(width: int, height: int, idat: bytes | None = None) -> bytes:
    """A PNG (8-bit greyscale) whose header claims ``width`` x ``height``; ``idat`` defaults to a
    tiny, wrong-sized stream (the header alone must be enough to refuse it)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", idat if idat is not None else zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def bomb_png(side: int) -> bytes:
    """A real decompression bomb: ``side`` x ``side`` black pixels, a few hundred KB on disk."""
    comp = zlib.compressobj(9)
    row = b"\0" * (side + 1)
    parts = [comp.compress(row) for _ in range(side)]
    return png_bytes(side, side, b"".join(parts) + comp.flush())


def jpeg_bytes(seed: int = 0, size: int = 96) -> bytes:
    img = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    img = cv2.GaussianBlur(img, (9, 9), 3)
    return cv2.imencode(".jpg", img)[1].tobytes()


def jpeg_claiming(width: int, height: int) -> bytes:
    """A valid small JPEG whose SOF0 header is patched to claim ``width`` x ``height``."""
    raw = bytearray(jpeg_bytes())
    sof = raw.find(b"\xff\xc0")
    raw[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(raw)


def _sparse(path: Path) -> None:
    with open(path, "wb") as fh:
        fh.write(b"\xff\xd8\xff\xe0")
        fh.truncate(3 * 1024 ** 3)  # 3 GB, sparse: costs nothing on disk


GIF = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
       b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")

# name -> (file name, bytes or a writer, a word the error must contain)
BAD_IMAGES = {
    "empty": ("a.png", b"", "empty"),
    "text": ("a.jpg", b"these are not pixels", "not an image"),
    "html": ("a.png", b"<html><body>hi</body></html>", "not an image"),
    "random-with-png-magic": ("a.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "not an image"),
    "truncated-jpeg": ("a.jpg", jpeg_bytes()[:900], "truncated"),
    "truncated-jpeg-fake-end": ("a.jpg", jpeg_bytes(size=160)[:1500] + b"\xff\xd9", "truncated"),
    "gif": ("a.gif", GIF, "not supported"),
    "gif-named-jpg": ("a.jpg", GIF, "not supported"),
    "heic": ("a.heic", b"\0\0\0\x18ftypheic", "not supported"),
    "png-claims-20000x20000": ("a.png", png_bytes(20000, 20000), "too large"),
    "png-claims-50000x50000": ("a.png", png_bytes(50000, 50000), "too large"),
    "png-bomb-8000x8000": ("a.png", bomb_png(8000), "too large"),
    "png-zero-size": ("a.png", png_bytes(0, 0), "not an image"),
    "jpeg-claims-65000x65000": ("a.jpg", jpeg_claiming(65000, 65000), "too large"),
    "pgm-claims-100000x100000": ("a.pgm", b"P5\n100000 100000\n255\n" + b"\0" * 64, "too large"),
    "bmp-claims-30000x30000": ("a.bmp", b"BM" + struct.pack("<IHHI", 0, 0, 0, 54)
                               + struct.pack("<IiiHHIIiiII", 40, 30000, 30000, 1, 24, 0, 0, 0, 0,
                                             0, 0), "too large"),
    "webp-garbage": ("a.webp", b"RIFF\x10\x00\x00\x00WEBPVP8 garbage", "not an image"),
    "tiff-garbage": ("a.tif", b"II*\x00\x08\x00\x00\x00\xff\xff", "not an image"),
    "sparse-3GB": ("a.jpg", _sparse, "too large"),
}


def write_bad(folder: Path, case: str) -> Path:
    name, content, _ = BAD_IMAGES[case]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if callable(content):
        content(path)
    else:
        path.write_bytes(content)
    return path


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def base(synthetic_photos, tmp_path_factory) -> Path:
    tree, _ = synthetic_photos
    ws = tmp_path_factory.mktemp("hard") / "ws"
    assert run("init", "--encoder", "samples", "--aligned", "-w", ws)[0] == 0
    code, _, err = run("enroll", tree, "-w", ws)
    assert code == 0, err
    return ws


@pytest.fixture(scope="session")
def erased_base(base, tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("hard-erased") / "ws"
    shutil.copytree(base, ws)
    code, _, err = run("forget", "--identity", TARGET, "--method", "esc", "--k", "2", "-w", ws)
    assert code == 0, err
    return ws


@pytest.fixture
def ws(base, tmp_path) -> Path:
    shutil.copytree(base, tmp_path / "ws")
    return tmp_path / "ws"


@pytest.fixture
def erased(erased_base, tmp_path) -> Path:
    shutil.copytree(erased_base, tmp_path / "erased")
    return tmp_path / "erased"


@pytest.fixture
def good_image(synthetic_photos) -> Path:
    return sorted(synthetic_photos[1].iterdir())[0]


# ---------------------------------------------------------------------------- 1. images
@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_search_refuses_a_bad_image(ws, tmp_path, case):
    path = write_bad(tmp_path / "img", case)
    refused(ws, "search", path, needle=BAD_IMAGES[case][2])


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_forget_refuses_request_photos_that_are_all_bad(ws, tmp_path, case):
    folder = tmp_path / "request"
    write_bad(folder, case)
    refused(ws, "forget", "--identity", TARGET, "--images", folder, needle="no usable face")


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_verify_refuses_photos_that_are_all_bad(erased, tmp_path, case):
    folder = tmp_path / "probe"
    write_bad(folder, case)
    refused(erased, "verify", "--identity", TARGET, "--images", folder, needle="no usable face")


def test_enrolment_skips_and_names_bad_images_and_goes_on(ws, tmp_path, synthetic_photos):
    import resource

    tree = tmp_path / "tree"
    person = tree / "4242"
    person.mkdir(parents=True)
    good = sorted(synthetic_photos[1].iterdir())[:2]  # never enrolled: new sha256s
    for j, src in enumerate(good):
        shutil.copy(src, person / f"good{j}.png")
    for j, case in enumerate(BAD_IMAGES):
        name, content, _ = BAD_IMAGES[case]
        target = person / f"bad{j}{Path(name).suffix}"
        content(target) if callable(content) else target.write_bytes(content)
    code, out, err = run("enroll", tree, "-w", ws)
    assert code == 0, err
    assert "enrolled 2 face(s)" in out
    for j, case in enumerate(BAD_IMAGES):
        line = next(ln for ln in err.splitlines() if f"bad{j}." in ln)
        assert line.startswith("skipped ") and BAD_IMAGES[case][2] in line.lower(), line
    assert "Traceback" not in err
    # The bombs and the 3 GB file were refused before decoding: no gigabyte allocations.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss < 2_500_000  # KiB
    assert run("check", "-w", ws)[0] == 0


def test_image_limits_come_from_config(ws, good_image):
    cfg = ws / "config.toml"
    cfg.write_text(cfg.read_text().replace("max_image_pixels = 50000000", "max_image_pixels = 100"))
    code, _, err = run("search", good_image, "-w", ws)
    one_error_line(code, err, "too large")


# ---------------------------------------------------------------------------- 2. options
OPTIONS = {
    "identity 2^63": ["forget", "--identity", 2 ** 63],
    "identity -2^63-1": ["forget", "--identity", -(2 ** 63) - 1],
    "identity 10^30": ["forget", "--identity", 10 ** 30],
    "identity word": ["forget", "--identity", "bob"],
    "identity empty": ["forget", "--identity", ""],
    "identity float": ["forget", "--identity", "1.5"],
    "identity missing": ["forget"],
    "unknown identity": ["forget", "--identity", 99999],
    "k zero": ["forget", "--identity", TARGET, "--k", "0"],
    "k above rank": ["forget", "--identity", TARGET, "--k", "500"],
    "p negative": ["forget", "--identity", TARGET, "--p", "-1"],
    "energy above 1": ["forget", "--identity", TARGET, "--energy", "2"],
    "two rules": ["forget", "--identity", TARGET, "--p", "2", "--k", "1"],
    "bad method": ["forget", "--identity", TARGET, "--method", "magic"],
    "rule with scramble": ["forget", "--identity", TARGET, "--method", "scramble", "--k", "2"],
    "forget images missing": ["forget", "--identity", TARGET, "--images", "/nonexistent/x"],
    "verify identity 2^63": ["verify", "--identity", 2 ** 63],
    "verify not erased": ["verify", "--identity", KNOWN],
    "search k 0": ["search", "x.png", "-k", "0"],
    "search k 101": ["search", "x.png", "-k", "101"],
    "search missing": ["search", "/nonexistent/a.png"],
    "search a directory": ["search", "/tmp"],
    "search /dev/null": ["search", "/dev/null"],
    "unknown command": ["frobnicate"],
    "unknown option": ["identities", "--frob"],
    "extra argument": ["identities", "extra"],
    "ledger unknown receipt": ["ledger", "--receipt", "nope"],
    "report unknown receipt": ["report", "--receipt", "nope"],
    "report without deletions": ["report"],
    "export without target": ["export-onnx"],
    "enroll missing tree": ["enroll", "/nonexistent/tree"],
    "enroll tree is a file": ["enroll", "/etc/hostname"],
    "init over a workspace": ["init", "--encoder", "samples"],
    "forget images not a dir": ["forget", "--identity", TARGET, "--images", "/etc/hostname"],
}


@pytest.mark.parametrize("case", list(OPTIONS))
def test_bad_options_are_refused(ws, case):
    refused(ws, *OPTIONS[case])


INIT_OPTIONS = {
    "unknown encoder": ["--encoder", "bogus"],
    "encoder file missing": ["--encoder", "onnx:/nonexistent.onnx"],
    "threshold above 1": ["--encoder", "samples", "--threshold", "5"],
    "unknown index": ["--encoder", "samples", "--index", "hnsw"],
}


@pytest.mark.parametrize("case", list(INIT_OPTIONS))
def test_bad_init_is_refused_and_leaves_nothing(tmp_path, case):
    target = tmp_path / "new"
    code, _, err = run("init", *INIT_OPTIONS[case], "-w", target)
    one_error_line(code, err)
    assert not (target / "config.toml").exists()


@pytest.mark.parametrize("where", ["missing", "a file", "empty dir"])
def test_workspace_that_is_not_one(tmp_path, where):
    target = tmp_path / "w"
    if where == "a file":
        target.write_text("x")
    elif where == "empty dir":
        target.mkdir()
    one_error_line(*run("identities", "-w", target)[::2])


# ---------------------------------------------------------------------------- 3. export-onnx
def _outside_text(tmp: Path) -> Path:
    p = tmp / "notes.txt"
    p.write_text("precious notes")
    return p


def _fifo(tmp: Path) -> Path:
    p = tmp / "pipe.onnx"
    os.mkfifo(p)
    return p


def _link_into(ws: Path, tmp: Path) -> Path:
    p = tmp / "link.onnx"
    p.symlink_to(ws / "gallery" / "gallery.sqlite")
    return p


def _dangling(tmp: Path) -> Path:
    p = tmp / "dangling.onnx"
    p.symlink_to(tmp / "nowhere" / "x")
    return p


def _parent_is_file(tmp: Path) -> Path:
    (tmp / "plain").write_text("x")
    return tmp / "plain" / "m.onnx"


def _png(tmp: Path) -> Path:
    p = tmp / "photo.onnx"
    p.write_bytes(png_bytes(4, 4))
    return p


def _empty(tmp: Path) -> Path:
    p = tmp / "empty.onnx"
    p.write_bytes(b"")
    return p


def _dir(tmp: Path) -> Path:
    (tmp / "adir").mkdir()
    return tmp / "adir"


EXPORT_TARGETS = {
    "gallery.sqlite": lambda ws, tmp: ws / "gallery" / "gallery.sqlite",
    "vectors file": lambda ws, tmp: next((ws / "gallery").glob("vectors-*.npy")),
    "config.toml": lambda ws, tmp: ws / "config.toml",
    "new file in the workspace": lambda ws, tmp: ws / "model.onnx",
    "the workspace itself": lambda ws, tmp: ws,
    "the gallery folder": lambda ws, tmp: ws / "gallery",
    "relative path into the workspace": lambda ws, tmp: Path(os.path.relpath(ws / "config.toml")),
    "symlink into the workspace": _link_into,
    "a directory": lambda ws, tmp: _dir(tmp),
    "/dev/null": lambda ws, tmp: Path("/dev/null"),
    "a FIFO": lambda ws, tmp: _fifo(tmp),
    "/proc/self/status": lambda ws, tmp: Path("/proc/self/status"),
    "/proc missing dir": lambda ws, tmp: Path("/proc/nonexistent/m.onnx"),
    "/sys file": lambda ws, tmp: Path("/sys/kernel/m.onnx"),
    "text file": lambda ws, tmp: _outside_text(tmp),
    "png file": lambda ws, tmp: _png(tmp),
    "empty file": lambda ws, tmp: _empty(tmp),
    "dangling symlink": lambda ws, tmp: _dangling(tmp),
    "parent is a file": lambda ws, tmp: _parent_is_file(tmp),
}


@pytest.mark.parametrize("case", list(EXPORT_TARGETS))
def test_export_onnx_never_overwrites_what_is_not_a_model(ws, tmp_path, case):
    target = EXPORT_TARGETS[case](ws, tmp_path)
    before = target.read_bytes() if target.is_file() and not str(target).startswith("/proc") else None
    refused(ws, "export-onnx", target)
    if before is not None:
        assert target.read_bytes() == before


def test_export_onnx_replaces_a_model_and_force_replaces_anything(ws, tmp_path):
    model = tmp_path / "m.onnx"
    assert run("export-onnx", model, "-w", ws)[0] == 0
    assert run("export-onnx", model, "-w", ws)[0] == 0  # an ONNX model: replaced atomically
    notes = _outside_text(tmp_path)
    code, _, err = run("export-onnx", notes, "--force", "-w", ws)
    assert code == 0, err
    assert notes.read_bytes()[:1] == b"\x08"


def test_onnx_checker_error_during_export_is_one_line(ws, tmp_path, monkeypatch):
    import onnx

    from facekd.encoders.samples import SamplesEncoder

    def broken(self, path, *, opset=17):  # what TorchEncoder.to_onnx's check_model raises
        raise onnx.checker.ValidationError("Field 'type' of 'value_info' is required but missing.")
    monkeypatch.setattr(SamplesEncoder, "to_onnx", broken)

    refused(ws, "export-onnx", tmp_path / "m.onnx", needle="onnx.checker")
    assert not (tmp_path / "m.onnx").exists()


# ---------------------------------------------------------------------------- 4. trees
def _tree(tmp: Path, folders: dict[str, int], good: object = None) -> Path:
    """A tree of never-enrolled renders (fresh sha256s), ``n`` per folder."""
    from facekd.faces.synthfaces import render_identity

    tree = tmp / "tree"
    tree.mkdir()
    for k, (folder, n) in enumerate(folders.items()):
        (tree / folder).mkdir()
        for j, chip in enumerate(render_identity(9000 + k, n, seed=0, image_offset=50) if n else []):
            cv2.imwrite(str(tree / folder / f"{j}.png"), cv2.cvtColor(chip, cv2.COLOR_RGB2BGR))
    return tree


TREES = {
    "no folders": {},
    "folder without images": {"5000": 0},
    "23-digit folder": {"1" * 23: 2},
    "negative 20-digit folder": {"-" + "9" * 20: 2},
    "folder 2^63": {str(2 ** 63): 2},
}


@pytest.mark.parametrize("case", list(TREES))
def test_bad_trees_are_refused(ws, tmp_path, synthetic_photos, case):
    good = sorted((synthetic_photos[0] / str(IDS[2])).iterdir())
    tree = _tree(tmp_path, TREES[case], good)
    if case == "folder without images":
        (tree / "5000" / "notes.txt").write_text("no pictures here")
    refused(ws, "enroll", tree)


@pytest.mark.parametrize("with_csv", [False, True])
def test_non_utf8_folder_is_refused(ws, tmp_path, synthetic_photos, with_csv):
    good = sorted((synthetic_photos[0] / str(IDS[2])).iterdir())
    tree = _tree(tmp_path, {"5000": 2}, good)
    odd = os.fsencode(tree) + b"/caf\xe9"
    os.mkdir(odd)
    shutil.copy(good[0], os.fsdecode(odd + b"/0.png"))
    args = ["enroll", tree]
    if with_csv:
        (tmp_path / "ids.csv").write_text("5000,5000,Someone\n", encoding="utf-8")
        args += ["--ids", tmp_path / "ids.csv"]
    refused(ws, *args, needle="neither integer" if with_csv else "not valid UTF-8")


# ---------------------------------------------------------------------------- 5. ids CSVs
CSVS = {
    "latin-1": "alice,5000,Jos\xe9\n".encode("latin-1"),
    "utf-16": "alice,5000,Ann\n".encode("utf-16"),
    "binary garbage": bytes(range(256)) * 8,
    "NUL bytes": b"alice,5000\0,Ann\n",
    "id 2^63": f"alice,{2 ** 63},Ann\n".encode(),
    "id -2^63-1": f"alice,{-(2 ** 63) - 1},Ann\n".encode(),
    "id 10^30": f"alice,{10 ** 30},Ann\n".encode(),
    "id not an integer": b"folder,identity\nalice,five\n",
    "id float": b"folder,identity\nalice,1.5\n",
    "id with a space": b"folder,identity\nalice,12 34\n",
    "one column": b"folder,identity\nalice\n",
    "1 MB name": b"alice,5000," + b"x" * 1_000_000 + b"\n",
    "2000-character name": b"alice,5000," + b"y" * 2000 + b"\n",
    "folder listed twice": b"alice,5000\nalice,5001\n",
    "two folders one id": b"alice,5000,Ann\nbob,5000,Bob\n",
    "new folder onto an enrolled id": f"alice,{KNOWN},Ann\n".encode(),
    "header only": b"folder,identity,name\n",
    "empty": b"",
}


@pytest.mark.parametrize("case", list(CSVS))
def test_bad_ids_csv_is_refused(ws, tmp_path, synthetic_photos, case):
    good = sorted((synthetic_photos[0] / str(IDS[2])).iterdir())
    tree = _tree(tmp_path, {"alice": 2, "bob": 2}, good)
    csv = tmp_path / "ids.csv"
    content = CSVS[case]
    if case not in ("two folders one id",):  # bob needs a row of its own elsewhere
        content += b"\nbob,6000,Bob\n" if case not in ("header only", "empty") else b""
    csv.write_bytes(content)
    refused(ws, "enroll", tree, "--ids", csv)


@pytest.mark.parametrize("case", ["missing", "a directory"])
def test_ids_csv_that_is_not_a_file(ws, tmp_path, synthetic_photos, case):
    good = sorted((synthetic_photos[0] / str(IDS[2])).iterdir())
    tree = _tree(tmp_path, {"alice": 1}, good)
    csv = tmp_path / "ids.csv"
    if case == "a directory":
        csv.mkdir()
    refused(ws, "enroll", tree, "--ids", csv)


def test_bom_csv_is_accepted_and_merge_is_explicit(ws, tmp_path, synthetic_photos):
    tree = _tree(tmp_path, {"alice": 2, "bob": 2})
    csv = tmp_path / "ids.csv"
    csv.write_bytes("\ufefffolder,identity,name\nalice,5000,Ann\nbob,5000,Ann\n".encode("utf-8"))
    one_error_line(*run("enroll", tree, "--ids", csv, "-w", ws)[::2], "merge")
    code, out, err = run("enroll", tree, "--ids", csv, "--merge", "-w", ws)
    assert code == 0, err
    rows = json.loads(run("identities", "--json", "-w", ws)[1])
    assert {"identity": 5000, "name": "Ann", "faces": 4} in rows
    # the same CSV again is a resume, not a merge
    assert run("enroll", tree, "--ids", csv, "--merge", "-w", ws)[0] == 0


# ---------------------------------------------------------------------------- 6. config.toml
CONFIGS = {  # case -> (table, key, value)
    'p = "x"': ("forget", "p", "x"),
    'seed = "a"': ("forget", "seed", "a"),
    "seed = -1": ("forget", "seed", -1),
    "spec = 3": ("encoder", "spec", 3),
    'spec = "bogus"': ("encoder", "spec", "bogus"),
    'match_threshold = "x"': ("gallery", "match_threshold", "x"),
    "match_threshold = 7": ("gallery", "match_threshold", 7),
    'scramble_q = "x"': ("forget", "scramble_q", "x"),
    "scramble_q = 2": ("forget", "scramble_q", 2),
    'scramble_q_one = "x"': ("forget", "scramble_q_one", "x"),
    "scramble_q_one = 1": ("forget", "scramble_q_one", 1),
    'scramble_spare = "x"': ("forget", "scramble_spare", "x"),
    "scramble_spare = 1": ("forget", "scramble_spare", 1),
    'scramble_alpha = "x"': ("forget", "scramble_alpha", "x"),
    "scramble_guard = 0": ("forget", "scramble_guard", 0),
    'scramble_guard = "x"': ("forget", "scramble_guard", "x"),
    "scramble_guard = 2": ("forget", "scramble_guard", 2),
    "scramble_guard_keep = 0": ("forget", "scramble_guard_keep", 0),
    "scramble_guard_keep = 1.5": ("forget", "scramble_guard_keep", 1.5),
    "scramble_stranger_cap = -1": ("forget", "scramble_stranger_cap", -1),
    'scramble_stranger_cap = "x"': ("forget", "scramble_stranger_cap", "x"),
    "scramble_soft_from = 1": ("forget", "scramble_soft_from", 1),
    "scramble_soft_from = -2": ("forget", "scramble_soft_from", -2),
    'scramble_soft_from = "x"': ("forget", "scramble_soft_from", "x"),
    "scramble_soft_from = 2.5": ("forget", "scramble_soft_from", 2.5),
    'method = "magic"': ("forget", "method", "magic"),
    "method = 1": ("forget", "method", 1),
    "k = 0": ("forget", "k", 0),
    "k = true": ("forget", "k", True),
    "k = 1.5": ("forget", "k", 1.5),
    "energy = 2": ("forget", "energy", 2),
    "p = nan": ("forget", "p", float("nan")),
    "p = inf": ("forget", "p", float("inf")),
    "p = 0": ("forget", "p", 0),
    "min_vectors = 0": ("forget", "min_vectors", 0),
    'min_vectors = "2"': ("forget", "min_vectors", "2"),
    "esc_t_lr = 0": ("forget", "esc_t_lr", 0),
    'esc_t_normalize_step = "yes"': ("forget", "esc_t_normalize_step", "yes"),
    'aligned = "yes"': ("encoder", "aligned", "yes"),
    'index = "hnsw"': ("gallery", "index", "hnsw"),
    "far = 0": ("acceptance", "far", 0),
    "max_tar = 2": ("acceptance", "max_tar", 2),
    'max_rank1_over_chance = "x"': ("acceptance", "max_rank1_over_chance", "x"),
    'max_image_bytes = "x"': ("images", "max_image_bytes", "x"),
    "max_image_pixels = 0": ("images", "max_image_pixels", 0),
    "forget table is a list": (None, "forget", [1, 2]),
    "unknown key": ("forget", "frobnicate", 1),
}
RAW_CONFIGS = {
    "invalid TOML": b"[encoder\nspec = ",
    "not UTF-8": b'[encoder]\nspec = "samples\xff"\n',
    "no encoder table": b"[gallery]\nindex = \"flat\"\n",
    "encoder is a string": b'encoder = "samples"\n',
    "empty": b"",
}


@pytest.mark.parametrize("case", list(CONFIGS) + list(RAW_CONFIGS))
def test_bad_config_values_are_refused(ws, good_image, case):
    import tomllib

    import tomli_w

    cfg = ws / "config.toml"
    original = cfg.read_bytes()
    if case in CONFIGS:
        table, key, value = CONFIGS[case]
        data = tomllib.loads(original.decode())
        (data if table is None else data.setdefault(table, {}))[key] = value
        bad = tomli_w.dumps(data).encode()
    else:
        bad = RAW_CONFIGS[case]
    refused(ws, "search", good_image, damage=lambda: cfg.write_bytes(bad),
            undo=lambda: cfg.write_bytes(original))


def test_config_toml_that_is_a_directory(ws):
    cfg = ws / "config.toml"
    original = cfg.read_bytes()

    def damage() -> None:
        cfg.unlink()
        cfg.mkdir()

    def undo() -> None:
        cfg.rmdir()
        cfg.write_bytes(original)
    refused(ws, "identities", damage=damage, undo=undo)


# ---------------------------------------------------------------------------- 7. damaged files
def _flip16(path: Path) -> bytes:
    data = path.read_bytes()
    bad = bytearray(data)
    mid = 128 + (len(bad) - 128) // 2
    for i in range(16):
        bad[mid + i] ^= 0x5A
    path.write_bytes(bytes(bad))
    return data


FLIP_COMMANDS = {
    "search": lambda img, out: ["search", img],
    "forget": lambda img, out: ["forget", "--identity", TARGET],
    "enroll": lambda img, out: ["enroll", img.parent.parent],
}
# Commands that never read the vectors do not hash them (a reader hashes them in the read that
# loads them, before any is used): they work, and `check` still reports the damage.
NO_VECTOR_COMMANDS = {
    "identities": lambda img, out: ["identities"],
    "ledger": lambda img, out: ["ledger"],
    "export-onnx": lambda img, out: ["export-onnx", out],
}


@pytest.mark.parametrize("command", list(NO_VECTOR_COMMANDS))
def test_commands_that_do_not_read_vectors_work_beside_flipped_bytes(ws, tmp_path, good_image,
                                                                    command):
    vec = next((ws / "gallery").glob("vectors-*.npy"))
    before = snapshot(ws)
    original = _flip16(vec)
    code, _, err = run(*NO_VECTOR_COMMANDS[command](good_image, tmp_path / "m.onnx"), "-w", ws)
    assert code == 0, err
    code, out, _ = run("check", "-w", ws)
    assert code == 1 and vec.name in out
    vec.write_bytes(original)
    assert snapshot(ws) == before


@pytest.mark.parametrize("command", list(FLIP_COMMANDS))
def test_flipped_vector_bytes_are_refused_not_used(ws, tmp_path, good_image, synthetic_photos,
                                                   command):
    vec = next((ws / "gallery").glob("vectors-*.npy"))
    args = FLIP_COMMANDS[command](good_image, tmp_path / "m.onnx")
    if command == "enroll":
        args = ["enroll", synthetic_photos[0]]
    before = snapshot(ws)
    original = _flip16(vec)
    code, _, err = run(*args, "-w", ws)
    line = one_error_line(code, err, "damaged")
    assert vec.name in line
    code, out, _ = run("check", "-w", ws)  # check reports it (exit 1) instead of refusing
    assert code == 1 and vec.name in out
    vec.write_bytes(original)
    assert snapshot(ws) == before
    assert not (tmp_path / "m.onnx").exists()


def test_flipped_vector_bytes_refused_by_verify(erased, synthetic_photos):
    vec = next((erased / "gallery").glob("vectors-*.npy"))
    original_ = vec.read_bytes()
    before = snapshot(erased)
    _flip16(vec)
    code, _, err = run("verify", "--identity", TARGET, "--images", synthetic_photos[1], "-w", erased)
    one_error_line(code, err, "damaged")
    vec.write_bytes(original_)
    assert snapshot(erased) == before


def _sql(ws: Path, statement: str, *params) -> None:
    con = sqlite3.connect(ws / "gallery" / "gallery.sqlite")
    con.execute(statement, params)
    con.commit()
    con.close()


def _damage_last_page(ws: Path) -> None:
    db = ws / "gallery" / "gallery.sqlite"
    data = bytearray(db.read_bytes())
    data[-4096:] = os.urandom(4096)
    db.write_bytes(bytes(data))


DAMAGE = {
    "truncated vectors": (lambda ws: (lambda v: v.write_bytes(v.read_bytes()[:-100]))(
        next((ws / "gallery").glob("vectors-*.npy"))), ["identities"]),
    "missing vectors": (lambda ws: next((ws / "gallery").glob("vectors-*.npy")).unlink(),
                        ["identities"]),
    "garbage database": (lambda ws: (ws / "gallery" / "gallery.sqlite").write_bytes(b"junk" * 2048),
                         ["identities"]),
    # Readers only meet SQLite's own checks of the pages they read; a writer scans every page
    # (quick_check) before changing anything.
    "database last page": (_damage_last_page, ["forget", "--identity", str(TARGET)]),
    "ledger meta not JSON": (lambda ws: _sql(ws, "UPDATE meta SET value=? WHERE key='ledger'",
                                             b"[{broken"), ["ledger"]),
    "encoder_state meta not JSON": (lambda ws: _sql(
        ws, "UPDATE meta SET value=? WHERE key='encoder_state'", b"\xff\xfe"), ["search", "IMG"]),
    "erasure meta garbage": (lambda ws: _sql(ws, "UPDATE meta SET value=? WHERE key='erasure'",
                                             b"PK\x03\x04garbage"), ["search", "IMG"]),
    "salt meta missing": (lambda ws: _sql(ws, "DELETE FROM meta WHERE key='salt'"),
                          ["forget", "--identity", str(TARGET)]),
    "settings files damaged": (lambda ws: _sql(ws, "UPDATE gallery SET value='{' WHERE key='files'"),
                               ["identities"]),
    "gallery folder missing": (lambda ws: shutil.rmtree(ws / "gallery"), ["identities"]),
    "writer.lock is a directory (forget)": (
        lambda ws: ((ws / "gallery" / "writer.lock").unlink(missing_ok=True),
                    (ws / "gallery" / "writer.lock").mkdir()), ["forget", "--identity", str(TARGET)]),
    "writer.lock is a directory (enroll)": (
        lambda ws: ((ws / "gallery" / "writer.lock").unlink(missing_ok=True),
                    (ws / "gallery" / "writer.lock").mkdir()), ["enroll", "TREE"]),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_workspace_files_are_refused(ws, tmp_path, good_image, synthetic_photos, case):
    damage, args = DAMAGE[case]
    args = [good_image if a == "IMG" else synthetic_photos[0] if a == "TREE" else a for a in args]
    backup = tmp_path / "backup"
    shutil.copytree(ws, backup)

    def undo() -> None:
        shutil.rmtree(ws)
        shutil.copytree(backup, ws)
    before = snapshot(ws)
    damage(ws)
    code, _, err = run(*args, "-w", ws)
    one_error_line(code, err)
    undo()
    assert snapshot(ws) == before


def test_writer_lock_directory_does_not_stop_readers(ws, good_image):
    lock = ws / "gallery" / "writer.lock"
    lock.unlink(missing_ok=True)
    lock.mkdir()
    assert run("identities", "-w", ws)[0] == 0
    assert run("search", good_image, "-w", ws)[0] == 0


def test_check_verifies_receipt_files(erased):
    (receipt,) = (erased / "receipts").glob("*.json")
    data = json.loads(receipt.read_text())
    data["method"] = "forged"
    receipt.write_text(json.dumps(data))
    code, out, _ = run("check", "-w", erased)
    assert code == 1 and receipt.name in out and "committed receipt" in out
    (erased / "receipts" / "extra.json").write_text("{}")
    assert "not a committed receipt" in run("check", "-w", erased)[1]


# ---------------------------------------------------------------------------- 8. disks
def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def read_only(erased, tmp_path):
    """The erased workspace bind-mounted read-only (root), or made unwritable (others)."""
    if os.geteuid() != 0:
        for p in [erased, *erased.rglob("*")]:
            p.chmod(p.stat().st_mode & ~0o222)
        yield erased
        for p in [erased, *erased.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)
        return
    target = tmp_path / "ro"
    target.mkdir()
    if not (_mount("--bind", str(erased), str(target))
            and _mount("-o", "remount,ro,bind", str(target))):
        subprocess.run(["umount", str(target)], capture_output=True)
        pytest.skip("cannot bind-mount read-only here (mount failed)")
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], capture_output=True)


def test_readers_work_on_a_read_only_workspace(read_only, good_image, synthetic_photos, tmp_path):
    assert run("identities", "-w", read_only)[0] == 0
    assert run("ledger", "-w", read_only)[0] == 0
    code, out, err = run("check", "-w", read_only)
    assert code == 0 and out.strip() == "ok", (out, err)
    code, out, err = run("search", good_image, "-w", read_only)
    assert code == 0, err
    code, out, err = run("verify", "--identity", TARGET, "--images", synthetic_photos[1],
                         "-w", read_only)
    assert code in (0, 1, 3) and "error" not in err, err
    assert "not recorded" in out  # a read-only workspace is verified, not written
    assert run("export-onnx", tmp_path / "m.onnx", "-w", read_only)[0] == 0


@pytest.mark.parametrize("args", [["forget", "--identity", str(KNOWN)], ["enroll", "TREE"]],
                         ids=["forget", "enroll"])
def test_writers_refuse_a_read_only_workspace(read_only, synthetic_photos, args):
    args = [synthetic_photos[0] if a == "TREE" else a for a in args]
    code, _, err = run(*args, "-w", read_only)
    one_error_line(code, err, "read-only")


@pytest.fixture
def full_disk(ws, tmp_path):
    """The workspace on a small tmpfs that is then filled up (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if not _mount("-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)):
        pytest.skip("cannot mount a tmpfs here (mount failed)")
    try:
        dst = mnt / "ws"
        shutil.copytree(ws, dst)
        filler = mnt / "filler"
        with open(filler, "wb") as fh:
            try:
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        yield dst, filler
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


@pytest.mark.parametrize("command", ["forget", "enroll"])
def test_full_disk_is_one_line_and_commits_nothing(full_disk, tmp_path, synthetic_photos, command):
    dst, filler = full_disk
    good = sorted((synthetic_photos[0] / str(IDS[2])).iterdir())
    tree = _tree(tmp_path, {"5000": 4}, good)
    args = ["forget", "--identity", str(TARGET)] if command == "forget" else ["enroll", tree]
    code, _, err = run(*args, "-w", dst)
    filler.unlink()
    if code == 0:  # a filesystem that found room after all: nothing to test
        pytest.skip("the write fitted")
    one_error_line(code, err)
    assert run("check", "-w", dst)[0] == 0


def test_enospc_while_saving_vectors_is_one_line(ws, monkeypatch):
    import gallery_tools.generations as gmod  # where a save writes its vector file

    def full(path, vectors, progress=False):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(gmod, "write_vectors", full)
    line = refused(ws, "forget", "--identity", TARGET, needle="No space left")
    assert "(" not in line.split("No space")[0]  # no raw errno tuple


# ---------------------------------------------------------------------------- 9. names
NASTY_NAMES = ["\x1b]0;pwned\x07", "Bob\n      1234      9  Alice", "\x1b[2J\x1b[H", "evil\u202egnp.exe",
               "tab\tand\rcr"]


def test_names_are_escaped_on_output(ws, tmp_path, synthetic_photos, good_image):
    good = sorted((synthetic_photos[0] / str(IDS[2])).iterdir())
    folders = {f"p{j}": 2 for j in range(len(NASTY_NAMES))}
    tree = _tree(tmp_path, folders, good)
    import csv as _csv

    with open(tmp_path / "ids.csv", "w", newline="", encoding="utf-8") as fh:
        w = _csv.writer(fh)
        for j, name in enumerate(NASTY_NAMES):
            w.writerow([f"p{j}", 7000 + j, name])
    code, _, err = run("enroll", tree, "--ids", tmp_path / "ids.csv", "-w", ws)
    assert code == 0, err
    code, out, _ = run("identities", "-w", ws)
    assert code == 0 and "\x1b" not in out and "\u202e" not in out and "\r" not in out
    assert len(out.strip().splitlines()) == 1 + len(IDS) + len(NASTY_NAMES)  # no forged rows
    assert "\\x1b]0;pwned\\x07" in out
    code, out, _ = run("search", tree / "p0" / "0.png", "-k", "100", "-w", ws)
    assert code == 0 and "\x1b" not in out and "\\x1b" in out


# ---------------------------------------------------------------------------- 10. forget extras
def test_forget_rerun_after_commit_reports_the_receipt(erased):
    before = snapshot(erased)
    code, out, err = run("forget", "--identity", TARGET, "-w", erased)
    assert code == 0 and "already erased" in out, err
    assert snapshot(erased) == before


def test_forget_with_photos_of_someone_else_needs_force(ws, tmp_path, synthetic_photos):
    folder = tmp_path / "wrong"
    folder.mkdir()
    # renders of identities far from TARGET: they do not look like the person
    for other in IDS[:3]:
        for src in sorted((synthetic_photos[0] / str(other)).iterdir())[:2]:
            shutil.copy(src, folder / f"{other}-{src.name}")
    refused(ws, "forget", "--identity", TARGET, "--images", folder, needle="--force")
    code, _, err = run("forget", "--identity", TARGET, "--images", folder, "--force", "-w", ws)
    assert code == 0 and "warning: " in err and "do not look like" in err


# ---------------------------------------------------------------------------- 11. SIGKILL export
def test_sigkill_during_export_onnx_leaves_old_or_complete_model(ws, tmp_path):
    import onnx

    env = {**os.environ, "FACEKD_WORKSPACE": str(ws)}
    cmd = [sys.executable, "-m", "facekd.cli", "export-onnx"]
    old = tmp_path / "old.onnx"
    t0 = time.perf_counter()
    assert subprocess.run(cmd + [str(old)], env=env, capture_output=True).returncode == 0
    span = time.perf_counter() - t0
    old_bytes = old.read_bytes()
    rng = random.Random(0)
    outcomes = {"absent": 0, "old": 0, "complete": 0}
    for trial in range(20):
        target = tmp_path / f"t{trial}" / "m.onnx"
        target.parent.mkdir()
        if trial % 2:
            target.write_bytes(old_bytes)
        proc = subprocess.Popen(cmd + [str(target)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 1.1) * span)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if not target.exists():
            assert trial % 2 == 0
            outcomes["absent"] += 1
        elif target.read_bytes() == old_bytes:
            outcomes["old"] += 1
        else:
            onnx.checker.check_model(str(target))
            outcomes["complete"] += 1
    assert sum(outcomes.values()) == 20


# ------------------------------------------------------------------ round 2: links and leftovers
def test_an_earlier_generation_left_on_disk_is_reported_and_repaired(ws, tmp_path):
    """A kill between forget's commit and its clean-up leaves the previous generation's files,
    which hold the erased person's raw vectors: check names them, check --repair deletes them."""
    gallery = ws / "gallery"
    before = {p.name: p.read_bytes() for p in gallery.glob("*-*.npy")}
    code, _, err = run("forget", "--identity", TARGET, "-w", ws)
    assert code == 0, err
    for name, data in before.items():  # what the kill would have left behind
        (gallery / name).write_bytes(data)
    code, out, _ = run("check", "-w", ws)
    assert code == 1 and "may hold the vectors of faces erased since" in out
    code, out, _ = run("check", "--repair", "-w", ws)
    assert code == 0 and out.strip() == "ok", out
    assert not any((gallery / name).exists() for name in before)


def test_a_symlinked_receipts_folder_is_refused_and_reported(erased, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    receipts = erased / "receipts"
    for f in receipts.iterdir():
        f.rename(outside / f.name)
    receipts.rmdir()
    receipts.symlink_to(outside, target_is_directory=True)
    code, out, _ = run("check", "-w", erased)
    assert code == 1 and "symbolic link" in out


def _special_files(folder: Path) -> list[str]:
    """A FIFO, a link to /dev/zero and a dangling link, all named like photos."""
    os.mkfifo(folder / "pipe.jpg")
    (folder / "zero.png").symlink_to("/dev/zero")
    (folder / "gone.jpg").symlink_to(folder / "nowhere.jpg")
    return ["pipe.jpg", "zero.png", "gone.jpg"]


def test_special_files_in_an_enrol_tree_are_named_as_skipped_with_a_reason(ws, tmp_path,
                                                                            synthetic_photos):
    person = tmp_path / "tree" / "4242"
    person.mkdir(parents=True)
    shutil.copy(sorted(synthetic_photos[1].iterdir())[0], person / "good.png")
    names = _special_files(person)
    code, out, err = run("enroll", tmp_path / "tree", "-w", ws)
    assert code == 0 and "enrolled 1 face(s)" in out, err
    reasons = {n: next(ln for ln in err.splitlines() if n in ln) for n in names}
    assert "FIFO" in reasons["pipe.jpg"] and "device" in reasons["zero.png"]
    assert "broken symbolic link" in reasons["gone.jpg"]


def test_special_files_sent_with_images_are_named_and_never_opened(erased, tmp_path,
                                                                    synthetic_photos):
    folder = tmp_path / "photos"
    folder.mkdir()
    for src in sorted(synthetic_photos[1].iterdir())[:3]:
        shutil.copy(src, folder / src.name)
    _special_files(folder)
    code, out, err = run("verify", "--identity", TARGET, "--images", folder, "--no-record",
                         "-w", erased)
    assert code in (0, 1, 3) and "Traceback" not in err, err
    skipped = [ln for ln in out.splitlines() if "skipped" in ln]
    assert len(skipped) == 3 and any("FIFO" in ln for ln in skipped)
    code, _, err = run("search", folder / "zero.png", "-w", erased)
    one_error_line(code, err, "not a regular file (a device)")


@pytest.mark.parametrize("where", ["vacuum", "receipt file"])
def test_a_failure_after_forgets_commit_is_a_warning_and_the_erasure_stands(ws, monkeypatch,
                                                                             where):
    """Past the commit point the erasure is in force: a full disk or a file-size limit while
    vacuuming or writing the receipt file must not read as a failed forget (exit 0, a warning),
    and `check` finishes what was left."""
    import sqlite3 as _sqlite3

    from facekd.workspace import Workspace
    from gallery_tools.store import Store

    def fail(*_a, **_k):
        if where == "vacuum":
            raise _sqlite3.OperationalError("disk I/O error")
        raise OSError(errno.EFBIG, "File too large")

    if where == "vacuum":
        monkeypatch.setattr(Store, "vacuum", fail)
    else:
        monkeypatch.setattr(Workspace, "write_receipt_file", fail)
    code, out, err = run("forget", "--identity", TARGET, "-w", ws)
    assert code == 0 and f"erased identity {TARGET}" in out, err
    assert "warning:" in err and "committed" in err
    monkeypatch.undo()
    with Workspace.open(ws) as w:
        assert not w.gallery.has_identity(TARGET) and len(w.ledger()) == 1
    code, out, _ = run("check", "-w", ws)
    assert code == 0 and out.strip() == "ok", out
    with Workspace.open(ws) as w:
        assert w.receipt_path(w.ledger()[0]["receipt_id"]).is_file()
