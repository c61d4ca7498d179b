"""facekd calibrate: never-enrolled people's photos that the one-to-many MATCH threshold is read
off.

The core (:mod:`facekd.core.background`) on simulated embeddings, then the command on the
synthetic workspace (facekd.faces.synthfaces + the ``samples`` encoder).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from facekd.core import verdict
from facekd.core.background import Background, pool

from conftest import SYNTH_TARGET as TARGET, run_cli


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _people(rng: np.random.Generator, n: int, photos: int, d: int = 32,
            spread: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """``n`` simulated people with ``photos`` each: a random centre plus photo noise."""
    centres = rng.normal(size=(n, d))
    x = np.repeat(centres, photos, axis=0) + spread * rng.normal(size=(n * photos, d))
    return _unit(x), np.repeat(np.arange(n), photos)


# ------------------------------------------------------------------ core
def test_a_background_round_trips_through_bytes_and_refuses_damage():
    rng = np.random.default_rng(0)
    x, y = _people(rng, 5, 3)
    bg = Background(x, y)
    back = Background.from_bytes(bg.to_bytes(), dim=32)
    assert np.array_equal(back.vectors, x) and np.array_equal(back.groups, y)
    assert (back.photos, back.people, back.dim) == (15, 5, 32)
    for bad in (b"damaged", bg.to_bytes()[:40]):
        with pytest.raises(ValueError, match="not a background"):
            Background.from_bytes(bad)
    with pytest.raises(ValueError, match="d=32, the encoder d=128"):
        Background.from_bytes(bg.to_bytes(), dim=128)
    with pytest.raises(ValueError, match="unit rows"):
        Background(2 * x, y)
    with pytest.raises(ValueError, match="NaN"):
        Background(np.full_like(x, np.nan), y)
    with pytest.raises(ValueError, match="groups"):
        Background(x, y[:3])


def test_pool_keeps_the_background_apart_from_every_gallery_identity():
    """Gallery ids may be negative (SQLite's signed ids); pooled labels never collide."""
    found = verdict.Strangers(np.array([0.1, 0.2, 0.3]), np.array([0.5, 0.6, 0.7]),
                              np.array([-1, 0, 5]))
    sample = pool(found, np.array([0.4, 0.45]), np.array([0, 0]))
    assert sample.best.tolist() == [0.5, 0.6, 0.7, 0.4, 0.45]
    assert len(np.unique(sample.labels)) == 4  # three gallery people, one background person
    assert np.isnan(sample.odds[3:]).all() and sample.odds[:3].tolist() == [0.1, 0.2, 0.3]
    with pytest.raises(ValueError, match="differ"):
        pool(found, np.array([0.4]), np.array([0, 1]))


def test_a_background_brings_a_tiny_gallery_s_false_matches_to_the_promised_fpir():
    """15 people with one photo each: the gallery alone must extrapolate, and errs; 1,500
    never-enrolled photos read the 1 % quantile off real searches. The promise is checked on
    10,000 further never-enrolled photos, over 20 drawn galleries."""
    rng = np.random.default_rng(1)
    alone, kept = [], []
    for _ in range(20):
        g, gy = _people(rng, 15, 1)
        found = verdict.strangers(g, gy)
        bx, by = _people(rng, 300, 5)
        sample = pool(found, (bx @ g.T).max(axis=1), by)
        assert not verdict.tail_extrapolated(sample.best.size, 0.01)
        tx, _ = _people(rng, 2000, 5)
        best = (tx @ g.T).max(axis=1)
        alone.append(np.mean(best > verdict.fpir_threshold(found, 0.01)))
        kept.append(np.mean(best > verdict.fpir_threshold(sample, 0.01)))
    # The threshold is an upper confidence bound (level 0.9): a little under 1 % on average.
    assert 0.002 < np.mean(kept) <= 0.012 and max(kept) < 0.025
    assert abs(np.mean(kept) - 0.01) < abs(np.mean(alone) - 0.01)


# ------------------------------------------------------------------ the command
@pytest.fixture
def strangers_tree(tmp_path):
    """Renders of 40 people enrolled nowhere, 3 each, one sub-folder per person."""
    from facekd.faces.synthfaces import write_tree

    return write_tree(tmp_path / "strangers", list(range(5000, 5040)), 3, seed=1)


@pytest.fixture
def cal_ws(tmp_path, request):
    """A private copy of the synthetic workspace (test_workspace's built_workspace) with FPIR
    5 %, so that 200 searches read it off directly: the gallery's 180 faces alone do not."""
    import tomllib

    import tomli_w

    src = request.getfixturevalue("built_workspace")[0]
    dst = tmp_path / "ws"
    shutil.copytree(src, dst)
    cfg = tomllib.loads((dst / "config.toml").read_text())
    cfg.setdefault("gallery", {})["fpir"] = 0.05
    (dst / "config.toml").write_text(tomli_w.dumps(cfg))
    return dst


from test_workspace import built_workspace  # noqa: E402,F401 (the shared session fixture)


def test_calibrate_stores_people_by_sub_folder_and_reads_the_threshold_off_them(
        cal_ws, strangers_tree):
    code, out, err = run_cli("calibrate", "-w", cal_ws, "--json")
    before = json.loads(out)
    assert code == 0 and before["photos"] == 0 and before["extrapolated"]
    assert "facekd calibrate --images DIR" in before["note"]
    code, out, err = run_cli("calibrate", "-w", cal_ws, "--images", strangers_tree, "--json")
    assert code == 0, err
    res = json.loads(out)
    assert (res["photos"], res["people"]) == (120, 40)
    assert not res["extrapolated"] and res["note"] is None and res["searches"] == 300
    assert res["before"] == before["threshold"] and res["threshold"] != res["before"]
    # The threshold is what the searches give: recomputed from the stored vectors here.
    from facekd.workspace import Workspace

    with Workspace.open(cal_ws) as ws:
        bg = ws.background
        g = ws.gallery.vectors_view()
        found = verdict.strangers(g, ws.gallery.labels(), max_probes=2000, seed=ws.config.seed)
        want = verdict.fpir_threshold(pool(found, (bg.vectors @ g.T).max(axis=1), bg.groups),
                                      0.05, seed=ws.config.seed)
    assert res["threshold"] == pytest.approx(want, abs=1e-5)
    code, out, _ = run_cli("calibrate", "-w", cal_ws)
    assert code == 0 and "120 photo(s) of 40 people" in out and "read off them" in out
    # search reads the same threshold, with no extrapolation note.
    img = next(strangers_tree.rglob("*.png"))
    code, out, _ = run_cli("search", "-w", cal_ws, img, "--json")
    found = json.loads(out)
    assert found["threshold"] == pytest.approx(res["threshold"]) and not found["threshold_note"]


def test_calibrate_keeps_no_path_or_name(cal_ws, strangers_tree):
    code, _, err = run_cli("calibrate", "-w", cal_ws, "--images", strangers_tree)
    assert code == 0, err
    from facekd.workspace import Workspace

    with Workspace.open(cal_ws) as ws:
        raw = bytes(ws.gallery.get_meta("background"))
    with np.load(__import__("io").BytesIO(raw)) as z:
        assert sorted(z.files) == ["groups", "vectors"]
    assert b"strangers" not in raw and b"5000" not in raw


def test_a_forget_edits_the_background_with_the_gallery_in_one_commit(cal_ws, strangers_tree,
                                                                       synthetic_photos):
    """A render of the erased person among the background is scrambled as in the gallery;
    everyone else's background photos are unchanged (the gate returns them as they were)."""
    import cv2

    from facekd.faces.synthfaces import render_identity
    from facekd.workspace import Workspace

    person = strangers_tree / "target-look"
    person.mkdir()
    for j, chip in enumerate(render_identity(TARGET, 2, seed=0, image_offset=40)):
        cv2.imwrite(str(person / f"{j}.png"), cv2.cvtColor(chip, cv2.COLOR_RGB2BGR))
    assert run_cli("calibrate", "-w", cal_ws, "--images", strangers_tree)[0] == 0
    with Workspace.open(cal_ws, writable=True) as ws:
        before, gen = ws.background, ws.gallery.generation
        res = ws.forget(TARGET, progress=False)
        after = ws.background
        assert res.committed and ws.gallery.generation == gen + 1 and ws.check()["ok"]
    assert np.array_equal(after.groups, before.groups)
    moved = np.sum(before.vectors * after.vectors, axis=1) < 0.999
    theirs = before.groups == before.groups.max()  # "target-look" sorts after "5000".."5039"
    assert moved[theirs].any(), "the erased person's renders in the background were not edited"
    assert moved[~theirs].mean() < 0.05
    assert np.allclose(np.linalg.norm(after.vectors, axis=1), 1.0, atol=1e-4)


def test_calibrate_refuses_bad_input_with_one_line_and_changes_nothing(cal_ws, tmp_path,
                                                                       strangers_tree):
    from facekd.workspace import Workspace

    with Workspace.open(cal_ws) as ws:
        gen = ws.gallery.generation
    empty = tmp_path / "empty"
    empty.mkdir()
    noface = tmp_path / "noface"
    noface.mkdir()
    (noface / "a.png").write_bytes(b"not an image")
    for args, msg in ((["--images", empty], "no image files"),
                      (["--images", tmp_path / "missing"], "not a directory"),
                      (["--images", noface], "no usable face in any of the 1 images"),
                      (["--images", strangers_tree, "--clear"], "not both")):
        code, out, err = run_cli("calibrate", "-w", cal_ws, *args)
        assert code == 2 and msg in err and "Traceback" not in err, (args, err)
        assert len(err.strip().splitlines()) <= 2  # the skipped-image line, then the error
    with Workspace.open(cal_ws) as ws:
        assert ws.gallery.generation == gen and ws.background is None


def test_a_damaged_background_is_refused_never_used_and_clear_drops_it(cal_ws, strangers_tree):
    from facekd.workspace import Workspace

    assert run_cli("calibrate", "-w", cal_ws, "--images", strangers_tree)[0] == 0
    with Workspace.open(cal_ws, writable=True) as ws:
        ws.gallery.set_meta("background", b"damaged")
        ws.commit()
    img = next(strangers_tree.rglob("*.png"))
    code, _, err = run_cli("search", "-w", cal_ws, img)
    assert code == 2 and "'background' is damaged" in err and "Traceback" not in err
    code, out, _ = run_cli("check", "-w", cal_ws)
    assert code == 1 and "'background' is damaged" in out
    code, out, err = run_cli("calibrate", "-w", cal_ws, "--clear", "--json")
    assert code == 0, err
    assert json.loads(out)["photos"] == 0 and run_cli("check", "-w", cal_ws)[0] == 0


# ------------------------------------------------------------------ the gate and the background
def _three_photo_case(seed: int):
    """15 simulated people with 3 photos each, a person erased from 3, 300 people enrolled
    nowhere kept (900 photos), 300 more playing people enrolled later, 20 new photos of the
    person."""
    rng = np.random.default_rng(seed)
    g, gy = _people(rng, 15, 3)
    centre = rng.normal(size=32)
    fit = _unit(centre + 0.6 * rng.normal(size=(3, 32)))
    new = _unit(centre + 0.6 * rng.normal(size=(20, 32)))
    bx, by = _people(rng, 300, 3)
    later, _ = _people(rng, 300, 3)
    return g, gy, fit, new, bx, by, later


def _changed(erasure, x: np.ndarray) -> float:
    return float(np.mean(np.sum(erasure.apply(x) * x, axis=1) < 0.999))


def test_a_background_keeps_a_three_photo_gate_off_people_enrolled_later():
    """In a gallery of 15 people the gate walks down the quantile ladder (its budget is read off
    the enrolled, whom it spares) and opens on a few percent of people enrolled after it; kept
    photos of people enrolled nowhere hold it off them, and the person stays covered."""
    from facekd.methods.scramble import fit_scramble
    from facekd.operations.costs import later_bound

    without, kept = [], []
    for seed in range(3):
        g, gy, fit, new, bx, by, later = _three_photo_case(seed)
        plain = fit_scramble(fit, g, gallery_labels=gy)
        guarded = fit_scramble(fit, g, gallery_labels=gy, background=bx, background_labels=by)
        # a few look like the person (above the gallery's FAR 1e-3 cosine): left out
        assert plain.params["background"] == 0 and 880 <= guarded.params["background"] <= 900
        without.append(_changed(plain, later))
        kept.append(_changed(guarded, later))
        assert _changed(guarded, new) >= _changed(plain, new) - 0.05
        # forget's estimate for people enrolled later tracks what the gate does to them, and
        # the top of its interval, counted by identity, is above it
        for e, real in ((plain, without[-1]), (guarded, kept[-1])):
            assert abs(e.params["strangers_touched"] - real) < 0.03
            assert real <= later_bound(e.params)
    assert np.mean(without) > 0.02 and np.mean(kept) < 0.005


def test_photos_of_the_person_kept_by_mistake_do_not_hold_the_gate_off_them():
    from facekd.methods.scramble import fit_scramble

    g, gy, fit, new, bx, by, _ = _three_photo_case(0)
    clean = fit_scramble(fit, g, gallery_labels=gy, background=bx, background_labels=by)
    mixed = fit_scramble(fit, g, gallery_labels=gy, background=np.vstack([bx, new[:5]]),
                         background_labels=np.r_[by, np.full(5, 10_000)])
    assert mixed.params["background"] == clean.params["background"]
    assert _changed(mixed, new[5:]) == _changed(clean, new[5:]) > 0.9


def test_a_background_only_raises_a_one_photo_gate():
    """With one photo the background stays out of the discriminant and the budget (measured
    worse there) and only raises the threshold: the gate opens on at most 1 - q of the
    background's faces, its weights are those fitted without it, and people enrolled later are
    changed no more often; the same in an ID-photo gallery (a plain gate)."""
    from facekd.methods.scramble import fit_scramble

    def opened(e, x: np.ndarray) -> float:
        gate = e.tail[0]
        return float(np.mean(_unit(x) @ gate.weights[:, 0] + gate.bias[0] > gate.t0[0]))

    without, kept = [], []
    for seed in range(3):
        g, gy, fit, _, bx, by, later = _three_photo_case(seed)
        ids = np.unique(gy, return_index=True)[1]  # one photo each: a plain gate, no walk
        for gal, lab in ((g, gy), (g[ids], gy[ids])):
            a = fit_scramble(fit[:1], gal, gallery_labels=lab)
            b = fit_scramble(fit[:1], gal, gallery_labels=lab, background=bx,
                             background_labels=by)
            left_out = len(bx) - b.params["background"]  # they look like the person
            assert 0 <= left_out <= 20
            assert opened(b, bx) <= 1 - b.params["q"] + (left_out + 1) / len(bx)
            assert b.params["strangers_touched_people"] == len(np.unique(lab)) + 300
            if (a.params["ridge"], a.params["prior"]) == (b.params["ridge"], b.params["prior"]):
                assert np.allclose(a.tail[0].weights, b.tail[0].weights)
                assert b.tail[0].t0[0] >= a.tail[0].t0[0] - 1e-12
            if len(gal) == len(g):
                without.append(_changed(a, later))
                kept.append(_changed(b, later))
    assert np.mean(kept) <= np.mean(without)


def test_an_empty_background_fits_as_without_one():
    from facekd.erasure import ErasureError
    from facekd.methods.scramble import fit_scramble

    g, gy, fit, _, bx, by, _ = _three_photo_case(0)
    a = fit_scramble(fit, g, gallery_labels=gy)
    b = fit_scramble(fit, g, gallery_labels=gy, background=None, background_labels=by)
    sa, sb = a.tail[0].arrays("t"), b.tail[0].arrays("t")
    assert all(np.array_equal(sa[k], sb[k]) for k in sa) and b.params["background"] == 0
    with pytest.raises(ErasureError, match="needs gallery_labels"):
        fit_scramble(fit, g, background=bx)
    with pytest.raises(ErasureError, match="background_labels: expected 900"):
        fit_scramble(fit, g, gallery_labels=gy, background=bx, background_labels=by[:5])


def test_forget_fits_against_the_stored_background_and_says_what_later_people_pay(
        cal_ws, strangers_tree):
    code, out, err = run_cli("forget", "-w", cal_ws, "--identity", TARGET, "--dry-run",
                             "--json")
    assert code == 0, err
    receipt = json.loads(out)["receipt"]
    plain, model = receipt["params"], receipt["model"]
    assert plain["background"] == 0 and 0 <= plain["strangers_touched"] <= 1
    # the bound counts the identities it was read off (the enrolled but the person)
    assert plain["strangers_touched_people"] < plain["strangers_touched_faces"]
    assert plain["strangers_touched"] <= model["strangers_touched_bound"] < 1
    assert run_cli("calibrate", "-w", cal_ws, "--images", strangers_tree)[0] == 0
    code, out, err = run_cli("forget", "-w", cal_ws, "--identity", TARGET)
    assert code == 0, err
    assert "people enrolled later: no gate spares them" in out
    assert "120 of them photos kept by calibrate" in out


def test_a_top_up_in_a_calibrated_workspace_fits_against_the_background(cal_ws, strangers_tree,
                                                                        tmp_path):
    """forget --images on an erased person widens the erasure; the further gate is fitted
    against the stored background as the first was."""
    from conftest import FEW_PHOTOS_PERSON, SYNTH_IMAGES, write_renders

    from facekd.workspace import Workspace

    assert run_cli("calibrate", "-w", cal_ws, "--images", strangers_tree)[0] == 0
    with Workspace.open(cal_ws, writable=True) as ws:
        v = np.asarray(ws.gallery.vectors(FEW_PHOTOS_PERSON))
        ws.gallery.remove(FEW_PHOTOS_PERSON)
        ws.gallery.add(v[:3], np.full(3, FEW_PHOTOS_PERSON))
        ws.commit()
        with pytest.warns(RuntimeWarning):  # it may cover too little: --force commits it
            first = ws.forget(FEW_PHOTOS_PERSON, progress=False, force=True)
        assert first.receipt["params"]["background"] > 0
    more = write_renders(tmp_path / "more", FEW_PHOTOS_PERSON, 12, 3 * SYNTH_IMAGES)
    with Workspace.open(cal_ws, writable=True) as ws:
        res = ws.forget(FEW_PHOTOS_PERSON, images=more, progress=False, force=True)
        assert ws.check()["ok"]
    # the first gate, fitted on 3 renders, misses most new ones: a further gate is fitted
    assert res.kind == "top-up" and res.committed and res.top_up["escaped"] >= 2
    assert res.receipt["params"]["background"] > 0


def test_forget_suggests_calibrate_when_a_gate_widened_or_reads_high_without_a_background():
    """The estimate reads 0 % on galleries where people enrolled later still lost 10-22 points
    (docs/benchmarks.md, "Fourteenth round"): a gate that widened, or a bound that cannot rule
    much out, is reason enough. So is a one-photo gate's (the background raises its threshold);
    not an ID-photo gallery's plain gate, where a background measured the same."""
    from facekd.cli.erasure_commands import _later_text
    from facekd.operations.costs import later_bound

    def text(params: dict, bound: float | None, **model) -> str:
        return _later_text(params, {"strangers_touched_bound": bound, **model})

    base = {"strangers_touched": 0.0, "strangers_touched_faces": 42, "n": 3, "background": 0}
    widened = text(base | {"q": 0.95}, 0.084)
    assert "the gate widened to q 0.95" in widened and "calibrate --images DIR" in widened
    assert "about 0.00 % of their photos (at most 8.4 % at 95 %; read off 42 faces of people it "\
        "never saw; the gate widened" in widened
    assert "calibrate" not in text(base | {"q": 0.999}, 0.04)
    assert "calibrate --images" in text(base | {"q": 0.999}, 0.05)
    one = base | {"n": 1, "heldout_from": "prior"}
    assert "calibrate --images" not in text(one | {"q": 0.995}, 0.04)
    assert "the gate widened to q 0.98" in text(one | {"q": 0.98}, 0.04)
    assert "calibrate --images" in text(one | {"q": 0.995}, 0.3)
    for bound in (0.0, 0.3):  # nobody has two photos: a plain gate, the same with a background
        assert "calibrate --images" not in text(base | {"q": 0.95, "n": 1,
                                                        "heldout_from": "none"}, bound)
    assert "calibrate --images" in text(base | {"q": 0.999, "strangers_touched": 0.02}, None)
    # people enrolled later meet every gate: the ledger's sum, as for everyone else
    summed = text(base | {"q": 0.999, "strangers_touched": 0.02}, 0.1,
                  strangers_touched_total=0.05, strangers_touched_uncounted=1)
    assert "never saw; with the earlier erasures about 5.00 %, not counting 1 older)" in summed
    first = text(base | {"q": 0.999, "strangers_touched": 0.02}, 0.1, strangers_touched_total=0.02,
                 strangers_touched_uncounted=0)
    older = text(base | {"q": 0.999, "strangers_touched": 0.02}, 0.1, strangers_touched_total=0.02,
                 strangers_touched_uncounted=2)  # gates committed before the figure existed
    assert "earlier" not in first and "about 2.00 %, not counting 2 older)" in older
    kept = text(base | {"q": 0.998, "background": 900, "strangers_touched_people": 80}, 0.01)
    assert "900 of them photos kept by calibrate" in kept and "--images" not in kept
    assert "42 faces of 80 people" in kept
    people = later_bound(base | {"strangers_touched_people": 14})
    assert later_bound(base) == pytest.approx(0.0838, abs=1e-4)  # faces: a receipt from before
    assert people == pytest.approx(0.2153, abs=1e-4) and later_bound({}) is None
