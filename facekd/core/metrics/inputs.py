"""The inputs every measurement checks: :class:`MetricsError`, embeddings, labels and scores as
arrays, and BLAS pinned to one thread while scoring. Pure: numpy only.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np


_CHUNK = 2048  # probe rows per score block: (chunk, gallery) float32 stays a few MB


def _single_threaded_blas() -> Any:
    """Pin BLAS to one thread for the probes' small products (no-op without threadpoolctl).

    scikit-learn's lbfgs on ~2,000 x 128 inputs ran 10x slower with OpenBLAS threads on a busy
    2-core machine (0.2 s vs 2-4 s). The limit is process-wide while inside; do not run
    reports concurrently from several threads of one process.
    """
    try:
        from threadpoolctl import threadpool_limits  # ships with scikit-learn
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


class MetricsError(ValueError):
    """Invalid input to a metric: shape mismatch, NaN/inf, no forget samples, no probes..."""


# ---------------------------------------------------------------------- input checks
def _embeddings(x: Any, name: str, *, d: int | None = None) -> np.ndarray:
    """``(n, d)`` finite float32 with L2-normalised rows (a new array).

    All-zero rows stay zero (cosine 0 to everything): an erasure can map a face entirely into
    the erased span, and such a face must simply match nothing.
    """
    try:
        arr = np.array(x, dtype=np.float32, copy=True)
    except (TypeError, ValueError) as exc:
        raise MetricsError(f"{name}: cannot be read as a numeric matrix ({exc})") from None
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise MetricsError(f"{name}: expected an (n, d) matrix, got shape {arr.shape}")
    if d is not None and arr.shape[1] != d:
        raise MetricsError(f"{name}: dimension {arr.shape[1]} does not match d={d}")
    if not np.all(np.isfinite(arr)):
        raise MetricsError(f"{name}: contains NaN or inf")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    arr /= np.maximum(norms, np.finfo(np.float32).tiny)
    return arr


def _labels(y: Any, n: int, name: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise MetricsError(f"{name}: expected shape ({n},), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise MetricsError(f"{name}: labels must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _scores(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64).ravel()
    if not np.all(np.isfinite(arr)):
        raise MetricsError(f"{name}: contains NaN or inf")
    return arr
