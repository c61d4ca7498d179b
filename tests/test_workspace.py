"""The workspace API: atomic forget, encoder state, ledger, receipts, verify, report.

Runs on a small synthetic set (facekd.faces.synthfaces + the ``samples`` encoder) built once per session
and copied per test.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from facekd.erasure import Erasure, fit_esc
from facekd.state import receipt as rc

from conftest import SYNTH_IDS as IDS, SYNTH_IMAGES as N_IMAGES, SYNTH_TARGET as TARGET


@pytest.fixture(scope="session")
def built_workspace(synthetic_photos, tmp_path_factory):
    """(workspace dir, tree dir, held-out dir of TARGET) with every identity enrolled."""
    from facekd.workspace import Workspace

    tree, held = synthetic_photos
    base = tmp_path_factory.mktemp("ws")
    Workspace.init(base / "ws", "samples", aligned=True).close()
    with Workspace.open(base / "ws", writable=True) as ws:
        ws.enroll(tree, progress=False)
    return base / "ws", tree, held


@pytest.fixture
def ws_dir(built_workspace, tmp_path):
    src, _, _ = built_workspace
    dst = tmp_path / "ws"
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="session")
def forgotten(built_workspace, tmp_path_factory):
    """(workspace dir, facts before, ForgetResult) after forgetting TARGET once (default method)."""
    from facekd.workspace import Workspace

    dst = tmp_path_factory.mktemp("forgotten") / "ws"
    shutil.copytree(built_workspace[0], dst)
    with Workspace.open(dst, writable=True) as ws:
        before = {"generation": ws.gallery.generation,
                  "n_faces": len(ws.gallery.vectors(TARGET))}
        res = ws.forget(TARGET, progress=False)
    return dst, before, res


@pytest.fixture
def erased_dir(forgotten, tmp_path):
    """A private copy of the ``forgotten`` workspace."""
    dst = tmp_path / "erased"
    shutil.copytree(forgotten[0], dst)
    return dst


def _open(path, writable=False):
    from facekd.workspace import Workspace

    return Workspace.open(path, writable=writable)


# ------------------------------------------------------------------ receipts and config
def test_identity_hash_is_keyed_by_the_workspace_salt():
    # Fixed salts: with random ones, a hex digest contains "1042" about once in a thousand runs.
    s1, s2 = "11" * 32, "22" * 32
    assert "1042" not in rc.hash_identity(1042, s1)
    assert len(rc.new_salt()) == 64 and rc.new_salt() != rc.new_salt()
    h = rc.hash_identity(1042, s1)
    assert h == rc.hash_identity(1042, s1) and len(h) == 64
    assert h != rc.hash_identity(1042, s2)
    assert h != rc.hash_identity(1043, s1)
    assert "1042" not in h


def test_find_leaks_spots_raw_ids_and_names():
    clean = {"identity_hash": "ab" * 32, "metrics": {"before": {"rank1_forget": 99.0}}}
    assert rc.find_leaks(clean, 1042, ["Jane_Doe"]) == []
    assert rc.find_leaks({"x": {"who": 1042}}, 1042) == ["/x/who"]
    assert rc.find_leaks({"note": "photo of Jane_Doe"}, 1042, ["Jane_Doe"]) == ["/note"]
    assert rc.find_leaks({"note": "id 1042 erased"}, 1042)


def test_build_receipt_drops_identity_keys_and_bins_scores():
    r = rc.build_receipt(identity_hash="0" * 64, method="esc", params={"k": 1},
                         model={"base_sha256": "a"}, generation_before=3, generation_after=4,
                         metrics={"forget_labels": [1042], "before": {"m": np.float32(1.5)}},
                         histograms={"g": np.array([0.5, 0.9, 0.95])}, timings={"fit": 0.1},
                         n_vectors=5, n_images=0, facekd_version="x", created="now")
    assert "forget_labels" not in r["metrics"] and r["metrics"]["before"]["m"] == 1.5
    assert sum(r["histograms"]["g"]) == 3 and len(r["histograms"]["g"]) == len(rc.HIST_EDGES) - 1
    assert r["receipt_id"] == "0" * 16 + "-4"
    json.loads(rc.to_json(r))


def test_erasure_bytes_round_trip_is_exact():
    rng = np.random.default_rng(0)
    e = fit_esc(rng.normal(size=(10, 32)), k=3)
    back = Erasure.from_bytes(e.to_bytes())
    assert np.array_equal(back.basis, e.basis) and back.params == e.params


def test_config_round_trips_and_rejects_unknown_settings():
    from facekd.workspace import Config, WorkspaceError

    cfg = Config(encoder="onnx:/m.onnx", aligned=True, match_threshold=0.4, max_tar=0.1)
    assert Config.from_toml(cfg.to_toml()) == cfg
    assert Config.from_toml(Config(encoder="dlib").to_toml()).match_threshold is None
    assert Config.from_toml(Config(encoder="dlib").to_toml()).scramble_q_one is None  # "auto"
    assert Config.from_toml(Config(encoder="dlib", scramble_q_one=0.998).to_toml()) \
        .scramble_q_one == 0.998
    assert Config.from_toml(Config(encoder="dlib").to_toml()).scramble_spare is None  # "auto"
    assert Config.from_toml(Config(encoder="dlib", scramble_spare=0.0).to_toml()) \
        .scramble_spare == 0.0
    bad = cfg.to_toml()
    bad["forget"]["colour"] = "red"
    with pytest.raises(WorkspaceError, match="colour"):
        Config.from_toml(bad)


def test_opening_a_missing_workspace_says_how_to_create_one(tmp_path):
    from facekd.workspace import WorkspaceError

    with pytest.raises(WorkspaceError, match="facekd init"):
        _open(tmp_path / "nope")


# ------------------------------------------------------------------ forget
def test_forget_commits_gallery_model_ledger_and_receipt_together(forgotten):
    ws_dir, before, res = forgotten
    assert res.committed and res.removed_faces == before["n_faces"] == N_IMAGES
    with _open(ws_dir) as ws:
        assert not ws.gallery.has_identity(TARGET)
        assert ws.gallery.generation == before["generation"] + 1
        (entry,) = ws.ledger()
        assert entry["identity_hash"] == ws.hash_identity(TARGET)
        stored = ws.receipt(entry["receipt_id"])
        assert stored["model"]["edited_sha256_after"] == ws.encoder.fingerprint
        assert ws.encoder_state["edited"] == ws.encoder.fingerprint != ws.encoder_state["base"]
        assert ws.erasure.k == res.receipt["model"]["k_total"]
        assert ws.erasure.n_gates == res.receipt["model"]["gates_total"] == 1  # the default method
        assert ws.gallery.encoder_fingerprint == ws.encoder.fingerprint
        assert ws.check()["ok"]
    on_disk = json.loads((ws_dir / "receipts" / f"{entry['receipt_id']}.json").read_text())
    assert on_disk == stored == res.receipt


def test_receipt_and_ledger_never_name_the_erased_person(forgotten):
    ws_dir, _, res = forgotten
    with _open(ws_dir) as ws:
        ledger = ws.ledger()
    assert rc.find_leaks(res.receipt, TARGET) == []
    assert rc.find_leaks({"ledger": ledger}, TARGET) == []
    text = (ws_dir / "receipts" / f"{res.receipt['receipt_id']}.json").read_text()
    # The id as a whole token: as a substring it also turns up inside floats (1.2771012...).
    assert not re.search(rf"(?<![\w.]){TARGET}(?![\w.])",
                         text.replace(res.receipt["identity_hash"], ""))


def test_gallery_equals_reenrolment_with_the_edited_encoder(forgotten):
    """The edit is linear, so projected stored vectors == fresh embeddings by the edited model."""
    from facekd.faces.synthfaces import render_identity

    with _open(forgotten[0]) as ws:
        other = IDS[3]
        fresh = ws.encoder.embed(render_identity(other, N_IMAGES, seed=0), progress=False)
        fresh /= np.linalg.norm(fresh, axis=1, keepdims=True)
        stored = ws.gallery.vectors(other)
    assert np.min(np.sum(fresh * stored, axis=1)) > 0.999


def test_dry_run_reports_but_changes_nothing(ws_dir):
    with _open(ws_dir) as ws:
        gen0 = ws.gallery.generation
        res = ws.forget(TARGET, dry_run=True, progress=False)
    assert not res.committed and res.receipt["dry_run"]
    assert res.receipt["metrics"]["before"]["rank1_forget"] is not None
    with _open(ws_dir) as ws:
        assert ws.gallery.generation == gen0 and ws.gallery.has_identity(TARGET)
        assert ws.ledger() == [] and ws.erasure.k == 0
    assert not (ws_dir / "receipts").exists()


def test_forget_lowers_the_erased_identity_metrics_only(forgotten):
    m = forgotten[2].receipt["metrics"]
    assert m["after"]["rank1_forget"] < m["before"]["rank1_forget"]
    assert m["after"]["rank1_retain"] >= m["before"]["rank1_retain"] - 10


def test_an_esc_deletion_after_a_gated_one_joins_the_tail(erased_dir, forgotten):
    r1 = forgotten[2]  # the default method: one gate, no erased direction
    with _open(erased_dir, writable=True) as ws:
        # k=5 exceeds the rank of the 3-face enrolment half, so the report measures the
        # committed erasure instead of a held-out twin, and says so.
        r2 = ws.forget(IDS[5], k=5, progress=False)
    assert "committed erasure" in r2.receipt["metrics"]["protocol"]
    with _open(erased_dir) as ws:
        acc = ws.erasure
        assert len(ws.ledger()) == 2 and acc.n_gates == 1 and acc.k == 0
        # A linear step cannot move before a gate: it runs after it, as a tail stage.
        assert [st.kind for st in acc.tail] == ["gates", "linear"]
        (lin,) = [st for st in acc.tail if st.kind == "linear"]
        assert np.linalg.matrix_rank(np.eye(128) - lin.matrix) == 5
        assert ws.encoder_state["edited"] == ws.encoder.fingerprint
        assert r2.receipt["model"]["edited_sha256_before"] == r1.receipt["model"]["edited_sha256_after"]
        assert ws.check()["ok"]


@pytest.mark.parametrize("case", ["unknown", "erased", "too_few", "two_rules"])
def test_forget_refuses_bad_requests_with_workspace_errors(erased_dir, case):
    from facekd.workspace import WorkspaceError

    who = TARGET if case == "erased" else IDS[0]
    with _open(erased_dir, writable=True) as ws:
        gen = ws.gallery.generation
        if case == "unknown":
            with pytest.raises(WorkspaceError, match="facekd identities"):
                ws.forget(99999, progress=False)
        elif case == "erased":  # idempotent: the committed receipt, nothing changed
            again = ws.forget(who, progress=False)
            assert again.already_erased and again.removed_faces == 0
            assert again.receipt["receipt_id"] == ws.ledger()[0]["receipt_id"]
        elif case == "too_few":
            ws.config.min_vectors = 50
            with pytest.raises(WorkspaceError, match="at least 50"):
                ws.forget(who, progress=False)
        else:
            with pytest.raises(WorkspaceError, match="at most one"):
                ws.forget(who, p=2.0, k=2, progress=False)
    with _open(erased_dir) as ws:
        assert ws.gallery.generation == gen and len(ws.ledger()) == 1
        assert ws.gallery.has_identity(who) == (case != "erased")


@pytest.mark.slow
def test_esc_t_forget_commits_a_dense_map(ws_dir):
    with _open(ws_dir, writable=True) as ws:
        res = ws.forget(TARGET, method="esc-t", progress=False)  # the workspace's default lr
    assert res.receipt["method"] == "esc-t"
    assert res.receipt["params"]["masked_fraction"] > 0
    assert res.receipt["params"]["forget_accuracy"] == 0.0
    with _open(ws_dir) as ws:
        assert ws.erasure.method == "esc-t"
        assert ws.encoder_state["edited"] == ws.encoder.fingerprint


def test_esc_t_that_masks_nothing_is_refused_and_changes_nothing(ws_dir):
    from facekd.workspace import WorkspaceError

    with _open(ws_dir, writable=True) as ws:
        gen = ws.gallery.generation
        ws.config.esc_t_lr = 1e-3  # the reference step: never crosses the threshold here
        ws.config.esc_t_normalize_step = False
        with pytest.raises(WorkspaceError, match="masked nothing"):
            ws.forget(TARGET, method="esc-t", progress=False)
    with _open(ws_dir) as ws:
        assert ws.gallery.generation == gen and ws.gallery.has_identity(TARGET)


# ------------------------------------------------------------------ verify and report
def test_verify_measures_before_and_after_on_every_photo_and_does_not_fail_an_erasure(
        forgotten, built_workspace):
    _, _, held = built_workspace
    with _open(forgotten[0]) as ws:
        res = ws.verify(TARGET, images=held, progress=False)
    assert res.status in ("PASS", "INCONCLUSIVE"), res.reason
    assert res.attack["probes"] + res.attack["enrolled"] == N_IMAGES
    assert len(res.images) == N_IMAGES and res.retained["rank1"] > 0.5
    before, after = res.attack["before"]["rank-1"], res.attack["after"]["rank-1"]
    assert before["ruling"] == "FAIL" and before["estimate"] > 0.9  # found before the edit
    assert after["estimate"] < before["estimate"] and after["low"] <= after["estimate"]
    # the gate says which photos it scrambled; each photo is numbered, never named
    e = res.erased_photos
    assert e["photos"] == N_IMAGES and 0 <= e["erased"] <= N_IMAGES
    assert e["interval"][0] <= e["share"] <= e["interval"][1]
    assert sorted(e["not_erased"]) == sorted(im["image"] for im in res.images if im["gate"] < 1)
    assert not res.recorded  # opened read-only


def test_verify_fails_when_the_person_is_enrolled_again(erased_dir, built_workspace, tmp_path):
    from facekd.faces.synthfaces import write_tree

    _, _, held = built_workspace
    with _open(erased_dir, writable=True) as ws:
        ws.enroll(write_tree(tmp_path / "again", [TARGET], 4, seed=0), progress=False)
    with _open(erased_dir) as ws:
        res = ws.verify(TARGET, images=held, progress=False)
    assert res.status == "FAIL" and "enrolled again" in res.reason


def test_verify_without_images_explains_the_attack_needs_them(forgotten):
    from facekd.workspace import WorkspaceError

    with _open(forgotten[0]) as ws:
        res = ws.verify(TARGET)
        assert res.attack is None and "--images" in res.reason
        assert res.status == "INCONCLUSIVE"  # nothing was measured, so nothing is claimed
        with pytest.raises(WorkspaceError, match="not been erased"):
            ws.verify(IDS[0])


def test_report_writes_pngs_and_html_without_the_raw_id(erased_dir):
    from facekd.evaluation.report import write_report

    with _open(erased_dir) as ws:
        out = write_report(ws)
    assert out["histograms_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out["metrics_png"].stat().st_size > 1000
    page = out["html"].read_text()
    assert "data:image/png;base64," in page and out["receipt_id"] in page
    assert f">{TARGET}<" not in page and f'"{TARGET}"' not in page


def test_config_energy_rule_is_the_default_for_forget(ws_dir):
    import tomllib

    import tomli_w

    from facekd.workspace import CONFIG_NAME

    cfg_path = ws_dir / CONFIG_NAME
    cfg = tomllib.loads(cfg_path.read_text())
    cfg["forget"]["energy"] = 0.95
    cfg["forget"]["method"] = "esc"
    cfg_path.write_text(tomli_w.dumps(cfg))
    with _open(ws_dir, writable=True) as ws:
        stored = ws.gallery.vectors(TARGET)
        res = ws.forget(TARGET, dry_run=True, progress=False)
    params = res.receipt["params"]
    assert params["energy_requested"] == 0.95 and params["p"] is None
    assert params["k"] == fit_esc(stored, energy=0.95).k


def test_config_with_both_k_and_energy_is_refused(ws_dir):
    import tomllib

    import tomli_w

    from facekd.workspace import CONFIG_NAME, WorkspaceError

    cfg_path = ws_dir / CONFIG_NAME
    cfg = tomllib.loads(cfg_path.read_text())
    cfg["forget"].update({"energy": 0.9, "k": 3})
    cfg_path.write_text(tomli_w.dumps(cfg))
    with pytest.raises(WorkspaceError, match="both k and energy"):
        _open(ws_dir)


def test_search_works_when_every_person_has_a_single_photo(tmp_path):
    from facekd.faces.synthfaces import write_tree
    from facekd.workspace import Workspace

    tree = write_tree(tmp_path / "one-each", IDS[:12], 1, seed=0)
    Workspace.init(tmp_path / "ws", "samples", aligned=True).close()
    with Workspace.open(tmp_path / "ws", writable=True) as ws:
        ws.enroll(tree, progress=False)
    probe = next((tree / str(IDS[3])).iterdir())
    with Workspace.open(tmp_path / "ws") as ws:
        assert ws.match_threshold() is not None  # from impostor pairs alone: no genuine pairs exist
        res = ws.search(probe, k=1)
    assert res["matches"][0]["identity"] == IDS[3]


def test_forget_report_on_a_large_gallery_measures_a_seeded_sample(ws_dir, monkeypatch):
    from facekd.operations import measure

    monkeypatch.setattr(measure, "REPORT_MAX_IDENTITIES", 10)
    with _open(ws_dir, writable=True) as ws:
        res = ws.forget(TARGET, dry_run=True, progress=False)
    metrics = res.receipt["metrics"]
    assert "sample of 10 of the 29 other identities" in metrics["protocol"]
    assert metrics["chance_rank1"] == pytest.approx(1 / 11)


def test_two_look_alikes_erased_in_turn_both_stay_erased_and_verifiable(ws_dir, tmp_path):
    """Gates that overlap: erase the target, then the enrolled person who looks most like it. Each
    is fitted on the current stored vectors; the second gate joins the first's chain; verify and
    the ledger keep working for both, and everyone else is still found."""
    import cv2

    from facekd.faces.synthfaces import render_identity

    with _open(ws_dir) as ws:
        vecs, labels = np.asarray(ws.gallery.vectors()), np.asarray(ws.gallery.labels())
    means = {i: vecs[labels == i].mean(0) for i in IDS}
    twin = max((i for i in IDS if i != TARGET), key=lambda i: means[i] @ means[TARGET])
    with _open(ws_dir, writable=True) as ws:
        ws.forget(TARGET, progress=False)
        ws.forget(twin, progress=False)
    with _open(ws_dir) as ws:
        assert ws.erasure.n_gates == 2 and len(ws.erasure.tail) == 1
        assert [e["identity_hash"] for e in ws.ledger()] == [ws.hash_identity(TARGET),
                                                             ws.hash_identity(twin)]
        for person in (TARGET, twin):
            held = tmp_path / f"held-{person}"
            held.mkdir()
            for j, chip in enumerate(render_identity(person, 8, seed=0, image_offset=N_IMAGES)):
                cv2.imwrite(str(held / f"{j}.png"), cv2.cvtColor(chip, cv2.COLOR_RGB2BGR))
            res = ws.verify(person, images=held, progress=False)
            assert res.attack["after"]["TAR"]["estimate"] <= 0.05, person
        assert res.retained["rank1"] >= 0.85
        assert ws.check()["ok"]


def test_every_receipt_measures_the_template_the_edited_model_gives_away(forgotten):
    """The gate singles the erased person out among the gallery's identities: the receipt says
    so with numbers (and holds no direction or embedding)."""
    leak = forgotten[2].receipt["model"]["template_leak"]
    assert set(leak) == {"cosine_to_mean_face", "rank", "ranked_among"}
    assert leak["ranked_among"] == len(IDS) and 1 <= leak["rank"] <= 3
    assert 0.0 < leak["cosine_to_mean_face"] <= 1.0


# ------------------------------------------------------------------ coverage: erasures doing nothing
@pytest.fixture(scope="session")
def degenerate_built(tmp_path_factory):
    from conftest import degenerate_workspace

    return degenerate_workspace(tmp_path_factory.mktemp("degenerate") / "ws")


@pytest.fixture
def degenerate_dir(degenerate_built, tmp_path):
    dst = tmp_path / "degenerate"
    shutil.copytree(degenerate_built, dst)
    return dst


def test_forget_refuses_an_erasure_that_covers_nothing_and_commits_nothing(degenerate_dir):
    """Every face is one vector plus noise: the gate opens on none of the person's held-out
    photos, so forget refuses, and the workspace is as it was."""
    from facekd.workspace import WorkspaceError

    with _open(degenerate_dir, writable=True) as ws:
        gen = ws.gallery.generation
        with pytest.raises(WorkspaceError,
                           match=r"0 of 6 held-out photos.*coverage 0\.00.*--force"):
            ws.forget(3, progress=False)
    with _open(degenerate_dir) as ws:
        assert ws.gallery.has_identity(3) and len(ws.gallery.vectors(3)) == 6
        assert ws.ledger() == [] and ws.gallery.generation == gen and ws.erasure.n_gates == 0
    assert not (degenerate_dir / "receipts").exists()


def test_dry_run_reports_the_coverage_and_the_refusal(degenerate_dir):
    with _open(degenerate_dir, writable=True) as ws:
        res = ws.forget(3, dry_run=True, progress=False)
    assert not res.committed and res.refusal and "min_coverage 0.50" in res.refusal
    cov = res.receipt["coverage"]
    assert cov == res.coverage and cov["share"] == 0.0 and cov["faces"] == 6
    assert cov["held_out"] and cov["under_floor"] and cov["floor"] == 0.5


def test_force_commits_a_refused_erasure_and_records_it(degenerate_dir):
    with pytest.warns(RuntimeWarning, match="--force given"):
        with _open(degenerate_dir, writable=True) as ws:
            res = ws.forget(3, progress=False, force=True)
    assert res.committed and res.forced and res.receipt["forced"] is True
    assert res.receipt["forced_over"] == ["coverage"]
    with _open(degenerate_dir) as ws:
        (entry,) = ws.ledger()
        assert entry["forced"] is True and entry["kind"] == "erasure"
        assert not ws.gallery.has_identity(3) and ws.check()["ok"]


def test_a_real_erasure_covers_the_person_and_says_so(forgotten):
    cov = forgotten[2].receipt["coverage"]
    assert cov["share"] >= 0.5 and not cov["under_floor"] and cov["held_out"]
    assert forgotten[2].receipt["forced"] is False and forgotten[2].receipt["kind"] == "erasure"


def test_a_linear_erasure_is_judged_by_how_far_it_moves_unseen_photos(ws_dir):
    from facekd.operations.measure import MOVED_COSINE

    with _open(ws_dir, writable=True) as ws:
        res = ws.forget(TARGET, k=1, dry_run=True, progress=False)
    cov = res.coverage
    assert f"cosine {MOVED_COSINE:g}" in cov["criterion"] and cov["held_out"]
    assert cov["faces"] == N_IMAGES // 2 and cov["share"] >= 0.5 and res.refusal is None


def test_min_coverage_is_a_validated_setting(ws_dir):
    import tomllib

    import tomli_w

    from facekd.workspace import CONFIG_NAME, WorkspaceError

    cfg_path = ws_dir / CONFIG_NAME
    cfg = tomllib.loads(cfg_path.read_text())
    assert cfg["forget"]["min_coverage"] == 0.5  # init writes the default
    cfg["forget"]["min_coverage"] = 1.5
    cfg_path.write_text(tomli_w.dumps(cfg))
    with pytest.raises(WorkspaceError, match="min_coverage must be in"):
        _open(ws_dir)
    cfg["forget"]["min_coverage"] = 0.0  # 0 turns the check off
    cfg_path.write_text(tomli_w.dumps(cfg))
    with _open(ws_dir) as ws:
        assert ws.config.min_coverage == 0.0


# ------------------------------------------------------------------ top-up
@pytest.fixture(scope="session")
def topped_up(built_workspace, tmp_path_factory):
    """TARGET erased in full, then FEW_PHOTOS_PERSON erased from 3 photos (forced), then topped up
    with 24 new photos of it: (workspace dir, new photos dir, TARGET's new photos dir, levels of
    TARGET's photos before the top-up, ForgetResult of the top-up)."""
    from conftest import FEW_PHOTOS_PERSON as P, erase_from_few_photos, write_renders

    base = tmp_path_factory.mktemp("topup")
    dst = base / "ws"
    shutil.copytree(built_workspace[0], dst)
    with _open(dst, writable=True) as ws:
        ws.forget(TARGET, progress=False)
    erase_from_few_photos(dst)
    more = write_renders(base / "more", P, 24, 2 * N_IMAGES)
    target_new = write_renders(base / "target-new", TARGET, 12, 2 * N_IMAGES)
    with _open(dst, writable=True) as ws:
        rows, _, _ = ws.embed_images(sorted(target_new.iterdir()), progress=False, base=True)
        before = ws.erasure.gate_levels(rows)
        res = ws.forget(P, images=more, progress=False)
    return dst, more, target_new, before, res


def _levels(ws, folder):
    rows, _, _ = ws.embed_images(sorted(folder.iterdir()), progress=False, base=True)
    return ws.erasure.gate_levels(rows)


def test_top_up_scrambles_the_photos_that_escaped(topped_up):
    dst, more, _, _, res = topped_up
    top = res.top_up
    assert res.committed and res.kind == "top-up" and res.removed_faces == 0
    assert top["photos_given"] == 24 and top["already_erased"] + top["escaped"] == 24
    assert top["escaped"] >= 5  # a gate from 3 photos missed some of the new ones (7 of 24)
    assert top["newly_covered"] >= 0.75 * top["escaped"] and res.coverage["share"] >= 0.5
    with _open(dst) as ws:
        now = _levels(ws, more)
    assert int(np.count_nonzero(now >= 1.0)) == top["already_erased"] + top["newly_covered"]


def test_top_up_keeps_earlier_erasures_in_force(topped_up):
    """TARGET was erased first: every one of its new photos gated fully before the top-up still
    is, and none is gated less."""
    dst, _, target_new, before, _ = topped_up
    with _open(dst) as ws:
        after = _levels(ws, target_new)
        assert not ws.gallery.has_identity(TARGET)
    assert np.count_nonzero(before >= 1.0) >= 6
    assert np.all(after >= before - 1e-12)


def test_top_up_is_in_the_ledger_and_its_receipt_names_nobody(topped_up):
    from conftest import FEW_PHOTOS_PERSON as P

    dst, more, _, _, res = topped_up
    with _open(dst) as ws:
        ledger = ws.ledger()
        assert [e["kind"] for e in ledger] == ["erasure", "erasure", "top-up"]
        assert ledger[-1]["identity_hash"] == ws.hash_identity(P) == ledger[1]["identity_hash"]
        assert ledger[-1]["receipt_id"] != ledger[1]["receipt_id"]
        assert ws.erasure.n_gates == 3 and len(ws.erasure.tail) == 1  # one chain
        assert ws.check()["ok"]
        stored = ws.receipt(ledger[-1]["receipt_id"])
    assert stored == res.receipt and stored["kind"] == "top-up" and stored["top_up"] == res.top_up
    assert rc.find_leaks(stored, P, [str(more), "0.png"]) == []
    assert rc.find_leaks({"ledger": ledger}, P) == []
    assert stored["fitted_on"] == {"gallery_vectors": 0, "extra_images": res.top_up["escaped"]}


def test_top_up_with_photos_already_erased_changes_nothing(topped_up, tmp_path):
    dst, more, _, _, _ = topped_up
    ws_dir = tmp_path / "ws"
    shutil.copytree(dst, ws_dir)
    with _open(ws_dir) as ws:
        covered = _levels(ws, more) >= 1.0
        gen, n = ws.gallery.generation, len(ws.ledger())
    done = tmp_path / "done"
    done.mkdir()
    for j, path in enumerate(sorted(more.iterdir())):
        if covered[j]:
            shutil.copy(path, done / path.name)
    from conftest import FEW_PHOTOS_PERSON as P

    with _open(ws_dir, writable=True) as ws:
        res = ws.forget(P, images=done, progress=False)
    assert not res.committed and res.receipt == {}
    assert res.top_up == {"photos_given": int(covered.sum()), "already_erased": int(covered.sum()),
                          "escaped": 0}
    with _open(ws_dir) as ws:
        assert ws.gallery.generation == gen and len(ws.ledger()) == n


def test_top_up_fits_a_single_escaped_photo(built_workspace, tmp_path):
    """The scramble fits one photo (a within-identity prior): a top-up with one escaped photo
    is committed, or refused in one line by its coverage; never the old "needs 2" error."""
    from conftest import FEW_PHOTOS_PERSON as P, erase_from_few_photos, write_renders
    from facekd.workspace import WorkspaceError

    dst = tmp_path / "ws"
    shutil.copytree(built_workspace[0], dst)
    erase_from_few_photos(dst)
    new = write_renders(tmp_path / "new", P, 24, 2 * N_IMAGES)
    with _open(dst) as ws:
        escaped = _levels(ws, new) < 1.0
    if not escaped.any():
        pytest.skip("every new photo is erased already: nothing to top up")
    one = tmp_path / "one"
    one.mkdir()
    first = int(np.flatnonzero(escaped)[0])
    for j, path in enumerate(sorted(new.iterdir())):
        if not escaped[j] or j == first:
            shutil.copy(path, one / path.name)
    with _open(dst, writable=True) as ws:
        try:
            res = ws.forget(P, images=one, progress=False, force=True)
        except WorkspaceError as exc:
            assert "\n" not in str(exc) and "at least 2" not in str(exc)
        else:
            assert res.committed and res.top_up["escaped"] == 1


def test_top_up_refuses_photos_that_open_no_gate(erased_dir, tmp_path):
    """Photos of someone else (a person still enrolled) open none of the erasure's gates: a
    further step fitted on them would erase that person, so the top-up is refused."""
    from conftest import write_renders
    from facekd.workspace import WorkspaceError

    other = write_renders(tmp_path / "other", IDS[0], 6, 2 * N_IMAGES)
    with _open(erased_dir, writable=True) as ws:
        with pytest.raises(WorkspaceError, match="near any gate.*--force"):
            ws.forget(TARGET, images=other, progress=False)
        assert len(ws.ledger()) == 1 and ws.gallery.has_identity(IDS[0])


def test_a_ledger_written_before_kinds_existed_still_loads_and_tops_up(erased_dir, tmp_path):
    """Entries without "kind" (older workspaces) read as erasures; a top-up appends to them."""
    from conftest import run_cli, write_renders

    with _open(erased_dir, writable=True) as ws:
        old = [{k: v for k, v in e.items() if k != "kind"} for e in ws.ledger()]
        ws.gallery.set_meta("ledger", json.dumps(old).encode())
        ws.commit()
    code, out, _ = run_cli("ledger", "-w", erased_dir)
    assert code == 0 and " erasure " in out
    more = write_renders(tmp_path / "more", TARGET, 12, 3 * N_IMAGES)
    with _open(erased_dir, writable=True) as ws:
        res = ws.forget(TARGET, images=more, progress=False, dry_run=True)
        assert res.kind == "top-up" and res.top_up["photos_given"] == 12
        assert "kind" not in ws.ledger()[0] and ws.check()["ok"]


def test_the_one_to_many_threshold_is_cached_per_generation_and_a_damaged_cache_is_recomputed(
        ws_dir, built_workspace):
    from facekd.operations.measure import gallery_strangers, identification_threshold

    with _open(ws_dir) as ws:
        cache = ws.root / "cache"
        first = identification_threshold(ws.gallery, ws.config, cache=cache)
        files = list(cache.glob("strangers-g*.npz"))
        assert len(files) == 1 and f"-g{ws.gallery.generation}-" in files[0].name
        assert identification_threshold(ws.gallery, ws.config, cache=cache) == first
        files[0].write_bytes(b"damaged")
        again = gallery_strangers(ws.gallery, ws.config, cache)
        assert identification_threshold(ws.gallery, ws.config, again) == first
