"""``verify``: is an erased identity still recognised by the deployed encoder and gallery?

Photos of the person (ideally ones the gallery never saw) are embedded with the edited encoder and
matched against the gallery; then the re-enrolment attack enrols half of them beside the gallery
and searches with the other half. The acceptance bound comes from ``config.toml``. Takes an open
workspace as its first argument and never imports :mod:`facekd.workspace`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from facekd.config import as_identity
from facekd.errors import WorkspaceError
from facekd.measure import gallery_stats
from facekd.photos import list_images

if TYPE_CHECKING:
    from facekd.workspace import Workspace

__all__ = ["VerifyResult", "verify"]


@dataclass
class VerifyResult:
    """Outcome of :func:`verify` (``passed`` decides the CLI's exit status)."""

    identity_hash: str
    passed: bool
    threshold: float
    images: list[dict] = field(default_factory=list)   # file name, best identity, score, match
    attack: dict | None = None                          # re-enrolment attack numbers
    retained: dict = field(default_factory=dict)        # retained identities' rank-1 / TAR
    bound: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def verify(ws: "Workspace", identity: int, *, images: str | os.PathLike | None = None,
           progress: bool = True) -> VerifyResult:
    """Check that an erased identity is no longer recognised.

    With ``images`` (photos of the erased person, ideally ones the gallery never saw): each is
    embedded with the edited encoder and matched against the gallery; then the re-enrolment
    attack enrols half of them next to the gallery and searches with the other half. Passing
    means rank-1 <= ``max_rank1_over_chance`` x chance and genuine-pair TAR <= ``max_tar``.
    """
    identity = as_identity(identity)
    h = ws.hash_identity(identity)
    if not ws.erased_entries(identity):
        raise WorkspaceError(f"identity {identity} has not been erased in this workspace "
                             "(see `facekd ledger`)")
    cfg = ws.config
    retained = gallery_stats(ws.gallery, cfg, exclude=identity)
    thr = float(cfg.match_threshold) if cfg.match_threshold is not None else retained["threshold"]
    n_ids = len(ws.gallery.identities())
    bound = {"max_rank1": cfg.max_rank1_over_chance / (n_ids + 1), "chance": 1.0 / (n_ids + 1),
             "max_tar": cfg.max_tar, "far": cfg.far}
    res = VerifyResult(identity_hash=h, passed=True, threshold=thr, retained=retained, bound=bound)
    if ws.gallery.has_identity(identity):
        res.notes.append("the identity was enrolled again after its erasure")
        res.passed = False
    if images is None:
        res.notes.append("not measured: the re-enrolment attack needs photos of the person "
                         "(pass --images DIR)")
        res.passed = False
        return res

    paths = list_images(images)
    vecs, _, skipped = ws.embed_images(paths, progress=progress)
    number = {str(p): i for i, p in enumerate(paths, 1)}
    # Numbered like the results below: file names of the erased person's photos often carry
    # their name, so a skipped image is named by its place in the sorted folder listing.
    for path, reason in skipped:
        res.notes.append(f"image {number.get(str(path), '?')} skipped: "
                         f"{str(reason).removeprefix(f'{path}: ')}")
    if len(vecs) == 0:
        raise WorkspaceError(f"{images}: no usable face in any image")
    best = ws.gallery.search(vecs, k=1)
    # Numbered, not named: file names of the erased person's photos often carry their name.
    for number, hits in enumerate(best, 1):
        top = hits[0] if hits else None
        res.images.append({"image": number,
                           "best_identity": None if top is None else int(top.identity),
                           "score": None if top is None else float(top.score),
                           "match": bool(top is not None and thr is not None and top.score > thr)})
    if len(vecs) < 2:
        res.notes.append("not measured: the re-enrolment attack needs at least 2 usable images")
        res.passed = False
        return res
    res.attack = _reenrolment_attack(ws, vecs, thr)
    res.passed = res.passed and res.attack["rank1"] <= bound["max_rank1"] + 1e-12 and \
        (res.attack["tar"] is None or res.attack["tar"] <= cfg.max_tar)
    return res


def _reenrolment_attack(ws: "Workspace", vecs: np.ndarray, thr: float | None) -> dict:
    """Enrol a seeded half of the person's ``(m, d)`` unit vectors beside the gallery, search with
    the other half: rank-1 (a probe's nearest neighbour is a re-enrolled image) and the TAR of the
    genuine pairs at ``thr``."""
    rng = np.random.default_rng(ws.config.seed)
    order = rng.permutation(len(vecs))
    enrol, probe = vecs[order[: len(vecs) // 2]], vecs[order[len(vecs) // 2:]]
    gallery_best = np.array([hits[0].score if hits else -np.inf
                             for hits in ws.gallery.search(probe, k=1)])
    # Rank-1 hit: the probe's nearest neighbour is one of the re-enrolled images.
    rank1 = float(np.mean((probe @ enrol.T).max(axis=1) > gallery_best))
    iu = np.triu_indices(len(vecs), k=1)
    genuine = (vecs @ vecs.T)[iu]
    tar = float(np.mean(genuine > thr)) if thr is not None else None
    return {"enrolled": int(len(enrol)), "probes": int(len(probe)), "rank1": rank1,
            "genuine_pairs": int(len(genuine)), "tar": tar,
            "genuine_mean_cosine": float(genuine.mean())}
