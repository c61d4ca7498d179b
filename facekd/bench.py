"""``facekd bench``: how well does each erasure method forget a person, on the user's own photos?

Protocol (fresh re-enrolment, as in ``benchmarks/bench_tradeoff.py``), per erased person:

* ``held`` of their photos are *fresh*: never in any fit. After the erasure, an attacker enrols
  half of them into the edited gallery of everyone else and searches it with the other half
  (**forget rank-1**); **forget TAR** counts genuine pairs among the fresh photos above the
  threshold at FAR 1e-3 of edited retained impostor pairs.
* the fit uses the person's other photos (``"all"``) or only ``k`` of them (``"10"``).
* everyone else is *retained*: their enrolment half (:func:`facekd.metrics.split_enrol_probe`) is
  the gallery, their probe half measures **retain rank-1**; **retain TAR** from their pairs.
* further attacks: knowledge-retention probes trained on the edited gallery (incl. the re-enrolled
  fresh photos), membership inference (fit vs fresh photos), detectability of the erased person's
  edited faces among ordinary ones, how often the 5 look-alikes' faces are touched at all, how
  often an erased face matches someone else (false match), and what the edited model alone gives
  away about whom it erased (:func:`template_leak`).
* methods come from the registry (:mod:`facekd.methods`); a name may carry settings for its
  fit, ``scramble:alpha=1.1:q=0.9999`` (names in ``Method.options``).

Sequential: per method, ``M`` people erased one after another, each step fitted on embeddings
edited by the previous ones and composed (``composite.then(new)``); retained accuracy of the
people never erased at checkpoints, and the forget numbers of all erased people at the end.

Every image is embedded once (detect + align, or a whole-image fallback for small face crops) and
cached as ``.npz`` under ``$FACEKD_CACHE``/bench, keyed by the encoder's fingerprint and the files'
paths and sizes. Outputs never name a person: identities are folder indices, numbers are means.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from facekd import methods as registry
from facekd.bench_verdict import VERDICT_METRICS, verdict_vs_replay
from facekd.erasure import Erasure
from facekd.methods import unit_rows as _unit
from facekd.errors import FacekdError
from facekd.fileio import write_atomic
from facekd.separation import bench_banner, bench_check
from facekd.metrics import (MIA_MIN_PER_CLASS, identification_hits, knowledge_retention,
                            membership_inference, mia_features, pair_scores, split_enrol_probe,
                            tar_at_far, template_leak)

__all__ = ["BenchError", "Embedded", "embed_dataset", "run_bench",
           "write_outputs", "format_markdown", "parse_methods", "parse_fit_photos", "fit_method",
           "template_leak"]

FAR = 1e-3
MAX_IMPOSTORS = 500_000  # sampled (seeded) retained impostor pairs: 500 lie above the threshold
MIN_FACES = 4            # fewer usable faces: no enrolment and probe pair, the identity is skipped
MAX_HELD = 20            # fresh photos per erased person on LFW-sized identities
ESC_P = 1.5              # fit_esc's default, the published rule k = int(d * p / 100)
LOOKALIKES = 5
MOVED_TOL = 1e-4         # an edited unit embedding further than this from the original "moved"
# A photo this small with no detected face is taken to be a face crop already (ORL: 92x112);
# larger ones are scenes whose face the detector missed, and are skipped.
FALLBACK_MAX_SIDE = 128
CACHE_FORMAT = 1         # bump when the cached arrays change meaning
CHUNK_FILES = 256        # files per detect + embed round: bounds the chips held in memory
METRICS = ("forget_rank1", "forget_tar", "kr_linear", "kr_knn", "mia", "detect_auc",
           "detect_auc_trained", "lookalike_fp", "false_match", "retain_rank1", "retain_tar",
           "template_cos", "template_top1", *VERDICT_METRICS)
SD_METRICS = ("forget_rank1", "forget_tar", "kr_linear", "kr_knn", "mia", "retain_rank1",
              "retain_tar")


class BenchError(FacekdError):
    """Bad benchmark input: no such dataset, too few faces, unknown method or fit setting."""


# ---------------------------------------------------------------------- methods
def _class_means(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``(c, d)`` mean unit embedding of each identity in ``y`` (sorted by label)."""
    labs, inv = np.unique(y, return_inverse=True)
    sums = np.zeros((len(labs), x.shape[1]))
    np.add.at(sums, inv, _unit(x))
    return sums / np.bincount(inv)[:, None]


def _split_method(name: str) -> tuple[str, dict[str, float]]:
    """``"scramble:alpha=1.1:q=0.9999"`` -> ``("scramble", {"alpha": 1.1, "q": 0.9999})``."""
    base, *pairs = name.split(":")
    kw: dict[str, float] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        try:
            kw[key.strip()] = float(value) if eq else float("nan")
        except ValueError:
            kw[key.strip()] = float("nan")
        if not eq or not np.isfinite(kw[key.strip()]) or not key.strip().isidentifier():
            raise BenchError(f"method {name!r}: settings are NAME:KEY=NUMBER[:KEY=NUMBER]")
    if "k" in kw:
        kw["k"] = int(kw["k"])
    return base, kw


