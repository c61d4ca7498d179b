"""Non-linear erasure stages applied after an erasure's linear map: the gated scramble.

A *stage* maps ``(n, d)`` unit rows to ``(n, d)`` unit rows. Two kinds exist:

* :class:`LinearStage`: ``normalize(V @ A)``, a linear erasure that had to come *after* a gated
  one (it cannot be folded into the encoder's weights there).
* :class:`GateChain`: ``K`` gated scramble steps applied in order. Step ``i`` has a ridge
  discriminant ``s_i(v) = v . w_i + b_i`` behind a hinge
  ``g_i(v) = clip((s_i(v) - t0_i) / (s1_i - t0_i), 0, 1)`` and replaces a gated face by a
  pseudo-random stranger: ``v <- normalize(v + g_i(v) (t(v) - v))`` with
  ``t(v) = normalize(mean + cos(v Omega^T + phase) @ M)``, ``M = alpha * mix^T chol^T``
  ``(D, d)``. ``cos(v Omega^T + phase) @ mix^T`` is close to a standard normal ``d``-vector
  whose value changes completely when ``v`` moves by a few hundredths (``Omega`` has scale
  ``sigma`` ~ 200), and ``chol`` is the Cholesky factor of the population's covariance, so
  ``t(v)`` is distributed like an ordinary face, not like the person.

A step may also *spare* the enrolled people nearest its gate: it carries ``M`` of their mean
faces ``known_i`` ``(M, d)`` and a cosine for each ``known_t_i`` ``(M,)``; a row whose cosine to
one of them exceeds its ``known_t`` is not gated by step ``i`` (``g_i = 0``): it is someone
enrolled, not the erased person. Gates open on a share of everyone else's new photos, and in
sequence those shares add up; sparing the ones that match an enrolled look-alike is what keeps
that cost down (padding rows are zero vectors with ``known_t = 2``, which no cosine reaches).

A face below every gate (``g = 0``) is returned bit for bit unchanged, which is why gated edits
compose without wearing everyone else down and why stored gallery vectors can be updated without
images: every stage is a function of the final embedding alone.

Pure math: numpy only, imports nothing else from the project.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ALPHA", "GateChain", "LinearStage", "NO_SPARE", "SHRINK_GRID", "SHRINK_MIN",
           "Scrambler", "apply_stages", "normalize_rows"]


def _identity_weights(labels: np.ndarray, cap: float) -> np.ndarray:
    """``(N,)`` face weights under which no identity counts more than ``cap`` times the median
    identity's faces."""
    _, inv, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return np.minimum(1.0, cap * float(np.median(counts)) / counts)[inv.ravel()]


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float64 in, float64 out; zero rows stay zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# The scale of a stranger's deviation from the crowd's centre that the gated scramble uses by
# default (``fit_scramble``'s ``alpha``, ``scramble_alpha``; 1: as far as ordinary faces sit). A
# larger scale makes the erased person's scrambled photos find one another less often and an
# observer spot them more easily by their distance from the centre. LFW + dlib, 158 people, five
# draws, all photos fitted, with SHRINK_MIN: re-enrolment rank-1 1.3 % and the cosine-to-mean
# detector's AUC 0.57 at 1.02; 1.5 % and 0.55 at 1.0; 1.3 % and 0.63 at 1.05 (before SHRINK_MIN,
# 1.05 with the raw covariance: 2.0 % and 0.60; docs/benchmarks.md, "The floor").
ALPHA = 1.02
SHRINK_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8)
# The least shrinkage by default, whatever the gallery's size. The raw covariance of a large
# gallery passes the pair-tail rule below, yet its strangers' photos beat the gallery for one
# another more often than real strangers' do: on LFW (158 people, dlib, alpha 1.05) one
# scrambled photo beats the gallery for another in 0.12-0.14 % of pairs, a real stranger's in
# 0.11 % (FaceNet: 0.11 against 0.10), and the erased person's fully scrambled new photos were
# found at 1.3 % where a perfect erasure reaches 1.1 %. With 0.3 of it isotropic: 0.03-0.04 % of
# pairs, 0.3 %. More lowers the pairs' share further but let the linear probe (KR) and the
# erased person's partly gated photos find them more often (0.5 at alpha 1.0: re-enrolment rank-1
# 1.5 -> 1.8 %, KR linear 9.5 -> 11.5 %; docs/benchmarks.md, "The floor").
SHRINK_MIN = 0.3
# ``known_t`` of a step that spares nobody: no cosine reaches it.
NO_SPARE = 2.0
_CALIBRATION_ROWS = 400   # strangers drawn to compare with the population's pairs
_QUANTILES = (0.99, 0.999)


