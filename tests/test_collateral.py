"""What a gate costs everyone else, said in numbers: the share of other people's new photos it
opens on (estimated at fit time, held out by face), per erasure and summed over the ledger."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_gate_prior import pose_clusters

from facekd.cli.erasure_commands import _forget_head
from facekd.erasure import ErasureError, fit_scramble


def test_others_touched_estimates_the_new_photos_a_one_photo_gate_opens_on():
    # 100 enrolled people: 6 photos each in the gallery, 6 new ones each (never fitted). A
    # one-photo gate opens wide; what it costs is on the enrolled people's *new* photos, which
    # the gallery faces it was fitted against understate (the fit pushed those below the gate).
    # Each gate changes one or two of those ~600 photos (the rest it spares), so the shares are
    # compared over 30 gates: over 10 they are a handful of faces.
    x, y = pose_clusters(100, 12, seed=1)
    enrol = np.tile(np.arange(12) < 6, 100)
    est, real, opened, in_sample = [], [], [], []
    for person in range(30):
        me = y == person
        e = fit_scramble(x[me & enrol][:1], x[~me & enrol], gallery_labels=y[~me & enrol],
                         n_features=64, seed=person)
        real.append(np.mean(e.gate_levels(x[~me & ~enrol]) > 0))
        opened.append(np.mean(e.tail[0].hinge(x[~me & ~enrol])[:, 0] > 0))  # before sparing
        est.append(e.params["others_touched"])
        in_sample.append(e.params["gallery_touched"])
    real_share, est_share = float(np.mean(real)), float(np.mean(est))
    assert real_share > 0  # the gates do open on some of everyone else's new photos
    assert real_share / 1.5 <= est_share <= 1.5 * real_share
    # what the gallery alone would have said of the photos the gate opens on
    assert np.mean(in_sample) < np.mean(opened) / 2


def test_a_gate_fitted_without_labels_still_reports_what_it_costs_everyone_else():
    x, y = pose_clusters(40, 8, seed=2)
    e = fit_scramble(x[y == 0], x[y != 0], n_features=32)
    assert 0.0 <= e.params["others_touched"] <= 1.0


def test_forget_and_the_ledger_sum_what_the_gates_cost_everyone_else_and_people_enrolled_later(
        tmp_path):
    from conftest import run_cli

    from facekd.faces.synthfaces import write_tree
    from facekd.workspace import Workspace

    ids = list(range(3000, 3016))
    tree = write_tree(tmp_path / "tree", ids, 4, seed=0)
    Workspace.init(tmp_path / "ws", "samples", aligned=True).close()
    shares, later = [], []
    with Workspace.open(tmp_path / "ws", writable=True) as ws:
        ws.enroll(tree, progress=False)
        for person in ids[:2]:
            res = ws.forget(person, progress=False)
            model = res.receipt["model"]
            shares.append(model["others_touched"])
            later.append(model["strangers_touched"])
            # people enrolled later meet every gate: the ledger sums theirs too
            assert model["strangers_touched_total"] == pytest.approx(sum(later))
            assert model["strangers_touched"] <= model["strangers_touched_bound"]
            assert model["others_touched"] == ws.erasure.history[-1]["params"]["others_touched"]
            assert model["others_touched_total"] == pytest.approx(sum(shares))
            assert model["others_touched_uncounted"] == 0
            lo, hi = model["others_touched_interval"]  # read off the ~60 gallery faces
            assert lo <= model["others_touched"] <= hi and hi > 0.02
        assert [e["others_touched"] for e in ws.ledger()] == shares
        assert [e["strangers_touched"] for e in ws.ledger()] == later
        head = "\n".join(_forget_head(res, ids[1], dry_run=False))
        assert f"with the earlier erasures about {100 * sum(shares):.2f} %" in head
        assert f"% (95% {100 * lo:.2f}-{100 * hi:.2f}) of their new photos" in head
        line = next(t for t in head.splitlines() if t.startswith("people enrolled later"))
        assert later[0] > 0 and f"with the earlier erasures about {100 * sum(later):.2f} %" in line
        # A ledger entry committed before the figure existed is said to be left out.
        old = ws.ledger()
        del old[0]["others_touched"]
        ws.gallery.set_meta("ledger", json.dumps(old).encode())
        ws.commit()
    code, out, _ = run_cli("ledger", "-w", tmp_path / "ws")
    assert code == 0
    assert f"all 1 together about {100 * shares[1]:.2f}%, not counting 1 older gate(s)" in out
    assert f"later: the share of the photos of people enrolled later (no gate spares them) a " \
        f"gate opens on (each may then fail to match its owner); all 2 together about " \
        f"{100 * sum(later):.2f}%" in out
    with Workspace.open(tmp_path / "ws", writable=True) as ws:
        model = ws.forget(ids[2], progress=False, dry_run=True).receipt["model"]
        assert model["others_touched_uncounted"] == 1
        assert model["others_touched_total"] == pytest.approx(shares[1] + model["others_touched"])


def test_q_one_trades_a_one_photo_gate_for_everyone_elses_new_photos_and_leaves_more_photos_alone():
    x, y = pose_clusters(100, 12, seed=1)
    enrol = np.tile(np.arange(12) < 6, 100)
    me = y == 0
    g, gy = x[~me & enrol], y[~me & enrol]
    auto = fit_scramble(x[me & enrol][:1], g, gallery_labels=gy, n_features=32)
    tight = fit_scramble(x[me & enrol][:1], g, gallery_labels=gy, n_features=32, q_one=0.9995)
    assert tight.params["q"] == 0.9995 and auto.params["q"] <= 0.995
    assert tight.params["others_touched"] < auto.params["others_touched"]
    three = fit_scramble(x[me & enrol][:3], g, gallery_labels=gy, n_features=32, q_one=0.5)
    assert three.params["q"] == fit_scramble(x[me & enrol][:3], g, gallery_labels=gy,
                                             n_features=32).params["q"]
    with pytest.raises(ErasureError, match="q_one must be in"):
        fit_scramble(x[me & enrol][:1], g, gallery_labels=gy, q_one=1.0)


def test_scramble_q_one_in_config_sets_a_one_photo_erasures_gate(tmp_path):
    import tomllib

    import tomli_w

    from facekd.faces.synthfaces import write_tree
    from facekd.workspace import Workspace

    ids = list(range(3000, 3016))
    tree = write_tree(tmp_path / "tree", ids, 4, seed=0)
    for extra in sorted((tree / str(ids[0])).iterdir())[1:]:
        extra.unlink()  # an ID-photo: one photo of the person
    Workspace.init(tmp_path / "ws", "samples", aligned=True).close()
    cfg_path = tmp_path / "ws" / "config.toml"
    cfg = tomllib.loads(cfg_path.read_text())
    assert cfg["forget"]["scramble_q_one"] == "auto"  # written out, so an operator finds it
    cfg["forget"]["scramble_q_one"] = 0.9985  # not on the search grid
    cfg_path.write_text(tomli_w.dumps(cfg))
    with Workspace.open(tmp_path / "ws", writable=True) as ws:
        ws.enroll(tree, progress=False)
        one = ws.forget(ids[0], progress=False, dry_run=True).receipt["params"]
        four = ws.forget(ids[1], progress=False, dry_run=True).receipt["params"]
    assert one["n"] == 1 and one["q"] == 0.9985
    assert four["n"] == 4 and four["q"] != 0.9985  # gates on 2+ photos keep their own search


def test_forget_warns_once_the_gates_together_open_on_a_lot_of_everyone_elses_photos():
    from types import SimpleNamespace

    from facekd.cli.erasure_commands import OTHERS_TOUCHED_WARN

    def head(total: float) -> str:
        model = {"others_touched": 0.001, "others_touched_interval": [0.0005, 0.002],
                 "others_touched_total": total, "others_touched_uncounted": 0}
        res = SimpleNamespace(receipt={"receipt_id": "r", "model": model, "params": {}},
                              top_up=None, kind="erasure", removed_faces=1, coverage=None,
                              forced=False, refusal=None)
        return "\n".join(_forget_head(res, 7, dry_run=False))

    assert "their accuracy pays" not in head(OTHERS_TOUCHED_WARN / 2)
    assert "their accuracy pays" in head(OTHERS_TOUCHED_WARN)
