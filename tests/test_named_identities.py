"""LFW-style trees (folders named by person): automatic ids at enrol, --name for forget, verify
and search, and receipts that never hold the name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import SYNTH_IDS as IDS, SYNTH_TARGET as TARGET, run_cli as run

NAME = "Zed_Target"  # sorts last: automatic ids go in sorted name order


def ok(*args) -> str:
    code, out, err = run(*args)
    assert code == 0, err
    return out


def one_error_line(code: int, err: str, needle: str) -> None:
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and needle in err, err


@pytest.fixture(scope="module")
def named(synthetic_photos, tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """(workspace, held-out photos of the target, folder names) after enrolling a named tree."""
    tree, _ = synthetic_photos
    root = tmp_path_factory.mktemp("named")
    people = [i for i in IDS[:12] if i != TARGET] + [TARGET]
    names = [NAME if i == TARGET else f"Person_{chr(65 + n)}" for n, i in enumerate(people)]
    for ident, name in zip(people, names):
        shutil.copytree(tree / str(ident), root / "tree" / name)
    ws = root / "ws"
    ok("init", "-w", ws, "--encoder", "samples", "--aligned")
    data = json.loads(ok("enroll", "-w", ws, root / "tree", "--json"))
    return ws, data, sorted(names)


@pytest.fixture
def ws(named, tmp_path) -> Path:
    shutil.copytree(named[0], tmp_path / "ws")
    return tmp_path / "ws"


def test_enroll_assigns_ids_in_sorted_name_order_and_reports_the_mapping(named):
    ws, data, names = named
    assert data["assigned"] == [{"name": n, "identity": i + 1, "new": True}
                                for i, n in enumerate(names)]
    listed = json.loads(ok("identities", "-w", ws, "--json"))
    assert [(r["identity"], r["name"]) for r in listed] == [(i + 1, n) for i, n in enumerate(names)]


def test_enroll_text_prints_the_mapping_and_a_rerun_keeps_it(named, synthetic_photos, ws):
    tree = ws.parent / "again"
    (tree / NAME).mkdir(parents=True)
    shutil.copy(next((synthetic_photos[0] / str(TARGET)).iterdir()), tree / NAME / "x.png")
    out = ok("enroll", "-w", ws, tree)
    assert f"{len(named[2]):>10}  {NAME}  (as before)" in out
    assert "identity ids for folders named by person:" in out


def test_search_by_name_compares_with_that_person_only(ws, named):
    probe = next((named[0].parent / "tree" / NAME).iterdir())
    res = json.loads(ok("search", "-w", ws, probe, "--name", "Person_A", "-k", "3", "--json"))
    assert {m["identity"] for m in res["matches"]} == {1}
    assert all(m["name"] == "Person_A" for m in res["matches"])
    mine = json.loads(ok("search", "-w", ws, probe, "--name", NAME, "--json"))
    assert mine["matches"][0]["score"] > res["matches"][0]["score"]


def test_forget_by_name_keeps_the_name_out_of_the_receipt_and_ledger(ws, named):
    ident = len(named[2])
    res = json.loads(ok("forget", "-w", ws, "--name", NAME, "--json"))
    assert res["identity"] == ident and res["committed"]
    stored = json.dumps(res["receipt"]) + ok("ledger", "-w", ws, "--json")
    stored += "".join(p.read_text() for p in (ws / "receipts").glob("*.json"))
    assert NAME not in stored and "Zed" not in stored
    assert NAME not in ok("identities", "-w", ws)
    # the name went with the person: verify finds them by id
    code, _, err = run("verify", "-w", ws, "--name", NAME)
    one_error_line(code, err, "names of erased people are not kept")
    code, out, err = run("verify", "-w", ws, "--identity", ident, "--images", named[0].parent
                         / "tree" / NAME)
    assert code in (0, 1, 3) and "MATCH threshold" in out, err


@pytest.mark.parametrize("command", ["forget", "verify", "search"])
def test_unknown_name_and_both_or_neither_selector_are_one_line_errors(ws, named, command):
    probe = next((named[0].parent / "tree" / NAME).iterdir())
    extra = [probe] if command == "search" else []
    code, _, err = run(command, "-w", ws, *extra, "--name", "Nobody_Here")
    one_error_line(code, err, "no enrolled identity is named 'Nobody_Here'")
    code, _, err = run(command, "-w", ws, *extra, "--name", NAME, "--identity", 1)
    one_error_line(code, err, "not both")
    if command != "search":  # search without either compares with everyone
        code, _, err = run(command, "-w", ws)
        one_error_line(code, err, "give --identity ID or --name NAME")
