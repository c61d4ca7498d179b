"""``facekd report --html``: the one-screen summary, the bench plots, and nothing that names the
erased person. One small workspace (synthetic faces, the bundled test encoder) has a named
person erased; the page is parsed as HTML. Headless Chromium renders it when installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import cv2
import pytest

from conftest import SYNTH_TARGET, run_cli
from facekd.state import receipt as rc

NAME = "Jane_Doe"


class _Sections(HTMLParser):
    """Text per ``<section id=...>``, every ``<img>`` ``src`` and ``<h2>`` heading."""

    def __init__(self):
        super().__init__()
        self.sections: dict[str, str] = {}
        self.images: list[str] = []
        self.headings: list[str] = []
        self._stack: list[str | None] = []
        self._h2 = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self._stack.append(a.get("id"))
            self.sections.setdefault(a.get("id"), "")
        elif tag == "img":
            self.images.append(a.get("src", ""))
        elif tag == "h2":
            self._h2 = True
            self.headings.append("")

    def handle_endtag(self, tag):
        if tag == "section" and self._stack:
            self._stack.pop()
        elif tag == "h2":
            self._h2 = False

    def handle_data(self, data):
        for sid in self._stack:
            self.sections[sid] += data
        if self._h2:
            self.headings[-1] += data


def _parse(page: Path) -> _Sections:
    p = _Sections()
    p.feed(page.read_text(encoding="utf-8"))
    return p


@pytest.fixture(scope="module")
def erased(tmp_path_factory, synthetic_photos) -> dict:
    """A workspace where the folder ``Jane_Doe`` was enrolled by name and then erased by name."""
    import tomli_w
    import tomllib

    from facekd.faces.synthfaces import render_identity

    base = tmp_path_factory.mktemp("report")
    tree = base / "tree"
    shutil.copytree(synthetic_photos[0], tree)
    (tree / str(SYNTH_TARGET)).rename(tree / NAME)
    request = base / "request_for_jane"
    request.mkdir()
    for j, chip in enumerate(render_identity(SYNTH_TARGET, 24, seed=0, image_offset=12)):
        cv2.imwrite(str(request / f"r{j}.png"), cv2.cvtColor(chip, cv2.COLOR_RGB2BGR))
    ws = base / "ws"
    assert run_cli("init", "-w", ws, "--encoder", "samples", "--aligned")[0] == 0
    identity = 7340233  # distinctive, so that a stray copy of it would be found
    (base / "ids.csv").write_text(f"{NAME},{identity},{NAME}\n")
    code, out, err = run_cli("enroll", "-w", ws, tree, "--ids", base / "ids.csv")
    assert code == 0, err
    cfg = tomllib.loads((ws / "config.toml").read_text())
    cfg["forget"]["scramble_q"] = 0.999  # a 30-person gallery (see tests/test_cli.py)
    (ws / "config.toml").write_text(tomli_w.dumps(cfg))
    code, _, err = run_cli("forget", "-w", ws, "--name", NAME, "--images", request)
    assert code == 0, err
    receipt = json.loads(next((ws / "receipts").glob("*.json")).read_text())
    return {"ws": ws, "tree": tree, "request": request, "identity": identity, "receipt": receipt,
            "base": base}


@pytest.fixture(scope="module")
def bench_dir(erased) -> Path:
    """A real (small) ``facekd bench`` run's outputs on the same photos."""
    from facekd.evaluation.bench import run_bench, write_outputs

    out = erased["base"] / "bench_out"
    res = run_bench(erased["tree"], "samples", methods="scramble", erase=1, sequential=2,
                    fit_photos="all", cache=erased["base"] / "cache")
    write_outputs(res, out)
    return out


