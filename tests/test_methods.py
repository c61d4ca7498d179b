"""The erasure-method registry: a method is one registered function, and the workspace, the CLI
and ``facekd bench`` (tests/test_bench.py) pick it up by name."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from facekd import methods
from facekd.erasure import Erasure

from conftest import SYNTH_TARGET as TARGET, run_cli
from test_workspace import built_workspace  # noqa: F401  (the session-wide enrolled workspace)

SEEN: list[dict] = []


def fit_mean_direction(forget: np.ndarray, context: methods.FitContext) -> Erasure:
    """A tiny method: project out the person's mean direction (ESC with k = 1, no SVD)."""
    SEEN.append({"n_forget": len(forget), "gallery_labels": set(context.gallery_labels.tolist()),
                 "n_gallery": len(context.gallery), "options": dict(context.options),
                 "previous_k": context.previous.k, "person": None if context.person is None
                 else len(context.person)})
    mean = np.asarray(forget, np.float64).mean(axis=0)
    return Erasure(method="esc", d=len(mean), basis=(mean / np.linalg.norm(mean))[:, None],
                   params={"k": 1, "seed": context.options.get("seed")})


@pytest.fixture
def mean_direction():
    """``mean-direction`` registered for one test (its seed read from config.toml's ``seed``)."""
    methods.register("mean-direction", options=("seed",), config={"seed": "seed"})(
        fit_mean_direction)
    SEEN.clear()
    yield "mean-direction"
    methods.unregister("mean-direction")


def test_builtin_methods_are_registered_with_their_settings():
    assert methods.names() == ("esc", "esc-t", "scramble")
    assert methods.get("scramble").config == {"scramble_q": "q", "scramble_q_one": "q_one",
                                              "scramble_alpha": "alpha",
                                              "scramble_guard": "guard",
                                              "scramble_guard_keep": "guard_keep",
                                              "scramble_spare": "spare",
                                              "scramble_stranger_cap": "stranger_cap",
                                              "scramble_soft_from": "soft_from", "seed": "seed"}
    with pytest.raises(methods.MethodError, match="unknown method 'nosuch'; use one of esc"):
        methods.get("nosuch")
    with pytest.raises(methods.MethodError, match="unexpected keyword setting 'alpha'"):
        methods.get("esc").check_options({"alpha": 1.0})


def test_a_registered_method_fits_through_the_registry_like_the_builtin(rng):
    forget = rng.normal(size=(6, 32)) + 3.0
    gallery = rng.normal(size=(40, 32)).astype(np.float32)
    ctx = methods.FitContext(gallery, np.repeat(np.arange(8), 5), Erasure.identity(32),
                             {"k": 2})
    via_registry = methods.get("esc").fit(forget, ctx)
    assert np.allclose(via_registry.basis, methods.fit_esc(forget, k=2).basis)
    with pytest.raises(ValueError, match="already registered"):
        methods.register("esc")(fit_mean_direction)
    with pytest.raises(ValueError, match="lower case"):
        methods.register("Bad:name")(fit_mean_direction)


def test_a_method_registered_in_one_file_runs_through_workspace_forget(built_workspace, tmp_path,  # noqa: F811
                                                                     mean_direction):
    from facekd.workspace import Workspace

    root = tmp_path / "ws"
    shutil.copytree(built_workspace[0], root)
    with Workspace.open(root, writable=True) as ws:
        stored = np.asarray(ws.gallery.vectors(TARGET))
        everyone = np.asarray(ws.gallery.labels())
        res = ws.forget(TARGET, method=mean_direction, progress=False)
        assert res.committed and res.receipt["method"] == mean_direction
        assert ws.ledger()[-1]["method"] == mean_direction and ws.erasure.k == 1
        # The committed erasure removes the person's mean direction from every stored face.
        q = ws.erasure.basis[:, 0]
        mean = stored.mean(axis=0)
        assert abs(q @ mean) / np.linalg.norm(mean) == pytest.approx(1.0, abs=1e-5)
        assert not ws.gallery.has_identity(TARGET)
        assert np.abs(np.asarray(ws.gallery.vectors()) @ q).max() < 1e-5
    committed, twin = SEEN[0], SEEN[1]  # the committed fit, then the measured twin (enrol half)
    assert committed["n_forget"] == len(stored) and twin["n_forget"] < len(stored)
    assert TARGET not in committed["gallery_labels"]
    assert committed["n_gallery"] == int(np.sum(everyone != TARGET))
    assert committed["person"] == len(stored) and committed["previous_k"] == 0
    assert committed["options"] == {"seed": 0}  # from config.toml's [forget] seed


def test_a_registered_method_is_a_cli_choice(built_workspace, tmp_path, mean_direction):  # noqa: F811
    root = tmp_path / "ws"
    shutil.copytree(built_workspace[0], root)
    code, out, err = run_cli("-w", root, "forget", "--identity", TARGET, "--method",
                             mean_direction, "--dry-run", "--json")
    assert code == 0, err
    assert json.loads(out)["receipt"]["method"] == mean_direction
    code, _, err = run_cli("-w", root, "forget", "--identity", TARGET, "--method", "nosuch")
    assert code == 2 and "mean-direction" in err and "scramble" in err
