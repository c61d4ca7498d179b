"""``facekd bench`` measures people enrolled after an erasure, and fits against a background."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facekd.evaluation.bench import BenchError, format_markdown, run_bench
from facekd.evaluation.later import Later, later_figures

IDS = list(range(1000, 1024))  # 24 identities x 10 renders
PER = 10


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    from facekd.faces.synthfaces import write_tree

    return write_tree(tmp_path_factory.mktemp("later") / "tree", IDS, PER, seed=0)


@pytest.fixture(scope="module")
def background(tmp_path_factory) -> Path:
    """Six people enrolled nowhere, and one (1023) who is also a dataset identity."""
    from facekd.faces.synthfaces import write_tree

    return write_tree(tmp_path_factory.mktemp("later-bg") / "bg", [1023, *range(2000, 2006)], 5,
                      seed=1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("later-cache")


def _clusters(people: int, per: int, d: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(people), per)
    x = rng.normal(size=(people, d))[y] + 0.35 * rng.normal(size=(people * per, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


def test_people_outside_a_small_workspace_play_people_enrolled_later(tree, cache):
    res = run_bench(tree, "samples", methods="scramble,esc", erase=2, sequential=2,
                    fit_photos="3", gallery_people=8, cache=cache)
    p = res["protocol"]
    assert p["later_people"] == len(IDS) - 8 and p["later_searches"] == (len(IDS) - 8) * (PER - 1)
    assert 0 < res["original"]["later_rank1"] <= 100
    rows = {r["method"]: r for r in res["rows"]}
    for r in rows.values():
        assert r["later_lost"] == pytest.approx(res["original"]["later_rank1"] - r["later_rank1"],
                                                abs=1e-3)
        assert 0 <= r["later_changed"] <= 100
    # the gate states its figure for them and its top; ESC states none
    gate = rows["scramble"]
    assert 0 <= gate["later_estimate"] <= gate["later_bound"] <= 100
    assert gate["later_over"] in (0, 50, 100)
    assert rows["esc"]["later_estimate"] is None and rows["esc"]["later_over"] is None
    seq = [r for r in res["sequential"] if r["method"] == "scramble"]
    assert seq[0]["later_lost"] == 0 and seq[-1]["later_changed"] >= 0
    md = format_markdown(res)
    assert f"## People enrolled later ({len(IDS) - 8} from outside the workspace" in md
    assert "enrolled later: rank-1 lost, points" in md


def test_a_full_gallery_says_people_enrolled_later_are_not_measured(tree, cache):
    res = run_bench(tree, "samples", methods="scramble", erase=2, sequential=0,
                    fit_photos="all", cache=cache)
    assert res["protocol"]["later_people"] == 0
    assert "later_lost" not in res["rows"][0] or res["rows"][0]["later_lost"] is None
    assert "not measured, every identity is enrolled" in format_markdown(res)


def test_a_background_is_fitted_against_and_its_people_stay_out_of_the_workspace(
        tree, background, cache, monkeypatch):
    from facekd.evaluation import protocol

    seen, real = [], protocol.fit_method
    monkeypatch.setattr(protocol, "fit_method",
                        lambda m, F, g, gy, prev, bg=None: seen.append(bg) or real(m, F, g, gy,
                                                                                  prev, bg))
    res = run_bench(tree, "samples", methods="scramble", erase=2, sequential=0,
                    fit_photos="3", gallery_people=8, background=background, cache=cache)
    p = res["protocol"]
    assert p["background_left_out"] == 1 and p["background_people"] == 7
    assert p["background_photos"] == 35
    # 1023 is enrolled nowhere: neither in the workspace nor among people enrolled later
    assert p["later_people"] == len(IDS) - 8 - 1
    assert seen and all(bg is not None and bg.photos == 35 for bg in seen)
    assert "Background (people enrolled nowhere" in format_markdown(res)
    with pytest.raises(BenchError, match="no such background directory"):
        run_bench(tree, "samples", methods="scramble", sequential=0, gallery_people=8,
                  background=tree.parent / "missing", cache=cache)


def test_an_erasure_that_opens_on_people_enrolled_later_costs_them_and_says_so():
    from facekd.core.erasure import Erasure
    from facekd.methods.scramble import fit_scramble

    x, y = _clusters(40, 8)
    enrolled = y < 20
    later = Later.draw(x, y, np.arange(20, 40), seed=0)
    assert later.people == 20 and len(later.x) == 20 * 8
    g, gy = x[enrolled], y[enrolled]
    ident = Erasure.identity(x.shape[1])
    same = later_figures(later, ident, g, g, gy)
    assert same["later_lost"] == 0 and same["later_changed"] == 0
    assert same["later_estimate"] is None and same["later_rank1"] > 90
    # a gate fitted on a later person's photos: the gallery never held them, it opens on them
    target = later.y == 25
    e = fit_scramble(later.x[target][:3], g, gallery_labels=gy)
    got = later_figures(later, e, g, e.apply(g), gy)
    assert got["later_changed"] >= 100 * np.mean(target) * 0.5
    assert got["later_lost"] > 0
    assert got["later_estimate"] == pytest.approx(100 * e.params["strangers_touched"])
    assert got["later_over"] == 100.0 * (got["later_changed"] > got["later_bound"])


def test_a_missing_background_folder_exits_2_with_one_line(tree, cache, tmp_path):
    import os
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "facekd.cli", "bench", "--dataset", str(tree),
                        "--encoder", "samples", "--gallery-people", "8", "--background",
                        str(tmp_path / "nobody"), "--out", str(tmp_path / "out"), "--cache",
                        str(cache)], env=dict(os.environ), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].endswith("no such background directory")
    assert not (tmp_path / "out").exists()
