"""``check``: is a workspace's state consistent (gallery files, encoder state, ledger, receipts)?

Takes an open workspace as its first argument and never imports :mod:`facekd.workspace`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from facekd.errors import FacekdError

if TYPE_CHECKING:
    from facekd.state.workspace import WorkspaceState

__all__ = ["check"]


def check(ws: "WorkspaceState") -> dict:
    """Consistency of gallery, encoder state, ledger and receipt files.

    Returns ``{"ok": bool, "problems": [...], "generation": int, "deletions": int | None}``;
    re-creates missing derived receipt files.
    """
    problems: list[str] = []
    rep = ws.gallery.check()
    problems += [f"gallery: {p}" for p in rep.problems]
    try:
        state, acc, ledger = ws.encoder_state, ws.erasure, ws.ledger()
        ws.background  # noqa: B018 (reading a damaged background raises: a problem)
        if state.get("d") not in (None, acc.d):
            problems.append(f"encoder_state d={state.get('d')} != erasure d={acc.d}")
        problems += _check_receipt_files(ws, ledger)
    except (FacekdError, ValueError, KeyError, TypeError) as exc:
        problems.append(str(exc))
    return {"ok": not problems, "problems": problems, "generation": ws.gallery.generation,
            "deletions": len(ws.ledger()) if not problems else None}


def _check_receipt_files(ws: "WorkspaceState", ledger: list[dict]) -> list[str]:
    """Each ``receipts/<id>.json`` must equal the committed copy in the gallery meta; a missing
    one is re-created (when the workspace is writable), a stray or edited one reported."""
    problems, known = [], set()
    folder = ws.root / "receipts"
    if folder.is_symlink():
        return [f"{folder}: is a symbolic link (receipts would be written outside the "
                "workspace); replace it with a folder"]
    for entry in ledger:
        rid = entry["receipt_id"]
        known.add(f"{rid}.json")
        raw = ws.gallery.get_meta(f"receipt:{rid}")
        if raw is None:
            problems.append(f"ledger entry {rid} has no receipt")
            continue
        want = bytes(raw)  # forget writes the file and the meta from the same to_json bytes
        f = ws.receipt_path(rid)
        if not f.exists():
            if os.access(ws.root, os.W_OK):
                ws.write_receipt_file(rid, want)
            else:
                problems.append(f"{f}: missing (the workspace is read-only; not re-created)")
        elif f.is_symlink() or not f.is_file() or f.read_bytes() != want:
            problems.append(f"{f}: differs from the committed receipt in the gallery meta")
    if folder.is_dir():
        problems += [f"{p}: not a committed receipt" for p in sorted(folder.iterdir())
                     if p.name not in known and not p.name.startswith(".")]
    return problems
