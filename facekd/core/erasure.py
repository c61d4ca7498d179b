"""ESC and ESC-T erasures: linear maps on face embeddings.

An :class:`Erasure` is a ``(d, d)`` map ``A`` applied to row-vector embeddings as
``normalize(E @ A)``, optionally followed by a *tail* of non-linear stages (the gated scramble,
:mod:`facekd.core.tail`): ``tail(normalize(E @ A))``. The linear part comes in two kinds:

* ``esc``: ``A = I - Q Q^T`` for an orthonormal basis ``Q`` ``(d, k)`` of erased directions.
  It is a true orthogonal projector; it is stored and applied through ``Q`` only, so applying
  it to ``N`` vectors costs ``O(N d k)``.
* ``esc-t`` (and any composition involving one): a dense map ``A`` (ESC-T's
  ``(U*M)(U*M)^T``), which in general is *not* a projector.

A gated erasure (:func:`facekd.methods.scramble.fit_scramble`) has the identity as its linear part and one
:class:`~facekd.core.tail.GateChain` as its tail. Composition keeps one object: linear parts compose as
before, gate chains sharing a scrambler merge into one chain, and a linear erasure that follows a
gated one becomes a :class:`~facekd.core.tail.LinearStage` of the tail.

The methods that fit an erasure (ESC, ESC-T, the gated scramble) live one per module in
:mod:`facekd.methods`; ``from facekd.erasure import fit_esc, fit_esc_t, fit_scramble, select_k``
(the public module above the methods) still gives them.

This module is pure math: it imports nothing else from the project but :mod:`facekd.core.tail` and
:mod:`facekd.core.arrays` (pure math too), does no logging and touches the disk only in
:meth:`Erasure.save` / :meth:`Erasure.load`.
scipy and threadpoolctl are imported where they are used, which keeps ``import facekd`` (and so
``facekd --help``) light.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any

import numpy as np

from facekd.core.arrays import (  # noqa: F401  (importable from here)
    ErasureError, _check_finite, as_matrix, single_threaded_blas)
from facekd.core.tail import GateChain, LinearStage, Scrambler, apply_stages, merge_stages

__all__ = ["Erasure", "ErasureError", "as_matrix", "single_threaded_blas"]

FORMAT_VERSION = 2
_READABLE_FORMATS = (1, 2)  # format 1: linear erasures only (facekd 0.1)
_CHUNK_ROWS = 1024  # rows per block in apply(): ~2 MB at d=512, so copy+project+normalise stay in L2/L3
_PARALLEL_MIN_ROWS = 65_536  # below this, one thread; thread start-up would dominate
_TAIL_ROWS = 8_192  # rows per block of a gated tail (see Erasure._apply_tail)


def _version() -> str:
    try:
        return _metadata.version("facekd")
    except _metadata.PackageNotFoundError:  # running from a source tree
        return "0+unknown"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


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
        """``"esc"``, ``"esc-t"``, ``"scramble"`` when a gated tail is present, or ``"mixed"``
        when the tail also holds a linear stage (a linear step that came after a gate)."""
        if not self.tail:
            return self.method
        return "mixed" if any(not isinstance(st, GateChain) for st in self.tail) else "scramble"

    @property
    def directions(self) -> int:
        """Erased directions in total: :attr:`k` of the linear part plus the rank each linear
        stage of the tail removes (an ESC step after a gate lives there, not in ``basis``)."""
        extra = sum(st.d - int(np.linalg.matrix_rank(st.matrix, tol=1e-8))
                    for st in self.tail if not isinstance(st, GateChain))
        return self.k + extra

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
        src = as_matrix(E, "embeddings", d=self.d, check_finite=False)
        return self._edit(src, np.empty(src.shape, dtype=np.float32), normalise=False)

    def apply(self, E: Any, *, out: np.ndarray | None = None) -> np.ndarray:
        """Edited, L2-normalised embeddings ``normalize(E @ A)``: ``(n, d)`` float32.

        ``out`` may be ``E`` itself (a float32 C-contiguous array) to edit in place, which is how a
        gallery of millions of vectors is updated without a second copy.
        """
        src = as_matrix(E, "embeddings", d=self.d, check_finite=False)
        if out is None:
            return self._apply_tail(self._edit(src, np.empty(src.shape, dtype=np.float32),
                                               normalise=True))
        if out.shape != src.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise ErasureError("out must be a C-contiguous float32 array of the input's shape")
        # Writing into caller memory: reject bad input before touching any row of it.
        _check_finite(src, "embeddings")
        return self._apply_tail(self._edit(src, out, normalise=True, checked=True))

    def gate_levels(self, E: Any) -> np.ndarray:
        """``(n,)`` float64 in ``[0, 1]``: for each embedding, the largest gate value any gated step
        applied to it on its way through this erasure (``1``: scrambled fully into a stranger;
        ``0``: no gate touched it; always ``0`` for a linear erasure). Meant for a request's
        photos (every row walks every step), not a whole gallery."""
        src = as_matrix(E, "embeddings", d=self.d)
        x = self._edit(src, np.empty(src.shape, dtype=np.float32), normalise=True)
        top = np.zeros(src.shape[0])
        v = np.asarray(x, dtype=np.float64)
        for stage in self.tail:
            if isinstance(stage, GateChain):
                v, g = stage.trace(v)
                np.maximum(top, g, out=top)
            else:
                v = stage(v)
        return top

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
            with single_threaded_blas():
                for start in starts:
                    block(start)
            return out
        with single_threaded_blas(), ThreadPoolExecutor(workers) as pool:
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