def test_summary_says_what_when_how_what_was_measured_and_what_it_does_not_protect(erased, tmp_path):
    page = tmp_path / "r.html"
    code, out, err = run_cli("report", "-w", erased["ws"], "--html", page, "--bench",
                             tmp_path / "absent")
    assert code == 2 and "no facekd bench plots" in err  # an explicit --bench must hold plots
    assert err.count("\n") == 1 and not page.exists()
    code, out, err = run_cli("report", "-w", erased["ws"], "--html", page, "--json")
    assert code == 0, err
    assert json.loads(out)["bench"] is None
    parsed = _parse(page)
    summary = " ".join(parsed.sections["summary"].split())
    r = erased["receipt"]
    m, leak = r["metrics"], r["model"]["template_leak"]
    assert r["identity_hash"][:16] in summary and "no name, photo or file path is kept" in summary
    assert r["created"][:10] in summary and r["method"] in summary
    for key in ("rank1_forget", "tar@0.001_forget", "kr_linear_forget", "kr_knn_forget",
                "rank1_retain", "tar@0.001_retain"):
        assert f"{m['before'][key]:.1f} % → {m['after'][key]:.1f} %" in summary, key
        lo, hi = m["intervals"]["after"][key]
        assert f"{m['after'][key]:.1f} % (95 % interval {lo:.1f}–{hi:.1f})" in summary, key
    assert f"rank {leak['rank']} of {leak['ranked_among']}" in summary
    for limit in ("reveals whom it erased", "Photos outside the gate", "original, unedited model",
                  "backups", "Evidence, not proof", "docs/threat-model.md"):
        assert limit in summary
    assert len(parsed.images) == 2 and "Benchmark (facekd bench)" not in parsed.headings


def test_the_report_never_names_the_erased_person_or_their_files(erased, tmp_path):
    page = tmp_path / "r.html"
    assert run_cli("report", "-w", erased["ws"], "--html", page)[0] == 0
    text = page.read_text(encoding="utf-8")
    for secret in (NAME, str(erased["tree"]), str(erased["request"]), erased["request"].name,
                   str(erased["tree"] / NAME)):
        assert secret not in text
    assert str(erased["identity"]) not in text
    # the page is the receipt plus words: the receipt holds neither the id nor the name
    assert rc.find_leaks(erased["receipt"], erased["identity"], [NAME]) == []


def test_bench_plots_are_embedded_from_the_bench_option_or_beside_the_workspace(erased, bench_dir,
                                                                                tmp_path):
    page = tmp_path / "r.html"
    code, out, err = run_cli("report", "-w", erased["ws"], "--html", page, "--bench", bench_dir,
                             "--json")
    assert code == 0, err
    assert json.loads(out)["bench"] == str(bench_dir)
    parsed = _parse(page)
    assert "Benchmark (facekd bench)" in parsed.headings
    assert len(parsed.images) == 4  # histograms, metrics, tradeoff, sequential
    for name in ("tradeoff.png", "sequential.png"):
        import base64

        embedded = base64.b64encode((bench_dir / name).read_bytes()).decode()
        assert any(src.endswith(embedded) for src in parsed.images), name
    assert "not measurements of this deletion" in parsed.sections["bench"]
    # found without the option when it sits beside the workspace as `facekd-bench`
    beside = erased["ws"].parent / "facekd-bench"
    shutil.copytree(bench_dir, beside)
    try:
        code, out, err = run_cli("report", "-w", erased["ws"], "--html", page, "--json")
        assert code == 0 and json.loads(out)["bench"] == str(beside), err
    finally:
        shutil.rmtree(beside)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium not installed "
                    "(apt-get install chromium) ; the HTML itself is checked by the tests above")
def test_the_page_renders_in_headless_chromium(erased, bench_dir, tmp_path):
    import numpy as np

    page = tmp_path / "r.html"
    assert run_cli("report", "-w", erased["ws"], "--html", page, "--bench", bench_dir)[0] == 0
    shot = tmp_path / "shot.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                        "--disable-quic", "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", "--window-size=1280,900",
                        f"--screenshot={shot}", page.as_uri()],
                       capture_output=True, timeout=120, check=False)
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[:2] == (900, 1280)
    dark = (img.mean(axis=2) < 100).mean()  # text and the summary's frame, on white
    assert 0.005 < dark < 0.5 and len(np.unique(img.reshape(-1, 3), axis=0)) > 50
