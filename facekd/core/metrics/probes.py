"""Probes: the enrolment / probe split every identity's faces are measured on.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from facekd.core.metrics.inputs import MetricsError


# ---------------------------------------------------------------------- the report
def split_enrol_probe(labels: Any, *, frac: float = 0.5, seed: int = 0) -> np.ndarray:
    """``(n,)`` bool, True = enrolment face. Per identity ``round(frac * c)`` faces are enrolled,
    clipped so that every identity with ``c >= 2`` faces has at least one of each; identities with
    one face are enrolled only (they contribute no probe)."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise MetricsError(f"labels: expected shape (n,), got {y.shape}")
    if not 0.0 < frac < 1.0:
        raise MetricsError(f"frac must be in (0, 1), got {frac!r}")
    rng = np.random.default_rng(seed)
    split = np.zeros(y.shape[0], dtype=bool)
    for lab in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == lab))
        n_enrol = 1 if idx.size < 2 else min(idx.size - 1, max(1, int(round(frac * idx.size))))
        split[idx[:n_enrol]] = True
    return split