def fit_method(name: str, forget: np.ndarray, gallery: np.ndarray, gallery_y: np.ndarray,
               previous: Erasure) -> Erasure:
    """Fit the registry method ``name`` (with any ``:key=value`` settings) on the person's fit
    photos ``forget`` ``(f, d)``, against everyone else's enrolment faces ``gallery`` ``(g, d)``
    labelled ``gallery_y`` ``(g,)``; all in the space ``previous`` already edited."""
    base, kw = _split_method(name)
    context = registry.FitContext(gallery, gallery_y, previous, kw)
    try:
        return registry.get(base).fit(forget, context)
    except registry.MethodError as exc:
        raise BenchError(f"method {name!r}: {exc}") from None


def parse_methods(methods: str | Iterable[str]) -> list[str]:
    """``"esc,esc-t,scramble:alpha=1.1"`` or a list -> validated method names (order kept,
    duplicates dropped); a method may carry settings for its fit function, ``:key=value``."""
    names = methods.split(",") if isinstance(methods, str) else list(methods)
    out = list(dict.fromkeys(n.strip().lower() for n in names if n.strip()))
    known = registry.names()
    if not out:
        raise BenchError("no method given; expected one or more of " + ", ".join(known))
    for name in out:
        base, kw = _split_method(name)
        if base not in known:
            raise BenchError(f"unknown method {base!r}; expected one of {', '.join(known)}")
        try:
            registry.get(base).check_options(kw)
        except registry.MethodError as exc:
            raise BenchError(f"method {name!r}: {exc}") from None
    return out


def parse_fit_photos(setting: str | Iterable[str]) -> list[str]:
    """``"all,10"`` -> ``["all", "10"]``: ``all`` = every non-fresh photo, ``K`` = only K
    (``K >= 1``: the scramble fits one photo; a method that cannot refuses it)."""
    names = setting.split(",") if isinstance(setting, str) else [str(s) for s in setting]
    out = list(dict.fromkeys(n.strip().lower() for n in names if n.strip()))
    if not out:
        raise BenchError("--fit-photos is empty; use all, 10 or all,10")
    for name in out:
        if name != "all" and not (name.isdigit() and int(name) >= 1):
            raise BenchError(f"bad fit-photos setting {name!r}; use 'all' or a number >= 1")
    return out


# ---------------------------------------------------------------------- embeddings
@dataclass
class Embedded:
    """Every usable face of a dataset, embedded once.

    E: ``(n, d)`` float32 raw encoder outputs. labels: ``(n,)`` int64 index of the identity folder
    (sorted folder order). fallback: ``(n,)`` bool, True = whole image used as the chip.
    info: counts, timings and cache status.
    """

    E: np.ndarray
    labels: np.ndarray
    fallback: np.ndarray
    info: dict


