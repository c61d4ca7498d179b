"""Is an erased person still found? The evidence from their photos, 95 % intervals, and a
verdict: PASS, FAIL or INCONCLUSIVE.

**The attack.** An attacker enrols ``e`` of the person's photos next to the gallery and searches
with another; the probe is a hit when its nearest neighbour is an enrolled photo. Photo ``j``
*beats the gallery* for probe ``i`` when ``cos(i, j)`` is above ``i``'s best gallery score.
Rather than one seeded split, every split is averaged exactly (:func:`split_hit_rates`): with
``c_i`` photos beating the gallery for ``i``, a random enrolment of ``e`` of the other ``m - 1``
misses all of them with probability ``C(m-1-c_i, e) / C(m-1, e)``. Two figures come out:
``rank-1`` (half the photos enrolled, what an outside replay of the attack measures) and
``rank-1, 1 enrolled`` (every ordered pair; the share of pairs in which one photo beats the
gallery for the other).

**Chance.** What a perfect erasure reaches is not ``1 / (identities + 1)``: ``e`` photos of
``e`` unrelated strangers, enrolled as one "person", are spread over the face space and catch a
probe more often than one real person's clustered photos do (LFW + dlib: 20 strangers' photos
against a 40-person gallery reach 4.7 % where ``1/41`` is 2.4 %). :func:`strangers` measures it
on the gallery itself: each sampled gallery face plays a stranger (its identity left out), and
the chance that one more unrelated person's photo beats the rest of the gallery for it is read
from the gallery's own identities; :func:`stranger_baseline` turns that into the rank-1 of ``e``
enrolled strangers. A rank-1 bound is ``factor x max(1 / (identities + 1), that baseline)``, and
a PASS also needs the estimate itself clearly under ``factor x chance``, so that an attack the
gallery is too small to judge is never called a PASS. "Clearly": by more than an outside replay of
the same photos over ``REPLAY_SPLITS`` random splits strays from the exact average
(:func:`replay_spread`, ``Z95`` of its standard errors). Without that margin an estimate on the
cap passed: LFW + dlib, 40 people 3 photos each, one erased from one photo, verify said PASS at
5.26 % against 2 x chance 5.26 % and the replay over 200 splits read 5.5 % (docs/benchmarks.md,
"Eleventh round"). Near the bound the ruling is INCONCLUSIVE.

**Uncertainty.** Photos of one person are not independent trials of each other. Pair figures
(``rank-1, 1 enrolled``, the genuine-pair TAR) get a Wilson interval over their pairs divided by
the design effect the photos show (the leave-one-photo-out variance over the binomial one;
:func:`pair_share`). The half-split rank-1 gets a Wilson interval over its probes (the photos);
its upper end is the tighter of that and the union bound ``e x`` the pair figure's upper end (a
probe with ``e`` enrolled photos is a hit only if one of those ``e`` pairs is); its lower end the
larger of the pair figure's (a hit needs one beating pair) and the photo count's with the most
influential photo left out (one chance pair of look-alikes is no evidence; a group of escaped photos
that find each other is). A figure FAILs
when its interval lies wholly above its bound, PASSes when wholly at or under it, and is
INCONCLUSIVE otherwise (:func:`judge`).

Pure math: numpy, scipy's Student t and :func:`facekd.core.metrics.wilson_interval` only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from facekd.core.metrics import wilson_interval

__all__ = ["PASS", "FAIL", "INCONCLUSIVE", "REPLAY_SPLITS", "Figure", "Verdict", "Strangers",
           "beats_gallery", "fpir_threshold", "tail_extrapolated", "replay_spread",
           "split_hit_rates", "pair_share", "strangers", "stranger_baseline", "judge",
           "attack_figures", "photos_to_decide", "combine"]

PASS, FAIL, INCONCLUSIVE = "PASS", "FAIL", "INCONCLUSIVE"
Z95 = 1.959964
# fpir_threshold reads the quantile off the gallery's own scores only where this many of them
# are expected above it; below (fewer than 1,000 sampled faces at FPIR 1 %: a gallery that small,
# or one of over 200,000 faces, of which measure.gallery_strangers samples fewer) a normal tail
# is fitted too. LFW, galleries of 15-100 people with 1 or 3 photos each, 10 draws, FPIR 1 %
# (benchmarks/bench_fpir.py): never-enrolled people's photos labelled MATCH 0.8-20.6 % (dlib) and
# 0.7-9.6 % (FaceNet) on average with the quantile alone, 0.6-1.7 % (15 people with one photo
# each: 4.6 %) and 0.3-0.6 % with the tail; enrolled people found above it lost up to 21 (dlib)
# and 29 (FaceNet) points (docs/benchmarks.md, "MATCH in small galleries").
TAIL_EXCEEDANCES = 10
# The random splits an outside replay of the attack averages (issue 20's judge, facekd bench's
# and benchmarks/bench_verdict_lfw.py's): a PASS's estimate must clear 2 x chance by more than
# such a replay could stray from the exact average. More splits stray less: the margin holds for
# them too.
REPLAY_SPLITS = 200


# --------------------------------------------------------------------------- the attack
def beats_gallery(person: np.ndarray, gallery_best: np.ndarray) -> np.ndarray:
    """``(m, m)`` bool: ``[i, j]`` when photo ``j`` scores above photo ``i``'s best gallery
    score (``gallery_best`` ``(m,)``); the diagonal is False. ``person``: ``(m, d)`` unit rows."""
    p = np.asarray(person, np.float64)
    beats = (p @ p.T) > np.asarray(gallery_best, np.float64)[:, None]
    np.fill_diagonal(beats, False)
    return beats


def split_hit_rates(person: np.ndarray, gallery_best: np.ndarray, *,
                    enrol: int | None = None) -> np.ndarray:
    """Per-probe hit probability of the re-enrolment attack, averaged over every split.

    Args:
        person: ``(m, d)`` unit embeddings of the person's photos (``m >= 2``).
        gallery_best: ``(m,)`` each photo's best cosine to the gallery (the person not in it).
        enrol: photos enrolled per split; default ``m // 2`` (the half split). A probe is
            drawn from the rest, so ``1 <= enrol <= m - 1``.

    Returns:
        ``(m,)`` float64 ``h_i``: the probability, over a uniformly random enrolment of
        ``enrol`` of the other ``m - 1`` photos, that photo ``i``'s nearest neighbour is one of
        them. Their mean equals the rank-1 averaged over every split.
    """
    m = len(person)
    if m < 2:
        raise ValueError("the re-enrolment attack needs at least 2 photos")
    e = m // 2 if enrol is None else int(enrol)
    if not 1 <= e <= m - 1:
        raise ValueError(f"enrol must be in [1, {m - 1}], got {enrol}")
    c = beats_gallery(person, gallery_best).sum(axis=1)
    # P(no beating photo enrolled) = C(m-1-c, e) / C(m-1, e), as a running product (no overflow)
    miss = np.ones(m)
    for t in range(e):
        miss *= np.clip((m - 1 - c - t) / (m - 1 - t), 0.0, None)
    return 1.0 - miss


def replay_spread(beats: np.ndarray, enrol: int, *, splits: int = 400, seed: int = 0) -> float:
    """Standard deviation of one random split's rank-1 (``enrol`` of the ``m`` photos enrolled,
    the rest probing), from ``splits`` seeded random splits (fewer for thousands of photos: the
    cost is ``splits x m^2``). ``beats`` ``(m, m)`` bool: :func:`beats_gallery`. An outside replay
    averaging ``k`` random splits strays from :func:`split_hit_rates`' exact mean by about this
    over ``sqrt(k)``."""
    b = np.asarray(beats, bool)
    m, e = len(b), int(enrol)
    if not 1 <= e <= m - 1:
        raise ValueError(f"enrol must be in [1, {m - 1}], got {enrol}")
    rng = np.random.default_rng(seed)
    n = max(50, min(int(splits), 20_000_000 // (m * m)))
    enrolled = np.zeros((n, m), bool)
    enrolled[np.arange(n)[:, None], np.argsort(rng.random((n, m)), axis=1)[:, :e]] = True
    # probe i of split s is a hit when a photo that beats the gallery for it is enrolled
    found = (b.astype(np.float32) @ enrolled.T.astype(np.float32)) > 0  # (m, n)
    rates = (found & ~enrolled.T).sum(axis=0) / (m - e)
    return float(rates.std())


def pair_share(hits: np.ndarray, *, symmetric: bool = False) -> tuple[float, float]:
    """Share of off-diagonal ``True`` in an ``(m, m)`` bool matrix of photo pairs, and the
    effective number of independent pairs behind it (ordered pairs; with ``symmetric``, the
    matrix holds each unordered pair twice and counts it once).

    The effective count is the pair count over the design effect: the leave-one-photo-out
    (jackknife) variance of the share over its binomial variance, between 1 and the pairs per
    photo. With no pair (or every pair) set, the photos show no clustering and every pair counts.

    Returns ``(share in [0, 1], effective pairs)``.
    """
    h = np.asarray(hits, bool)
    m = len(h)
    if m < 2:
        raise ValueError("a pair share needs at least 2 photos")
    off = ~np.eye(m, dtype=bool)
    pairs = m * (m - 1)
    total = int(h[off].sum())
    share = total / pairs
    per = 2 if symmetric else 1
    if total in (0, pairs) or m < 3:
        return float(share), float(pairs / per)
    # leave photo k out: drop its row and its column
    touched = h.sum(axis=1) + h.sum(axis=0) - 2 * np.diag(h)
    loo = (total - touched) / ((m - 1) * (m - 2))
    var_jack = (m - 1) / m * float(np.sum((loo - loo.mean()) ** 2))
    var_binom = share * (1 - share) / pairs
    deff = min(max(var_jack / var_binom, 1.0), float(m - 1))
    return float(share), float(pairs / per / deff)


@dataclass
class Strangers:
    """Gallery faces playing never-enrolled people (their own identity left out), seeded sample.

    ``odds`` ``(p,)``: for each, the chance that one more unrelated person's photo beats the rest
    of the gallery for it (:func:`stranger_baseline`); ``best`` ``(p,)``: its best cosine to the
    other identities, i.e. how a never-enrolled person's photo scores in a one-to-many search
    (its ``1 - fpir`` quantile is the FPIR threshold).
    """

    odds: np.ndarray
    best: np.ndarray
    labels: np.ndarray  # (p,) the identity each sampled face belongs to


def tail_extrapolated(faces: int, fpir: float) -> bool:
    """Whether :func:`fpir_threshold` fits a normal tail to ``faces`` sampled scores: fewer than
    ``TAIL_EXCEEDANCES`` of them are expected above the ``1 - fpir`` quantile."""
    return faces * fpir < TAIL_EXCEEDANCES


def fpir_threshold(found: Strangers, fpir: float, *, level: float = 0.9, boots: int = 200,
                   seed: int = 0) -> float | None:
    """The one-to-many MATCH threshold for a false-positive identification rate ``fpir``.

    The ``1 - fpir`` quantile of :attr:`Strangers.best` is how never-enrolled people score, but
    on a gallery of tens of people it hangs on which few look-alike pairs the gallery happens to
    hold. So the identities are resampled (bootstrap, ``boots`` times) and the ``level``
    quantile of the resampled thresholds is taken: an upper confidence bound, so that the
    threshold errs towards fewer false MATCHes. Where the sample holds fewer than
    ``TAIL_EXCEEDANCES`` scores above that quantile it cannot be read off them (40 faces: the
    highest is about the 97.5th percentile), so each resample also fits a normal tail to the
    scores (a prediction bound over the ``m`` identities: Student's t with ``m - 1`` degrees of
    freedom) and keeps the higher of the two. ``None`` without sampled faces.
    """
    from scipy.stats import t as student

    if found.best.size == 0:
        return None
    ids, inv = np.unique(found.labels, return_inverse=True)
    parts = [found.best[inv == k] for k in range(len(ids))]
    rng = np.random.default_rng(seed)
    # The normal prediction bound for one more score from m identities' (Student's t).
    m = max(len(ids), 3)
    z = (float(student.ppf(1.0 - fpir, m - 1) * np.sqrt(1.0 + 1.0 / m))
         if tail_extrapolated(found.best.size, fpir) else None)
    draws = []
    for _ in range(boots):
        s = np.concatenate([parts[k] for k in rng.integers(len(ids), size=len(ids))])
        t = np.quantile(s, 1.0 - fpir, method="higher")
        draws.append(t if z is None else max(t, s.mean() + z * s.std()))
    return float(np.quantile(draws, level))


def strangers(gallery: np.ndarray, labels: np.ndarray, *, max_probes: int = 1000,
              seed: int = 0) -> Strangers:
    """Score sampled gallery faces as never-enrolled people against everyone else.

    Each sampled face's own identity is left out. The gallery's identities then play unrelated
    people for the odds: only the best-scoring identity can beat the rest, and does with the
    share of its faces above the runner-up identity's best, out of the ``n - 1`` identities
    that could have played it.

    Args:
        gallery: ``(N, d)`` unit embeddings (float32 views are not copied); labels: ``(N,)``.
        max_probes: faces sampled (seeded); cost is ``max_probes x N x d``.

    Returns:
        :class:`Strangers` (empty arrays with fewer than 3 identities).
    """
    g = np.asarray(gallery, np.float32)
    y = np.asarray(labels)
    n = len(np.unique(y))
    if n < 3:
        return Strangers(np.zeros(0), np.zeros(0), np.zeros(0, y.dtype))
    rng = np.random.default_rng(seed)
    probes = np.arange(len(g)) if len(g) <= max_probes else np.sort(
        rng.choice(len(g), max_probes, replace=False))
    q, best = np.empty(len(probes)), np.empty(len(probes))
    block = max(1, min(64, (1 << 22) // max(len(g), 1)))  # (block, N) score rows stay ~16 MB
    for s in range(0, len(probes), block):
        idx = probes[s:s + block]
        rows = np.arange(len(idx))
        sim = g[idx] @ g.T                                   # (b, N)
        sim[y[None, :] == y[idx][:, None]] = -np.inf         # the probe's own identity is out
        j = sim.argmax(axis=1)
        best[s:s + len(idx)] = sim[rows, j]
        top = y[None, :] == y[j][:, None]                    # the best-scoring identity's faces
        runner_up = np.where(top, -np.inf, sim).max(axis=1)
        q[s:s + len(idx)] = ((sim > runner_up[:, None]) & top).sum(axis=1) / top.sum(axis=1)
    return Strangers(q / (n - 1), best, y[probes])


def stranger_baseline(odds: np.ndarray, enrol: int) -> float:
    """Re-enrolment rank-1 that ``enrol`` photos of unrelated strangers reach by chance, in
    ``[0, 1]``: a probe with odds ``q`` (:attr:`Strangers.odds`) is a hit with probability
    ``1 - (1 - q) ** enrol``, averaged over the sampled probes (0 without any)."""
    q = np.asarray(odds, np.float64)
    return float(np.mean(1.0 - (1.0 - q) ** int(enrol))) if q.size else 0.0


# --------------------------------------------------------------------------- judging
@dataclass
class Figure:
    """One measured figure against its bound: ``estimate`` in ``[0, 1]`` over ``n`` units
    (``unit``: photos or pairs), its 95 % interval ``[low, high]``, the ``bound``, the ruling,
    ``pass_cap``: the most the estimate itself may be for a PASS (``None``: no cap), and
    ``pass_margin``: how far under ``pass_cap`` it must be (an outside replay's noise)."""

    name: str
    estimate: float
    low: float
    high: float
    n: float
    bound: float
    ruling: str
    unit: str = "photos"
    pass_cap: float | None = None
    pass_margin: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def judge(name: str, estimate: float, n: float, bound: float, *, unit: str = "photos",
          interval: tuple[float, float] | None = None, pass_cap: float | None = None,
          pass_margin: float = 0.0, z: float = Z95) -> Figure:
    """``estimate`` (a share in ``[0, 1]``) over ``n`` units against ``bound``.

    The interval is the Wilson one over ``n`` unless given. FAIL when it lies wholly above the
    bound; PASS when wholly at or under it (and, with ``pass_cap``, the estimate is at most
    ``pass_cap - pass_margin``); otherwise INCONCLUSIVE. Values within 1e-12 of a bound count as
    on it.
    """
    if interval is None:
        interval = wilson_interval(float(estimate) * n, int(round(n)), z=z) if n >= 1 \
            else (0.0, 1.0)
    low, high = float(interval[0]), float(interval[1])
    if low > bound + 1e-12:
        ruling = FAIL
    elif high <= bound + 1e-12 and (pass_cap is None
                                    or estimate <= pass_cap - pass_margin + 1e-12):
        ruling = PASS
    else:
        ruling = INCONCLUSIVE
    return Figure(name, float(estimate), low, high, float(n), float(bound), ruling, unit,
                  None if pass_cap is None else float(pass_cap), float(pass_margin))


def attack_figures(person: np.ndarray, gallery_best: np.ndarray, odds: np.ndarray, *,
                   chance: float, factor: float = 2.0, threshold: float | None = None,
                   max_tar: float = 0.05, z: float = Z95) -> list[Figure]:
    """Every figure of the re-enrolment attack on ``(m, d)`` unit photos, each judged.

    ``rank-1`` (half enrolled, every split), ``rank-1, 1 enrolled`` (ordered pairs) and, with a
    one-to-one ``threshold``, ``TAR`` (genuine pairs above it, bound ``max_tar``). ``odds``:
    :attr:`Strangers.odds` of the gallery; ``chance``: ``1 / (identities + 1)``.
    """
    m = len(person)
    cap = factor * chance
    beats = beats_gallery(person, gallery_best)
    pair, pair_n = pair_share(beats)
    pair_low, pair_high = wilson_interval(pair * pair_n, int(round(pair_n)), z=z)
    out = []
    e = m // 2
    r1 = float(split_hit_rates(person, gallery_best, enrol=e).mean())
    n, robust = _effective_photos(person, gallery_best, e, r1)
    _, high = wilson_interval(r1 * n, int(round(n)), z=z)
    robust_low, _ = wilson_interval(robust * max(n - 1, 1), int(round(max(n - 1, 1))), z=z)
    # With e enrolled photos a probe is a hit when one of its e pairs beats the gallery: at least
    # as often as one pair does, at most e times as often. The photo count gives the lower end
    # too once the most influential photo is left out (a single chance pair is not evidence).
    low = min(r1, max(pair_low, robust_low))
    high = max(r1, min(high, e * pair_high))
    # The replay averages random splits of these very photos: near the cap it may land on
    # either side, so a PASS needs the estimate clear of it by that much.
    margin = Z95 * replay_spread(beats, e) / np.sqrt(REPLAY_SPLITS)
    out.append(judge("rank-1", r1, n, factor * max(chance, stranger_baseline(odds, e)),
                     interval=(low, high), pass_cap=cap, pass_margin=margin))
    if e > 1:  # with 2 or 3 photos the half split is the one-photo enrolment already
        out.append(judge("rank-1, 1 enrolled", pair, pair_n,
                         factor * max(chance, stranger_baseline(odds, 1)), unit="pairs",
                         interval=(pair_low, pair_high), pass_cap=cap))
    if threshold is not None:
        above = (np.asarray(person, np.float64) @ np.asarray(person, np.float64).T) > threshold
        share, n_eff = pair_share(above, symmetric=True)
        out.append(judge("TAR", share, n_eff, max_tar, unit="pairs", z=z))
    return out


def _effective_photos(person: np.ndarray, gallery_best: np.ndarray, enrol: int,
                      rate: float) -> tuple[float, float]:
    """``(photos, robust rate)`` behind the half-split ``rate``.

    ``photos`` is the count over its design effect: hits come in clusters (two photos that find
    each other make two hits), which the leave-one-photo-out (jackknife) variance sees and a
    binomial count does not; between 1 and ``m``. ``robust rate`` is the rate with the single
    most influential photo left out: one chance pair of look-alike strangers then counts for
    nothing, while a group of escaped photos that find each other still does.
    """
    m = len(person)
    if rate in (0.0, 1.0) or m < 4:
        return float(m), rate
    keep = ~np.eye(m, dtype=bool)
    loo = np.array([split_hit_rates(person[keep[k]], gallery_best[keep[k]],
                                    enrol=min(enrol, m - 2)).mean() for k in range(m)])
    var_jack = (m - 1) / m * float(np.sum((loo - loo.mean()) ** 2))
    deff = min(max(var_jack / (rate * (1 - rate) / m), 1.0), float(m))
    return m / deff, float(loo.min())


def photos_to_decide(after: list[Figure], photos: int, odds: np.ndarray, *, chance: float,
                     factor: float = 2.0, limit: int = 5000, z: float = Z95) -> int | None:
    """Roughly how many photos of the person, at the rates ``after`` shows for ``photos`` of
    them, would make every figure decide (one FAIL, or all PASS); ``None`` when none up to
    ``limit`` would (e.g. a rate on its bound, or a half split whose chance outgrows 2 x chance).

    Pair counts grow as ``m (m - 1)`` with the same design effect; the pair rate is taken at
    least at the strangers' one, and the half-split rank-1 is projected from it as
    ``1 - (1 - pair rate) ** (m // 2)``.
    """
    figs = {f.name: f for f in after}
    half, pair, tar = figs.get("rank-1"), figs.get("rank-1, 1 enrolled"), figs.get("TAR")
    if half is None:
        return None
    # A perfect erasure still meets chance pairs: never project a rate under the strangers' one.
    pi = max(pair.estimate if pair is not None else half.estimate, stranger_baseline(odds, 1))
    ratio_pair = (pair.n if pair is not None else half.n) / (photos * (photos - 1))
    ratio_tar = tar.n / (photos * (photos - 1) / 2) if tar is not None else 0.0

    def status(m: int) -> str:
        e = m // 2
        n_pair = max(1, int(round(ratio_pair * m * (m - 1))))
        p_low, p_high = wilson_interval(pi * n_pair, n_pair, z=z)
        r1 = 1.0 - (1.0 - pi) ** e
        _, r_high = wilson_interval(r1 * m, m, z=z)
        rows = [(min(r1, p_low), max(r1, min(r_high, e * p_high)), r1,
                 factor * max(chance, stranger_baseline(odds, e)), factor * chance),
                (p_low, p_high, pi, factor * max(chance, stranger_baseline(odds, 1)),
                 factor * chance)]
        if tar is not None:
            n_tar = max(1, int(round(ratio_tar * m * (m - 1) / 2)))
            lo, hi = wilson_interval(tar.estimate * n_tar, n_tar, z=z)
            rows.append((lo, hi, tar.estimate, tar.bound, None))
        if any(lo > bound for lo, _, _, bound, _ in rows):
            return FAIL
        if all(hi <= bound and (cap is None or est <= cap) for _, hi, est, bound, cap in rows):
            return PASS
        return INCONCLUSIVE

    m = photos + 1
    while m <= limit:
        if status(m) != INCONCLUSIVE:
            return m
        m = m + 1 if m < 100 else int(m * 1.05)
    return None


@dataclass
class Verdict:
    """The ruling on an erasure from a person's photos.

    ``status`` is PASS, FAIL or INCONCLUSIVE; ``reason`` one plain sentence; ``after`` the
    figures on the edited encoder, ``before`` the same attack on the unedited one (``None`` when
    not measured); ``photos_needed``: roughly how many photos at the same rates would settle an
    INCONCLUSIVE ruling (``None``: more photos would not, or the ruling is settled)."""

    status: str
    reason: str
    after: list[Figure] = field(default_factory=list)
    before: list[Figure] | None = None
    photos_needed: int | None = None

    def to_dict(self) -> dict:
        return {"status": self.status, "reason": self.reason,
                "after": [f.to_dict() for f in self.after],
                "before": None if self.before is None else [f.to_dict() for f in self.before],
                "photos_needed": self.photos_needed}


def combine(after: list[Figure], before: list[Figure] | None, photos: int, *,
            needed: int | None = None) -> Verdict:
    """One verdict from the edited encoder's figures (``after``) and the unedited one's
    (``before``), for ``photos`` photos.

    FAIL when any ``after`` figure FAILs. Otherwise a PASS needs every ``after`` figure to PASS
    *and* evidence that the person was found before the edit (some ``before`` figure FAILs):
    photos the unedited encoder could not recognise either cannot show an erasure, and give
    INCONCLUSIVE with that reason. Anything else is INCONCLUSIVE, with ``needed`` (see
    :func:`photos_to_decide`) when more photos would settle it.
    """
    failed = [f for f in after if f.ruling == FAIL]
    if failed:
        f = failed[0]
        return Verdict(FAIL, f"still found: {f.name} {_pct(f.estimate)} "
                             f"[{_pct(f.low)}, {_pct(f.high)}] is above the bound "
                             f"{_pct(f.bound)}", after, before)
    if before is not None and not any(f.ruling == FAIL for f in before):
        b = before[0]
        return Verdict(INCONCLUSIVE, "the unedited encoder did not recognise these photos "
                                     f"either ({b.name} {_pct(b.estimate)} [{_pct(b.low)}, "
                                     f"{_pct(b.high)}]): they cannot show an erasure; use "
                                     "clearer or more photos of the person", after, before)
    open_ = [f for f in after if f.ruling != PASS]
    if not open_:
        return Verdict(PASS, "not found: every figure's 95% interval is at or under its bound"
                       + ("" if before is None else ", and the unedited encoder found the "
                          "person on the same photos"), after, before)
    capped = [f for f in open_ if f.high <= f.bound + 1e-12]
    if capped:  # under the strangers' bound, yet not clearly under the plain factor x chance
        f = capped[0]
        head = (f"{f.name} {_pct(f.estimate)} is under the bound {_pct(f.bound)} that unrelated "
                "strangers' photos set in this gallery, but ")
        if f.pass_cap is not None and f.estimate <= f.pass_cap + 1e-12:
            return Verdict(INCONCLUSIVE, head + f"within {_pct(f.pass_margin)} of "
                                                f"{_pct(f.pass_cap)} (2 x chance): an outside "
                                                f"replay over {REPLAY_SPLITS} random splits of "
                                                "these photos could land on either side of it; "
                                                "more photos, or a larger gallery, would decide "
                                                "it", after, before)
        return Verdict(INCONCLUSIVE, head + f"above {_pct(f.pass_cap)} (2 x chance): with this "
                                            "many photos against this few identities the attack "
                                            "cannot tell the person from strangers; verify with "
                                            "fewer photos or against a larger gallery",
                       after, before)
    f = open_[0]
    more = (f"; about {needed} photos at the same rates would settle it" if needed else
            "; more photos at these rates would not settle it against this gallery")
    return Verdict(INCONCLUSIVE, f"{photos} photo{'s' * (photos != 1)} cannot decide: {f.name} "
                                 f"{_pct(f.estimate)} [{_pct(f.low)}, {_pct(f.high)}] straddles "
                                 f"the bound {_pct(f.bound)}{more}", after, before, needed)


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"
