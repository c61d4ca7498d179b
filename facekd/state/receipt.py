"""Forget receipts: what was erased, how, and with what effect, naming the person only by a hash.

A receipt is a JSON-serialisable dict. It holds the identity as ``HMAC-SHA256(salt, id)`` with a
per-workspace random salt, so nobody can recover the id by hashing candidate ids without the
workspace; it never holds the raw id, the person's name, embeddings, erased directions or image
paths. Score distributions are stored only as histograms over fixed bins (aggregate counts).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from typing import Any, Iterable

import numpy as np

from facekd.fileio import write_atomic  # re-exported: receipts are written through it

__all__ = ["RECEIPT_FORMAT", "HIST_EDGES", "new_salt", "hash_identity", "receipt_id",
           "histogram", "build_receipt", "to_json", "find_leaks", "ledger_others_touched",
           "write_atomic"]

RECEIPT_FORMAT = 1
#: Fixed cosine-score bins shared by every receipt, so histograms from different runs line up.
HIST_EDGES = np.linspace(-1.0, 1.0, 81)

# Keys an upstream report may use for raw identity labels; they are dropped from receipts.
_IDENTITY_KEYS = {"identity", "identities", "forget_labels", "forget_identities", "labels",
                  "forget_label", "name", "names", "paths", "sources", "embeddings", "vectors"}


def new_salt() -> str:
    """A fresh 256-bit salt, hex-encoded."""
    return secrets.token_hex(32)


def hash_identity(identity: int, salt: str) -> str:
    """``HMAC-SHA256(salt, str(identity))`` as 64 hex characters."""
    return hmac.new(bytes.fromhex(salt), str(int(identity)).encode(), hashlib.sha256).hexdigest()


def receipt_id(identity_hash: str, generation: int) -> str:
    """Short stable name of a receipt: the first 16 hex digits of the hash + the new generation."""
    return f"{identity_hash[:16]}-{int(generation)}"


def histogram(scores: np.ndarray) -> list[int]:
    """Counts of ``scores`` over :data:`HIST_EDGES` (``len(HIST_EDGES) - 1`` bins)."""
    s = np.clip(np.asarray(scores, dtype=np.float64).ravel(), -1.0, 1.0)
    return [int(c) for c in np.histogram(s, bins=HIST_EDGES)[0]]


def _scrub(obj: Any) -> Any:
    """A copy of ``obj`` without identity-bearing keys and with numpy scalars made plain."""
    if isinstance(obj, dict):
        return {str(k): _scrub(v) for k, v in obj.items() if str(k) not in _IDENTITY_KEYS}
    if isinstance(obj, (list, tuple)):
        return [_scrub(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None  # JSON has no NaN; "not measurable" reads as null
    return obj


def build_receipt(*, identity_hash: str, method: str, params: dict, model: dict,
                  generation_before: int, generation_after: int, metrics: dict,
                  histograms: dict, timings: dict, n_vectors: int, n_images: int,
                  facekd_version: str, created: str, dry_run: bool = False,
                  kind: str = "erasure", coverage: dict | None = None,
                  forced_over: Iterable[str] = (), top_up: dict | None = None,
                  verdict: dict | None = None) -> dict:
    """Assemble a receipt dict (see module docstring for what it may contain).

    Args:
        model: ``{"base_sha256", "edited_sha256_before", "edited_sha256_after", "family", "k_total"}``.
        metrics: before/after metrics (e.g. ``ErasureReport.to_dict()``); identity keys are dropped.
        histograms: name -> score array; stored as counts over :data:`HIST_EDGES`.
        kind: ``"erasure"`` (the person removed) or ``"top-up"`` (a further step widening an
            earlier erasure with new photos).
        coverage: the held-out coverage and its floor (:func:`facekd.operations.measure.coverage`).
        forced_over: the checks that refused it and ``--force`` overrode (``"coverage"``,
            ``"request photos"``); stored as ``forced`` (bool) and, when any, ``forced_over``.
        top_up: a top-up's photo counts (given, already erased, escaped, newly covered).
        verdict: forget's own measurement ruled PASS / FAIL / INCONCLUSIVE
            (:func:`facekd.operations.measure.forget_verdict`).
    """
    extra = {"coverage": _scrub(coverage)} if coverage is not None else {}
    forced_over = [str(x) for x in forced_over]
    if forced_over:
        extra["forced_over"] = forced_over
    if top_up is not None:
        extra["top_up"] = _scrub(top_up)
    if verdict is not None:
        extra["verdict"] = _scrub(verdict)
    return {
        "kind": kind,
        "forced": bool(forced_over),
        **extra,
        "format": RECEIPT_FORMAT,
        "receipt_id": receipt_id(identity_hash, generation_after),
        "identity_hash": identity_hash,
        "created": created,
        "dry_run": bool(dry_run),
        "method": method,
        "params": _scrub(params),
        "model": _scrub(model),
        "gallery": {"generation_before": int(generation_before),
                    "generation_after": int(generation_after)},
        "fitted_on": {"gallery_vectors": int(n_vectors), "extra_images": int(n_images)},
        "metrics": _scrub(metrics),
        "histograms": {"edges": [round(float(e), 6) for e in HIST_EDGES],
                       **{k: histogram(v) for k, v in histograms.items()}},
        "timings_s": {k: round(float(v), 4) for k, v in timings.items()},
        "facekd_version": facekd_version,
    }


def to_json(receipt: dict) -> str:
    """Canonical JSON text of a receipt."""
    return json.dumps(receipt, indent=2, sort_keys=True, allow_nan=False)


def find_leaks(receipt: dict, identity: int, names: Iterable[str] = ()) -> list[str]:
    """Paths in ``receipt`` that could reveal the person: their raw id as a value or string,
    or any of ``names`` inside a string. An empty list means the receipt is clean.
    """
    raw, found = str(int(identity)), []
    names = [n for n in names if n]

    def walk(obj: Any, path: str) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                if str(k) == raw or any(n in str(k) for n in names):
                    found.append(f"{path}/{k} (key)")
                walk(v, f"{path}/{k}")
        elif isinstance(obj, list):
            # Histogram counts and edges are numbers by design; a count equal to the id is not a
            # leak there. Everywhere else (e.g. a stray forget_labels list) a number is checked.
            counts = path.startswith("/histograms") or path.endswith("edges")
            for i, v in enumerate(obj):
                if not (counts and isinstance(v, (int, float))):
                    walk(v, f"{path}[{i}]")
        elif isinstance(obj, str):
            if any(n in obj for n in names) or raw in obj.replace(":", " ").replace("/", " ").split():
                found.append(path)
        elif isinstance(obj, int) and not isinstance(obj, bool) and obj == int(identity):
            found.append(path)

    walk(receipt, "")
    return found


def ledger_others_touched(entries: Iterable[dict], key: str = "others_touched"
                          ) -> tuple[float, int, int]:
    """``(total, counted, uncounted)`` over ledger ``entries``: the sum of their gates' shares of
    everyone else's new photos (``others_touched``; gates seldom open on the same photo; with
    ``key="strangers_touched"``, of the photos of people enrolled later), how many entries carry
    one, and how many gated entries do not (committed before facekd measured it)."""
    gated = [e for e in entries if e.get("gates")]
    shares = [float(e[key]) for e in gated if e.get(key) is not None]
    return float(sum(shares)), len(shares), len(gated) - len(shares)
