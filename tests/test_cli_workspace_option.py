"""``-w/--workspace`` before or after the command name, and $FACEKD_WORKSPACE (docs/cli.md)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_cli as run


def workspace_of(*args, env_workspace: Path | None = None) -> str:
    code, out, err = run(*args, env_workspace=env_workspace)
    assert code == 0, err
    return json.loads(out)["workspace"]


def test_workspace_option_is_accepted_before_the_command_name(tmp_path):
    ws = tmp_path / "before"
    assert workspace_of("-w", ws, "init", "--encoder", "samples", "--json") == str(ws.resolve())
    code, out, err = run("--workspace", ws, "identities", "--json")
    assert code == 0 and json.loads(out) == [], err


def test_workspace_option_is_accepted_after_the_command_name(tmp_path):
    ws = tmp_path / "after"
    assert workspace_of("init", "-w", ws, "--encoder", "samples", "--json") == str(ws.resolve())
    assert run("check", "--workspace", ws)[:2] == (0, "ok\n")


def test_workspace_comes_from_the_environment_when_no_option_is_given(tmp_path):
    ws = tmp_path / "env"
    assert workspace_of("init", "--encoder", "samples", "--json",
                        env_workspace=ws) == str(ws.resolve())


def test_an_explicit_option_overrides_the_environment_before_or_after(tmp_path):
    ws, other = tmp_path / "explicit", tmp_path / "env"
    assert workspace_of("-w", ws, "init", "--encoder", "samples", "--json",
                        env_workspace=other) == str(ws.resolve())
    assert run("check", "-w", ws, env_workspace=other)[0] == 0
    assert run("-w", ws, "check", env_workspace=other)[0] == 0
    assert not other.exists()


def test_two_different_workspaces_are_refused_with_one_line(tmp_path):
    code, out, err = run("-w", tmp_path / "a", "init", "-w", tmp_path / "b", "--encoder", "samples")
    assert code == 2 and out == "" and err.count("\n") == 1 and "two workspaces" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_same_workspace_given_twice_is_fine(tmp_path):
    ws = tmp_path / "twice"
    assert workspace_of("-w", ws, "init", "-w", ws, "--encoder", "samples",
                        "--json") == str(ws.resolve())