def _pair_quantiles(x: np.ndarray, labels: np.ndarray | None, seed: int,
                    max_rows: int = 1500) -> np.ndarray:
    """``(2,)`` 99th and 99.9th percentile of the cosines between rows of ``x`` ``(N, d)`` (unit
    rows) of different ``labels`` (all pairs without), over at most ``max_rows``: the tail that
    decides nearest neighbours. (Not the median: a gallery's own distinct pairs sit below
    unseen people's there, its mean having been taken over them.)"""
    rows = np.random.default_rng([seed, 6]).permutation(len(x))[:max_rows]
    xs = x[rows] / np.maximum(np.linalg.norm(x[rows], axis=1, keepdims=True), 1e-12)
    iu = np.triu_indices(len(xs), 1)
    cos = (xs @ xs.T)[iu]
    if labels is not None:
        lab = np.asarray(labels).ravel()[rows]
        cos = cos[lab[iu[0]] != lab[iu[1]]]
    return np.quantile(cos, _QUANTILES) if len(cos) else np.full(len(_QUANTILES), np.inf)


@dataclass(frozen=True)
class Scrambler:
    """The pseudo-random stranger map ``t(v)`` shared by every step of a :class:`GateChain`.

    Attributes (float64): ``mean`` ``(d,)`` population mean of unit embeddings; ``omega``
    ``(D, d)``; ``phase`` ``(D,)``; ``mix`` ``(D, d)`` = ``alpha * W^T chol^T`` (random features
    to a population-shaped deviation).
    """

    mean: np.ndarray
    omega: np.ndarray
    phase: np.ndarray
    mix: np.ndarray

    @classmethod
    def fit(cls, population: np.ndarray, *, n_features: int = 512, sigma: float = 200.0,
            alpha: float = 1.0, seed: int = 0, labels: np.ndarray | None = None,
            shrink: float | None = None, cap: float | None = None) -> "Scrambler":
        """Fit to ``population`` ``(N, d)`` unit embeddings of ordinary faces (the gallery).

        ``shrink``: share of the population covariance replaced by its isotropic average (trace
        kept, so strangers sit as far from the crowd's centre). A covariance estimated from a
        few dozen people puts all their between-person spread in a few dozen directions, and
        strangers drawn from it are closer to one another than distinct real people are (their
        re-enrolled photos would find each other first). Default (None): the smallest of
        ``SHRINK_GRID`` from ``SHRINK_MIN`` on whose strangers' pairwise cosines stay at or below
        those of distinct people of ``population`` (``labels`` ``(N,)``; without, of all its
        pairs) at the 99th and the 99.9th percentile, read at scale ``min(alpha, ALPHA)``.

        ``cap`` (with ``labels``): each identity's faces count at most ``cap`` times the median
        identity's in the mean and covariance, so one heavily enrolled person does not pull the
        strangers toward them (None: face by face, the default; ``fit_scramble``'s
        ``stranger_cap``)."""
        x = np.asarray(population, dtype=np.float64)
        d = x.shape[1]
        rng = np.random.default_rng(seed)
        omega = rng.normal(size=(n_features, d)) * sigma
        phase = rng.uniform(0.0, 2.0 * np.pi, n_features)
        # E[cos^2] = 1/2, so N(0, 2/D) weights give each output coordinate unit variance.
        w = rng.normal(size=(d, n_features)) * np.sqrt(2.0 / n_features)
        if cap is None or labels is None:
            mean = x.mean(axis=0)
            cov = np.cov((x - mean).T, bias=True) if len(x) > 1 else np.zeros((d, d))
        else:
            wt = _identity_weights(np.asarray(labels).ravel(), float(cap))
            wt = wt / wt.sum()
            mean = wt @ x
            cov = ((x - mean).T * wt) @ (x - mean)
        # A small ridge keeps the factor defined for galleries smaller than d.
        ridge = 1e-6 + 1e-3 * float(np.trace(cov)) / d
        iso = float(np.trace(cov)) / d * np.eye(d)

        def make(lam: float, scale: float = float(alpha)) -> "Scrambler":
            chol = np.linalg.cholesky((1 - lam) * cov + lam * iso + ridge * np.eye(d))
            return cls(mean=mean, omega=omega, phase=phase, mix=scale * (w.T @ chol.T))

        if shrink is not None:
            return make(float(shrink))
        ref = _pair_quantiles(x, labels, seed)
        probe = x[np.random.default_rng([seed, 5]).permutation(len(x))[:_CALIBRATION_ROWS]]
        # Read at no larger a scale than the default: a larger alpha lowers strangers' pair
        # cosines by itself, so the rule read at that scale picked less shrinkage, and a small
        # gallery's strangers, back in its few directions, found one another more often than at
        # the default (LFW + dlib, 40 people, alpha 1.2: re-enrolment rank-1 1.9 -> 2.7 %, where
        # a larger alpha is meant to lower it; docs/benchmarks.md, "The floor").
        scale = min(float(alpha), ALPHA)
        for lam in (v for v in SHRINK_GRID if v >= SHRINK_MIN):
            if len(probe) < 3 or np.all(_pair_quantiles(make(lam, scale)(probe), None, seed)
                                        <= ref):
                break
        return make(lam)

    def __call__(self, v: np.ndarray) -> np.ndarray:
        """``(n, d)`` -> ``(n, d)`` unit strangers, float64."""
        z = np.cos(v @ self.omega.T + self.phase) @ self.mix
        return normalize_rows(self.mean + z)

    def __repr__(self) -> str:
        return f"Scrambler(d={self.mean.shape[0]}, features={self.omega.shape[0]})"

    def same_as(self, other: "Scrambler") -> bool:
        return all(np.array_equal(getattr(self, f), getattr(other, f))
                   for f in ("mean", "omega", "phase", "mix"))

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}{f}": getattr(self, f) for f in ("mean", "omega", "phase", "mix")}

    @classmethod
    def from_arrays(cls, arrays: dict, prefix: str) -> "Scrambler":
        return cls(**{f: np.asarray(arrays[f"{prefix}{f}"], np.float64)
                      for f in ("mean", "omega", "phase", "mix")})


