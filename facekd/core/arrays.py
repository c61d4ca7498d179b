"""Arrays the math core accepts: :class:`ErasureError`, the ``(n, d)`` matrix check every fit and
apply starts with (:func:`as_matrix`) and BLAS pinned to one thread (:func:`single_threaded_blas`).

Pure: numpy here, scipy and threadpoolctl imported where used; nothing else from the project.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

_CHECK_ROWS = 65_536  # rows per block of the up-front NaN/inf scan (bounded temporary)


class ErasureError(ValueError):
    """Invalid input to an erasure: wrong shape, non-finite values, impossible ``k``..."""


def as_matrix(x: Any, name: str, *, d: int | None = None, check_finite: bool = True) -> np.ndarray:
    """Validate an ``(n, d)`` finite, non-empty matrix and return it as a numpy array (the check
    every fit and apply starts with; raises :class:`ErasureError` naming ``name``).

    ``check_finite=False`` skips the NaN/inf scan (the caller does it blockwise).
    """
    if hasattr(x, "detach"):  # a torch tensor; avoid importing torch here
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise ErasureError(f"{name}: cannot be read as a matrix ({exc})") from None
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise ErasureError(f"{name}: expected numbers, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ErasureError(f"{name}: expected a 2-D (n, d) matrix, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ErasureError(f"{name}: is empty (0 rows); at least one embedding is needed")
    if arr.shape[1] < 2:
        raise ErasureError(f"{name}: embedding dimension must be >= 2, got {arr.shape[1]}")
    if d is not None and arr.shape[1] != d:
        raise ErasureError(f"{name}: dimension {arr.shape[1]} does not match the erasure's d={d}")
    if check_finite:
        _check_finite(arr, name)
    return arr


def _check_finite(arr: np.ndarray, name: str) -> None:
    """Raise :class:`ErasureError` if any entry is NaN/inf; scans in blocks (no n*d temporary)."""
    for start in range(0, arr.shape[0], _CHECK_ROWS):
        if not np.isfinite(arr[start:start + _CHECK_ROWS]).all():
            bad = sum(int(np.count_nonzero(~np.isfinite(arr[s:s + _CHECK_ROWS]).all(axis=1)))
                      for s in range(0, arr.shape[0], _CHECK_ROWS))
            raise ErasureError(f"{name}: {bad} row(s) contain NaN or inf")


_BLAS_LOCK = threading.Lock()
_BLAS_STATE: dict = {"controller": None, "users": 0, "limit": None}


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Pin BLAS to one thread while inside (a no-op without threadpoolctl).

    Our BLAS calls are small (an SVD of a ``(50, 512)`` matrix) or thin (``(rows, d) @ (d, k)``)
    and gain nothing from BLAS threads; on a busy machine OpenBLAS's spinning threads made a
    3 ms SVD take 1.7 s. The limit is process-wide, so it is reference-counted: the first
    concurrent user sets it and the last restores the caller's setting. The controller is built
    once (scanning the loaded libraries costs ~20 ms).
    """
    with _BLAS_LOCK:
        if _BLAS_STATE["controller"] is None:
            try:
                import scipy.linalg.blas  # noqa: F401  load scipy's BLAS first so it is pinned too
                from threadpoolctl import ThreadpoolController  # ships with scikit-learn
                _BLAS_STATE["controller"] = ThreadpoolController()
            except Exception:  # pragma: no cover - threadpoolctl missing or unusable
                _BLAS_STATE["controller"] = False
        if _BLAS_STATE["controller"] and _BLAS_STATE["users"] == 0:
            _BLAS_STATE["limit"] = _BLAS_STATE["controller"].limit(limits=1, user_api="blas")
        _BLAS_STATE["users"] += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS_STATE["users"] -= 1
            if _BLAS_STATE["users"] == 0 and _BLAS_STATE["limit"] is not None:
                _BLAS_STATE["limit"].restore_original_limits()
                _BLAS_STATE["limit"] = None
