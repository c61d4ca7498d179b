"""The gated scramble: the person's faces become unrelated, ordinary-looking strangers.

A ridge discriminant fitted against everyone else's gallery faces opens a gate on the person's
faces; a gated face is replaced by a pseudo-random stranger (:mod:`facekd.core.tail`). Faces
below the gate are returned bit for bit unchanged.

Imports nothing from the project but :mod:`facekd.core.erasure`, :mod:`facekd.core.tail`,
:mod:`facekd.methods.base`, its discriminant (:mod:`facekd.methods.discriminant`), whom a gate
spares (:mod:`facekd.methods.spare`) and its measured defaults
(:mod:`facekd.methods.scramble_defaults`); scipy where it is used (a light import).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from facekd.core.erasure import Erasure, ErasureError, as_matrix, single_threaded_blas
from facekd.core.tail import ALPHA, GateChain, Scrambler, normalize_rows
from facekd.methods.base import FitContext, MethodError, register
from facekd.methods.discriminant import RidgeDiscriminant, folds as _folds, scores as _scores
from facekd.methods.spare import fit_spare
from facekd.methods.scramble_defaults import (GUARD_KEEP, PRIOR_GRID, SOFT_FROM, budget,
                                              hinge_width, q_ladder, ridge_grid, spare_quantile,
                                              walks_the_budget)

__all__ = ["fit_scramble", "lookalike_floor"]

# fit_scramble leaves out background photos above this quantile of the gallery's impostor
# cosines against one of the person's photos: the one-to-one FAR 1e-3 of the workspace's default.
LOOKS_LIKE = 1 - 1e-3


def _with_background(f: np.ndarray, fit_g: np.ndarray, groups: np.ndarray | None,
                     background: Any, labels: Any
                     ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``(negatives, their identities, background rows)``: the gallery sample ``fit_g`` with the
    background's unit rows after it, and identities numbered apart (the gallery's ``0..k-1``,
    the background's people from ``k``). Without a background: ``(fit_g, groups, None)``.

    A background photo that scores above the gallery's impostor quantile ``LOOKS_LIKE`` against
    one of the person's photos ``f`` is left out: it shows the person (a photo of someone
    enrolled, kept by mistake) or a look-alike the gate must stay free to open on."""
    if background is None:
        return fit_g, groups, None
    bg = normalize_rows(as_matrix(background, "background embeddings",
                                  d=fit_g.shape[1]).astype(np.float64))
    if groups is None:
        raise ErasureError("a background needs gallery_labels (both are calibrated by identity)")
    people = np.arange(len(bg)) if labels is None else np.asarray(labels).ravel()
    if people.shape != (len(bg),):
        raise ErasureError(f"background_labels: expected {len(bg)} labels, got {people.shape}")
    ids, own = np.unique(groups, return_inverse=True)
    sample = np.random.default_rng(0).permutation(len(fit_g))[:2000]
    sim = fit_g[sample] @ fit_g[sample].T
    impostor = sim[groups[sample][:, None] != groups[sample][None, :]]
    if impostor.size:
        mine = (bg @ f.T).max(axis=1) > np.quantile(impostor, LOOKS_LIKE)
        bg, people = bg[~mine], people[~mine]
    theirs = np.unique(people, return_inverse=True)[1]
    return (np.vstack([fit_g, bg]), np.r_[own.ravel(), len(ids) + theirs.ravel()], bg)


def lookalike_floor(heldout: np.ndarray, groups: np.ndarray, share: float) -> float:
    """The lowest gate threshold that opens on at most ``share`` of any one enrolled identity's
    new photos.

    ``heldout`` ``(N,)``: gallery scores, each under a discriminant fitted without that face's
    identity (how a new photo of the identity scores); ``groups`` ``(N,)`` their identities. A
    new photo of identity ``i`` is modelled as ``N(m_i, sw^2 (1 + 1 / n_i))``: ``m_i`` the mean of
    its ``n_i`` scores, ``sw`` the within-identity s.d. pooled over identities with 2+ faces.
    ``-inf`` when no identity has 2 faces (no spread to read)."""
    from scipy.special import ndtri

    _, inv, cnt = np.unique(groups, return_inverse=True, return_counts=True)
    m = np.bincount(inv, heldout) / cnt
    multi = cnt[inv] >= 2
    dof = int(multi.sum()) - int(np.sum(cnt >= 2))
    if dof < 2:
        return -np.inf
    sw = float(np.sqrt(np.sum((heldout - m[inv])[multi] ** 2) / dof))
    return float(np.max(m + ndtri(1.0 - share) * sw * np.sqrt(1.0 + 1.0 / cnt)))


