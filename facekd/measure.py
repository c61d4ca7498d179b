"""What a workspace measures: the erasure report a forget receipt carries, and the gallery's own
statistics (match threshold, retained identities' rank-1 and TAR) that search and verify use.

The receipt's numbers are measured on the gallery's stored vectors, never on images: a twin erasure
refitted on the erased identity's enrolment half is scored on the unseen other half; score
histograms and the template leak are aggregate numbers only (no embedding or direction leaves).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from facekd.config import Config
from facekd.erasure import Erasure, ErasureError
from facekd.errors import WorkspaceError
from facekd.photos import normalize

__all__ = ["REPORT_MAX_IDENTITIES", "KR_MAX_IDENTITIES", "RETAIN_SAMPLE", "erasure_report",
           "score_histograms", "template_leak", "identity_means", "gallery_stats",
           "match_threshold"]

REPORT_MAX_IDENTITIES = 300  # forget's before/after report: the erased one + a sample
# ... of which the knowledge-retention probes use this many others: the one-vs-rest weak probe
# costs grow with identities x faces (3 s per state at 300 identities x 5 faces, 0.3 s at 100).
KR_MAX_IDENTITIES = 100
RETAIN_SAMPLE = 4000  # vectors used for retained-identity statistics in verify


# ------------------------------------------------------------------------- a forget's receipt
def erasure_report(all_vecs: np.ndarray, labels: np.ndarray, identity: int,
                   fit: Callable[[np.ndarray], Erasure], committed: Erasure, extra: np.ndarray,
                   config: Config):
    """``(ErasureReport, protocol note)``, preferably for a twin refitted on the enrolment half
    plus ``extra`` (the photos sent with the request, which are not gallery faces).

    ``all_vecs`` ``(N, d)`` and ``labels`` ``(N,)`` are the gallery before the edit; ``fit`` fits
    the forget method on ``(n, d)`` faces; ``committed`` is the erasure fitted on every face,
    measured instead when the twin cannot be fitted.
    """
    from facekd.metrics import MetricsError, erasure_report as _report, split_enrol_probe

    others = np.unique(labels[labels != identity])
    sampled = ""
    if len(others) > REPORT_MAX_IDENTITIES:
        # The converged probe and the pair statistics grow faster than the gallery (71 s at
        # 2,000 identities); a seeded sample of the others keeps forget at seconds.
        rng = np.random.default_rng(config.seed)
        keep = np.isin(labels, np.r_[identity, rng.choice(others, REPORT_MAX_IDENTITIES,
                                                          replace=False)])
        all_vecs, labels = all_vecs[keep], labels[keep]
        sampled = (f"; measured on the erased identity and a seeded sample of "
                   f"{REPORT_MAX_IDENTITIES} of the {len(others)} other identities")
    split = split_enrol_probe(labels, seed=config.seed)
    one_face = (labels == identity).sum() == 1
    if one_face:
        # One stored face (an ID-photo gallery): it is the only probe the report can have; the
        # twin is then fitted on the --images photos alone, or the committed erasure measured.
        split[labels == identity] = False
    protocol = ("each identity's stored faces split in half (seed "
                f"{config.seed}); the erasure measured here was refitted on the erased "
                "identity's enrolment half plus any --images photos; probes and MIA "
                "non-members are unseen faces")
    try:
        twin = fit(np.concatenate([all_vecs[split & (labels == identity)], extra]))
    except ErasureError:  # e.g. an explicit k above the half's rank: measure the real one
        twin = committed
        protocol = ("each identity's stored faces split in half; the committed erasure (fitted "
                    "on all the erased identity's faces) is measured, so its probes are seen "
                    "faces and MIA is not meaningful")
    if one_face:
        protocol += ("; the erased identity has one stored face: it is the only probe and no "
                     "enrolled face of it remains to be found, so its forget numbers measure "
                     "nothing (verify --images measures the erasure on new photos)")
    protocol += sampled
    if len(np.unique(labels)) - 1 > KR_MAX_IDENTITIES:
        protocol += (f"; knowledge-retention probes on the erased identity and a seeded "
                     f"sample of {KR_MAX_IDENTITIES} others")
    protocol += "; 95% Wilson intervals in metrics.intervals"
    try:
        report = _report(all_vecs, labels, [identity], twin, split, fars=(config.far,),
                         seed=config.seed, max_probe_identities=KR_MAX_IDENTITIES)
    except MetricsError as exc:
        raise WorkspaceError(f"cannot measure this erasure: {exc}") from None
    return report, protocol


def score_histograms(vecs: np.ndarray, labels: np.ndarray, identity: int, erasure: Erasure,
                     *, seed: int = 0, max_impostor: int = 200_000) -> dict:
    """Genuine-pair scores of the erased identity and impostor scores of the rest, before/after."""
    rng = np.random.default_rng(seed)
    f = labels == identity
    iu = np.triu_indices(int(f.sum()), k=1)
    rest = np.flatnonzero(~f)  # indices, not a copy of everyone else's vectors
    m = min(len(rest), 2 * int(np.sqrt(max_impostor)) + 2)
    pick = rng.choice(len(rest), size=m, replace=False) if len(rest) > m else np.arange(len(rest))
    r, rl = vecs[rest[pick]], labels[rest[pick]]
    ir = np.triu_indices(len(r), k=1)
    imp_mask = rl[ir[0]] != rl[ir[1]]
    out = {}
    for tag, x_f, x_r in (("before", normalize(vecs[f]), normalize(r)),
                          ("after", erasure.apply(vecs[f]), erasure.apply(r))):
        out[f"forget_genuine_{tag}"] = (x_f @ x_f.T)[iu]
        out[f"impostor_{tag}"] = (x_r @ x_r.T)[ir][imp_mask]
    return out


def template_leak(step: Erasure, vecs: np.ndarray, labels: np.ndarray, identity: int) -> dict:
    """What the edited model alone gives away about the erased person (docs/threat-model.md):
    the cosine between the direction this erasure singles out and the person's mean face (minus
    the gallery's), and the person's rank among the gallery's identities by that direction (1 =
    singled out). Numbers only: no direction or embedding leaves this function."""
    from facekd.metrics import template_leak as _leak

    ids, means = identity_means(vecs, labels)
    cos, rank = _leak(step, means, ids, identity)
    return {"cosine_to_mean_face": round(cos, 4), "rank": rank, "ranked_among": int(len(ids))}


def identity_means(vecs: np.ndarray, labels: np.ndarray, *, block: int = 65536
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Sorted identities ``(c,)`` and the float64 mean of each one's unit vectors ``(c, d)``.

    Summed a block at a time, so a million faces cost one pass and no normalised copy of the
    gallery (``np.add.at`` took 10 s).
    """
    from scipy.sparse import csr_matrix

    ids, inv = np.unique(labels, return_inverse=True)
    sums = np.zeros((len(ids), vecs.shape[1]))
    for s in range(0, len(inv), block):
        part = inv[s:s + block]
        x = np.array(vecs[s:s + block], dtype=np.float32)  # float32: a mean needs 4 digits
        x /= np.maximum(np.sqrt(np.einsum("ij,ij->i", x, x)), 1e-12)[:, None]
        # One sparse (identities x rows) indicator product per block: np.add.reduceat along rows
        # and a running sum were 5-50x slower.
        sums += csr_matrix((np.ones(len(part), np.float32), (part, np.arange(len(part)))),
                           shape=(len(ids), len(part))) @ x
    return ids, sums / np.bincount(inv, minlength=len(ids))[:, None]


