"""ESC and ESC-T erasures: linear maps on face embeddings.

An :class:`Erasure` is a ``(d, d)`` map ``A`` applied to row-vector embeddings as
``normalize(E @ A)``. Two kinds exist:

* ``esc``: ``A = I - Q Q^T`` for an orthonormal basis ``Q`` ``(d, k)`` of erased directions.
  It is a true orthogonal projector; it is stored and applied through ``Q`` only, so applying
  it to ``N`` vectors costs ``O(N d k)``.
* ``esc-t`` (and any composition involving one): a dense map ``A`` (ESC-T's
  ``(U*M)(U*M)^T``), which in general is *not* a projector.

This module is pure math: it imports nothing else from the project, does no logging and
touches the disk only in :meth:`Erasure.save` / :meth:`Erasure.load`.
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

__all__ = ["Erasure", "ErasureError", "fit_esc", "fit_esc_t", "select_k"]

FORMAT_VERSION = 1
_CHUNK_ROWS = 1024  # rows per block in apply(): ~2 MB at d=512, so copy+project+normalise stay in L2/L3
_PARALLEL_MIN_ROWS = 65_536  # below this, one thread; thread start-up would dominate
_CHECK_ROWS = 65_536  # rows per block of the up-front NaN/inf scan (bounded temporary)


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
    """

    method: str
    d: int
    basis: np.ndarray | None = None
    linear_map: np.ndarray | None = None
    params: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    created: str = field(default_factory=_now)
    version: str = field(default_factory=_version)

    def __post_init__(self) -> None:
        if self.method == "esc":
            if self.basis is None or self.basis.shape[0] != self.d or self.basis.ndim != 2:
                raise ErasureError("an 'esc' erasure needs a (d, k) basis")
        elif self.method == "esc-t":
            if self.linear_map is None or self.linear_map.shape != (self.d, self.d):
                raise ErasureError("an 'esc-t' erasure needs a (d, d) linear_map")
        else:
            raise ErasureError(f"unknown erasure method {self.method!r}")
        # A k = 0 ESC is the identity (Erasure.identity): it composes no step.
        is_identity = self.method == "esc" and self.basis.shape[1] == 0
        if not self.history and not is_identity:
            self.history = [{"method": self.method, "params": dict(self.params)}]

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
        return self.method == "esc"

    def matrix(self) -> np.ndarray:
        """The ``(d, d)`` float64 map ``A`` with ``edited = normalize(E @ A)``."""
        if self.method == "esc":
            return np.eye(self.d) - self.basis @ self.basis.T
        return self.linear_map.copy()

    # ------------------------------------------------------------------ application
    def project(self, E: Any) -> np.ndarray:
        """``E @ A`` without normalisation: ``(n, d)`` float32. This is what a folded layer emits."""
        src = _as_matrix(E, "embeddings", d=self.d, check_finite=False)
        return self._edit(src, np.empty(src.shape, dtype=np.float32), normalise=False)

    def apply(self, E: Any, *, out: np.ndarray | None = None) -> np.ndarray:
        """Edited, L2-normalised embeddings ``normalize(E @ A)``: ``(n, d)`` float32.

        ``out`` may be ``E`` itself (a float32 C-contiguous array) to edit in place, which is how a
        gallery of millions of vectors is updated without a second copy.
        """
        src = _as_matrix(E, "embeddings", d=self.d, check_finite=False)
        if out is None:
            return self._edit(src, np.empty(src.shape, dtype=np.float32), normalise=True)
        if out.shape != src.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise ErasureError("out must be a C-contiguous float32 array of the input's shape")
        # Writing into caller memory: reject bad input before touching any row of it.
        _check_finite(src, "embeddings")
        return self._edit(src, out, normalise=True, checked=True)

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
        if meta.get("format") != FORMAT_VERSION:
            raise ErasureError(f"{source}: unsupported erasure format {meta.get('format')!r}")
        return cls(method=meta["method"], d=int(meta["d"]), basis=arrays.get("basis"),
                   linear_map=arrays.get("linear_map"), params=meta["params"],
                   history=meta["history"], created=meta["created"],
                   version=meta["facekd_version"])

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
        return f"Erasure(method={self.method!r}, d={self.d}, k={self.k}, steps={len(self.history)})"


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
              lr: float = 1e-3, epochs: int = 50, threshold: float = 0.7, seed: int = 0,
              batch_size: int = 64, device: Any = None, normalize_step: bool = False) -> Erasure:
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

    Note: on face-sized forget sets the reference ``lr=1e-3`` rarely moves any mask entry past
    the threshold (see docs); the returned ``params`` report ``masked_fraction`` so a no-op is visible.
    """
    import torch  # heavy; only ESC-T needs it

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
        "batch_size": batch_size, "normalize_step": normalize_step,
        "n": int(f_np.shape[0]), "classes": c,
        "epochs_run": epochs_run, "steps": steps, "stopped_early": stopped_early,
        "masked_fraction": float(1.0 - binary.mean().item()),
        "forget_accuracy_soft_mask": soft_acc, "forget_accuracy": hard_acc,
    }
    return Erasure(method="esc-t", d=d, linear_map=a, params=params)