def _gate_fit(disc: RidgeDiscriminant, fitted: tuple[np.ndarray, float], in_sample: np.ndarray,
              f: np.ndarray, ridge: float, tau: float, qs: tuple[float, ...],
              forget_parts: list[np.ndarray], pairs: np.ndarray | None,
              groups: np.ndarray | None, guard: float, keep: float,
              bg_scores: np.ndarray | None = None) -> dict:
    """One (ridge, prior) pair's discriminant ``(w, b)``, its gate threshold for each quantile
    in ``qs`` (``t0``, a list) and the scores of photos of the person it did not see (``held``),
    with how many of them clear each threshold (``recall``, a list) and by how many held-out
    gallery standard deviations their lower quartile clears the first (``margin``).

    ``held``: cross-validated scores of the person's photos (each scored by a discriminant fitted
    without it) when there are 2 or more; with one photo, held-out identities' new photos under
    their own one-photo gates (:meth:`RidgeDiscriminant.one_photo_z`, pairs of gallery rows
    ``pairs`` ``(P, 2)`` from :class:`~facekd.methods.prior.WithinPrior`), on this gate's scale.
    ``bg_scores``: scores of background faces the discriminant never saw (a one-photo gate's);
    their quantile can only raise each threshold, and they count among the people it may open
    on (``unseen``), not in the budget a widening gate may touch.
    """
    from scipy.special import ndtri

    w, b = fitted  # disc.fit(f, ridge, tau); ``in_sample`` (N,): its scores on the whole gallery
    # The gate opens above the q-quantile of held-out gallery scores (each face scored by a
    # discriminant fitted without it, or without its identity) and of in-sample scores. A
    # gallery holds too few faces to read a 1e-5 quantile off it: a normal tail fitted to the
    # held-out scores extrapolates it (and never lowers the empirical one).
    heldout_g = disc.heldout_gallery_scores(f, ridge, tau)
    n = len(f)
    cv = np.empty(n if n >= 2 else 0)
    if n >= 2:
        for part in forget_parts:
            rest = np.setdiff1d(np.arange(n), part)
            w2, b2 = disc.fit(f[rest], ridge, tau)
            cv[part] = f[part] @ w2 + b2
    # One photo: no second one to cross-validate with. Held-out identities' one-photo gates show
    # how new photos score, in held-out gallery standard scores, put on this gate's scale.
    prior = (np.empty(0) if n >= 2 or pairs is None else
             heldout_g.mean() + heldout_g.std() * disc.one_photo_z(pairs, groups, ridge, tau))
    held = np.r_[cv, prior]
    if not len(held):  # no pair could be scored (a gallery of two or three people)
        held = f @ w + b  # in-sample: the only, optimistic, reading
    # The look-alike guard: no gate opens on more than ``guard`` of any one enrolled identity's
    # new photos, as far as the person's own cover allows (it never rises above the threshold
    # that ``keep`` of their unseen photos clear). A population quantile alone lets a look-alike
    # (a sibling) lose a share of their photos to every erasure near them, and that is most of
    # what erasures in sequence cost everyone else; where the two overlap, the person comes first.
    floor = -np.inf
    if guard < 1 and groups is not None:
        # The (1 - keep)-quantile of the person's unseen photos' scores (keep = 1: the lowest).
        # Measured on LFW (50 erasures in sequence, keep = 0.97): capping it lower, at a normal
        # tail fitted to those scores, kept more of look-alikes' photos gated (0.50 points lost
        # on average over 5 seeds, against 0.37) and found no more of the erased.
        floor = min(lookalike_floor(heldout_g, groups, guard),
                    float(np.quantile(held, 1.0 - keep)))
    unseen = heldout_g if bg_scores is None else np.r_[heldout_g, bg_scores]
    t0 = [float(max(np.quantile(heldout_g, q), np.quantile(in_sample, q),
                    heldout_g.mean() + ndtri(q) * heldout_g.std(), floor,
                    -np.inf if bg_scores is None else np.quantile(bg_scores, q))) for q in qs]
    return {"w": w, "b": b, "t0": t0, "held": held, "ridge": ridge, "tau": tau, "unseen": unseen,
            "recall": [float(np.mean(held > t)) for t in t0], "floor": floor,
            "margin": float((np.quantile(held, 0.25) - t0[0]) / max(heldout_g.std(), 1e-12))}


