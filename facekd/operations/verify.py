"""``verify``: is an erased identity still found by the deployed encoder and gallery?

The person's photos (ideally ones the gallery never saw) are embedded by the deployed (edited)
encoder and by the unedited base encoder, on the same face chips. Each photo is searched in the
gallery (labelled MATCH at the one-to-many FPIR threshold); then the re-enrolment attack, averaged
over every split of the photos, and the genuine-pair TAR are measured after and before the edit,
each with its 95 % interval, and :mod:`facekd.core.verdict` rules PASS, FAIL or INCONCLUSIVE. For a
gated erasure every photo's gate opening says which photos the edit scrambled.

Each run is recorded in the workspace (``verifications`` meta: verdict, figures, photo counts;
no images, names or embeddings) when the workspace is writable. Takes an open workspace as its
first argument and never imports :mod:`facekd.workspace`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from facekd.core import verdict as vd
from facekd.errors import WorkspaceError
from facekd.faces.photos import embed_images_with, list_images
from facekd.operations.measure import (gallery_stats, gallery_strangers, identification_threshold,
                                       match_sample, threshold_note)
from facekd.state.config import as_identity
from facekd.state.workspace import VERIFICATIONS_KEY

if TYPE_CHECKING:
    from facekd.state.workspace import WorkspaceState

__all__ = ["VerifyResult", "verify", "VERIFICATIONS_KEY", "ERASED_AT"]

ERASED_AT = 1.0      # a photo whose gate opened this far was scrambled fully ("erased")
_MAX_RECORDS = 1000  # verifications kept in the workspace (oldest dropped)


@dataclass
class VerifyResult:
    """Outcome of :func:`verify`. ``status`` (PASS / FAIL / INCONCLUSIVE) decides the exit.

    ``images``: one entry per usable photo, numbered by its place in the sorted listing (never
    named): best gallery identity, score, ``match`` at the one-to-many threshold, and ``gate``
    (how far the erasure's gates opened on it; ``None`` for a linear erasure).
    ``attack``: the re-enrolment attack and pair figures after / before the edit.
    """

    identity_hash: str
    status: str
    reason: str
    threshold: float | None                              # one-to-one (FAR) threshold
    id_threshold: float | None = None                    # one-to-many (FPIR) threshold
    images: list[dict] = field(default_factory=list)
    attack: dict | None = None
    erased_photos: dict | None = None                    # per-photo erasure status (gated)
    retained: dict = field(default_factory=dict)         # retained identities' rank-1 / TAR
    bound: dict = field(default_factory=dict)
    verdict: dict | None = None
    notes: list[str] = field(default_factory=list)
    recorded: bool = False

    @property
    def passed(self) -> bool:
        return self.status == vd.PASS

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return {**asdict(self), "passed": self.passed}


def verify(ws: "WorkspaceState", identity: int, *, images: str | os.PathLike | None = None,
           progress: bool = True, record: bool = True) -> VerifyResult:
    """Judge whether an erased identity is still found, from photos of the person.

    Without ``images`` nothing can be measured (INCONCLUSIVE). With them, see the module
    docstring; ``record`` stores the outcome in the workspace when it is writable.
    """
    identity = as_identity(identity)
    h = ws.hash_identity(identity)
    entries = ws.erased_entries(identity)
    if not entries:
        raise WorkspaceError(f"identity {identity} has not been erased in this workspace "
                             "(see `facekd ledger`)")
    cfg = ws.config
    retained = gallery_stats(ws.gallery, cfg, exclude=identity)
    thr = float(cfg.match_threshold) if cfg.match_threshold is not None else retained["threshold"]
    n_ids = len(ws.gallery.identities())
    res = VerifyResult(identity_hash=h, status=vd.INCONCLUSIVE, reason="", threshold=thr,
                       retained=retained)
    if images is None:
        res.reason = ("nothing measured: the re-enrolment attack needs photos of the person "
                      "(pass --images DIR)")
        return _finish(ws, res, entries, identity, record=False)

    paths = list_images(images)
    (after, before), sources, skipped = embed_images_with(
        [ws.encoder, ws.base_encoder], paths, aligned=cfg.aligned, limits=cfg.image_limits,
        progress=progress)
    number = {str(p): i for i, p in enumerate(paths, 1)}
    # Numbered, not named: file names of the erased person's photos often carry their name.
    for path, reason in skipped:
        res.notes.append(f"image {number.get(str(path), '?')} skipped: "
                         f"{str(reason).removeprefix(f'{path}: ')}")
    if len(after) == 0:
        raise WorkspaceError(f"{images}: no usable face in any image")
    from facekd.operations.search import CACHE_DIR

    found = gallery_strangers(ws.gallery, cfg, ws.root / CACHE_DIR)
    sample = match_sample(ws.gallery, cfg, found, ws.root / CACHE_DIR)
    res.id_threshold = identification_threshold(ws.gallery, cfg, sample)
    note = threshold_note(sample, cfg)
    if note:
        res.notes.append(note)
    gate = _gate_openings(ws, before)
    best_after = _best(ws, after)
    best_before = _best(ws, before)
    for i, (src, top) in enumerate(zip(sources, best_after)):
        ident, score = top
        res.images.append({
            "image": number.get(str(src), i + 1), "best_identity": ident, "score": score,
            "match": bool(ident is not None and res.id_threshold is not None
                          and score > res.id_threshold),
            "gate": None if gate is None else float(gate[i])})
    if gate is not None:
        res.erased_photos = _erased_share([im["image"] for im in res.images], gate)

    m = len(after)
    chance = 1.0 / (n_ids + 1)
    res.bound = {"chance": chance, "factor": cfg.max_rank1_over_chance, "max_tar": cfg.max_tar,
                 "far": cfg.far, "fpir": cfg.fpir, "identities": n_ids}
    if m < 2:
        res.reason = "nothing measured: the re-enrolment attack needs at least 2 usable photos"
        return _finish(ws, res, entries, identity, record=record)
    figures = {}
    for state, vecs, best in (("after", after, best_after), ("before", before, best_before)):
        gbest = np.array([s if s is not None else -np.inf for _, s in best])
        figures[state] = vd.attack_figures(vecs, gbest, found.odds, chance=chance,
                                           factor=cfg.max_rank1_over_chance, threshold=thr,
                                           max_tar=cfg.max_tar)
    res.bound.update(stranger_baseline=vd.stranger_baseline(found.odds, m // 2),
                     max_rank1=figures["after"][0].bound)  # the half split's, as judged
    needed = vd.photos_to_decide(figures["after"], m, found.odds, chance=chance,
                                 factor=cfg.max_rank1_over_chance)
    v = vd.combine(figures["after"], figures["before"], m, needed=needed)
    res.status, res.reason, res.verdict = v.status, v.reason, v.to_dict()
    res.attack = {"photos": m, "enrolled": m // 2, "probes": m - m // 2,
                  "splits": "all", **{s: {f.name: f.to_dict() for f in figs}
                                      for s, figs in figures.items()}}
    return _finish(ws, res, entries, identity, record=record)


def _best(ws: "WorkspaceState", vecs: np.ndarray) -> list[tuple[int | None, float | None]]:
    """``(identity, score)`` of each row's best gallery face."""
    return [(int(h[0].identity), float(h[0].score)) if h else (None, None)
            for h in ws.gallery.search(vecs, k=1)]


def _gate_openings(ws: "WorkspaceState", base: np.ndarray) -> np.ndarray | None:
    """How far the accumulated erasure's gates open on each photo's base embedding ``(m,)``;
    ``None`` when the erasure has no gate (linear erasures edit every face alike)."""
    acc = ws.erasure
    return None if acc.n_gates == 0 else acc.gate_levels(base)


def _erased_share(numbers: list[int], gate: np.ndarray) -> dict:
    """Which photos the gates scrambled fully, and the share with its 95 % interval."""
    from facekd.core.metrics import wilson_interval

    full = gate >= ERASED_AT
    low, high = wilson_interval(float(full.sum()), len(full))
    return {"erased": int(full.sum()), "photos": int(len(full)), "share": float(full.mean()),
            "interval": [low, high],
            "not_erased": [n for n, f in zip(numbers, full) if not f],
            "partly": [n for n, g in zip(numbers, gate) if 0 < g < ERASED_AT]}


def _finish(ws: "WorkspaceState", res: VerifyResult, entries: list[dict], identity: int, *,
            record: bool) -> VerifyResult:
    if not res.reason:
        res.reason = "nothing measured"
    if ws.gallery.has_identity(identity):
        # The gallery holds the person again: a plain search finds them, whatever the attack says.
        res.status, res.reason = vd.FAIL, ("the identity was enrolled again after its erasure: "
                                          "the gallery finds it directly")
    if record and ws.writable:
        _record(ws, res, entries[-1])
        res.recorded = True
    return res


def _record(ws: "WorkspaceState", res: VerifyResult, entry: dict) -> None:
    """Append the outcome to the workspace's ``verifications`` (hashed identity, figures, counts;
    no image, name or embedding) and commit."""
    figs = {}
    for state in ("after", "before"):
        for name, f in ((res.attack or {}).get(state) or {}).items():
            figs[f"{name}_{state}"] = {k: f[k] for k in ("estimate", "low", "high", "bound",
                                                         "ruling")}
    rec = {"identity_hash": res.identity_hash, "receipt_id": entry.get("receipt_id"),
           "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "status": res.status, "reason": res.reason,
           "photos": (res.attack or {}).get("photos", 0), "figures": figs,
           "bound": {k: res.bound.get(k) for k in ("chance", "stranger_baseline", "max_rank1",
                                                    "max_tar")},
           "erased_photos": None if res.erased_photos is None else
           {k: res.erased_photos[k] for k in ("erased", "photos", "share", "interval")}}
    ws.gallery.set_meta(VERIFICATIONS_KEY, json.dumps(
        (ws.verifications() + [rec])[-_MAX_RECORDS:]).encode())
    ws.commit()