@dataclass(frozen=True)
class GateChain:
    """``K`` gated scramble steps sharing one :class:`Scrambler`, applied in order.

    Attributes: ``weights`` ``(d, K)``, ``bias``/``t0``/``s1`` ``(K,)`` float64 (``s1 > t0``);
    ``known`` ``(K, M, d)`` unit (or zero) rows and ``known_t`` ``(K, M)``: the enrolled mean faces
    each step spares and the cosine to each above which it does (``M = 0``: none; module doc).
    """

    weights: np.ndarray
    bias: np.ndarray
    t0: np.ndarray
    s1: np.ndarray
    scrambler: Scrambler
    known: np.ndarray | None = None
    known_t: np.ndarray | None = None

    kind = "gates"

    def __post_init__(self) -> None:
        # No sparing given: M = 0 (frozen dataclass, hence object.__setattr__).
        k, d = self.weights.shape[1], self.weights.shape[0]
        if self.known is None:
            object.__setattr__(self, "known", np.zeros((k, 0, d)))
        if self.known_t is None:
            object.__setattr__(self, "known_t", np.full((k, self.known.shape[1]), NO_SPARE))

    @property
    def n_known(self) -> int:
        """``M``: the enrolled mean faces each step can spare (0: no sparing)."""
        return int(self.known.shape[1])

    @property
    def d(self) -> int:
        return int(self.weights.shape[0])

    @property
    def n_gates(self) -> int:
        return int(self.weights.shape[1])

    def __repr__(self) -> str:
        return f"GateChain(d={self.d}, gates={self.n_gates}, {self.scrambler!r})"

    def hinge(self, v: np.ndarray, cols: slice | np.ndarray = slice(None)) -> np.ndarray:
        """``(n, K)`` where unit rows ``v`` sit on each chosen step's hinge, unclipped:
        ``(s - t0) / (s1 - t0)`` (0 at the opening, 1 fully open, negative below the gate)."""
        s = v @ self.weights[:, cols] + self.bias[cols]
        return (s - self.t0[cols]) / (self.s1[cols] - self.t0[cols])

    def gates(self, v: np.ndarray, cols: slice | np.ndarray = slice(None)) -> np.ndarray:
        """Gate values ``(n, K)`` in ``[0, 1]`` of unit rows ``v`` for the chosen steps, 0 where
        a step spares the row (:meth:`spared`)."""
        g = np.clip(self.hinge(v, cols), 0.0, 1.0)
        if self.n_known:
            rows = np.flatnonzero((g > 0).any(axis=1))  # only an open gate has anyone to spare
            if rows.size:
                sub = g[rows]
                sub[self.spared(v[rows], cols)] = 0.0
                g[rows] = sub
        return g

    def spared(self, v: np.ndarray, cols: slice | np.ndarray = slice(None)) -> np.ndarray:
        """``(n, K)`` bool: unit rows ``v`` that the chosen steps spare (their cosine to one of the
        step's enrolled mean faces exceeds its ``known_t``)."""
        known = self.known[cols]
        if known.shape[1] == 0:
            return np.zeros((len(v), known.shape[0]), bool)
        cos = np.einsum("nd,kmd->nkm", np.asarray(v, np.float64), known)
        return (cos > self.known_t[cols][None]).any(axis=2)

    def __call__(self, v: np.ndarray) -> np.ndarray:
        """Apply every step in order to unit rows ``(n, d)`` float64; returns a new array.

        Exact sequential semantics at the cost of one ``(n, d) @ (d, K)`` product: every step's
        gate is first evaluated on the input; rows no gate touches are returned unchanged, and only
        the (few) touched rows are walked through the steps one by one from their first firing
        step on, their later gates evaluated on their already-scrambled values.
        """
        out = np.array(v, dtype=np.float64, copy=True)
        if out.shape[0] == 0 or self.n_gates == 0:
            return out
        first = self.hinge(out) > 0  # a spared row is walked through but left unchanged
        hit = np.flatnonzero(first.any(axis=1))
        if hit.size == 0:
            return out
        rows = out[hit]
        start = first[hit].argmax(axis=1)  # first firing step of each touched row
        for i in range(int(start.min()), self.n_gates):
            live = start <= i
            if not live.any():
                continue
            sub = rows[live]
            g = self.gates(sub, slice(i, i + 1))[:, 0]
            moving = g > 0
            if moving.any():
                x = sub[moving]
                sub[moving] = normalize_rows(x + g[moving, None] * (self.scrambler(x) - x))
                rows[live] = sub
        out[hit] = rows
        return out

    def trace(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(self(v) (n, d), top (n,))``: the chain's output and, per row, the largest gate value
        any step applied to it on its way through (1: some step replaced it by a stranger fully).

        Walks every row through every step (``O(n K)`` scrambler calls at worst), so it is meant
        for a request's photos, not a gallery; :meth:`__call__` is the fast path.
        """
        out = np.array(v, dtype=np.float64, copy=True)
        top = np.zeros(out.shape[0])
        for i in range(self.n_gates):
            # Evaluated on the row as earlier steps left it: the sequential semantics of __call__.
            g = self.gates(out, slice(i, i + 1))[:, 0]
            np.maximum(top, g, out=top)
            moving = g > 0
            if moving.any():
                x = out[moving]
                out[moving] = normalize_rows(x + g[moving, None] * (self.scrambler(x) - x))
        return out, top

    def then(self, other: "GateChain") -> "GateChain":
        """One chain running ``self``'s steps and then ``other``'s (same scrambler required)."""
        if not self.scrambler.same_as(other.scrambler):
            raise ValueError("gate chains with different scramblers cannot be merged")
        m = max(self.n_known, other.n_known)  # zero rows pad the shorter; they spare nobody
        pad = lambda c: np.pad(c.known, ((0, 0), (0, m - c.n_known), (0, 0)))  # noqa: E731
        pad_t = lambda c: np.pad(c.known_t, ((0, 0), (0, m - c.n_known)),  # noqa: E731
                                 constant_values=NO_SPARE)
        return GateChain(weights=np.concatenate([self.weights, other.weights], axis=1),
                         bias=np.r_[self.bias, other.bias], t0=np.r_[self.t0, other.t0],
                         s1=np.r_[self.s1, other.s1], scrambler=self.scrambler,
                         known=np.concatenate([pad(self), pad(other)]),
                         known_t=np.concatenate([pad_t(self), pad_t(other)]))

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        # A chain that spares nobody stores what it always did (fingerprints stay the same).
        spare = ({f"{prefix}known": self.known, f"{prefix}known_t": self.known_t}
                 if self.n_known else {})
        return {f"{prefix}weights": self.weights, f"{prefix}bias": self.bias,
                f"{prefix}t0": self.t0, f"{prefix}s1": self.s1, **spare,
                **self.scrambler.arrays(prefix)}

    @classmethod
    def from_arrays(cls, arrays: dict, prefix: str) -> "GateChain":
        get = lambda k: np.asarray(arrays[f"{prefix}{k}"], np.float64)  # noqa: E731
        spare = (("known", "known_t") if f"{prefix}known" in arrays else ())
        chain = cls(weights=get("weights"), bias=get("bias"), t0=get("t0"), s1=get("s1"),
                    scrambler=Scrambler.from_arrays(arrays, prefix),
                    **{k: get(k) for k in spare})
        chain.validate()
        return chain

    def validate(self) -> None:
        k = self.n_gates
        if self.weights.ndim != 2 or any(a.shape != (k,) for a in (self.bias, self.t0, self.s1)):
            raise ValueError("gate arrays disagree in shape")
        if not np.all(self.s1 > self.t0):
            raise ValueError("every gate needs s1 > t0")
        if self.known.ndim != 3 or self.known.shape[::2] != (k, self.d) \
                or self.known_t.shape != self.known.shape[:2]:
            raise ValueError("spared faces' arrays disagree in shape")
        sc = self.scrambler
        if sc.mean.shape != (self.d,) or sc.mix.shape != (sc.omega.shape[0], self.d) \
                or sc.omega.shape[1] != self.d or sc.phase.shape != (sc.omega.shape[0],):
            raise ValueError("scrambler arrays disagree in shape")
        for a in (self.weights, self.bias, self.t0, self.s1, self.known, self.known_t,
                  sc.mean, sc.omega, sc.phase, sc.mix):
            if not np.all(np.isfinite(a)):
                raise ValueError("gate arrays contain NaN or inf")


@dataclass(frozen=True)
class LinearStage:
    """``normalize(V @ matrix)`` after a gated stage; ``matrix`` ``(d, d)`` float64."""

    matrix: np.ndarray

    kind = "linear"

    def __repr__(self) -> str:
        return f"LinearStage(d={self.d})"

    @property
    def d(self) -> int:
        return int(self.matrix.shape[0])

    def __call__(self, v: np.ndarray) -> np.ndarray:
        return normalize_rows(np.asarray(v, np.float64) @ self.matrix)

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}matrix": self.matrix}

    @classmethod
    def from_arrays(cls, arrays: dict, prefix: str) -> "LinearStage":
        m = np.asarray(arrays[f"{prefix}matrix"], np.float64)
        if m.ndim != 2 or m.shape[0] != m.shape[1] or not np.all(np.isfinite(m)):
            raise ValueError("a linear stage needs a finite (d, d) matrix")
        return cls(matrix=m)


Stage = GateChain | LinearStage


def merge_stages(stages: list) -> list:
    """Adjacent gate chains sharing a scrambler become one chain (same map, one gate product)."""
    out: list = []
    for st in stages:
        if out and isinstance(st, GateChain) and isinstance(out[-1], GateChain) \
                and out[-1].scrambler.same_as(st.scrambler):
            out[-1] = out[-1].then(st)
        else:
            out.append(st)
    return out


def apply_stages(stages: list, v: np.ndarray) -> np.ndarray:
    """Run unit rows ``(n, d)`` through ``stages`` in order; float64 out."""
    out = np.asarray(v, np.float64)
    for st in stages:
        out = st(out)
    return out

