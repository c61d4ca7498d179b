"""Forget on a gallery larger than the receipt measures in full: the stated sample, the intervals
beside each figure, and workspaces saved before the face rows file existed."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from clusters import identity_clusters

N_IDS, PER_ID = 420, 4


@pytest.fixture(scope="module")
def big_ws(tmp_path_factory):
    from facekd.workspace import Workspace

    root = tmp_path_factory.mktemp("big") / "ws"
    Workspace.init(root, "samples", aligned=True).close()
    x, y = identity_clusters(N_IDS, PER_ID, 128, spread=0.5, shared_axis=0.8, seed=11)
    with Workspace.open(root, writable=True) as ws:
        ws.gallery.add(x, y)
        ws.gallery.save()
    return root


def _copy(src, tmp_path):
    import shutil

    dst = tmp_path / "ws"
    shutil.copytree(src, dst)
    return dst


def test_identity_means_equal_the_per_face_sum():
    from facekd.faces.photos import normalize as _normalize
    from facekd.operations.measure import identity_means as _identity_means

    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 16)).astype(np.float32)
    y = rng.integers(-3, 300, size=5000)
    ids, means = _identity_means(x, y, block=700)  # identities straddle blocks
    ref_ids, inv = np.unique(y, return_inverse=True)
    ref = np.zeros((len(ref_ids), 16))
    np.add.at(ref, inv, _normalize(x))
    ref /= np.bincount(inv)[:, None]
    assert np.array_equal(ids, ref_ids) and np.allclose(means, ref, atol=1e-6)


def test_forget_receipt_states_its_sample_and_an_interval_beside_each_figure(big_ws, tmp_path):
    from facekd.operations.measure import KR_MAX_IDENTITIES, REPORT_MAX_IDENTITIES
    from facekd.workspace import Workspace

    root = _copy(big_ws, tmp_path)
    with Workspace.open(root, writable=True) as ws:
        res = ws.forget(7, progress=False)
    m = res.receipt["metrics"]
    assert f"({REPORT_MAX_IDENTITIES + 1} identities" in res.report_table  # receipts drop the key
    assert m["counts"]["kr_identities"] == KR_MAX_IDENTITIES + 1
    assert f"sample of {REPORT_MAX_IDENTITIES} of the {N_IDS - 1}" in m["protocol"]
    assert f"sample of {KR_MAX_IDENTITIES} others" in m["protocol"]
    for state in ("before", "after"):
        assert m["intervals"][state], state
        for name, (lo, hi) in m["intervals"][state].items():
            assert 0 <= lo <= m[state][name] <= hi <= 100, (state, name)
    assert "95% CI" in res.report_table and "KR probes on 101 identities" in res.report_table


def _strip_rows_file(root) -> None:
    gal = root / "gallery"
    con = sqlite3.connect(gal / "gallery.sqlite")
    files = json.loads(con.execute("SELECT value FROM gallery WHERE key='files'").fetchone()[0])
    (gal / files.pop("rows")[0]).unlink()
    con.execute("UPDATE gallery SET value=? WHERE key='files'", (json.dumps(files, sort_keys=True),))
    con.commit()
    con.close()


def test_a_workspace_saved_before_the_rows_file_lists_forgets_and_gains_it(big_ws, tmp_path):
    from facekd.workspace import Workspace

    root = _copy(big_ws, tmp_path)
    with Workspace.open(root) as ws:
        listed = ws.identities()
    _strip_rows_file(root)
    with Workspace.open(root) as ws:
        assert ws.identities() == listed
        assert ws.check()["ok"]
    with Workspace.open(root, writable=True) as ws:
        ws.forget(9, progress=False)
    assert list((root / "gallery").glob("rows-*.npy"))
    with Workspace.open(root) as ws:
        assert [i for i in listed if i.identity != 9] == ws.identities()
        assert ws.check()["ok"]
