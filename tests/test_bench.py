"""``facekd bench`` on a tiny synthetic photo tree with the bundled ``samples`` encoder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from facekd.evaluation.bench import (BenchError, checkpoints, parse_fit_photos, parse_methods,
                                     run_bench)

IDS = list(range(1000, 1030))  # 30 identities x 12 renders
PER = 12
METRIC_KEYS = {"forget_rank1", "forget_tar", "kr_linear", "kr_knn", "mia", "detect_auc",
               "detect_auc_trained", "lookalike_fp", "false_match", "retain_rank1", "retain_tar",
               "template_cos", "template_top1", "fit_s", "n_erased"}


def facekd(*args: object, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python -m facekd.cli ARGS`` (text mode)."""
    return subprocess.run([sys.executable, "-m", "facekd.cli", *map(str, args)],
                          env=dict(os.environ), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    from facekd.faces.synthfaces import write_tree

    return write_tree(tmp_path_factory.mktemp("bench") / "tree", IDS, PER, seed=0)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench-cache")


@pytest.fixture(scope="module")
def bench(tree, cache, tmp_path_factory) -> tuple[dict, Path]:
    """(result, out dir) of one CLI run: 3 people erased singly, 3 sequentially."""
    out = tmp_path_factory.mktemp("bench-out")
    r = facekd("bench", "--dataset", tree, "--encoder", "samples", "--erase", 3,
               "--sequential", 3, "--out", out, "--cache", cache, "--json")
    assert r.returncode == 0, r.stderr
    assert "cache miss" in r.stderr
    return json.loads(r.stdout), out


def test_json_has_the_documented_shape_and_protocol(bench):
    res, _ = bench
    assert set(res) == {"dataset", "encoder", "chance_rank1", "original", "rows", "sequential",
                        "protocol", "encoder_check"}
    assert res["encoder_check"]["usable"]  # the samples encoder tells its synthetic people apart
    assert res["encoder"] == "samples"
    assert res["chance_rank1"] == pytest.approx(100 / len(IDS), abs=1e-3)
    assert METRIC_KEYS <= set(res["original"])
    assert {(r["method"], r["setting"]) for r in res["rows"]} == {
        ("esc", "all"), ("esc-t", "all"), ("scramble", "all")}  # "10": only 6 photos remain
    for row in res["rows"]:
        assert METRIC_KEYS | {"method", "setting", "forget_rank1_sd"} <= set(row)
        assert row["n_erased"] == 3 and row["fit_s"] > 0
        assert row["mia"] is None  # 6 fit vs 6 fresh photos: below the MIA minimum
    p = res["protocol"]
    assert (p["identities"], p["faces"], p["erased"], p["sequential"]) == (30, 360, 3, 3)
    # the yardstick a perfect erasure is read against: unrelated strangers' photos re-enrolled
    assert 0 < p["strangers_rank1"] <= 100
    # ... and person by person: each erased person's fresh photos replaced by strangers' photos
    assert 0 <= p["perfect_rank1"] <= 100 and 0 <= p["perfect_over"] <= 100
    # ... and what verify rules on those perfect erasures
    assert p["perfect_pass"] + p["perfect_fail"] + p["perfect_inconclusive"] == pytest.approx(100)
    assert res["original"]["replay_over"] == 100  # unedited, everyone is found
    assert all(0 <= row["replay_over"] <= 100 for row in res["rows"])
    # each row against a perfect erasure of the same people: paired by person, with an interval
    for row in res["rows"]:
        diffs = row["perfect_diffs"]
        assert len(diffs) == row["n_erased"]
        assert row["minus_perfect"] == pytest.approx(sum(diffs) / len(diffs), abs=1e-3)
        assert row["minus_perfect"] == pytest.approx(row["replay_rank1"] - p["perfect_rank1"],
                                                     abs=1e-2)
        assert row["minus_perfect_lo"] <= row["minus_perfect"] <= row["minus_perfect_hi"]
    assert "perfect_diffs" not in res["original"]
    assert (p["held"], p["fresh_enrol"], p["fresh_probe"], p["eligible_min_faces"]) == (6, 3, 3, 12)
    assert p["sequential_gates"]["scramble"] == 3  # every gate merged into one chain
    seq = res["sequential"]
    assert {r["method"] for r in seq} == {"esc", "esc-t", "scramble"}
    for m in ("esc", "esc-t", "scramble"):
        rows = [r for r in seq if r["method"] == m]
        assert [r["erased"] for r in rows] == [0, 1, 2, 3]
        assert rows[-1]["forget_rank1"] is not None and rows[0]["forget_rank1"] is None
        assert set(rows[0]) == {"method", "erased", "retain_rank1", "retain_tar", "forget_rank1",
                                "forget_tar", "others_touched"}
        # the gates' own estimate of what they cost everyone else, summed; a projector has none
        touched = [r["others_touched"] for r in rows]
        assert touched[0] == 0.0
        assert (touched[1:] == [None] * 3 if m != "scramble"
                else all(0 <= a <= b for a, b in zip(touched, touched[1:])))


def test_every_method_lowers_the_erased_persons_scores(bench):
    res, _ = bench
    orig = res["original"]
    assert orig["forget_rank1"] >= 90 and orig["forget_tar"] >= 50
    assert orig["lookalike_fp"] == 0  # the identity map moves nobody
    for row in res["rows"]:
        assert row["forget_tar"] < orig["forget_tar"], row["method"]
        assert row["retain_rank1"] > 80, row["method"]
    scramble = next(r for r in res["rows"] if r["method"] == "scramble")
    esc = next(r for r in res["rows"] if r["method"] == "esc")
    assert scramble["lookalike_fp"] < esc["lookalike_fp"] == 100  # a projector moves everyone


def test_json_markdown_and_both_plots_are_written(bench):
    res, out = bench
    for name in ("bench.json", "bench.md", "tradeoff.png", "sequential.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert json.loads((out / "bench.json").read_text()) == res
    md = (out / "bench.md").read_text()
    assert "| original |" in md and "| scramble | all |" in md and "Sequential" in md
    assert (out / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_second_run_hits_the_cache(bench, tree, cache, tmp_path):
    r = facekd("bench", "--dataset", tree, "--encoder", "samples", "--methods", "esc",
               "--erase", 2, "--sequential", 0, "--fit-photos", "all", "--out", tmp_path,
               "--cache", cache)
    assert r.returncode == 0, r.stderr
    assert "cache hit" in r.stdout
    assert not (tmp_path / "sequential.png").exists()
    assert "| esc | all |" in (tmp_path / "bench.md").read_text()


def test_api_matches_protocol_and_is_seeded(tree, cache):
    kw = dict(methods="esc", erase=2, sequential=2, fit_photos="all", cache=cache)
    a, b = run_bench(tree, "samples", **kw), run_bench(tree, "samples", **kw)
    assert a["protocol"]["cache"] == "hit"
    strip = lambda r: {k: v for k, v in r.items() if k != "fit_s"}  # noqa: E731
    assert [strip(r) for r in a["rows"]] == [strip(r) for r in b["rows"]]
    assert a["sequential"] == b["sequential"]


@pytest.mark.parametrize("args, needle", [
    (["--methods", "esc,frobnicate"], "unknown method 'frobnicate'"),
    (["--dataset", "/nonexistent/faces"], "no such dataset directory"),
    (["--encoder", "nosuch"], "unknown encoder family"),
    (["--fit-photos", "some"], "bad fit-photos setting"),
    (["--draws", "0"], "--draws"),
])
def test_bad_input_exits_2_with_one_line(tree, tmp_path, args, needle):
    base = {"--dataset": str(tree), "--encoder": "samples", "--out": str(tmp_path / "o"),
            "--cache": str(tmp_path / "c")}
    base.update(dict(zip(args[::2], args[1::2])))
    r = facekd("bench", *[x for kv in base.items() for x in kv])
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_too_few_faces_is_a_user_error(tmp_path):
    from facekd.faces.synthfaces import write_tree

    tree = write_tree(tmp_path / "tiny", [1, 2, 3, 4], 3, seed=0)  # 3 faces each: below MIN_FACES
    with pytest.raises(BenchError, match="identities with >= 4"):
        run_bench(tree, "samples", cache=tmp_path / "c", sequential=0)


def test_checkpoints_and_method_parsing():
    assert checkpoints(0) == [] and checkpoints(3) == [1, 2, 3]
    assert checkpoints(120) == [1, 2, 5, 10, 20, 50, 100, 120]
    assert parse_methods(" esc, scramble,esc") == ["esc", "scramble"]
    assert parse_fit_photos("all,10") == ["all", "10"]
    assert parse_methods("scramble:alpha=1.1:q=0.9999") == ["scramble:alpha=1.1:q=0.9999"]
    for bad in ("", "scramble:alpha", "scramble:alpha=x", "nosuch:k=1"):
        with pytest.raises(BenchError):
            parse_methods(bad)


def test_method_settings_reach_the_fit_and_unknown_ones_are_refused(tree, cache):
    res = run_bench(tree, "samples", methods="esc:k=4,scramble:alpha=1.3", erase=2, sequential=0,
                    fit_photos="all", cache=cache)
    assert [r["method"] for r in res["rows"]] == ["esc:k=4", "scramble:alpha=1.3"]
    with pytest.raises(BenchError, match="unexpected keyword"):
        run_bench(tree, "samples", methods="esc:alpha=2", erase=2, sequential=0,
                  fit_photos="all", cache=cache)


def test_template_leak_ranks_the_erased_person_first_for_a_gate():
    import numpy as np

    from clusters import identity_clusters
    from facekd.core.metrics import template_leak
    from facekd.erasure import fit_scramble

    E, y = identity_clusters(40, 12, 64, seed=1)
    e = fit_scramble(E[y == 7], E[y != 7], gallery_labels=y[y != 7], q=0.99)
    means = np.stack([E[y == c].mean(0) for c in range(40)])
    cos, rank = template_leak(e, means, np.arange(40), 7)
    assert rank == 1 and 0 < cos <= 1


def test_a_method_registered_in_one_file_is_benchmarked_by_name(tree, cache):
    import numpy as np

    from facekd import methods
    from test_methods import fit_mean_direction

    methods.register("mean-direction", options=("seed",))(fit_mean_direction)
    try:
        with pytest.raises(BenchError, match="unexpected keyword setting 'alpha'"):
            parse_methods("mean-direction:alpha=1")
        res = run_bench(tree, "samples", methods="mean-direction,esc:k=1", erase=2, sequential=2,
                        fit_photos="all", cache=cache)
    finally:
        methods.unregister("mean-direction")
    rows = {r["method"]: r for r in res["rows"]}
    assert set(rows) == {"mean-direction", "esc:k=1"} and rows["mean-direction"]["n_erased"] == 2
    seq = [r for r in res["sequential"] if r["method"] == "mean-direction"]
    assert [r["erased"] for r in seq] == [0, 1, 2] and seq[-1]["forget_rank1"] is not None
    # Both erase one direction, the mean vs the top singular vector of uncentred faces: nearly
    # the same direction, so the same forgetting here, below the original's.
    assert rows["mean-direction"]["forget_rank1"] < res["original"]["forget_rank1"]
    assert np.isclose(rows["mean-direction"]["forget_rank1"], rows["esc:k=1"]["forget_rank1"],
                      atol=10)


def test_one_fit_photo_and_a_small_workspace_are_measured(tree, cache):
    res = run_bench(tree, "samples", methods="scramble", erase=2, sequential=0,
                    fit_photos="1,all", gallery_people=6, cache=cache)
    p = res["protocol"]
    assert p["gallery_people"] == 6 and p["identities"] == 6
    assert res["chance_rank1"] == pytest.approx(100 / 6, abs=1e-3)
    assert {r["setting"] for r in res["rows"]} == {"1", "all"}
    with pytest.raises(BenchError, match="gallery-people"):
        run_bench(tree, "samples", methods="scramble", sequential=0, gallery_people=2,
                  cache=cache)


def test_sequential_erasures_fit_on_as_many_photos_as_asked(monkeypatch):
    import numpy as np

    from facekd.core.metrics import split_enrol_probe
    from facekd.evaluation import sequential as S
    from facekd.progress import tqdm

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(20), 12)
    x = rng.normal(size=(20, 32))[y] + 0.3 * rng.normal(size=(240, 32))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    split = split_enrol_probe(y, seed=0)
    seen, real = [], S.fit_method
    monkeypatch.setattr(S, "fit_method", lambda m, F, *a: seen.append(len(F)) or real(m, F, *a))
    people = np.array([3, 7])
    with tqdm(disable=True) as bar:
        _, _, gates = S._sequential(x, y, split, people, 4, "scramble", 0, bar, fit="1")
        assert seen == [1, 1] and gates == 2  # an ID-photo gallery: one photo each
        seen.clear()
        S._sequential(x, y, split, people, 4, "scramble", 0, bar)
        assert seen == [8, 8]  # the default: every photo but the 4 fresh ones


def test_draws_pool_independent_runs_and_keep_each_draws_figures(tree, cache):
    from facekd.evaluation.bench import format_markdown

    kw = dict(methods="scramble", erase=2, sequential=2, fit_photos="all", cache=cache)
    one = [run_bench(tree, "samples", seed=s, **kw) for s in (3, 4)]
    both = run_bench(tree, "samples", seed=3, draws=2, **kw)
    p = both["protocol"]
    assert p["draws"] == 2 and p["seeds"] == [3, 4] and p["erased_total"] == 4
    row, rows = both["rows"][0], [r["rows"][0] for r in one]
    assert row["forget_rank1"] == pytest.approx(sum(r["forget_rank1"] for r in rows) / 2,
                                                abs=1e-4)
    assert row["per_draw"]["forget_rank1"] == [r["forget_rank1"] for r in rows]
    assert row["n_erased"] == 4 and row["draws"] == 2
    # what a perfect erasure reaches differs by draw (another split) and is pooled the same way
    per = [r["protocol"]["strangers_rank1"] for r in one]
    assert p["strangers_rank1_per_draw"] == per
    assert p["strangers_rank1"] == pytest.approx(sum(per) / 2, abs=1e-4)
    # the s.d. over all four people is at least the smaller draw's (the draws' spread adds)
    assert row["forget_rank1_sd"] >= min(r["forget_rank1_sd"] for r in rows) - 1e-9
    last = [r["sequential"][-1] for r in one]
    assert both["sequential"][-1]["retain_rank1"] == pytest.approx(
        sum(r["retain_rank1"] for r in last) / 2, abs=1e-4)
    md = format_markdown(both)
    assert "x 2 draws" in md and "Pooled over 2 draws (seeds 3, 4)" in md
    assert f"what a perfect erasure reaches, verify's yardstick) {p['strangers_rank1']:.2f}%" in md
    assert p["perfect_over"] == pytest.approx(
        sum(r["protocol"]["perfect_over"] for r in one) / 2, abs=1e-3)
    assert f"{p['perfect_rank1']:.2f}%, {p['perfect_over']:.0f}% of them over 2x chance" in md
    # the paired difference's interval is over every draw's people, not a mean of intervals
    assert row["perfect_diffs"] == rows[0]["perfect_diffs"] + rows[1]["perfect_diffs"]
    assert row["minus_perfect"] == pytest.approx(
        sum(row["perfect_diffs"]) / len(row["perfect_diffs"]), abs=1e-3)
    assert "{:+.1f} ({:+.1f} to {:+.1f})".format(
        row["minus_perfect"], row["minus_perfect_lo"], row["minus_perfect_hi"]) in md
    with pytest.raises(BenchError, match="draws"):
        run_bench(tree, "samples", draws=0, **kw)


def test_a_perfect_erasure_is_unrelated_strangers_never_enrolled():
    import numpy as np

    from facekd.evaluation.bench_verdict import perfect_erasure, perfect_erasure_photos

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(30), 5)
    x = rng.normal(size=(30, 16))[y] + 0.2 * rng.normal(size=(150, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    enrolled = y < 10  # a workspace of 10 people; 20 more exist in the dataset
    gallery_y = y[enrolled & (y != 3)]
    photos, keep = perfect_erasure_photos(x, y, gallery_y, 3, 6, rng)
    strangers = {int(np.flatnonzero((x == row).all(axis=1))[0]) // 5 for row in photos}
    assert len(strangers) == 6 and min(strangers) >= 10  # distinct, from outside the workspace
    assert keep.all()  # none of them is enrolled: the gallery stays whole
    # the whole dataset enrolled: strangers come from the gallery's others, taken out of it
    gallery_y = y[y != 3]
    photos, keep = perfect_erasure_photos(x, y, gallery_y, 3, 6, rng)
    gone = set(np.unique(gallery_y[~keep]).tolist())
    assert len(gone) == 6 and 3 not in gone and (~keep).sum() == 30
    # the yardstick: those photos' replayed rank-1 against the gallery without the strangers,
    # and whether it is over 2x chance (of the identities left)
    from facekd.evaluation.bench_verdict import replay_rank1

    mine = x[y == 3][:6]  # the person's own photos, as the unedited encoder sees them
    got = perfect_erasure(x, y, x[y != 3], y[y != 3], 3, mine, threshold=0.9, seed=4)
    photos, keep = perfect_erasure_photos(x, y, y[y != 3], 3, 6, np.random.default_rng([4, 2, 3]))
    rate = replay_rank1(photos, x[y != 3][keep], seed=4)
    assert got["replay_rank1"] == pytest.approx(100 * rate)
    assert got["replay_over"] == 100 * (rate > 2 / (29 - 6 + 1))
    # unrelated identities: 3 strangers' photos re-enrolled beat 23 others' now and then, as a
    # perfect erasure's do on real faces (docs/benchmarks.md: 19-38 % of LFW people over 2x)
    runs = [perfect_erasure(x, y, x[y != 3], y[y != 3], 3, mine, threshold=0.9, seed=s)
            for s in range(10)]
    assert 0 < np.mean([r["replay_rank1"] for r in runs]) < 50
    # verify never FAILs a perfect erasure the replay finds at or under 2x chance
    assert not any(r["verdict_false_fail"] for r in runs)
    # too few identities for the draw: no yardstick rather than a wrong one
    assert perfect_erasure_photos(x, y, y[y < 4], 0, 29, rng) is None
    assert perfect_erasure(x[:15], y[:15], x[5:15], y[5:15], 0, x[:2], threshold=None) is None
