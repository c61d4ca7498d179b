"""An ID-photo gallery (issue 21): everyone enrolled with one photo, nobody with two.

There is no within-identity variation to learn a prior from and no pair of photos to estimate a
one-photo gate's cover with, so forget fits the plain ridge gate, says its cover is unknown, and
measures nothing on stored faces; verify --images on new photos still decides.
"""

from __future__ import annotations

import numpy as np
import pytest

from clusters import identity_clusters
from facekd.erasure import fit_scramble
from facekd.methods.prior import WithinPrior
from facekd.methods.scramble_defaults import Q_ONE, RIDGE_BLIND
from facekd.methods.spare import BLIND_RATIO, fit_spare


@pytest.fixture(scope="module")
def id_gallery():
    """60 people x 12 photos; the gallery holds the first photo of each but the person (id 0)."""
    E, y = identity_clusters(60, 12, d=64, spread=0.35, seed=3)
    first = np.r_[True, y[1:] != y[:-1]]
    others = first & (y != 0)
    return E, y, E[others], y[others]


def test_one_photo_in_a_gallery_of_single_photos_fits_the_plain_gate_and_covers_the_person(
        id_gallery):
    E, y, g, gy = id_gallery
    assert WithinPrior.fit(g, gy) is None  # nothing to pool
    me = np.flatnonzero(y == 0)
    e = fit_scramble(E[me[:1]], g, gallery_labels=gy)
    p = e.params
    assert p["heldout_from"] == "none" and p["prior"] == 0.0 and p["ridge"] == RIDGE_BLIND
    assert p["q"] == Q_ONE and p["walked"] is False  # no walk down the ladder
    # No pair of photos to estimate the cover from: unknown, never a made-up 1.0.
    assert p["heldout_recall"] is None and p["heldout_gated_fully"] is None
    fresh = e.tail[0].gates(E[me[1:]])[:, 0]
    assert np.mean(fresh >= 1.0) >= 0.8
    # Everyone else's new photos mostly pass unchanged.
    new = (~np.r_[True, y[1:] != y[:-1]]) & (y != 0)
    moved = np.linalg.norm(e.apply(E[new]) - E[new], axis=1) > 1e-6
    assert moved.mean() <= 0.05


def test_sparing_keeps_a_margin_over_the_person_where_nobody_has_two_photos(id_gallery):
    E, y, g, gy = id_gallery
    me = E[y == 0][:1]
    e = fit_scramble(me, g, gallery_labels=gy, spare=0)
    w, b = e.tail[0].weights[:, 0], float(e.tail[0].bias[0])
    s = fit_spare(g, gy, me, w, b)
    assert s.faces > 0
    near = s.known[:s.faces]
    # Each spared face's threshold clears the person's photo by 2.326 x BLIND_RATIO x the s.d.
    # of the strangers' cosines (all 59 single photos calibrate here: 2 x SPARE_FACES >= 59).
    # A margin of 0 would spare the person's new photos as look-alikes.
    cos = (g @ g.T).astype(np.float64)
    np.fill_diagonal(cos, np.nan)
    margin = 2.326 * BLIND_RATIO * np.nanstd(cos)
    assert margin > 0.05
    assert np.all(s.t[:s.faces] >= (me @ near.T)[0] + margin - 1e-9)


def test_forget_in_an_id_photo_gallery_commits_says_cover_unknown_and_a_top_up_widens_it(
        tmp_path):
    from facekd.cli.erasure_commands import _forget_head
    from facekd.faces.synthfaces import write_tree
    from facekd.workspace import Workspace

    ids = list(range(4000, 4030))
    tree = write_tree(tmp_path / "tree", ids, 25, seed=1)
    later, fresh = tmp_path / "later", tmp_path / "fresh"
    later.mkdir()
    fresh.mkdir()
    for folder in tree.iterdir():
        for i, photo in enumerate(sorted(folder.iterdir())[1:]):  # one photo each stays enrolled
            if folder.name == str(ids[0]):
                photo.rename((later if i < 12 else fresh) / photo.name)
            else:
                photo.unlink()
    Workspace.init(tmp_path / "ws", "samples", aligned=True).close()
    with Workspace.open(tmp_path / "ws", writable=True) as ws:
        ws.enroll(tree, progress=False)
        res = ws.forget(ids[0], progress=False)
        assert res.committed and not ws.gallery.has_identity(ids[0])
        assert ws.erasure.history[-1]["params"]["heldout_from"] == "none"
        assert res.coverage["share"] is None and not res.coverage["under_floor"]
        head = "\n".join(_forget_head(res, ids[0], dry_run=False))
        assert "coverage not estimated" in head and "verify --images" in head
        # Nothing on stored faces can be searched for: no figure, and the verdict says so.
        assert res.receipt["metrics"]["after"] == {}
        assert "nobody else in the gallery has two" in res.receipt["metrics"]["protocol"]
        assert res.receipt["verdict"]["status"] == "INCONCLUSIVE"
        # New photos, never fitted: verify names those the one-photo gate let through ...
        checked = ws.verify(ids[0], images=fresh, progress=False).to_dict()
        before = checked["erased_photos"]
        # 29 stored faces cannot show where 1 % of strangers score: verify and search say so.
        assert any("from 29 sampled stored faces" in n for n in checked["notes"])
        found = ws.search(sorted(fresh.iterdir())[0])
        assert "from 29 sampled stored faces" in found["threshold_note"]
        assert before["erased"] + len(before["not_erased"]) == 12
        # ... and a top-up with more photos of the person widens the erasure to them.
        top = ws.forget(ids[0], images=later, progress=False)
        assert top.committed and top.kind == "top-up"
        after = ws.verify(ids[0], images=fresh, progress=False).to_dict()["erased_photos"]
        assert after["erased"] >= max(before["erased"], 10)
