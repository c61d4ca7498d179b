"""What a workspace measures: the erasure report a forget receipt carries, and the gallery's own
statistics (match threshold, retained identities' rank-1 and TAR) that search and verify use.

The receipt's numbers are measured on the gallery's stored vectors, never on images: a twin erasure
refitted on the erased identity's enrolment half is scored on the unseen other half; score
histograms and the template leak are aggregate numbers only (no embedding or direction leaves).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from facekd.core.erasure import Erasure, ErasureError
from facekd.errors import WorkspaceError
from facekd.faces.photos import normalize
from facekd.fileio import write_atomic
from facekd.state.config import Config

__all__ = ["REPORT_MAX_IDENTITIES", "KR_MAX_IDENTITIES", "RETAIN_SAMPLE", "MOVED_COSINE",
           "erasure_report", "moved_share", "coverage", "top_up_coverage",
           "score_histograms", "template_leak", "identity_means", "gallery_stats",
           "match_threshold", "gallery_strangers", "background_searches", "match_sample",
           "identification_threshold", "threshold_note", "forget_verdict"]

REPORT_MAX_IDENTITIES = 300  # forget's before/after report: the erased one + a sample
# ... of which the knowledge-retention probes use this many others: the one-vs-rest weak probe
# costs grow with identities x faces (3 s per state at 300 identities x 5 faces, 0.3 s at 100).
KR_MAX_IDENTITIES = 100
RETAIN_SAMPLE = 4000  # vectors used for retained-identity statistics in verify
# Gallery faces scored as never-enrolled people (FPIR threshold, stranger baseline): the cost is
# this many x N x d, so it shrinks on huge galleries (500 at a million faces).
STRANGER_PROBES = 2000
STRANGER_BUDGET = 2e8
# A linear edit "covers" a photo when it moves it below this cosine to where it was. Measured on
# the synthetic test set (128-d samples encoder, twins fitted on half the photos): ESC leaves the
# person's unseen photos at 0.52-0.84, ESC-T at 0.78-0.90, while everyone else's faces stay at a
# median 0.95-0.99; an edit that misses the person leaves their photos where everyone else's are.
MOVED_COSINE = 0.9


# ------------------------------------------------------------------------- a forget's receipt
def erasure_report(all_vecs: np.ndarray, labels: np.ndarray, identity: int,
                   fit: Callable[[np.ndarray], Erasure], committed: Erasure, extra: np.ndarray,
                   config: Config):
    """``(ErasureReport, protocol note, moved)``, preferably for a twin refitted on the enrolment
    half plus ``extra`` (the photos sent with the request, which are not gallery faces); ``moved``
    is :func:`moved_share` of that twin on the person's probe half (held out unless the
    committed erasure had to stand in for the twin).

    ``all_vecs`` ``(N, d)`` and ``labels`` ``(N,)`` are the gallery before the edit; ``fit`` fits
    the forget method on ``(n, d)`` faces; ``committed`` is the erasure fitted on every face,
    measured instead when the twin cannot be fitted.
    """
    from facekd.core.metrics import MetricsError, erasure_report as _report, split_enrol_probe

    others = np.unique(labels[labels != identity])
    sampled = ""
    if len(others) > REPORT_MAX_IDENTITIES:
        # The converged probe and the pair statistics grow faster than the gallery (71 s at
        # 2,000 identities); a seeded sample of the others keeps forget at seconds.
        rng = np.random.default_rng(config.seed)
        keep = np.isin(labels, np.r_[identity, rng.choice(others, REPORT_MAX_IDENTITIES,
                                                          replace=False)])
        all_vecs, labels = all_vecs[keep], labels[keep]
        sampled = (f"; measured on the erased identity and a seeded sample of "
                   f"{REPORT_MAX_IDENTITIES} of the {len(others)} other identities")
    if not _someone_else_has_two(labels, identity):
        return (_unmeasured(labels, identity, config), UNMEASURED,
                moved_share(committed, all_vecs[:0], held_out=False))
    split = split_enrol_probe(labels, seed=config.seed)
    one_face = (labels == identity).sum() == 1
    if one_face:
        # One stored face (an ID-photo gallery): it is the only probe the report can have; the
        # twin is then fitted on the --images photos alone, or the committed erasure measured.
        split[labels == identity] = False
    protocol = ("each identity's stored faces split in half (seed "
                f"{config.seed}); the erasure measured here was refitted on the erased "
                "identity's enrolment half plus any --images photos; probes and MIA "
                "non-members are unseen faces")
    try:
        twin = fit(np.concatenate([all_vecs[split & (labels == identity)], extra]))
    except ErasureError:  # e.g. an explicit k above the half's rank: measure the real one
        twin = committed
        protocol = ("each identity's stored faces split in half; the committed erasure (fitted "
                    "on all the erased identity's faces) is measured, so its probes are seen "
                    "faces and MIA is not meaningful")
    if one_face:
        protocol += ("; the erased identity has one stored face: it is the only probe and no "
                     "enrolled face of it remains to be found, so its forget numbers measure "
                     "nothing (verify --images measures the erasure on new photos)")
    protocol += sampled
    if len(np.unique(labels)) - 1 > KR_MAX_IDENTITIES:
        protocol += (f"; knowledge-retention probes on the erased identity and a seeded "
                     f"sample of {KR_MAX_IDENTITIES} others")
    protocol += "; 95% Wilson intervals in metrics.intervals"
    try:
        report = _report(all_vecs, labels, [identity], twin, split, fars=(config.far,),
                         seed=config.seed, max_probe_identities=KR_MAX_IDENTITIES)
    except MetricsError as exc:
        raise WorkspaceError(f"cannot measure this erasure: {exc}") from None
    probes = all_vecs[~split & (labels == identity)]
    return report, protocol, moved_share(twin, probes, held_out=twin is not committed)


# An ID-photo gallery: nobody else has a second stored face to search for.
UNMEASURED = ("nothing measured on stored faces: nobody else in the gallery has two, so no "
              "stored face can be searched for (verify --images measures the erasure on new "
              "photos; facekd bench measures everyone else's accuracy on photos you hold)")


def _someone_else_has_two(labels: np.ndarray, identity: int) -> bool:
    return bool(np.any(np.unique(labels[labels != identity], return_counts=True)[1] >= 2))


def _unmeasured(labels: np.ndarray, identity: int, config: Config) -> Any:
    """An empty :class:`~facekd.core.metrics.ErasureReport` (no figure, no probe) for a gallery
    where nothing can be measured on stored faces."""
    from facekd.core.metrics import ErasureReport

    people = len(np.unique(labels))
    return ErasureReport(before={}, after={}, chance_rank1=1.0 / people,
                         forget_labels=[int(identity)], fars=[float(config.far)],
                         counts={"identities": people, "forget_probe": 0}, thresholds={})


def moved_share(erasure: Erasure, faces: np.ndarray, *, held_out: bool) -> dict:
    """How many of ``faces`` ``(n, d)`` the ``erasure`` moves away from where they were: edited
    embedding below cosine :data:`MOVED_COSINE` to the original (``held_out``: the erasure never
    saw them). ``{"share", "covered", "faces", "held_out"}``; ``share`` is ``None`` for no faces."""
    if len(faces) == 0:
        return {"share": None, "covered": 0, "faces": 0, "held_out": held_out}
    x = normalize(np.asarray(faces, dtype=np.float32))
    cos = np.sum(erasure.apply(x) * x, axis=1)
    moved = int(np.count_nonzero(cos < MOVED_COSINE))
    return {"share": moved / len(x), "covered": moved, "faces": int(len(x)), "held_out": held_out}


def coverage(step: Erasure, moved: dict, floor: float) -> dict:
    """The held-out coverage of a fitted ``step``: the share of the person's photos it never saw
    that it erases, with ``floor`` (``[forget] min_coverage``) and the criterion used.

    A gated step that records ``heldout_gated_fully`` (the scramble: each of the person's photos
    scored by a gate cross-fitted without it) is judged by the share whose gate opens fully; any
    other step by ``moved`` (:func:`moved_share` of the measured twin on the person's probe half).
    Returns ``{"share", "covered", "faces", "held_out", "criterion", "floor", "under_floor"}``,
    and for a gate's figure ``interval`` (95 % Wilson, ``None`` with one photo) and
    ``from_others`` (one photo: the figure is estimated on other people's photos).
    """
    from facekd.core.metrics import wilson_interval

    params = step.params or {}
    held = params.get("heldout_gated_fully")
    # None or NaN: the method could not cross-validate: fall back.
    if held is not None and np.isfinite(float(held)) and params.get("n"):
        n = int(params["n"])
        share = float(held)
        out = {"share": share, "covered": int(round(share * n)), "faces": n, "held_out": True}
        if params.get("heldout_from") == "prior":
            # One photo: nothing of the person's to hold out; the figure is other people's.
            out.update(interval=None, from_others=True,
                       criterion="gate fully open on new photos of other enrolled people, each "
                                 "under a gate fitted on one photo of them (blind to an atypical "
                                 "photo of this person)")
        else:
            # A share of a few photos is coarse: 3 of 3 is anything from 0.44 to 1 at 95 %.
            out.update(interval=list(wilson_interval(share * n, n)), from_others=False,
                       criterion="gate fully open, each photo scored by a gate fitted without it")
    elif params.get("heldout_from") == "none":
        out = {"share": None, "covered": 0, "faces": int(params.get("n") or 0),
               "held_out": False, "from_others": False,
               "criterion": "not estimated: one photo, and nobody in the gallery has two to "
                            "learn how a person's photos vary; verify --images measures it"}
    else:
        out = {**moved, "criterion": f"edited embedding below cosine {MOVED_COSINE:g} to the "
                                     "original (the measured twin on the person's probe half)"}
    share = out["share"]
    # The scramble's look-alike guard set the gate: an enrolled identity looks enough like the
    # person that the gate stopped as short of them as the person's cover allowed.
    return {**out, "floor": float(floor), "under_floor": share is not None and share < floor,
            "look_alike_guard": bool(params.get("guard_raised", False))}


def coverage_text(cov: dict | None) -> str | None:
    """One line for :func:`coverage`'s figure (forget and the demo print it), or ``None``."""
    if cov is None:
        return None
    if cov.get("share") is None:
        return f"coverage {cov['criterion']}" if cov.get("criterion") else None
    if cov.get("from_others"):
        what = cov["criterion"]
    else:
        lo_hi = cov.get("interval")
        ci = "" if not lo_hi else f", 95% {lo_hi[0]:.2f}-{lo_hi[1]:.2f}"
        what = (f"{cov['covered']} of {cov['faces']} "
                f"{'held-out' if cov['held_out'] else 'seen'} photos{ci}: {cov['criterion']}")
    return f"coverage {cov['share']:.2f} ({what}); floor {cov['floor']:.2f}"


def top_up_coverage(step: dict, counts: dict, in_sample: int) -> dict:
    """The held-out coverage of an erasure widened by a top-up, over all the photos given.

    A photo the earlier erasure already scrambles fully is covered by gates that never saw it; an
    escaped one counts as covered with the further step's own held-out share (``step``, from
    :func:`coverage` on the escaped photos). A few escaped photos make that share coarse (2
    photos: 0, 0.5 or 1), which is why the top-up is judged over all the photos. ``in_sample``:
    escaped photos the step covers among those it was fitted on (0: it does nothing at all).
    Returns :func:`coverage`'s keys plus ``step`` (the further step's figure with ``in_sample``).
    """
    from facekd.core.metrics import wilson_interval

    given, done, escaped = counts["photos_given"], counts["already_erased"], counts["escaped"]
    step_share = step["share"] if step["share"] is not None else 0.0
    covered = done + step_share * escaped
    share = covered / given
    floor = step["floor"]
    return {"share": share, "covered": int(round(covered)), "faces": int(given),
            "held_out": bool(step["held_out"]), "interval": list(wilson_interval(covered, given)),
            "criterion": "scrambled fully by the earlier erasure, or covered by the further step "
                         f"({step['criterion']})",
            "floor": floor, "under_floor": share < floor,
            "step": {"share": step["share"], "covered": step["covered"], "faces": step["faces"],
                     "in_sample": int(in_sample)}}


def score_histograms(vecs: np.ndarray, labels: np.ndarray, identity: int, erasure: Erasure,
                     *, seed: int = 0, max_impostor: int = 200_000) -> dict:
    """Genuine-pair scores of the erased identity and impostor scores of the rest, before/after."""
    rng = np.random.default_rng(seed)
    f = labels == identity
    iu = np.triu_indices(int(f.sum()), k=1)
    rest = np.flatnonzero(~f)  # indices, not a copy of everyone else's vectors
    m = min(len(rest), 2 * int(np.sqrt(max_impostor)) + 2)
    pick = rng.choice(len(rest), size=m, replace=False) if len(rest) > m else np.arange(len(rest))
    r, rl = vecs[rest[pick]], labels[rest[pick]]
    ir = np.triu_indices(len(r), k=1)
    imp_mask = rl[ir[0]] != rl[ir[1]]
    out = {}
    for tag, x_f, x_r in (("before", normalize(vecs[f]), normalize(r)),
                          ("after", erasure.apply(vecs[f]), erasure.apply(r))):
        out[f"forget_genuine_{tag}"] = (x_f @ x_f.T)[iu]
        out[f"impostor_{tag}"] = (x_r @ x_r.T)[ir][imp_mask]
    return out


def template_leak(step: Erasure, vecs: np.ndarray, labels: np.ndarray, identity: int) -> dict:
    """What the edited model alone gives away about the erased person (docs/threat-model.md):
    the cosine between the direction this erasure singles out and the person's mean face (minus
    the gallery's), and the person's rank among the gallery's identities by that direction (1 =
    singled out). Numbers only: no direction or embedding leaves this function."""
    from facekd.core.metrics import template_leak as _leak

    ids, means = identity_means(vecs, labels)
    cos, rank = _leak(step, means, ids, identity)
    return {"cosine_to_mean_face": round(cos, 4), "rank": rank, "ranked_among": int(len(ids))}


def identity_means(vecs: np.ndarray, labels: np.ndarray, *, block: int = 65536
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Sorted identities ``(c,)`` and the float64 mean of each one's unit vectors ``(c, d)``.

    Summed a block at a time, so a million faces cost one pass and no normalised copy of the
    gallery (``np.add.at`` took 10 s).
    """
    from scipy.sparse import csr_matrix

    ids, inv = np.unique(labels, return_inverse=True)
    sums = np.zeros((len(ids), vecs.shape[1]))
    for s in range(0, len(inv), block):
        part = inv[s:s + block]
        x = np.array(vecs[s:s + block], dtype=np.float32)  # float32: a mean needs 4 digits
        x /= np.maximum(np.sqrt(np.einsum("ij,ij->i", x, x)), 1e-12)[:, None]
        # One sparse (identities x rows) indicator product per block: np.add.reduceat along rows
        # and a running sum were 5-50x slower.
        sums += csr_matrix((np.ones(len(part), np.float32), (part, np.arange(len(part)))),
                           shape=(len(ids), len(part))) @ x
    return ids, sums / np.bincount(inv, minlength=len(ids))[:, None]


# ------------------------------------------------------------------------- the gallery's own
def gallery_stats(gallery: Any, config: Config, *, exclude: int | None = None) -> dict:
    """Rank-1 and TAR at FAR ``config.far`` of the gallery's identities (a seeded sample), and
    the impostor score at that FAR (``threshold``); ``exclude`` leaves one identity out."""
    from facekd.core.metrics import (MetricsError, far_threshold, identification_rate, pair_scores,
                                split_enrol_probe, tar_at_far)

    # A read-only view: only a sample (or the rows kept below) is ever copied.
    vecs = np.asarray(getattr(gallery, "vectors_view", gallery.vectors)(), dtype=np.float32)
    labels = np.asarray(gallery.labels(), dtype=np.int64)
    if exclude is not None:
        keep = labels != exclude
        vecs, labels = vecs[keep], labels[keep]
    if len(np.unique(labels)) < 2:
        return {"threshold": None, "rank1": None, "tar": None, "identities": len(np.unique(labels))}
    rng = np.random.default_rng(config.seed)
    if len(vecs) > RETAIN_SAMPLE:  # pair statistics are quadratic; a sample is enough
        uniq = rng.permutation(np.unique(labels))
        per = max(1, int(np.ceil(len(vecs) / len(uniq))))
        chosen = np.isin(labels, uniq[: max(2, RETAIN_SAMPLE // per)])
        vecs, labels = vecs[chosen], labels[chosen]
    try:
        genuine, impostor = pair_scores(vecs, labels, seed=config.seed)
        # One face per person is common in deployments: the threshold needs only impostors.
        thr = far_threshold(impostor, config.far)
        tar = tar_at_far(genuine, impostor, config.far)[0] if genuine.size else None
        split = split_enrol_probe(labels, seed=config.seed)
        has_probe = ~split
        rank1 = identification_rate(vecs[split], labels[split], vecs[has_probe],
                                    labels[has_probe]) if has_probe.any() else None
    except MetricsError as exc:  # e.g. no impostor pairs at all
        raise WorkspaceError(f"cannot compute gallery statistics: {exc}") from None
    return {"threshold": float(thr), "tar": None if tar is None else float(tar),
            "rank1": None if rank1 is None else float(rank1),
            "identities": int(len(np.unique(labels)))}


def match_threshold(gallery: Any, config: Config) -> float | None:
    """Config threshold, or the gallery's impostor score at FAR ``config.far`` ("auto")."""
    if config.match_threshold is not None:
        return float(config.match_threshold)
    return gallery_stats(gallery, config).get("threshold")


def _cached(cache: Any, name: str, stem: str, compute: Callable[[], dict]) -> dict:
    """``compute()``'s arrays, kept in ``cache/name`` (``.npz``) as derived data: a stale or
    damaged file is recomputed, files named ``stem*`` (earlier generations') are deleted when
    it is written, and an unwritable folder only costs the next command the time. Never written
    through a symbolic link."""
    import io

    path = None
    if cache is not None and not Path(cache).is_symlink():
        path = Path(cache) / name
        try:
            with np.load(path) as z:
                return {key: z[key] for key in z.files}
        except (OSError, KeyError, ValueError):
            pass
    arrays = compute()
    if path is not None:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        try:
            for old in Path(cache).glob(f"{stem}*.npz"):
                old.unlink(missing_ok=True)
            write_atomic(path, buf.getvalue())
        except OSError:
            pass
    return arrays


def gallery_strangers(gallery: Any, config: Config, cache: Any = None):
    """Sampled gallery faces scored as never-enrolled people against everyone else
    (:func:`facekd.core.verdict.strangers`): what the FPIR threshold and verify's stranger baseline
    are read from.

    ``cache``: a folder for the result, keyed by the gallery's generation and the seed (a search
    or verify after the first skips the ``probes x N x d`` pass; see :func:`_cached`).
    """
    from facekd.core.verdict import Strangers, strangers

    def compute() -> dict:
        vecs = getattr(gallery, "vectors_view", gallery.vectors)()
        labels = np.asarray(gallery.labels(), dtype=np.int64)
        probes = int(max(200, min(STRANGER_PROBES, STRANGER_BUDGET // max(len(labels), 1))))
        found = strangers(vecs, labels, max_probes=probes, seed=config.seed)
        return {"odds": found.odds, "best": found.best, "labels": found.labels}

    z = _cached(cache, f"strangers-g{int(gallery.generation)}-s{int(config.seed)}.npz",
                "strangers-g", compute)
    return Strangers(z["odds"], z["best"], z["labels"])


def background_searches(gallery: Any, cache: Any = None) -> tuple[np.ndarray, np.ndarray] | None:
    """Each photo of the stored background (``facekd calibrate``) searched against the whole
    gallery, as a deployed search scores it: ``((n,) best cosine, (n,) person)``; ``None``
    without a background or an empty gallery. ``cache``: as :func:`gallery_strangers` (keyed by
    the generation, which calibrate and every commit change)."""
    from facekd.state.workspace import read_background

    background = read_background(gallery)
    if background is None or not background.photos or len(gallery) == 0:
        return None

    def compute() -> dict:
        best = np.empty(background.photos)
        for s in range(0, background.photos, 1024):
            hits = gallery.search(background.vectors[s:s + 1024], k=1)
            best[s:s + len(hits)] = [h[0].score if h else -1.0 for h in hits]
        return {"best": best}

    best = _cached(cache, f"background-g{int(gallery.generation)}.npz", "background-g",
                   compute)["best"]
    if len(best) != background.photos:  # a cache file from another background: recompute
        best = compute()["best"]
    return best, background.groups


def match_sample(gallery: Any, config: Config, found: Any = None, cache: Any = None):
    """What the one-to-many MATCH threshold is read from: the gallery's own faces searched
    against the other identities (``found``, :func:`gallery_strangers`) and, when ``facekd
    calibrate`` stored never-enrolled people's photos, their searches against the whole gallery
    (:func:`facekd.core.background.pool`)."""
    from facekd.core.background import pool

    found = gallery_strangers(gallery, config, cache) if found is None else found
    searched = background_searches(gallery, cache)
    return found if searched is None else pool(found, *searched)


def identification_threshold(gallery: Any, config: Config, found: Any = None,
                             cache: Any = None) -> float | None:
    """The one-to-many MATCH threshold: the score that a share ``config.fpir`` of never-enrolled
    people's photos exceed in a search of this gallery (false-positive identification rate),
    erring high (:func:`facekd.core.verdict.fpir_threshold`).

    ``found``: a :func:`match_sample` to reuse (default: computed). ``None`` with fewer than 3
    identities and no background (nothing to estimate it from).
    """
    from facekd.core.verdict import fpir_threshold

    found = match_sample(gallery, config, cache=cache) if found is None else found
    return fpir_threshold(found, config.fpir, seed=config.seed)


def threshold_note(found: Any, config: Config) -> str | None:
    """One line when the one-to-many MATCH threshold had to be extrapolated
    (:func:`facekd.core.verdict.tail_extrapolated`) from ``found`` (a :func:`match_sample`)."""
    from facekd.core import verdict

    faces, fpir = int(found.best.size), float(config.fpir)
    if not faces or not verdict.tail_extrapolated(faces, fpir):
        return None
    kept = int(np.isnan(found.odds).sum())  # the background's rows (core.background.pool)
    need = int(np.ceil(verdict.TAIL_EXCEEDANCES / fpir))
    head = f"the one-to-many MATCH threshold is extrapolated (a normal tail) from {faces} "
    few = f"too few to read FPIR {100 * fpir:g} % off"
    if kept:
        return (head + f"searches ({kept} never-enrolled photos kept by calibrate, "
                f"{faces - kept} stored faces), {few}; about {need:,} read it directly")
    return (head + f"sampled stored faces, {few}; in galleries of a few dozen faces more "
            "strangers may MATCH (LFW, 15 people with one photo each: 4.8 % at FPIR 1 %; "
            "docs/benchmarks.md, \"MATCH in small galleries\"); `facekd calibrate --images DIR` "
            f"with about {need:,} photos of people enrolled nowhere reads it directly")


def forget_verdict(report: Any, config: Config) -> dict:
    """forget's own measurement (the twin erasure's unseen probes, :func:`erasure_report`) ruled
    in verify's terms (:mod:`facekd.core.verdict`): rank-1 against ``max_rank1_over_chance`` x chance
    and the genuine TAR at ``config.far`` against ``max_tar``, each by its 95 % interval, after
    the edit and before it. Returns :meth:`facekd.core.verdict.Verdict.to_dict`."""
    from facekd.core import verdict as vd

    r = report.to_dict() if hasattr(report, "to_dict") else dict(report)
    chance, factor = float(r["chance_rank1"]), float(config.max_rank1_over_chance)
    probes = int(r["counts"].get("forget_probe", 0))
    pairs = int(r["counts"].get("forget_genuine_pairs", 0))
    tar_key = f"tar@{config.far:g}_forget"

    def figures(state: str) -> list:
        values, ci = r[state], r.get("intervals", {}).get(state, {})
        out = []
        for name, key, n, bound in (("rank-1", "rank1_forget", probes, factor * chance),
                                    ("TAR", tar_key, pairs, float(config.max_tar))):
            if values.get(key) is None or n < 1:
                continue
            low, high = (v / 100 for v in ci.get(key, (0.0, 100.0)))
            out.append(vd.judge(name, values[key] / 100, n, bound, interval=(low, high),
                                unit="photos" if name == "rank-1" else "pairs"))
        return out

    after = figures("after")
    if not after:
        return vd.Verdict(vd.INCONCLUSIVE, "nothing measured: the person has too few stored "
                                           "faces to hold any back").to_dict()
    return vd.combine(after, figures("before"), probes).to_dict()
