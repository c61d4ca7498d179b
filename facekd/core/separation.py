"""Can the encoder tell these people apart at all? A cheap check before any figure is trusted.

An encoder with random weights, or run with the wrong input contract (mean, std, channel order,
alignment), still returns vectors: enrolment, erasure and bench all run and print numbers, which
then say nothing. Measured on the photos at hand (the gallery, or bench's dataset):

* leave-one-out rank-1: each face's nearest other face is one of the same person's;
* d' of cosine similarities, ``(mean genuine - mean impostor) / sqrt((var_g + var_i) / 2)``.

Usable face encoders are far from the limits (LFW, 158 people: dlib rank-1 99 %, d' ~ 4; FaceNet
20180408 similar); the limits only catch an encoder that barely separates anyone.
"""

from __future__ import annotations

import numpy as np

__all__ = ["identity_separation", "MIN_RANK1", "MIN_DPRIME", "warning_text"]

MIN_RANK1 = 50.0  # percent
MIN_DPRIME = 1.0
MAX_FACES = 2000  # a random subset beyond this: the check is O(n^2)


def identity_separation(x: np.ndarray, labels: np.ndarray, *, seed: int = 0) -> dict | None:
    """Separation of ``x`` ``(n, d)`` embeddings by ``labels`` ``(n,)``.

    Returns ``{"rank1", "d_prime", "genuine_mean", "impostor_mean", "faces", "identities",
    "usable"}`` (rank-1 in percent), or ``None`` when fewer than two people have two faces.
    """
    x, labels = np.asarray(x, np.float64), np.asarray(labels)
    ids, counts = np.unique(labels, return_counts=True)
    keep = np.isin(labels, ids[counts >= 2])
    if np.unique(labels[keep]).size < 2:
        return None
    rows = np.flatnonzero(keep)
    if rows.size > MAX_FACES:
        rows = np.sort(np.random.default_rng(seed).choice(rows, MAX_FACES, replace=False))
    x = x[rows] / np.maximum(np.linalg.norm(x[rows], axis=1, keepdims=True), 1e-12)
    y = labels[rows]
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    rank1 = 100.0 * float(np.mean(y[sims.argmax(axis=1)] == y))
    upper = np.triu(np.ones(sims.shape, bool), k=1)
    same = (y[:, None] == y[None, :]) & upper
    genuine, impostor = sims[same], sims[~same & upper]
    if genuine.size == 0 or impostor.size == 0:
        return None
    spread = np.sqrt((genuine.var() + impostor.var()) / 2)
    d_prime = float((genuine.mean() - impostor.mean()) / spread) if spread > 0 else 0.0
    return {"rank1": round(rank1, 2), "d_prime": round(d_prime, 3),
            "genuine_mean": round(float(genuine.mean()), 4),
            "impostor_mean": round(float(impostor.mean()), 4),
            "faces": int(rows.size), "identities": int(np.unique(y).size),
            "usable": bool(rank1 >= MIN_RANK1 and d_prime >= MIN_DPRIME)}


def warning_text(check: dict, what: str) -> str:
    """One line for a check that failed; ``what`` names the photos (``"the gallery"``)."""
    return (f"the encoder cannot separate identities on {what}: leave-one-out rank-1 "
            f"{check['rank1']:.1f}% (usable encoders: > 90%, limit {MIN_RANK1:.0f}%), genuine / "
            f"impostor cosine {check['genuine_mean']:.3f} / {check['impostor_mean']:.3f}, d' "
            f"{check['d_prime']:.2f} (limit {MIN_DPRIME:g}); check its weights and input contract "
            "(facekd init prints it)")


def bench_check(x: np.ndarray, labels: np.ndarray, what: str, say, *, seed: int = 0) -> dict | None:
    """:func:`identity_separation` for bench: ``say`` a warning line when it fails."""
    check = identity_separation(x, labels, seed=seed)
    if check is not None and not check["usable"]:
        say("warning: " + warning_text(check, what) + "; the erasure figures are meaningless")
    return check


def bench_banner(result: dict) -> list[str]:
    """bench.md lines that say the tables are not results, when the encoder check failed."""
    check = result.get("encoder_check")
    if not check or check["usable"]:
        return []
    return ["", f"**NOT RESULTS: {warning_text(check, 'this dataset')}. An encoder that cannot tell "
            "these people apart makes every erasure figure below meaningless.**"]