def fit_scramble(F: Any, gallery: Any, *, q: float | None = None, q_one: float | None = None,
                 width: float | None = None,
                 full_quantile: float = 0.05, cover: float = 0.97,
                 max_touched: float | None = None,
                 alpha: float = ALPHA,
                 ridge: float | None = None, prior: float | None = None,
                 forget_weight: float = 0.5, folds: int = 5, n_features: int = 512,
                 sigma: float = 200.0, seed: int = 0, shrink: float | None = None,
                 max_gallery: int = 50_000, gallery_labels: Any = None,
                 guard: float = 1.0, guard_keep: float = GUARD_KEEP,
                 soft_from: int = SOFT_FROM, spare: float | None = None,
                 stranger_cap: float | None = None,
                 scrambler: Scrambler | None = None, background: Any = None,
                 background_labels: Any = None) -> Erasure:
    """Fit a gated scramble: the person's faces become unrelated, ordinary-looking strangers.

    A ridge discriminant ``s(x)`` is fitted to be 1 on the person's faces ``F`` and 0 on the
    ``gallery`` (everyone else). With ``gallery_labels`` it is fitted under a within-identity
    prior (:mod:`facekd.methods.prior`): each photo of the person stands for a cloud shaped like
    everyone else's photo-to-photo variation, which is what lets one photo cover the person's
    other photos. The gate opens at ``t0`` = the ``q``-quantile of ``s`` on the gallery (the
    larger of the empirical quantile and a normal tail fitted to the scores; ``t0`` is taken over
    held-out gallery scores, which is how unseen ordinary faces score) and is fully open at
    ``s1 = t0 + width * (s_cv - t0)``, ``s_cv`` the ``full_quantile``-quantile of scores of the
    person's photos the discriminant did not see: each known photo scored by a discriminant
    fitted without it, or, with one photo, held-out identities' new photos under their own
    one-photo gates. Default ``q`` with ``gallery_labels`` and 2+ photos: the tightest of
    :func:`q_ladder` (``Q_GRID``; from ``Q_FEW``, 0.999, with 2-4 photos) whose gate opens on
    ``cover`` of those unseen photos, widened only while it touches at most ``max_touched`` of
    the gallery's faces; with one photo the widest from ``Q_ONE`` (0.995) on within that budget;
    0.9999 without labels. A gated face is replaced by ``t(x)``: a pseudo-random point like
    the population (gallery mean and covariance, deviation scaled by ``alpha``; the covariance
    partly isotropic, more so on small galleries, :meth:`Scrambler.fit`), so erased faces
    neither match one another nor stand out (``alpha = 1``: as far from the crowd's centre as
    ordinary faces; larger: easier to spot, harder to re-identify; the default 1.02 is the
    measured balance on LFW + dlib, :data:`facekd.core.tail.ALPHA`).

    Args:
        F: ``(n, d)`` embeddings of the person (``n >= 1``; one photo needs ``gallery_labels``:
            the prior is what it generalises from; where nobody has two photos, the plain ridge
            gate ``RIDGE_BLIND`` at ``Q_ONE``, cover unknown, ``heldout_from`` ``"none"``).
        gallery: ``(N, d)`` embeddings of everyone else (what the deployment holds).
        q_one: with one photo, this quantile instead (fixed: neither ``q`` nor the search):
            one-photo gates open wide and add up over erasures in sequence, so an ID-photo
            gallery that erases many trades here between the erased and everyone else
            (``ONE_PHOTO_FRONTIER``).
        width: the hinge (see above); default :func:`hinge_width`: 0.05 with 1-4 photos, 0.15
            with 5 to ``soft_from - 1``, 0.5 from ``soft_from`` (default 10; 0: never) on.
        ridge: the discriminant's ridge; default: chosen from ``RIDGE_GRID`` (one photo:
            ``RIDGE_GRID_ONE``) by how many of the person's unseen photos clear the gate.
        prior: strength of the within-identity prior (0: none, the plain ridge gate); default:
            chosen from ``PRIOR_GRID`` with the ridge. Needs ``gallery_labels``.
        cover, max_touched: the default ``q`` search (see above): the share of the person's
            unseen photos to open on, and the most of the gallery's faces a wider gate may touch
            (each erasure's cost to everyone else adds up in sequence; default ``MAX_TOUCHED``,
            with one photo ``MAX_TOUCHED_ONE``).
        shrink: the stranger map's covariance shrinkage (:meth:`Scrambler.fit`; default:
            calibrated on the gallery; 0: the raw covariance, as before issue 21).
        gallery_labels: ``(N,)`` identity of each gallery face. With them the gate's threshold is
            calibrated on identities the discriminant never saw (cross-validation by identity),
            which is how a new photo of an enrolled person scores; without, by face.
        guard: the look-alike guard: the gate opens on at most this share of any one enrolled
            identity's new photos (:func:`lookalike_floor`; needs ``gallery_labels``; 1: no
            guard). It never lifts the threshold above the score that ``guard_keep`` of the
            person's unseen photos clear (default 1: all of them): where a look-alike and the
            person overlap, the person is erased first. Default: no guard (``guard`` 1;
            ``GUARD`` and ``GUARD_KEEP`` are the measured opt-in).
        spare: the gate lets through a face that matches one of the ``SPARE_FACES`` enrolled
            mean faces nearest it, above the ``spare``-quantile of enrolled strangers' cosines
            to them (:func:`facekd.methods.spare.fit_spare`; needs ``gallery_labels``; 0: off;
            default 0.99, 0.9 with 2-4 photos): erasures in sequence stay cheap for everyone else.
        stranger_cap: the stranger map counts each identity's faces at most this many times the
            median identity's (:meth:`Scrambler.fit`'s ``cap``; needs ``gallery_labels``; None
            or 0: face by face). Opt-in: measured, it is not the default (docs/benchmarks.md,
            "Thirteenth round").
        scrambler: reuse an existing chain's stranger map, so the new step merges into it (the
            workspace passes the accumulated erasure's); default: fit one on ``gallery``.
        background: ``(M, d)`` faces of people enrolled nowhere (``facekd calibrate``), with
            ``background_labels`` ``(M,)`` the person each shows (default: each its own): more
            people the gate must not open on. They join the discriminant's other class, the
            threshold's calibration (by identity), the look-alike guard and the budget a wider
            gate may touch; not the sparing (they are not enrolled), the stranger map or
            ``others_touched``. Needs ``gallery_labels``. With one photo it stays out of the
            discriminant and the budget (measured worse there) and only raises the threshold. A
            gallery of tens of people holds too few strangers: a gate fitted on 3
            photos among 15 LFW people opened on 6.6 % of never-enrolled people's photos
            without, 0.3 % with 1,000 (docs/benchmarks.md, "Fourteenth round").

    Returns:
        An :class:`Erasure` whose linear part is the identity and whose tail is one gate. Faces
        below the gate are returned unchanged. ``params["heldout_recall"]``: share of the
        person's unseen photos (as above) that clear ``t0``; ``params["heldout_gated_fully"]``:
        share fully gated; with one photo both are estimated from held-out gallery identities'
        one-photo gates (``params["heldout_from"]``: ``"prior"``; else ``"cv"``).
    """
    from facekd.methods.prior import WithinPrior

    f = normalize_rows(as_matrix(F, "forget embeddings").astype(np.float64))
    # The gallery stays in its own dtype: a float64 copy of a million faces is 1 GB and only the
    # fitted sample needs one; the whole gallery is only ever scored, block by block.
    g = as_matrix(gallery, "gallery embeddings", d=f.shape[1])
    n, d = f.shape
    if len(g) < 2:
        raise ErasureError("fit_scramble needs at least 2 gallery embeddings of other people")
    # Calibrated by identity, a lower quantile gives the same protection.
    qs = ((float(q_one),) if q_one is not None and n < 2 else (float(q),) if q is not None
          else (0.9999,) if gallery_labels is None else q_ladder(n))
    # Few photos get a sharp hinge, many a soft one (why: scramble_defaults.WIDTHS).
    if float(soft_from) != int(soft_from) or int(soft_from) < 0 or int(soft_from) == 1:
        raise ErasureError("soft_from must be 0 (never) or a photo count >= 2")
    width = hinge_width(n, int(soft_from)) if width is None else float(width)
    max_touched = budget(n) if max_touched is None else max_touched
    guard = float(guard)
    if not all(0.0 < x < 1.0 for x in qs + ((q_one,) if q_one is not None else ())) \
            or not 0.0 < width <= 1.0 \
            or not 0.0 <= full_quantile <= 1.0 or not 0.0 <= cover <= 1.0 \
            or not 0.0 <= max_touched <= 1.0:
        raise ErasureError("q and q_one must be in (0, 1), width in (0, 1], full_quantile and "
                           "cover in [0, 1]")
    if not alpha > 0 or (ridge is not None and not ridge > 0) or not 0.0 < forget_weight < 1.0 \
            or (stranger_cap is not None and not stranger_cap >= 0):
        raise ErasureError("alpha and ridge must be positive, stranger_cap >= 0, forget_weight "
                           "in (0, 1)")
    stranger_cap = stranger_cap or None  # 0: face by face, as None
    if prior is not None and not prior >= 0:
        raise ErasureError("prior must be >= 0")
    if not 0 < guard <= 1:
        raise ErasureError("guard must be in (0, 1] (1: no look-alike guard)")
    if not 0 < float(guard_keep) <= 1:
        raise ErasureError("guard_keep must be in (0, 1] (1: all of the person's unseen photos)")
    if shrink is not None and not 0 <= shrink < 1:
        raise ErasureError("shrink must be in [0, 1)")
    spare = spare_quantile(n) if spare is None else spare
    if not 0 <= float(spare) < 1:
        raise ErasureError("spare must be in [0, 1) (0: the gate spares nobody)")
    rng = np.random.default_rng(seed)
    groups = None
    if gallery_labels is not None:
        groups = np.asarray(gallery_labels).ravel()
        if groups.shape != (len(g),):
            raise ErasureError(f"gallery_labels: expected {len(g)} labels, got {groups.shape}")
    pick = np.arange(len(g)) if len(g) <= max_gallery else rng.choice(len(g), max_gallery,
                                                                     replace=False)
    fit_g = normalize_rows(g[pick].astype(np.float64))
    groups = None if groups is None else groups[pick]
    neg, neg_groups, bg = _with_background(f, fit_g, groups, background, background_labels)
    unseen_people = None if neg_groups is None else int(len(np.unique(neg_groups)))
    if n < 2 and bg is not None:
        # One photo: the background among the discriminant's negatives measured worse (LFW +
        # dlib, 15 / 40 / 62 people: everyone else lost 0.0 -> 1.3 points at 15, the erased
        # found 13.7 -> 18.6 % at 40). It only raises the threshold (its own q-quantile): people
        # enrolled later lost 8.2 -> 4.7 rank-1 points at 15 people (FaceNet 8.7 -> 5.0), the
        # erased found as often (8.5 %; FaceNet 7.9 -> 8.8). Counted in the budget a widening
        # gate may touch as well, it spared them more (0.9-1.9 points) but let the erased be
        # found up to twice as often (FaceNet 17.1 %; docs/benchmarks.md, "Sixteenth round").
        neg, neg_groups = fit_g, groups
    # The prior costs a second O(N d^2) pass: skipped where it is switched off.
    within = (None if groups is None or (prior == 0 and n >= 2)
              else WithinPrior.fit(fit_g, groups, seed=seed))
    if (within is None and (prior or 0) > 0) or (n < 2 and groups is None):
        raise ErasureError("fit_scramble needs at least 2 embeddings of the person, or "
                           "gallery_labels (the within-identity prior one photo generalises "
                           "from; a prior needs 2 or more faces of 2 or more people)")
    blind = n < 2 and within is None  # an ID-photo gallery: no pair to learn or estimate from
    qs = qs[:1] if blind else qs  # no walk: a budget is not read off single photos (RIDGE_BLIND)
    ridges = (float(ridge),) if ridge is not None else ridge_grid(n, blind)
    taus = (0.0,) if within is None else PRIOR_GRID if prior is None else (float(prior),)
    grid = [(r, t) for t in taus for r in ridges]
    fold_rng = np.random.default_rng(seed)  # the same parts for every ridge
    gallery_parts = _folds(len(neg), folds, fold_rng, neg_groups)
    forget_parts = _folds(n, folds, fold_rng)
    pairs = None if within is None else within.pairs
    with single_threaded_blas():
        disc = RidgeDiscriminant(neg, gallery_parts, forget_weight=forget_weight,
                                  within=None if within is None else within.within)
        fitted = [disc.fit(f, r, t) for r, t in grid]
        # One pass over the whole gallery scores it under every discriminant.
        in_sample = _scores(g if bg is None else np.vstack([g, bg]),
                            np.stack([w for w, _ in fitted], axis=1),
                            np.array([b for _, b in fitted]))
        # The rows the threshold and the budget are read off: with one photo the gallery's
        # alone; the background's scores can only raise its threshold (see above).
        own = slice(len(g)) if n < 2 else slice(None)
        fits = [_gate_fit(disc, fitted[i], in_sample[own, i], f, r, t, qs, forget_parts, pairs,
                          neg_groups, guard, float(guard_keep),
                          in_sample[len(g):, i] if n < 2 and bg is not None else None)
                for i, (r, t) in enumerate(grid)]
    # The tightest gate that covers ``cover`` of the unseen photos (walks_the_budget: the widest),
    # widened only within the gallery budget; the (ridge, prior) whose unseen photos clear it best.
    def best_at(j: int) -> int:
        return max(range(len(fits)), key=lambda i: (fits[i]["recall"][j], fits[i]["margin"]))
    walk = walks_the_budget(n, len(np.unique(groups)) if groups is not None else len(g))
    j = 0
    while (walk or fits[best_at(j)]["recall"][j] < cover) and j + 1 < len(qs):
        i = best_at(j + 1)
        if np.mean(in_sample[own, i] > fits[i]["t0"][j + 1]) > max_touched:
            break
        j += 1
    i_best = best_at(j)
    best = fits[i_best]
    q, t0, recall = qs[j], best["t0"][j], best["recall"][j]
    w, b, held, ridge = best["w"], best["b"], best["held"], best["ridge"]
    s_cv = float(np.quantile(held, full_quantile))
    separable = s_cv > t0
    spread = (s_cv - t0) if separable else float(np.median(f @ w + b) - t0)
    s1 = t0 + width * max(spread, 1e-3)
    if scrambler is None:
        # The population's mean and covariance from the sample the discriminant saw (all of a
        # gallery up to max_gallery faces): a 50k-face estimate of a d x d covariance is exact to
        # well under the spread of the strangers it shapes.
        scrambler = Scrambler.fit(fit_g, n_features=n_features, sigma=sigma, alpha=alpha,
                                  seed=seed, labels=groups, shrink=shrink, cap=stranger_cap)
    elif scrambler.mean.shape != (d,):
        raise ErasureError(f"scrambler dimension {scrambler.mean.shape} does not match d={d}")
    spared = fit_spare(fit_g, groups, f, w, b, q=float(spare))
    chain = GateChain(weights=w[:, None], bias=np.array([b]), t0=np.array([t0]),
                      s1=np.array([s1]), scrambler=scrambler,
                      **({"known": spared.known[None], "known_t": spared.t[None]}
                         if spared.faces else {}))
    gate_fit = chain.gates(f)[:, 0]
    gallery_touched = float(np.mean(in_sample[:len(g), i_best] > t0))
    # What the gate costs everyone else: how many of their *new* photos it opens on. A gallery
    # face scored without itself (its identity's other photos still in the fit) stands for a new
    # photo of an enrolled person. Scored without its whole identity (the threshold's
    # calibration) overstates it 2-10x, in-sample understates it 1.5-4x. Summed over 50
    # erasures in sequence (LFW + dlib, five draws) this read 14.0 / 1.2 / 1.3 % with 1 / 3 /
    # all photos where the gates really opened on 15.0 / 1.7 / 1.6 % of everyone else's new
    # photos and cost them 10.4 / 0.9 / 0.3 rank-1 points (docs/benchmarks.md); with sparing,
    # counted as below: 2.9 / 0.5 / 0.6 %, and 2.8 / 0.24 / 0.13 points lost.
    # (Without labels the discriminant's own parts are by face already.)
    by_face = None if groups is None else _folds(len(neg), folds, fold_rng)
    with single_threaded_blas():
        others = disc.heldout_gallery_scores(f, ridge, best["tau"], parts=by_face)[:len(fit_g)]
    opened = others > t0
    others_touched = float(np.mean(opened & ~spared.spared))
    params = {"q": q, "width": width, "full_quantile": full_quantile, "cover": cover,
              "max_touched": max_touched, "alpha": alpha, "ridge": ridge, "prior": best["tau"],
              "heldout_recall": None if blind else recall,  # None: unknown
              "forget_weight": forget_weight, "n_features": int(scrambler.omega.shape[0]),
              "sigma": sigma, "seed": seed, "n": n, "gallery": len(g), "separable": bool(separable),
              "fit_gated_fully": float(np.mean(gate_fit >= 1.0)),
              "heldout_gated_fully": None if blind else float(np.mean((held - t0) / (s1 - t0)
                                                                     >= 1.0)),
              "heldout_from": "none" if blind else "prior" if n < 2 else "cv",
              "gallery_touched": gallery_touched, "others_touched": others_touched,
              # before sparing: the share of everyone else's new photos the gate opens on
              "others_opened": float(np.mean(opened)),
              "spare": float(spare), "walked": walk and len(qs) > 1,  # walks_the_budget
              "spared_faces": spared.faces,
              "others_touched_faces": int(len(fit_g)),  # the faces it was read off
              # People enrolled later are spared by no gate: their photos score as the faces of
              # identities the discriminant never saw (the gallery's, each held out, and the
              # background's), which is what t0 was read off; so the walk's lower quantiles show.
              "strangers_touched": float(np.mean(best["unseen"] > t0)),
              "strangers_touched_faces": int(len(best["unseen"])),
              # a gate opens on people more than on photos: their bound counts these
              "strangers_touched_people": unseen_people,
              "background": 0 if bg is None else int(len(bg)),
              "guard": guard, "stranger_cap": stranger_cap,  # None: face by face
              "guard_keep": float(guard_keep),
              # the look-alike guard, not the quantile, set the threshold: an enrolled identity
              # looks enough like the person that the gate stopped short of them
              "guard_raised": bool(best["floor"] >= t0)}
    return Erasure(method="esc", d=d, basis=np.zeros((d, 0)), params=params,
                   history=[{"method": "scramble", "params": params}], tail=[chain])


