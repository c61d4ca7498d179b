"""``facekd bench``: how well does each erasure method forget a person, on the user's own photos?

Protocol (fresh re-enrolment, as in ``benchmarks/bench_tradeoff.py``), per erased person:

* ``held`` of their photos are *fresh*: never in any fit. After the erasure, an attacker enrols
  half of them into the edited gallery of everyone else and searches it with the other half
  (**forget rank-1**); **forget TAR** counts genuine pairs among the fresh photos above the
  threshold at FAR 1e-3 of edited retained impostor pairs.
* the fit uses the person's other photos (``"all"``) or only ``k`` of them (``"10"``).
* everyone else is *retained*: their enrolment half (:func:`facekd.core.metrics.split_enrol_probe`) is
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

This module runs the benchmark (:func:`run_bench`); its parts are :mod:`facekd.evaluation.settings`
(the methods and fit settings under test), :mod:`facekd.evaluation.dataset` (embedding and cache),
:mod:`facekd.evaluation.protocol` and :mod:`facekd.evaluation.sequential` (the measurements), and
:mod:`facekd.evaluation.writers` (Markdown, plots, files), whose names stay importable from here.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from facekd import methods as registry
from facekd.core import verdict as vd
from facekd.core.metrics import MIA_MIN_PER_CLASS, split_enrol_probe
from facekd.core.separation import bench_check
from facekd.evaluation.bench_verdict import perfect_erasure
from facekd.evaluation.dataset import _scan, _usable, embed_background, embed_dataset
from facekd.evaluation.later import Later
from facekd.evaluation.protocol import _draw, _make_case, _r, _single, retained_tar
from facekd.evaluation.sequential import _sequential, checkpoints
from facekd.evaluation.settings import (BenchError, ESC_P, FAR, LOOKALIKES, MAX_IMPOSTORS,
                                        MIN_FACES, MOVED_TOL, _class_means, parse_fit_photos,
                                        parse_methods)
from facekd.methods import unit_rows as _unit
# The parts' names that callers (the CLI, tests, benchmarks/) read from here.
from facekd.core.metrics import template_leak  # noqa: F401
from facekd.evaluation.dataset import (CACHE_FORMAT, Embedded, _cache_key,  # noqa: F401
                                       _chips)
from facekd.evaluation.protocol import Case, Protocol, _fit_rows  # noqa: F401
from facekd.evaluation.settings import (METRICS, SD_METRICS, _split_method,  # noqa: F401
                                        fit_method)
from facekd.evaluation.writers import format_markdown, write_outputs  # noqa: F401

__all__ = ["BenchError", "Embedded", "embed_dataset", "run_bench",
           "write_outputs", "format_markdown", "parse_methods", "parse_fit_photos", "fit_method",
           "template_leak"]


# protocol key <- verdict_vs_replay's figure, read on each erased person's perfect erasure
PERFECT_FIGURES = {"perfect_rank1": "replay_rank1", "perfect_over": "replay_over",
                   "perfect_pass": "verdict_pass", "perfect_fail": "verdict_fail",
                   "perfect_inconclusive": "verdict_inconclusive"}


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
              gallery_people: int | None = None, draws: int = 1,
              background: str | os.PathLike | None = None,
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
            drawn as usual, and a seeded draw of others); chance rank-1 is then 1 / N. The
            identities left outside play people enrolled after the erasure
            (:mod:`facekd.evaluation.later`): what it costs them, and whether forget's figure
            for them holds.
        background: a folder-per-person tree of photos of people enrolled nowhere (what
            ``facekd calibrate`` stores): gated methods fit against them as forget does after
            calibrate. Dataset identities with a background folder of the same name are left
            out of the workspace.
        draws: run the whole protocol this many times, seeds ``seed``, ``seed + 1``, ...: each
            draws the erased people, the small gallery's others, the split and the fresh photos
            afresh; the result is pooled over them (:func:`facekd.evaluation.draws.pool_draws`).
        cache: embedding cache root (default ``$FACEKD_CACHE`` or ``~/.cache/facekd``).
        echo: called with one-line progress notes (e.g. the cache status).
    """
    say = echo or (lambda _msg: None)
    if int(draws) < 1:
        raise BenchError("--draws must be >= 1")
    if int(draws) > 1:
        from facekd.evaluation.draws import pool_draws

        results = []
        for i in range(int(draws)):
            say(f"draw {i + 1} of {draws} (seed {seed + i})")
            results.append(run_bench(dataset, encoder, methods=methods, erase=erase,
                                     sequential=sequential, fit_photos=fit_photos,
                                     seed=seed + i, gallery_people=gallery_people,
                                     background=background, cache=cache, progress=progress,
                                     echo=echo))
        return pool_draws(results)
    from threadpoolctl import threadpool_limits
    from facekd.progress import tqdm

    from facekd.encoders import load_encoder

    names = parse_methods(registry.names() if methods is None else methods)
    settings = parse_fit_photos(fit_photos)
    if int(erase) < 1 or int(sequential) < 0:
        raise BenchError("--erase must be >= 1 and --sequential >= 0")
    if gallery_people is not None and int(gallery_people) < 3:
        raise BenchError("--gallery-people must be >= 3")
    root = Path(dataset).expanduser()
    _scan(root)  # a bad directory fails before the (slow) encoder load
    if background is not None:
        _scan(Path(background).expanduser(), "background")
    t0 = time.perf_counter()
    enc = load_encoder(encoder)
    emb = embed_dataset(root, enc, cache=cache, progress=progress)
    say(f"embeddings: cache {emb.info['cache']} ({emb.info['cache_path']})")
    E, y, dropped = _usable(emb)
    bg, shared = (None, np.zeros(0, np.int64)) if background is None else embed_background(
        background, enc, root, cache=cache, progress=progress)
    left_out = int(np.isin(np.unique(y), shared).sum())
    if bg is not None:
        keep = ~np.isin(y, shared)
        say(f"background: {bg.photos} photos of {len(np.unique(bg.groups))} people enrolled "
            f"nowhere; {left_out} dataset identities have a background folder of the same name "
            "and stay out of the workspace")
        E, y = E[keep], y[keep]
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
    E_all, y_all = E, y  # the whole dataset: where a perfect erasure's strangers come from
    if small:
        E, y, ids, counts = _small_gallery(E, y, single.people, int(gallery_people), seed)
        count = dict(zip(ids.tolist(), counts.tolist()))
        say(f"small gallery: {len(ids)} identities ({len(E)} faces), the erased among them")
    # Who is left outside the workspace plays people enrolled after the erasure.
    later = (Later.draw(E_all, y_all, np.setdiff1d(np.unique(y_all), ids), seed) if small
             else None)
    if later is not None:
        say(f"people enrolled later: {later.people} from outside the workspace, "
            f"{later.searches} searches")
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
    # What a perfect erasure reaches: the attack on unrelated strangers' photos enrolled as one
    # person (verify's yardstick, read off the enrolled gallery), not 1 / identities.
    strangers = vd.stranger_baseline(vd.strangers(x0[split], y[split], seed=seed).odds,
                                     single.held // 2)
    # The same, person by person: each erased person's fresh photos replaced by as many
    # unrelated strangers' (bench_verdict.perfect_erasure), replayed over 200 splits.
    x_all = _unit(E_all)
    drawn = {c.person: perfect_erasure(x_all, y_all, x0[c.gallery], y[c.gallery], c.person,
                                       x0[c.fresh], seed=seed,
                                       threshold=retained_tar(x0, y, c, seed)[1])
             for c in cases}
    by_person = {p: r for p, r in drawn.items() if r is not None}  # those that could be drawn
    perfect = list(by_person.values())
    total = len(cases) * (1 + len(names) * len(settings)) + (
        len(names) * len(seq.people) if seq else 0)
    t_eval = time.perf_counter()
    # The metrics' small products and lbfgs fits run far faster on one BLAS thread on a busy box.
    with threadpool_limits(limits=1, user_api="blas"), \
            tqdm(total=total, unit="step", desc="bench", disable=not progress) as bar:
        original, rows, fit_skipped = _single(
            x0, y, split, cases, names, settings, seed, bar,
            perfect={p: r["replay_rank1"] for p, r in by_person.items()}, later=later,
            background=bg)
        t_seq = time.perf_counter()
        seq_rows, apply_s, gates = [], {}, {}
        for m in names if seq else []:
            r, apply_s[m], gates[m] = _sequential(x0, y, split, seq.people, seq.held, m, seed, bar,
                                                  later=later, background=bg)
            seq_rows += r
    t_end = time.perf_counter()
    protocol = {
        "identities": int(len(ids)), "identities_skipped": int(dropped), "faces": int(len(E)),
        "images": emb.info["images"], "images_skipped": emb.info["images_skipped"],
        "fallback_images": n_fallback, "min_faces": MIN_FACES, "dim": int(E.shape[1]),
        "seed": int(seed), "methods": names, "fit_photos": settings,
        "gallery_people": int(len(ids)) if small else None,
        "later_people": later.people if later is not None else 0,
        "later_searches": later.searches if later is not None else 0,
        "background_photos": bg.photos if bg is not None else 0,
        "background_people": int(len(np.unique(bg.groups))) if bg is not None else 0,
        "background_left_out": left_out,
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
        "strangers_rank1": _r(100 * strangers),
        # a row's figures (percent of the erased people) for a perfect erasure of each of them
        **{key: _r(float(np.mean([r[src] for r in perfect]))) if perfect else None
           for key, src in PERFECT_FIGURES.items()},
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
