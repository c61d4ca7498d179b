"""ESC and ESC-T erasures: linear maps on face embeddings.

An :class:`Erasure` is a ``(d, d)`` map ``A`` applied to row-vector embeddings as
``normalize(E @ A)``, optionally followed by a *tail* of non-linear stages (the gated scramble,
:mod:`facekd.tail`): ``tail(normalize(E @ A))``. The linear part comes in two kinds:

* ``esc``: ``A = I - Q Q^T`` for an orthonormal basis ``Q`` ``(d, k)`` of erased directions.
  It is a true orthogonal projector; it is stored and applied through ``Q`` only, so applying
  it to ``N`` vectors costs ``O(N d k)``.
* ``esc-t`` (and any composition involving one): a dense map ``A`` (ESC-T's
  ``(U*M)(U*M)^T``), which in general is *not* a projector.

A gated erasure (:func:`fit_scramble`) has the identity as its linear part and one
:class:`~facekd.tail.GateChain` as its tail. Composition keeps one object: linear parts compose as
before, gate chains sharing a scrambler merge into one chain, and a linear erasure that follows a
gated one becomes a :class:`~facekd.tail.LinearStage` of the tail.

This module is pure math: it imports nothing else from the project but :mod:`facekd.tail` (pure
math too), does no logging and touches the disk only in :meth:`Erasure.save` / :meth:`Erasure.load`.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from facekd.tail import GateChain, LinearStage, Scrambler, apply_stages, merge_stages, normalize_rows

__all__ = ["Erasure", "ErasureError", "fit_esc", "fit_esc_t", "fit_scramble", "select_k"]

FORMAT_VERSION = 2
_READABLE_FORMATS = (1, 2)  # format 1: linear erasures only (facekd 0.1)
_CHUNK_ROWS = 1024  # rows per block in apply(): ~2 MB at d=512, so copy+project+normalise stay in L2/L3
_PARALLEL_MIN_ROWS = 65_536  # below this, one thread; thread start-up would dominate
_CHECK_ROWS = 65_536  # rows per block of the up-front NaN/inf scan (bounded temporary)
_TAIL_ROWS = 8_192  # rows per block of a gated tail (see Erasure._apply_tail)


class ErasureError(ValueError):
    """Invalid input to an erasure: wrong shape, non-finite values, impossible ``k``..."""


def _version() -> str:
    try:
        return _metadata.version("facekd")
    except _metadata.PackageNotFoundError:  # running from a source tree
        return "0+unknown"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _as_matrix(x: Any, name: str, *, d: int | None = None, check_finite: bool = True) -> np.ndarray:
    """Validate an ``(n, d)`` finite, non-empty matrix and return it as a numpy array.

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
def _single_threaded_blas() -> Iterator[None]:
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


def _orthonormal_union(*bases: np.ndarray, tol: float = 1e-10) -> np.ndarray:
    """Orthonormal basis ``(d, r)`` of the span of the columns of all ``bases``."""
    stacked = np.concatenate(bases, axis=1)
    if stacked.shape[1] == 0:
        return stacked
    # Column-pivoted QR would be nicer, but SVD gives the rank robustly at this size (r << d).
    u, s, _ = np.linalg.svd(stacked, full_matrices=False)
    rank = int(np.count_nonzero(s > tol * max(1.0, float(s[0]))))
    return np.ascontiguousarray(u[:, :rank])