def _scan(root: Path) -> tuple[list[Path], list[int], int]:
    """Image files of a folder-per-identity tree: ``(files, folder index per file, folders)``."""
    from facekd.faces import IMAGE_SUFFIXES

    if not root.is_dir():
        raise BenchError(f"{root}: no such dataset directory")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files, owner = [], []
    for i, folder in enumerate(folders):
        for f in sorted(folder.iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                files.append(f)
                owner.append(i)
    if not files:
        raise BenchError(f"{root}: no identity folders with images (expected DIR/<person>/<photo>)")
    return files, owner, len(folders)


def _cache_dir(cache: str | os.PathLike | None) -> Path:
    base = Path(cache) if cache else Path(os.environ.get("FACEKD_CACHE") or
                                          Path.home() / ".cache" / "facekd")
    return base.expanduser() / "bench"


def _cache_key(encoder: Any, root: Path, files: Sequence[Path]) -> str:
    from facekd.faces import pack_detector_key

    listing = [(f.relative_to(root).as_posix(), f.stat().st_size) for f in files]
    finder = pack_detector_key(encoder.input_spec)  # an insightface pack's detector cuts other chips
    blob = json.dumps([CACHE_FORMAT, encoder.fingerprint, encoder.input_spec.to_dict(), listing]
                      + ([finder] if finder else []))
    return hashlib.sha256(blob.encode()).hexdigest()


def _chips(files: Sequence[Path], spec: Any) -> tuple[np.ndarray, list[int], np.ndarray, int]:
    """Detect + align one batch of files: ``(chips (m, S, S, 3) uint8, file index per chip,
    fallback (m,) bool, files skipped)``; the largest face per image."""
    from facekd.faces import align_chip, chips_from_files, read_image

    res = chips_from_files(files, spec, select="largest")
    chips, sources, fallback = list(res.chips), list(res.sources), [False] * len(res.sources)
    skipped = 0
    index = {str(f): i for i, f in enumerate(files)}
    for path, reason in res.skipped:
        if reason != "no face found":
            skipped += 1
            continue
        image = read_image(path)
        if max(image.shape[:2]) > FALLBACK_MAX_SIDE:
            skipped += 1
            continue
        chips.append(align_chip(image, None, "none", int(spec.size)))
        sources.append(index[path])
        fallback.append(True)
    size = int(spec.size)
    arr = np.stack(chips) if chips else np.zeros((0, size, size, 3), np.uint8)
    return arr, sources, np.asarray(fallback, bool), skipped


def embed_dataset(root: str | os.PathLike, encoder: Any, *, cache: str | os.PathLike | None = None,
                  progress: bool = False) -> Embedded:
    """Embed every image of ``root`` with ``encoder`` (cached; see the module docstring)."""
    from facekd.progress import tqdm

    root = Path(root).expanduser()
    files, owner, folders = _scan(root)
    path = _cache_dir(cache) / f"{_cache_key(encoder, root, files)[:32]}.npz"
    info = {"folders": folders, "images": len(files), "cache_path": str(path)}
    if path.is_file():
        try:
            with np.load(path) as z:
                info.update(cache="hit", images_skipped=int(z["skipped"]),
                            embed_s=float(z["embed_s"]))
                return Embedded(z["E"], z["labels"], z["fallback"], info)
        except (OSError, KeyError, ValueError):  # damaged cache file: embed again
            pass
    t = time.perf_counter()
    parts, labels, fallback, skipped = [], [], [], 0
    with tqdm(total=len(files), unit="img", desc="embed", disable=not progress) as bar:
        for s in range(0, len(files), CHUNK_FILES):
            chunk = files[s:s + CHUNK_FILES]
            chips, sources, fb, sk = _chips(chunk, encoder.input_spec)
            if len(chips):
                parts.append(encoder.embed(chips, progress=False).astype(np.float32))
            labels += [owner[s + i] for i in sources]
            fallback.append(fb)
            skipped += sk
            bar.update(len(chunk))
    d = int(encoder.dim)
    E = np.vstack(parts) if parts else np.zeros((0, d), np.float32)
    emb = Embedded(E, np.asarray(labels, np.int64), np.concatenate(fallback), info)
    info.update(cache="miss", images_skipped=skipped, embed_s=time.perf_counter() - t)
    buf = io.BytesIO()
    np.savez(buf, E=emb.E, labels=emb.labels, fallback=emb.fallback, skipped=skipped,
             embed_s=info["embed_s"])
    try:
        write_atomic(path, buf.getvalue())
    except OSError:  # an unwritable cache costs the next run time, not this one its result
        info["cache"] = "miss (not written)"
    return emb


# ---------------------------------------------------------------------- protocol
@dataclass
class Protocol:
    """Who is erased and which photos are fresh. ``held`` fresh photos per erased person
    (half re-enrolled, half probes); eligible people have at least ``eligible_min`` faces."""

    held: int
    eligible_min: int
    eligible: np.ndarray  # (e,) labels
    people: np.ndarray    # (m,) labels, the seeded draw


def _draw(counts: dict[int, int], n: int, rng: np.random.Generator) -> Protocol:
    """``held`` from the ``n``-th largest identity (LFW: 20), then a seeded draw of ``n`` people.

    ``held = min(20, 2 * (c // 4))`` where ``c`` is the face count of the ``n``-th largest
    identity, so that at least ``n`` people keep as many photos to fit on as they hold out
    (``>= max(2 * held, held + 4)`` faces).
    """
    sizes = sorted(counts.values(), reverse=True)
    c = sizes[min(n, len(sizes)) - 1]
    held = min(MAX_HELD, 2 * (c // 4))
    need = max(2 * held, held + 4)
    eligible = np.array(sorted(k for k, v in counts.items() if v >= need), np.int64)
    if held < 2 or eligible.size == 0:
        raise BenchError(f"no identity has enough faces to erase (need >= {need}; the largest "
                         f"has {sizes[0]})")
    people = rng.choice(eligible, size=min(n, eligible.size), replace=False)
    return Protocol(held, need, eligible, np.asarray(people, np.int64))


def _person_split(labels: np.ndarray, person: int, held: int, seed: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of ``person``: ``(fresh_enrol (held/2,), fresh_probe (held - held/2,), pool (r,))``.

    Seeded per person, so the same person gets the same fresh photos in every experiment.
    """
    rng = np.random.default_rng([seed, 7, int(person)])
    rows = rng.permutation(np.flatnonzero(labels == person))
    return rows[:held // 2], rows[held // 2:held], rows[held:]


def _fit_rows(pool: np.ndarray, setting: str) -> np.ndarray | None:
    """Fit rows for a setting; ``None`` when ``K`` is asked but no more than ``K`` remain."""
    if setting == "all":
        return pool
    k = int(setting)
    return pool[:k] if len(pool) > k else None


@dataclass
class Case:
    """One erased person's row sets (indices into the dataset).

    fresh_enrol, fresh_probe: held-out photos; pool: photos a fit may use; gallery / probes:
    enrolment / probe rows of everyone else; retained: all their rows; lookalikes: rows of the
    ``LOOKALIKES`` retained identities whose mean face is nearest (cosine, original space).
    """

    person: int
    fresh_enrol: np.ndarray
    fresh_probe: np.ndarray
    pool: np.ndarray
    gallery: np.ndarray
    probes: np.ndarray
    retained: np.ndarray
    lookalikes: np.ndarray

    @property
    def fresh(self) -> np.ndarray:
        return np.concatenate([self.fresh_enrol, self.fresh_probe])


def _make_case(y: np.ndarray, split: np.ndarray, means: np.ndarray,
               ids: np.ndarray, person: int, held: int, seed: int) -> Case:
    fe, fp, pool = _person_split(y, person, held, seed)
    ret = y != person
    me = means[np.searchsorted(ids, person)]
    sims = means @ me
    sims[ids == person] = -np.inf
    near = ids[np.argsort(-sims, kind="stable")[:LOOKALIKES]]
    return Case(person, fe, fp, pool, np.flatnonzero(ret & split), np.flatnonzero(ret & ~split),
                np.flatnonzero(ret), np.flatnonzero(np.isin(y, near)))


# ---------------------------------------------------------------------- metrics
def _roc_auc_either_way(pos: np.ndarray, neg: np.ndarray) -> float:
    """``max(auc, 1 - auc)`` of scores ``pos (p,)`` vs ``neg (q,)`` (separable either way)."""
    from sklearn.metrics import roc_auc_score

    auc = roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg])
    return float(max(auc, 1.0 - auc))


def _trained_auc(pos: np.ndarray, neg: np.ndarray, seed: int) -> float | None:
    """Cross-validated ROC AUC of a balanced logistic regression: ``pos (p, d)`` vs ``neg (q, d)``;
    ``None`` with fewer than 2 of either."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(5, len(pos), len(neg))
    if folds < 2:
        return None
    x = np.vstack([pos, neg])
    y = np.r_[np.ones(len(pos), int), np.zeros(len(neg), int)]
    model = make_pipeline(StandardScaler(),
                          LogisticRegression(class_weight="balanced", max_iter=2000))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(np.mean(cross_val_score(model, x, y, cv=cv, scoring="roc_auc")))


def _mia(x0: np.ndarray, x: np.ndarray, members: np.ndarray, fresh: np.ndarray,
         seed: int) -> float | None:
    """Membership inference (percent, 50 = ideal) of fit rows vs fresh rows of one person;
    ``None`` below the metrics module's minimum per class."""
    if min(len(members), len(fresh)) < MIA_MIN_PER_CLASS:
        return None
    rows = np.concatenate([members, fresh])
    is_member = np.r_[np.ones(len(members), bool), np.zeros(len(fresh), bool)]
    feats = mia_features(x0[rows], x[rows], np.zeros(len(rows), np.int64), is_member, seed=seed)
    return membership_inference(feats[is_member], feats[~is_member], seed=seed)


def _evaluate(x: np.ndarray, x0: np.ndarray, y: np.ndarray, case: Case, fit: np.ndarray,
              seed: int) -> dict[str, float | None]:
    """Every single-erasure metric (percent) of one person.

    x: ``(n, d)`` float32 edited unit embeddings of the whole dataset; x0: the original ones.
    fit: rows the erasure was fitted on (the MIA members).
    """
    p = case.person
    gal = np.vstack([x[case.gallery], x[case.fresh_enrol]])
    gal_y = np.r_[y[case.gallery], np.full(len(case.fresh_enrol), p)]
    fp = x[case.fresh_probe]
    forget_hits = identification_hits(gal, gal_y, fp, np.full(len(fp), p))
    retain_hits = identification_hits(gal, gal_y, x[case.probes], y[case.probes])
    gen_r, imp_r = pair_scores(x[case.retained], y[case.retained],
                               max_impostor_pairs=MAX_IMPOSTORS, seed=seed)
    tar_r, thr = tar_at_far(gen_r, imp_r, FAR)
    gen_f, _ = pair_scores(x[case.fresh], np.zeros(len(case.fresh), np.int64),
                           max_impostor_pairs=0)
    kr = knowledge_retention(gal, gal_y, np.vstack([fp, x[case.probes]]),
                             np.r_[np.full(len(fp), p), y[case.probes]], [p], seed=seed)
    mean_dir = _unit(x[case.gallery].mean(axis=0, keepdims=True))[0]
    fresh, others = x[case.fresh], x[case.probes]
    moved = np.linalg.norm(x[case.lookalikes] - x0[case.lookalikes], axis=1) > MOVED_TOL
    # Scrambled faces are strangers: how often does one match someone enrolled (pairs above the
    # retained FAR threshold)? An ordinary stranger would match at about FAR.
    false_match = float(np.mean(fresh @ x[case.gallery].T > thr))
    return {
        "forget_rank1": 100 * float(forget_hits.mean()),
        "forget_tar": 100 * float(np.mean(gen_f > thr)),
        "kr_linear": 100 * kr.linear_forget,
        "kr_knn": 100 * kr.knn_forget,
        "mia": _mia(x0, x, fit, case.fresh, seed),
        "detect_auc": 100 * _roc_auc_either_way(fresh @ mean_dir, others @ mean_dir),
        "detect_auc_trained": _pct(_trained_auc(fresh, others, seed)),
        "lookalike_fp": 100 * float(moved.mean()),
        "false_match": 100 * false_match,
        "retain_rank1": 100 * float(retain_hits.mean()),
        "retain_tar": 100 * tar_r,
        # verify's ruling on the fresh photos against the attack replayed from outside
        **verdict_vs_replay(fresh, x0[case.fresh], x[case.gallery], y[case.gallery],
                            threshold=thr, seed=seed),
    }


def _pct(v: float | None) -> float | None:
    return None if v is None else 100 * v


def _aggregate(per: list[dict], fit_s: list[float]) -> dict:
    """Mean (and s.d. over people) of each metric; ``None`` where no person had a value."""
    out: dict[str, Any] = {}
    sds: dict[str, Any] = {}
    for m in METRICS:
        vals = np.array([r[m] for r in per if r.get(m) is not None], np.float64)
        out[m] = _r(vals.mean()) if vals.size else None
        if m in SD_METRICS:
            sds[f"{m}_sd"] = _r(vals.std(ddof=1)) if vals.size > 1 else None
    out["fit_s"] = _r(np.mean(fit_s)) if fit_s else 0.0
    out["n_erased"] = len(per)
    return {**out, **sds}


def _r(v: float) -> float:
    return round(float(v), 4)


# ---------------------------------------------------------------------- experiments
def _single(x0: np.ndarray, y: np.ndarray, split: np.ndarray, cases: list[Case],
            methods: list[str], settings: list[str], seed: int, bar: Any
            ) -> tuple[dict, list, dict]:
    """Original metrics, one row per (method, setting) (each a mean over ``cases``), and per
    setting how many people had too few photos for it."""
    ident = Erasure.identity(x0.shape[1])
    x_ident = ident.apply(x0)
    all_ids = np.unique(y)
    means = _class_means(x0, y)
    orig = []
    per: dict[tuple[str, str], list] = {(m, s): [] for m in methods for s in settings}
    times: dict[tuple[str, str], list] = {k: [] for k in per}
    # People whose non-fresh photos are too few for a "K" setting (they do not count in its row).
    skipped = {s: sum(_fit_rows(c.pool, s) is None for c in cases) for s in settings}
    for case in cases:
        bar.set_postfix_str("original")
        orig.append(_evaluate(x_ident, x0, y, case, case.pool, seed))
        bar.update(1)
        gallery = x0[case.gallery]
        for method in methods:
            for setting in settings:
                bar.set_postfix_str(f"{method} / {setting}")
                rows = _fit_rows(case.pool, setting)
                if rows is not None:
                    t = time.perf_counter()
                    er = fit_method(method, x0[rows], gallery, y[case.gallery], ident)
                    times[(method, setting)].append(time.perf_counter() - t)
                    row = _evaluate(er.apply(x0), x0, y, case, rows, seed)
                    cos, rank = template_leak(er, means, all_ids, case.person)
                    row.update(template_cos=100 * cos, template_top1=100.0 * (rank == 1))
                    per[(method, setting)].append(row)
                bar.update(1)
    rows_out = [{"method": m, "setting": s, **_aggregate(per[(m, s)], times[(m, s)])}
                for m in methods for s in settings if per[(m, s)]]
    return _aggregate(orig, []), rows_out, skipped


def checkpoints(m: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to ``m``, and ``m``."""
    out, decade = set(), 1
    while decade <= m:
        out.update(c for c in (decade, 2 * decade, 5 * decade) if c <= m)
        decade *= 10
    return sorted(out | {m}) if m > 0 else []


def _retained_state(x: np.ndarray, y: np.ndarray, split: np.ndarray, keep: np.ndarray,
                    seed: int) -> tuple[float, float, float]:
    """Rank-1 and TAR@FAR (fractions) of the ``keep`` rows' identities, and the threshold."""
    hits = identification_hits(x[keep & split], y[keep & split], x[keep & ~split],
                               y[keep & ~split])
    gen, imp = pair_scores(x[keep], y[keep], max_impostor_pairs=MAX_IMPOSTORS, seed=seed)
    tar, thr = tar_at_far(gen, imp, FAR)
    return float(hits.mean()), tar, thr


def _sequential_forget(x: np.ndarray, y: np.ndarray, split: np.ndarray, never: np.ndarray,
                       splits: dict[int, tuple], thr: float) -> tuple[float, float]:
    """Forget rank-1 and TAR (fractions) of every erased person under the final composite: all
    their fresh enrolment halves re-enrolled into the never-erased gallery at once."""
    gal_rows = np.flatnonzero(never & split)
    enrol = [(p, s[0]) for p, s in splits.items()]
    gal = np.vstack([x[gal_rows]] + [x[r] for _, r in enrol])
    gal_y = np.concatenate([y[gal_rows]] + [np.full(len(r), p) for p, r in enrol])
    probes = np.concatenate([s[1] for s in splits.values()])
    hits = identification_hits(gal, gal_y, x[probes], y[probes])
    tars = []
    for fe, fp, _ in splits.values():
        fresh = np.concatenate([fe, fp])
        gen, _ = pair_scores(x[fresh], np.zeros(len(fresh), np.int64), max_impostor_pairs=0)
        tars.append(np.mean(gen > thr))
    return float(hits.mean()), float(np.mean(tars))


def _sequential(x0: np.ndarray, y: np.ndarray, split: np.ndarray, people: np.ndarray,
                held: int, method: str, seed: int, bar: Any) -> tuple[list[dict], float, int]:
    """Erase ``people`` one after another with ``method``: rows at the checkpoints (``erased=0``
    is the original), the final composite's apply time on the whole gallery, its gate count."""
    composite = Erasure.identity(x0.shape[1])
    never = ~np.isin(y, people)
    marks = set(checkpoints(len(people)))
    splits = {int(p): _person_split(y, int(p), held, seed) for p in people}
    r1, tar, _ = _retained_state(x0, y, split, never, seed)
    rows = [_seq_row(method, 0, r1, tar)]
    for step, person in enumerate(people, 1):
        bar.set_postfix_str(f"sequential {method} {step}/{len(people)}")
        x = composite.apply(x0)
        alive = ~np.isin(y, people[:step])  # not yet erased, and not this person
        new = fit_method(method, x[splits[int(person)][2]], x[alive & split], y[alive & split],
                         composite)
        composite = composite.then(new)
        if step in marks:
            x = composite.apply(x0)
            r1, tar, thr = _retained_state(x, y, split, never, seed)
            row = _seq_row(method, step, r1, tar)
            if step == len(people):
                f1, ft = _sequential_forget(x, y, split, never, splits, thr)
                row.update(forget_rank1=_r(100 * f1), forget_tar=_r(100 * ft))
            rows.append(row)
        bar.update(1)
    t = time.perf_counter()
    composite.apply(x0[split])
    return rows, time.perf_counter() - t, composite.n_gates


def _seq_row(method: str, erased: int, r1: float, tar: float) -> dict:
    return {"method": method, "erased": erased, "retain_rank1": _r(100 * r1),
            "retain_tar": _r(100 * tar), "forget_rank1": None, "forget_tar": None}


# ---------------------------------------------------------------------- the benchmark
def _usable(emb: Embedded) -> tuple[np.ndarray, np.ndarray, int]:
    """``(E, labels)`` of identities with >= MIN_FACES faces, and how many were dropped."""
    ids, counts = np.unique(emb.labels, return_counts=True)
    keep_ids = ids[counts >= MIN_FACES]
    dropped = emb.info["folders"] - len(keep_ids)
    keep = np.isin(emb.labels, keep_ids)
    return emb.E[keep], emb.labels[keep], dropped


def _small_gallery(E: np.ndarray, y: np.ndarray, people: np.ndarray, n: int, seed: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Only ``people`` and a seeded draw of others, ``n`` identities in all: ``(E, y, ids,
    counts)`` of that workspace (how a deployment of a few dozen people looks)."""
    rng = np.random.default_rng([seed, 3])
    others = np.setdiff1d(np.unique(y), people)
    keep = np.r_[people, rng.choice(others, size=max(n - len(people), 0), replace=False)]
    rows = np.isin(y, keep)
    ids, counts = np.unique(y[rows], return_counts=True)
    return E[rows], y[rows], ids, counts


def run_bench(dataset: str | os.PathLike, encoder: str, *,
              methods: str | Iterable[str] | None = None, erase: int = 12,
              sequential: int = 20, fit_photos: str | Iterable[str] = ("all", "10"), seed: int = 0,
              gallery_people: int | None = None,
              cache: str | os.PathLike | None = None, progress: bool = False,
              echo: Callable[[str], None] | None = None) -> dict:
    """Run the benchmark; returns the JSON-ready result (numbers in percent, see the CLI help).

    Args:
        dataset: folder-per-identity photo tree. encoder: a :func:`load_encoder` spec.
        methods: registered method names, each with optional ``:key=value`` settings (default:
            all, :func:`facekd.methods.names`). erase: people erased one at a time (single
            erasure). sequential: people erased one after another per method (0 = off).
        fit_photos: ``"all"`` and/or ``"K"`` (only K of the person's non-fresh photos).
        gallery_people: a small workspace: only this many identities take part (the erased people,
            drawn as usual, and a seeded draw of others); chance rank-1 is then 1 / N.
        cache: embedding cache root (default ``$FACEKD_CACHE`` or ``~/.cache/facekd``).
        echo: called with one-line progress notes (e.g. the cache status).
    """
    from threadpoolctl import threadpool_limits
    from facekd.progress import tqdm

    from facekd.encoders import load_encoder

    say = echo or (lambda _msg: None)
    names = parse_methods(registry.names() if methods is None else methods)
    settings = parse_fit_photos(fit_photos)
    if int(erase) < 1 or int(sequential) < 0:
        raise BenchError("--erase must be >= 1 and --sequential >= 0")
    if gallery_people is not None and int(gallery_people) < 3:
        raise BenchError("--gallery-people must be >= 3")
    root = Path(dataset).expanduser()
    _scan(root)  # a bad directory fails before the (slow) encoder load
    t0 = time.perf_counter()
    enc = load_encoder(encoder)
    emb = embed_dataset(root, enc, cache=cache, progress=progress)
    say(f"embeddings: cache {emb.info['cache']} ({emb.info['cache_path']})")
    E, y, dropped = _usable(emb)
    ids, counts = np.unique(y, return_counts=True)
    if len(ids) < 3:
        raise BenchError(f"{root}: {len(ids)} identities with >= {MIN_FACES} usable faces; "
                         "need at least 3")
    n_fallback = int(emb.fallback.sum())
    say(f"{len(E)} faces of {len(ids)} identities; {dropped} identities skipped "
        f"(< {MIN_FACES} usable faces); {emb.info['images_skipped']} images without a usable "
        f"face; {n_fallback} images used the whole-image fallback")
    count = dict(zip(ids.tolist(), counts.tolist()))
    small = gallery_people is not None and int(gallery_people) < len(ids)
    n_erase = min(int(erase), len(ids) - 2, int(gallery_people) - 2 if small else len(ids))
    single = _draw(count, n_erase, np.random.default_rng(seed))
    if small:
        E, y, ids, counts = _small_gallery(E, y, single.people, int(gallery_people), seed)
        count = dict(zip(ids.tolist(), counts.tolist()))
        say(f"small gallery: {len(ids)} identities ({len(E)} faces), the erased among them")
    seq = (_draw(count, min(int(sequential), len(ids) - 2), np.random.default_rng([seed, 1]))
           if sequential else None)

    say(f"erasing {len(single.people)} people singly ({single.held} fresh photos each, drawn "
        f"from the {len(single.eligible)} with >= {single.eligible_min} faces)"
        + (f", {len(seq.people)} sequentially ({seq.held} fresh photos each)" if seq else ""))
    x0 = _unit(E)
    encoder_check = bench_check(x0, y, root.name, say, seed=seed)  # warns: figures meaningless
    split = split_enrol_probe(y, seed=seed)
    means = _unit(_class_means(x0, y))
    cases = [_make_case(y, split, means, ids, int(p), single.held, seed)
             for p in single.people]
    total = len(cases) * (1 + len(names) * len(settings)) + (
        len(names) * len(seq.people) if seq else 0)
    t_eval = time.perf_counter()
    # The metrics' small products and lbfgs fits run far faster on one BLAS thread on a busy box.
    with threadpool_limits(limits=1, user_api="blas"), \
            tqdm(total=total, unit="step", desc="bench", disable=not progress) as bar:
        original, rows, fit_skipped = _single(x0, y, split, cases, names, settings, seed, bar)
        t_seq = time.perf_counter()
        seq_rows, apply_s, gates = [], {}, {}
        for m in names if seq else []:
            r, apply_s[m], gates[m] = _sequential(x0, y, split, seq.people, seq.held, m, seed, bar)
            seq_rows += r
    t_end = time.perf_counter()
    protocol = {
        "identities": int(len(ids)), "identities_skipped": int(dropped), "faces": int(len(E)),
        "images": emb.info["images"], "images_skipped": emb.info["images_skipped"],
        "fallback_images": n_fallback, "min_faces": MIN_FACES, "dim": int(E.shape[1]),
        "seed": int(seed), "methods": names, "fit_photos": settings,
        "gallery_people": int(len(ids)) if small else None,
        "fit_photos_skipped": fit_skipped,
        "erase_requested": int(erase), "erased": int(len(single.people)),
        "held": single.held, "fresh_enrol": single.held // 2,
        "fresh_probe": single.held - single.held // 2, "eligible_min_faces": single.eligible_min,
        "eligible": int(len(single.eligible)),
        "sequential_requested": int(sequential),
        "sequential": int(len(seq.people)) if seq else 0,
        "sequential_held": seq.held if seq else None,
        "sequential_eligible_min_faces": seq.eligible_min if seq else None,
        "sequential_checkpoints": checkpoints(len(seq.people)) if seq else [],
        "sequential_apply_s": {m: _r(v) for m, v in apply_s.items()},
        "sequential_gallery_rows": int(split.sum()),
        "sequential_gates": gates,
        "far": FAR, "max_impostor_pairs": MAX_IMPOSTORS, "esc_p": ESC_P,
        "lookalikes": LOOKALIKES, "moved_tol": MOVED_TOL, "mia_min_per_class": MIA_MIN_PER_CLASS,
        "cache": emb.info["cache"], "cache_path": emb.info["cache_path"],
        "embed_s": _r(emb.info["embed_s"]),
        "timings_s": {"total": _r(t_end - t0), "single": _r(t_seq - t_eval),
                      "sequential": _r(t_end - t_seq)},
    }
    return {"dataset": str(root), "encoder": encoder, "chance_rank1": _r(100 / len(ids)),
            "original": original, "rows": rows, "sequential": seq_rows, "protocol": protocol,
            "encoder_check": encoder_check}


# ---------------------------------------------------------------------- outputs
_COLUMNS = [("forget rank-1", "forget_rank1"), ("forget TAR", "forget_tar"),
            ("KR linear", "kr_linear"), ("KR 5-NN", "kr_knn"), ("MIA", "mia"),
            ("detect AUC", "detect_auc"), ("detect AUC (trained)", "detect_auc_trained"),
            ("look-alike FP", "lookalike_fp"), ("false match", "false_match"),
            ("retain rank-1", "retain_rank1"),
            ("retain TAR", "retain_tar"), ("template cos", "template_cos"),
            ("singled out", "template_top1"),
            ("verify PASS / FAIL / INCONCL.", "verdict"), ("verify wrong", "verdict_wrong"),
            ("fit s", "fit_s"), ("people", "n_erased")]


def _fmt(v: Any, sd: Any = None, spec: str = ".1f") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, int):
        return str(v)
    return f"{v:{spec}} ± {sd:{spec}}" if sd is not None else f"{v:{spec}}"


def _cells(r: dict) -> str:
    """One table row's metric cells: forget rank-1 with its s.d., fit time in ms precision,
    verify's rulings as PASS / FAIL / INCONCLUSIVE percentages and its wrong rulings."""
    def cell(k: str) -> str:
        if k == "verdict":
            got = [r.get(f"verdict_{s}") for s in ("pass", "fail", "inconclusive")]
            return "n/a" if None in got else " / ".join(f"{v:.0f}" for v in got)
        if k == "verdict_wrong":
            got = [r.get("verdict_false_pass"), r.get("verdict_false_fail")]
            return "n/a" if None in got else f"{sum(got):.0f}"
        return _fmt(r[k], r.get(f"{k}_sd") if k == "forget_rank1" else None,
                    ".3f" if k == "fit_s" else ".1f")

    return " | ".join(cell(k) for _, k in _COLUMNS)


def format_markdown(result: dict) -> str:
    """bench.md: the single-erasure table (original first) and the sequential table."""
    p = result["protocol"]
    head = "| method | fit photos | " + " | ".join(c for c, _ in _COLUMNS) + " |"
    lines = [f"# facekd bench: `{Path(result['dataset']).name}`, encoder `{result['encoder']}`", "",
             f"{p['faces']} faces of {p['identities']} identities ({p['identities_skipped']} "
             f"skipped with < {p['min_faces']} faces, {p['images_skipped']} images without a "
             f"usable face, {p['fallback_images']} whole-image fallbacks); chance rank-1 "
             f"{result['chance_rank1']:.2f}%. Embeddings: cache {p['cache']}."
             + (f" Small gallery: {p['gallery_people']} identities take part."
                if p.get("gallery_people") else ""),
             *bench_banner(result), "",
             f"## Single erasure ({p['erased']} people, each erased alone; {p['held']} fresh "
             f"photos each: {p['fresh_enrol']} re-enrolled, {p['fresh_probe']} probes)", "",
             head, "|" + "---|" * (len(_COLUMNS) + 2)]
    lines.append(f"| original | - | {_cells(result['original'])} |")
    lines += [f"| {r['method']} | {r['setting']} | {_cells(r)} |" for r in result["rows"]]
    lines += ["", "Percent; forget rank-1 is mean ± s.d. over the erased people. MIA: 50 = ideal "
              "(n/a: fewer than " f"{p['mia_min_per_class']} photos per class). Detect AUC: the "
              "erased person's edited fresh photos vs retained probes (50 = indistinguishable). "
              f"Look-alike FP: faces of the {p['lookalikes']} nearest retained identities that "
              "the erasure moved at all. False match: pairs of (erased fresh photo, someone "
              "else's gallery face) above the FAR 1e-3 threshold (the original's are the person's "
              "look-alikes; a stranger's would be about 0.1). Template: what the edited model alone gives away "
              "(facekd.metrics.template_leak): |cosine| between the direction the edit singles out "
              "and the person's mean face minus the population mean, and how often the person "
              "ranks first among all identities by that direction (singled out, %). verify: "
              "percent of the erased people that `facekd verify` rules PASS / FAIL / "
              "INCONCLUSIVE on their fresh photos (facekd.verdict); verify wrong: percent ruled "
              "PASS while the attack replayed over 200 random splits finds them over 2x chance, "
              "or FAIL while it finds them at or under it (facekd.bench_verdict)."]
    lines += [f"Fit setting {s!r} skipped for {n} of {p['erased']} people (no more than {s} "
              "non-fresh photos)." for s, n in p["fit_photos_skipped"].items() if n]
    lines.append("")
    if result["sequential"]:
        lines += [f"## Sequential erasure ({p['sequential']} people, one after another; "
                  f"{p['sequential_held']} fresh photos each)", "",
                  "| method | erased | retain rank-1 | retain TAR | forget rank-1 | forget TAR |",
                  "|---|---|---|---|---|---|"]
        for r in result["sequential"]:
            lines.append(f"| {r['method']} | {r['erased']} | {_fmt(r['retain_rank1'])} | "
                         f"{_fmt(r['retain_tar'])} | {_fmt(r['forget_rank1'])} | "
                         f"{_fmt(r['forget_tar'])} |")
        apply = ", ".join(f"{m} {v * 1e3:.1f} ms" for m, v in p["sequential_apply_s"].items())
        lines += ["", f"Retained = people never erased. Forget numbers (last row per method): "
                  "every erased person's fresh photos under the final composite. Apply time of "
                  f"the final composite on the {p['sequential_gallery_rows']}-row gallery: "
                  f"{apply}.", ""]
    return "\n".join(lines)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _plot_tradeoff(result: dict) -> bytes:
    """Forget rank-1 vs retained TAR@1e-3, one point per method/setting and the original."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.add_subplot()
    o = result["original"]
    ax.scatter([o["retain_tar"]], [o["forget_rank1"]], marker="*", s=160, c="k", label="original")
    for r in result["rows"]:
        ax.scatter([r["retain_tar"]], [r["forget_rank1"]], s=50,
                   label=f"{r['method']} ({r['setting']} photos)")
    ax.axhline(result["chance_rank1"], ls="--", c="grey", lw=1, label="chance rank-1")
    ax.set_xlabel("retained TAR@1e-3 (%)")
    ax.set_ylabel("erased person, re-enrolled rank-1 (%)")
    ax.set_title("Erasure trade-off (lower-right is better)")
    ax.legend(fontsize=8)
    return _png(fig)


def _plot_sequential(result: dict) -> bytes:
    """Retained TAR@1e-3 vs number of people erased, one line per method."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.add_subplot()
    for m in dict.fromkeys(r["method"] for r in result["sequential"]):
        pts = [(r["erased"], r["retain_tar"]) for r in result["sequential"] if r["method"] == m]
        ax.plot(*zip(*pts), marker="o", label=m)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("people erased one after another")
    ax.set_ylabel("retained TAR@1e-3 (%)")
    ax.set_title("Sequential erasure: what everyone else keeps")
    ax.legend(fontsize=8)
    return _png(fig)


def write_outputs(result: dict, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write bench.json, bench.md, tradeoff.png and (with sequential rows) sequential.png."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    out = Path(out_dir).expanduser()
    files = {"json": (out / "bench.json", json.dumps(result, indent=2).encode()),
             "md": (out / "bench.md", format_markdown(result).encode()),
             "tradeoff_png": (out / "tradeoff.png", _plot_tradeoff(result))}
    if result["sequential"]:
        files["sequential_png"] = (out / "sequential.png", _plot_sequential(result))
    for path, data in files.values():
        write_atomic(path, data)
    return {k: v[0] for k, v in files.items()}