# ------------------------------------------------------------------------- the gallery's own
def gallery_stats(gallery: Any, config: Config, *, exclude: int | None = None) -> dict:
    """Rank-1 and TAR at FAR ``config.far`` of the gallery's identities (a seeded sample), and
    the impostor score at that FAR (``threshold``); ``exclude`` leaves one identity out."""
    from facekd.metrics import (MetricsError, far_threshold, identification_rate, pair_scores,
                                split_enrol_probe, tar_at_far)

    # A read-only view: only a sample (or the rows kept below) is ever copied.
    vecs = np.asarray(getattr(gallery, "vectors_view", gallery.vectors)(), dtype=np.float32)
    labels = np.asarray(gallery.labels(), dtype=np.int64)
    if exclude is not None:
        keep = labels != exclude
        vecs, labels = vecs[keep], labels[keep]
    if len(np.unique(labels)) < 2:
        return {"threshold": None, "rank1": None, "tar": None, "identities": len(np.unique(labels))}
    rng = np.random.default_rng(config.seed)
    if len(vecs) > RETAIN_SAMPLE:  # pair statistics are quadratic; a sample is enough
        uniq = rng.permutation(np.unique(labels))
        per = max(1, int(np.ceil(len(vecs) / len(uniq))))
        chosen = np.isin(labels, uniq[: max(2, RETAIN_SAMPLE // per)])
        vecs, labels = vecs[chosen], labels[chosen]
    try:
        genuine, impostor = pair_scores(vecs, labels, seed=config.seed)
        # One face per person is common in deployments: the threshold needs only impostors.
        thr = far_threshold(impostor, config.far)
        tar = tar_at_far(genuine, impostor, config.far)[0] if genuine.size else None
        split = split_enrol_probe(labels, seed=config.seed)
        has_probe = ~split
        rank1 = identification_rate(vecs[split], labels[split], vecs[has_probe],
                                    labels[has_probe]) if has_probe.any() else None
    except MetricsError as exc:  # e.g. no impostor pairs at all
        raise WorkspaceError(f"cannot compute gallery statistics: {exc}") from None
    return {"threshold": float(thr), "tar": None if tar is None else float(tar),
            "rank1": None if rank1 is None else float(rank1),
            "identities": int(len(np.unique(labels)))}


def match_threshold(gallery: Any, config: Config) -> float | None:
    """Config threshold, or the gallery's impostor score at FAR ``config.far`` ("auto")."""
    if config.match_threshold is not None:
        return float(config.match_threshold)
    return gallery_stats(gallery, config).get("threshold")