@dataclass
class Erasure:
    """A fitted erasure: ``apply(E) = normalize(E @ A)``.

    Attributes:
        method: ``"esc"`` (projector, stored as ``basis``) or ``"esc-t"`` (dense ``linear_map``).
        d: embedding dimension.
        basis: ``(d, k)`` float64 orthonormal erased directions (``esc`` only), else ``None``.
        linear_map: ``(d, d)`` float64 map ``A`` (``esc-t`` only), else ``None``.
        params: fit parameters and diagnostics (JSON-serialisable).
        history: one entry per fitted step this erasure composes (method + params).
        created: ISO-8601 UTC timestamp.
        tail: non-linear stages applied after the linear part (empty for ESC / ESC-T).
    """

    method: str
    d: int
    basis: np.ndarray | None = None
    linear_map: np.ndarray | None = None
    params: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    created: str = field(default_factory=_now)
    version: str = field(default_factory=_version)
    tail: list = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.method == "esc":
            if self.basis is None or self.basis.shape[0] != self.d or self.basis.ndim != 2:
                raise ErasureError("an 'esc' erasure needs a (d, k) basis")
        elif self.method == "esc-t":
            if self.linear_map is None or self.linear_map.shape != (self.d, self.d):
                raise ErasureError("an 'esc-t' erasure needs a (d, d) linear_map")
        else:
            raise ErasureError(f"unknown erasure method {self.method!r}")
        self.tail = merge_stages(list(self.tail))
        for stage in self.tail:
            if stage.d != self.d:
                raise ErasureError(f"a tail stage of dimension {stage.d} in an erasure of d={self.d}")
        # A k = 0 ESC is the identity (Erasure.identity): it composes no step.
        if not self.history and not self.is_identity:
            self.history = [{"method": self.name, "params": dict(self.params)}]

    # ------------------------------------------------------------------ constructors
    @classmethod
    def identity(cls, d: int) -> "Erasure":
        """The no-op erasure (``k = 0``) for dimension ``d``."""
        return cls(method="esc", d=int(d), basis=np.zeros((int(d), 0)), params={"k": 0}, history=[])

    # ------------------------------------------------------------------ properties
    @property
    def k(self) -> int:
        """Number of erased directions (``esc``) or of masked basis columns' rank loss (``esc-t``)."""
        if self.method == "esc":
            return int(self.basis.shape[1])
        return int(self.d - np.linalg.matrix_rank(self.linear_map))

    @property
    def is_projector(self) -> bool:
        """The whole map is an orthogonal projector ``I - Q Q^T`` (ESC, no tail)."""
        return self.method == "esc" and not self.tail

    @property
    def is_linear(self) -> bool:
        """No tail: the whole erasure is ``normalize(E @ A)`` and folds into a linear layer."""
        return not self.tail

    @property
    def is_identity(self) -> bool:
        return self.method == "esc" and self.basis.shape[1] == 0 and not self.tail

    @property
    def name(self) -> str:
        """``"esc"``, ``"esc-t"``, or ``"scramble"`` when a gated tail is present."""
        return "scramble" if self.tail else self.method

    @property
    def scrambler(self) -> Scrambler | None:
        """The stranger map of the tail's last gate chain (``None`` without gates): a new gated
        step fitted with it (``fit_scramble(..., scrambler=...)``) merges into that chain."""
        chains = [st for st in self.tail if isinstance(st, GateChain)]
        return chains[-1].scrambler if chains else None

    @property
    def n_gates(self) -> int:
        """Number of gated steps in the tail (0 for linear erasures)."""
        return sum(st.n_gates for st in self.tail if isinstance(st, GateChain))

    def linear_part(self) -> "Erasure":
        """The linear map alone (what folds into the encoder's last layer), without the tail."""
        if not self.tail:
            return self
        return Erasure(method=self.method, d=self.d, basis=self.basis, linear_map=self.linear_map,
                       params={"linear_part_of": self.name}, history=[{"method": self.method}],
                       created=self.created, version=self.version)

    def matrix(self) -> np.ndarray:
        """The ``(d, d)`` float64 linear map ``A`` (the tail, if any, is not included)."""
        if self.method == "esc":
            return np.eye(self.d) - self.basis @ self.basis.T
        return self.linear_map.copy()

    # ------------------------------------------------------------------ application
    def project(self, E: Any) -> np.ndarray:
        """``E @ A`` without normalisation: ``(n, d)`` float32. This is what a folded layer emits.

        Only defined for linear erasures (a tail works on normalised vectors)."""
        if self.tail:
            raise ErasureError("project() is only defined for linear erasures; use apply()")
        src = _as_matrix(E, "embeddings", d=self.d, check_finite=False)
        return self._edit(src, np.empty(src.shape, dtype=np.float32), normalise=False)

    def apply(self, E: Any, *, out: np.ndarray | None = None) -> np.ndarray:
        """Edited, L2-normalised embeddings ``normalize(E @ A)``: ``(n, d)`` float32.

        ``out`` may be ``E`` itself (a float32 C-contiguous array) to edit in place, which is how a
        gallery of millions of vectors is updated without a second copy.
        """
        src = _as_matrix(E, "embeddings", d=self.d, check_finite=False)
        if out is None:
            return self._apply_tail(self._edit(src, np.empty(src.shape, dtype=np.float32),
                                               normalise=True))
        if out.shape != src.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise ErasureError("out must be a C-contiguous float32 array of the input's shape")
        # Writing into caller memory: reject bad input before touching any row of it.
        _check_finite(src, "embeddings")
        return self._apply_tail(self._edit(src, out, normalise=True, checked=True))

    def _apply_tail(self, out: np.ndarray) -> np.ndarray:
        """Run the tail over unit rows ``out`` in place, in blocks; rows no stage touches keep
        their bytes."""
        if not self.tail:
            return out
        # Each block costs float64 copies of its rows and an (rows, gates) score matrix: 8,192
        # rows keep that near 100 MB at d = 512 and 1,000 gates (65,536 rows took ~1 GB).
        step = _TAIL_ROWS
        for start in range(0, out.shape[0], step):
            block = out[start:start + step]
            edited = apply_stages(self.tail, block)
            changed = np.flatnonzero((edited != block).any(axis=1))
            block[changed] = edited[changed]
        return out

    def _edit(self, src: np.ndarray, out: np.ndarray, *, normalise: bool,
              checked: bool = False) -> np.ndarray:
        """``out = [normalize](src @ A)`` in one pass of cache-sized blocks.

        Each block is copied, checked for NaN/inf (unless ``checked``), projected and normalised
        while it is in cache, so the array crosses memory once (the operation is memory-bound).
        Large inputs are split over a thread pool with BLAS pinned to one thread per worker:
        BLAS's own threading on thin ``(rows, d) @ (d, k)`` products costs more than it saves.
        """
        from scipy.linalg.blas import sgemm  # in-place C += alpha * A @ B, no temporary

        if self.method == "esc":
            q = self.basis.astype(np.float32)
            q_f = np.asfortranarray(q)
            a = None
        else:
            q = q_f = None
            a = self.linear_map.astype(np.float32)
        in_place = (src.dtype == out.dtype and src.strides == out.strides
                    and src.__array_interface__["data"][0] == out.__array_interface__["data"][0])
        if not in_place and np.may_share_memory(src, out):
            src = src.copy()  # partial overlap: blockwise copying would read rows already edited

        def block(start: int) -> None:
            dst = out[start:start + _CHUNK_ROWS]
            if not in_place:
                np.copyto(dst, src[start:start + _CHUNK_ROWS], casting="unsafe")
            if not checked and not normalise and not np.isfinite(dst).all():
                raise ErasureError("embeddings: contain NaN or inf")
            if a is not None:
                dst[...] = dst @ a
            elif q.shape[1]:
                # dst <- dst - (dst Q) Q^T, O(rows * d * k), written in place by BLAS on the
                # transposed (Fortran-ordered) view of the row block.
                xq_t = (dst @ q).T
                res = sgemm(-1.0, q_f, xq_t, beta=1.0, c=dst.T, overwrite_c=1)
                if not np.may_share_memory(res, dst):  # pragma: no cover - BLAS made a copy
                    dst.T[...] = res
            if normalise:
                norms = np.sqrt(np.einsum("ij,ij->i", dst, dst))
                # NaN/inf anywhere in a row makes its norm non-finite: the check costs no pass.
                if not checked and not np.isfinite(norms).all():
                    raise ErasureError("embeddings: contain NaN or inf (or values beyond "
                                       "float32 range)")
                np.maximum(norms, 1e-12, out=norms)
                dst /= norms[:, None]

        starts = range(0, src.shape[0], _CHUNK_ROWS)
        workers = min(8, os.cpu_count() or 1)
        if src.shape[0] < _PARALLEL_MIN_ROWS or workers < 2:
            with _single_threaded_blas():
                for start in starts:
                    block(start)
            return out
        with _single_threaded_blas(), ThreadPoolExecutor(workers) as pool:
            for _ in pool.map(block, starts):
                pass
        return out

    # ------------------------------------------------------------------ composition
    def then(self, other: "Erasure") -> "Erasure":
        """The erasure that applies ``self`` and then ``other``.

        Two ESC erasures compose into one projector onto the complement of the *union* of their
        erased spans (re-orthonormalised), which equals ``P_self @ P_other`` when ``other`` was
        fitted on embeddings already edited by ``self`` (the intended use), and is
        order-independent. Anything involving ESC-T composes as a dense matrix product.
        """
        if not isinstance(other, Erasure):
            raise ErasureError(f"can only compose with another Erasure, got {type(other).__name__}")
        if other.d != self.d:
            raise ErasureError(f"cannot compose erasures of dimension {self.d} and {other.d}")
        history = list(self.history) + list(other.history)
        if self.tail:
            # Linear steps after a gate cannot move before it: they join the tail as a stage.
            lin = [] if other.linear_part().is_identity else [LinearStage(other.matrix())]
            return Erasure(method=self.method, d=self.d, basis=self.basis,
                           linear_map=self.linear_map, params={"composed": len(history)},
                           history=history, tail=list(self.tail) + lin + list(other.tail))
        if other.tail:
            head = self.then(other.linear_part())
            return Erasure(method=head.method, d=self.d, basis=head.basis,
                           linear_map=head.linear_map, params={"composed": len(history)},
                           history=history, tail=list(other.tail))
        if self.method == "esc" and other.method == "esc":
            q = _orthonormal_union(self.basis, other.basis)
            return Erasure(method="esc", d=self.d, basis=q, params={"k": int(q.shape[1])},
                           history=history)
        return Erasure(method="esc-t", d=self.d, linear_map=self.matrix() @ other.matrix(),
                       params={"composed": len(history)}, history=history)

    # ------------------------------------------------------------------ persistence
    def metadata(self) -> dict:
        """JSON-serialisable description (no arrays)."""
        return {
            "format": FORMAT_VERSION,
            "method": self.method,
            "tail": [st.kind for st in self.tail],
            "gates": self.n_gates,
            "d": self.d,
            "k": self.k,
            "params": self.params,
            "history": self.history,
            "created": self.created,
            "facekd_version": self.version,
        }

    def to_bytes(self) -> bytes:
        """The erasure as ``.npz`` bytes (arrays + a JSON ``meta`` entry), e.g. for a database."""
        arrays = {"meta": np.frombuffer(json.dumps(self.metadata()).encode(), dtype=np.uint8)}
        arrays["basis" if self.method == "esc" else "linear_map"] = (
            self.basis if self.method == "esc" else self.linear_map)
        for i, stage in enumerate(self.tail):
            arrays.update(stage.arrays(f"tail{i}_"))
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "erasure blob") -> "Erasure":
        """Inverse of :meth:`to_bytes`; raises :class:`ErasureError` on anything else."""
        try:
            with np.load(io.BytesIO(bytes(data)), allow_pickle=False) as npz:
                meta = json.loads(bytes(npz["meta"]).decode())
                arrays = {key: npz[key] for key in npz.files if key != "meta"}
        except Exception as exc:
            raise ErasureError(f"{source}: not a facekd erasure ({exc})") from None
        if meta.get("format") not in _READABLE_FORMATS:
            raise ErasureError(f"{source}: unsupported erasure format {meta.get('format')!r}")
        try:
            tail = []
            for i, kind in enumerate(meta.get("tail", [])):
                kinds = {"gates": GateChain, "linear": LinearStage}
                if kind not in kinds:
                    raise ValueError(f"unknown tail stage {kind!r}")
                tail.append(kinds[kind].from_arrays(arrays, f"tail{i}_"))
            return cls(method=meta["method"], d=int(meta["d"]), basis=arrays.get("basis"),
                       linear_map=arrays.get("linear_map"), params=meta["params"],
                       history=meta["history"], created=meta["created"],
                       version=meta["facekd_version"], tail=tail)
        except ErasureError:
            raise
        except (KeyError, ValueError, TypeError) as exc:
            raise ErasureError(f"{source}: damaged erasure ({exc})") from None

    def save(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_bytes` to one ``.npz`` file atomically (temp file, fsync, rename)."""
        # Not facekd.fileio.write_atomic: this module imports nothing else from the project.
        path = Path(path)
        data = self.to_bytes()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Erasure":
        """Read a file written by :meth:`save`; raises :class:`ErasureError` if it is not one."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ErasureError(f"{path}: no such erasure file") from None
        except OSError as exc:
            raise ErasureError(f"{path}: cannot read ({exc.strerror})") from None
        return cls.from_bytes(data, source=str(path))

    def __repr__(self) -> str:
        gates = f", gates={self.n_gates}" if self.tail else ""
        return (f"Erasure(method={self.name!r}, d={self.d}, k={self.k}{gates}, "
                f"steps={len(self.history)})")


# ---------------------------------------------------------------------- ESC
def select_k(singular_values: np.ndarray, d: int, *, p: float = 1.5, k: int | None = None,
             energy: float | None = None, rank: int | None = None) -> int:
    """Number of principal directions to erase.

    Exactly one rule applies, in this order of precedence: an explicit ``k``; an ``energy`` share
    (smallest ``k`` whose squared singular values hold that share of ``||F||_F^2``); the reference
    code's percentage rule ``k = int(d * p / 100)`` (at least 1, clipped to ``rank``).
    An explicit ``k`` above ``rank`` is an error, never silently clipped.
    """
    s = np.asarray(singular_values, dtype=np.float64)
    if rank is None:
        rank = int(np.count_nonzero(s > s.max(initial=0.0) * max(len(s), d) * np.finfo(np.float64).eps))
    if rank == 0:
        raise ErasureError("the forget embeddings are all zero (rank 0); nothing to erase")
    if k is not None:
        if int(k) != k or k < 1:
            raise ErasureError(f"k must be a positive integer, got {k!r}")
        if k > rank:
            raise ErasureError(f"k={k} exceeds rank(F)={rank}: the forget set spans only {rank} "
                               "direction(s); pass a smaller k or more images")
        return int(k)
    if energy is not None:
        if not 0.0 < energy <= 1.0:
            raise ErasureError(f"energy must be in (0, 1], got {energy!r}")
        share = np.cumsum(s[:rank] ** 2) / np.sum(s[:rank] ** 2)
        return int(min(rank, np.searchsorted(share, energy - 1e-12) + 1))
    if not 0.0 < p <= 100.0:
        raise ErasureError(f"p must be in (0, 100], got {p!r}")
    return int(min(rank, max(1, int(d * p / 100))))


def fit_esc(F: Any, *, p: float = 1.5, k: int | None = None, energy: float | None = None) -> Erasure:
    """Fit ESC on the forget identity's embeddings.

    Args:
        F: ``(n, d)`` embeddings of the identity to erase, as the encoder emits them (``n < d`` is
            the usual case and is fine). To add a deletion to an existing erasure ``e1``, fit on
            ``e1.apply(F)`` and compose with ``e1.then(e2)``.
        p, k, energy: how many directions to erase (see :func:`select_k`).

    Returns:
        An ``esc`` :class:`Erasure` whose map is ``I - Q Q^T``, ``Q`` = top-``k`` right singular
        vectors of ``F`` (uncentred, as published). The projector is built from ``Q`` itself, not
        from a reduced ``U U^T`` (the reference-code trap that also deletes span(F)'s complement).
    """
    f = _as_matrix(F, "forget embeddings").astype(np.float64)
    n, d = f.shape
    with _single_threaded_blas():
        _, s, vt = np.linalg.svd(f, full_matrices=False)
    rank = int(np.count_nonzero(s > s.max(initial=0.0) * max(n, d) * np.finfo(np.float64).eps))
    kk = select_k(s, d, p=p, k=k, energy=energy, rank=rank)
    q = np.ascontiguousarray(vt[:kk].T)  # (d, k), orthonormal columns
    removed = float(np.sum(s[:kk] ** 2) / np.sum(s ** 2))
    params = {"k": kk, "p": p if k is None and energy is None else None, "k_requested": k,
              "energy_requested": energy, "n": n, "rank": rank, "energy_removed": removed}
    return Erasure(method="esc", d=d, basis=q, params=params)


# ---------------------------------------------------------------------- ESC-T
def fit_esc_t(F: Any, prototypes: Any, forget_index: int, *, scale: float = 30.0,
              lr: float | None = None, epochs: int = 50, threshold: float = 0.7, seed: int = 0,
              batch_size: int = 64, device: Any = None, normalize_step: bool | None = None,
              reference: bool = False) -> Erasure:
    """Fit ESC-T: a learned element-wise mask on a full SVD basis of the forget embeddings.

    Faithful to the reference loop, with a cosine classifier over identity prototypes as the head
    (face encoders have no classifier at deployment time):

    * ``U`` = full ``(d, d)`` left singular basis of ``F^T`` (completed when ``n < d``);
    * mask ``M`` of ones, ``(d, d)``; features are edited as ``f (U*M)(U*M)^T``;
    * logits ``scale * cos(f', prototypes)``; loss = ``-CE`` over forget samples still classified
      as ``forget_index``; ``M <- clamp(M - lr * grad, 0, 1)``; stop as soon as none is;
    * finally ``M = (M > threshold)`` and ``A = (U*M)(U*M)^T``.

    Args:
        F: ``(n, d)`` forget embeddings (numpy or torch, CPU or CUDA).
        prototypes: ``(c, d)`` identity prototypes; row ``forget_index`` is the erased identity's.
        forget_index: row of ``prototypes`` that is the erased identity.
        device: torch device; defaults to ``F``'s device when it is a tensor, else CPU.
        normalize_step: divide each gradient by its largest absolute entry, so ``lr`` is the most
            any mask entry moves per step. Not in the reference code: its raw gradient shrinks with
            the forget set and the softmax's saturation, so no fixed ``lr`` suits every identity.
            Default: on (``lr`` 0.1), unless ``reference``.
        reference: the reference code's step exactly (raw gradient, ``lr`` 1e-3). On face-sized
            forget sets it rarely moves any mask entry past the threshold, i.e. erases nothing
            (see docs); ``params["masked_fraction"]`` makes such a no-op visible.
    """
    import torch  # heavy; only ESC-T needs it

    if normalize_step is None:
        normalize_step = not reference
    if lr is None:
        lr = 1e-3 if reference else 0.1
    if device is None:
        device = F.device if isinstance(F, torch.Tensor) else torch.device("cpu")
    f_np = _as_matrix(F, "forget embeddings")
    d = f_np.shape[1]
    protos_np = _as_matrix(prototypes, "prototypes", d=d)
    c = protos_np.shape[0]
    if not (isinstance(forget_index, (int, np.integer)) and 0 <= forget_index < c):
        raise ErasureError(f"forget_index must be an integer in [0, {c}), got {forget_index!r}")
    if c < 2:
        raise ErasureError("ESC-T needs prototypes of at least 2 identities (a classifier head)")
    for name, value in (("lr", lr), ("scale", scale)):
        if not value > 0:
            raise ErasureError(f"{name} must be positive, got {value!r}")
    if not 0.0 <= threshold <= 1.0:
        raise ErasureError(f"threshold must be in [0, 1], got {threshold!r}")

    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    dtype = torch.float32
    feats = torch.as_tensor(np.asarray(f_np, dtype=np.float32), device=device)
    protos = torch.nn.functional.normalize(
        torch.as_tensor(np.asarray(protos_np, dtype=np.float32), device=device), dim=1)
    # Full basis even when n < d: the reference code's reduced SVD crashes (or truncates) there.
    u_full, _, _ = np.linalg.svd(np.asarray(f_np, dtype=np.float64).T, full_matrices=True)
    u = torch.as_tensor(u_full, dtype=dtype, device=device)
    mask = torch.ones((d, d), dtype=dtype, device=device, requires_grad=True)
    target = int(forget_index)

    def logits_of(batch: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        um = u * m
        edited = (batch @ um) @ um.T
        return scale * torch.nn.functional.normalize(edited, dim=1) @ protos.T

    epochs_run, steps = 0, 0
    stopped_early = False
    for _ in range(int(epochs)):
        epochs_run += 1
        order = torch.randperm(feats.shape[0], generator=gen).to(device)
        any_correct = False
        for start in range(0, feats.shape[0], batch_size):
            batch = feats[order[start:start + batch_size]]
            out = logits_of(batch, mask)
            correct = out.argmax(dim=1) == target
            if not bool(correct.any()):
                continue
            any_correct = True
            labels = torch.full((int(correct.sum()),), target, device=device, dtype=torch.long)
            loss = -torch.nn.functional.cross_entropy(out[correct], labels)
            (grad,) = torch.autograd.grad(loss, mask)
            with torch.no_grad():
                if normalize_step:
                    grad = grad / grad.abs().max().clamp_min(torch.finfo(grad.dtype).tiny)
                mask -= lr * grad
                mask.clamp_(0.0, 1.0)
            steps += 1
        if not any_correct:
            stopped_early = True
            break

    with torch.no_grad():
        soft_acc = float((logits_of(feats, mask).argmax(dim=1) == target).float().mean())
        binary = (mask > threshold).to(dtype)
        um = u * binary
        a = (um @ um.T).double().cpu().numpy()
        hard_acc = float((logits_of(feats, binary).argmax(dim=1) == target).float().mean())
    params = {
        "scale": scale, "lr": lr, "epochs": epochs, "threshold": threshold, "seed": seed,
        "batch_size": batch_size, "normalize_step": normalize_step, "reference": reference,
        "n": int(f_np.shape[0]), "classes": c,
        "epochs_run": epochs_run, "steps": steps, "stopped_early": stopped_early,
        "masked_fraction": float(1.0 - binary.mean().item()),
        "forget_accuracy_soft_mask": soft_acc, "forget_accuracy": hard_acc,
    }
    return Erasure(method="esc-t", d=d, linear_map=a, params=params)


# ---------------------------------------------------------------------- gated scramble
def _folds(n: int, folds: int, rng: np.random.Generator,
           groups: np.ndarray | None = None) -> list[np.ndarray]:
    """Cross-validation parts of ``n`` rows: random rows, or whole groups when ``groups`` labels
    them (an identity's faces are never split across parts)."""
    if groups is None:
        return np.array_split(rng.permutation(n), min(folds, n))
    uniq, inv = np.unique(groups, return_inverse=True)
    return [np.flatnonzero(np.isin(inv, chunk))
            for chunk in np.array_split(rng.permutation(len(uniq)), min(folds, len(uniq)))]


class _RidgeDiscriminant:
    """Weighted ridge least squares ``x . w + b`` ~ 1 on the person's faces, ~ 0 on the gallery,
    each class carrying its share of the weight whatever its size.

    The gallery's half of the normal equations, and each gallery cross-validation part's share of
    it, are computed once and serve every ridge and every fold: they are the ``O(N d^2)`` work."""

    def __init__(self, gallery: np.ndarray, parts: list[np.ndarray], *,
                 forget_weight: float) -> None:
        self.ga = np.c_[gallery, np.ones(len(gallery))]
        self.wg = (1 - forget_weight) / len(gallery)
        self.base = self.wg * (self.ga.T @ self.ga)
        self.parts = parts
        self.part_grams = [self.wg * (self.ga[p].T @ self.ga[p]) for p in parts]
        self.forget_weight = forget_weight

    def fit(self, forget: np.ndarray, ridge: float, *, drop: int | None = None
            ) -> tuple[np.ndarray, float]:
        """``(w (d,), b)`` fitted on ``forget`` and the gallery, without gallery part ``drop``."""
        fa = np.c_[forget, np.ones(len(forget))]
        wf = self.forget_weight / len(forget)
        gram = (self.base + ridge * np.eye(self.ga.shape[1])) + wf * (fa.T @ fa)
        if drop is not None:
            gram = gram - self.part_grams[drop]
        sol = np.linalg.solve(gram, wf * fa.sum(axis=0))
        return sol[:-1], float(sol[-1])

    def heldout_gallery_scores(self, forget: np.ndarray, ridge: float) -> np.ndarray:
        """Each gallery face scored by a discriminant fitted without its part (without its whole
        identity when the parts are by identity): how an unseen ordinary face scores (in-sample
        scores are optimistic, most of all on small galleries)."""
        scores = np.empty(len(self.ga))
        for i, part in enumerate(self.parts):
            w, b = self.fit(forget, ridge, drop=i)
            scores[part] = self.ga[part, :-1] @ w + b
        return scores


RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1)  # fit_scramble's choices when ridge=None


def _gate_fit(disc: _RidgeDiscriminant, g: np.ndarray, f: np.ndarray, ridge: float, q: float,
              forget_parts: list[np.ndarray]) -> dict:
    """One ridge's discriminant ``(w, b)``, gate threshold ``t0`` and cross-validated scores of
    the person's photos (``held``), with how many of them clear ``t0`` (``recall``) and by how
    many held-out gallery standard deviations their lower quartile does (``margin``)."""
    from scipy.special import ndtri

    w, b = disc.fit(f, ridge)
    # The gate opens above the q-quantile of held-out gallery scores (each face scored by a
    # discriminant fitted without it, or without its identity) and of in-sample scores. A
    # gallery holds too few faces to read a 1e-5 quantile off it: a normal tail fitted to the
    # held-out scores extrapolates it (and never lowers the empirical one).
    heldout_g = disc.heldout_gallery_scores(f, ridge)
    tail = float(heldout_g.mean() + ndtri(q) * heldout_g.std())
    t0 = float(max(np.quantile(heldout_g, q), np.quantile(g @ w + b, q), tail))
    n = len(f)
    held = np.empty(n)
    for part in forget_parts:
        rest = np.setdiff1d(np.arange(n), part)
        w2, b2 = disc.fit(f[rest], ridge) if len(rest) else (w, b)
        held[part] = f[part] @ w2 + b2
    return {"w": w, "b": b, "t0": t0, "held": held, "ridge": ridge,
            "recall": float(np.mean(held > t0)),
            "margin": float((np.quantile(held, 0.25) - t0) / max(heldout_g.std(), 1e-12))}


def fit_scramble(F: Any, gallery: Any, *, q: float | None = None, width: float = 0.3,
                 full_quantile: float = 0.05, alpha: float = 1.05, ridge: float | None = None,
                 forget_weight: float = 0.5, folds: int = 5, n_features: int = 512,
                 sigma: float = 200.0, seed: int = 0, max_gallery: int = 50_000,
                 gallery_labels: Any = None, scrambler: Scrambler | None = None) -> Erasure:
    """Fit a gated scramble: the person's faces become unrelated, ordinary-looking strangers.

    A ridge discriminant ``s(x)`` is fitted to be 1 on the person's faces ``F`` and 0 on the
    ``gallery`` (everyone else). The gate opens at ``t0`` = the ``q``-quantile of ``s`` on the
    gallery (default 0.9995 with ``gallery_labels``, 0.9999 without; the larger of the empirical
    quantile and a normal tail fitted to the scores) and is fully open at ``s1 = t0 + width * (s_cv - t0)``, ``s_cv`` the
    ``full_quantile``-quantile of *cross-validated* scores of ``F`` (each photo scored by a
    discriminant fitted without it, which is how an unseen photo of the person scores; ``t0`` is
    likewise taken over held-out gallery scores, which is how unseen ordinary faces score). A gated face
    is replaced by ``t(x)``: a pseudo-random point distributed like the population (gallery mean
    and covariance, deviation scaled by ``alpha``), so erased faces neither match one another nor
    stand out (``alpha = 1``: distributed like ordinary faces; larger: easier to spot, harder to
    re-identify; the default 1.05 is the measured balance on LFW + dlib, docs/benchmarks.md).

    Args:
        F: ``(n, d)`` embeddings of the person (``n >= 2``), in the space the erasure applies to.
        gallery: ``(N, d)`` embeddings of everyone else (what the deployment holds).
        ridge: the discriminant's ridge; default: chosen from ``RIDGE_GRID`` by how many of the
            person's cross-validated photos clear the gate (few photos need a stronger ridge).
        gallery_labels: ``(N,)`` identity of each gallery face. With them the gate's threshold is
            calibrated on identities the discriminant never saw (cross-validation by identity),
            which is how a new photo of an enrolled person scores; without, by face.
        scrambler: reuse an existing chain's stranger map, so the new step merges into it (the
            workspace passes the accumulated erasure's); default: fit one on ``gallery``.

    Returns:
        An :class:`Erasure` whose linear part is the identity and whose tail is one gate. Faces
        below the gate are returned unchanged.
    """
    f = normalize_rows(_as_matrix(F, "forget embeddings").astype(np.float64))
    g = normalize_rows(_as_matrix(gallery, "gallery embeddings", d=f.shape[1]).astype(np.float64))
    n, d = f.shape
    if n < 2:
        raise ErasureError("fit_scramble needs at least 2 embeddings of the person")
    if len(g) < 2:
        raise ErasureError("fit_scramble needs at least 2 gallery embeddings of other people")
    if q is None:  # calibrated by identity, a lower quantile gives the same protection
        q = 0.9995 if gallery_labels is not None else 0.9999
    if not 0.0 < q < 1.0 or not 0.0 < width <= 1.0 or not 0.0 <= full_quantile <= 1.0:
        raise ErasureError("q must be in (0, 1), width in (0, 1], full_quantile in [0, 1]")
    if not alpha > 0 or (ridge is not None and not ridge > 0) or not 0.0 < forget_weight < 1.0:
        raise ErasureError("alpha and ridge must be positive, forget_weight in (0, 1)")
    rng = np.random.default_rng(seed)
    groups = None
    if gallery_labels is not None:
        groups = np.asarray(gallery_labels).ravel()
        if groups.shape != (len(g),):
            raise ErasureError(f"gallery_labels: expected {len(g)} labels, got {groups.shape}")
    pick = np.arange(len(g)) if len(g) <= max_gallery else rng.choice(len(g), max_gallery,
                                                                     replace=False)
    fit_g = g[pick]
    groups = None if groups is None else groups[pick]
    ridges = RIDGE_GRID if ridge is None else (float(ridge),)
    fold_rng = np.random.default_rng(seed)  # the same parts for every ridge
    gallery_parts = _folds(len(fit_g), folds, fold_rng, groups)
    forget_parts = _folds(n, folds, fold_rng)
    with _single_threaded_blas():
        disc = _RidgeDiscriminant(fit_g, gallery_parts, forget_weight=forget_weight)
        fits = [_gate_fit(disc, g, f, r, q, forget_parts) for r in ridges]
    # The ridge whose held-out photos of the person clear the gate best (ties: the wider margin).
    best = max(fits, key=lambda fit: (fit["recall"], fit["margin"]))
    w, b, t0, held, ridge = best["w"], best["b"], best["t0"], best["held"], best["ridge"]
    s_cv = float(np.quantile(held, full_quantile))
    separable = s_cv > t0
    spread = (s_cv - t0) if separable else float(np.median(f @ w + b) - t0)
    s1 = t0 + width * max(spread, 1e-3)
    if scrambler is None:
        scrambler = Scrambler.fit(g, n_features=n_features, sigma=sigma, alpha=alpha, seed=seed)
    elif scrambler.mean.shape != (d,):
        raise ErasureError(f"scrambler dimension {scrambler.mean.shape} does not match d={d}")
    chain = GateChain(weights=w[:, None], bias=np.array([b]), t0=np.array([t0]),
                      s1=np.array([s1]), scrambler=scrambler)
    gate_fit = chain.gates(f)[:, 0]
    gate_gallery = chain.gates(g)[:, 0]
    params = {"q": q, "width": width, "full_quantile": full_quantile, "alpha": alpha,
              "ridge": ridge, "heldout_recall": best["recall"], "forget_weight": forget_weight,
              "n_features": int(scrambler.omega.shape[0]),
              "sigma": sigma, "seed": seed, "n": n, "gallery": int(len(g)),
              "separable": bool(separable),
              "fit_gated_fully": float(np.mean(gate_fit >= 1.0)),
              "heldout_gated_fully": float(np.mean((held - t0) / (s1 - t0) >= 1.0)),
              "gallery_touched": float(np.mean(gate_gallery > 0))}
    return Erasure(method="esc", d=d, basis=np.zeros((d, 0)), params=params,
                   history=[{"method": "scramble", "params": params}], tail=[chain])