def _background(context: FitContext) -> dict:
    """fit_scramble's ``background`` arguments from the context (none when it holds none)."""
    bg = context.background
    if bg is None or not len(bg.vectors):
        return {}
    return {"background": bg.vectors, "background_labels": bg.groups}


@register("scramble", options=("q", "q_one", "width", "full_quantile", "cover", "max_touched",
                               "alpha", "ridge", "prior",
                               "forget_weight", "folds", "n_features", "sigma", "seed", "shrink",
                               "max_gallery", "guard", "guard_keep", "soft_from", "spare",
                               "stranger_cap"),
          config={"scramble_q": "q", "scramble_q_one": "q_one", "scramble_alpha": "alpha",
                  "scramble_guard": "guard", "scramble_guard_keep": "guard_keep",
                  "scramble_spare": "spare", "scramble_stranger_cap": "stranger_cap",
                  "scramble_soft_from": "soft_from", "seed": "seed"},
          summary="gated scramble: the person's faces become unrelated strangers")
def _fit(forget: np.ndarray, context: FitContext) -> Erasure:
    if len(context.gallery) < 2:
        raise MethodError("scramble needs at least 2 gallery faces of other people "
                          "(the gate is fitted against them)")
    # Later gates reuse the chain's stranger map, so the chain stays one object (one gate product).
    try:
        return fit_scramble(forget, context.gallery, gallery_labels=context.gallery_labels,
                            scrambler=context.previous.scrambler, **_background(context),
                            **context.options)
    except MethodError:
        raise
    except ErasureError as exc:  # e.g. one photo in a gallery where nobody has two
        raise MethodError(str(exc)) from None
