"""``facekd bench``'s settings: :class:`BenchError`, the protocol's constants and metric names, and
the methods under test (a registry name with its fit settings, ``scramble:alpha=1.1``; the fit
photo settings ``all`` / ``10``).
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from facekd import methods as registry
from facekd.core.erasure import Erasure
from facekd.errors import FacekdError
from facekd.evaluation.bench_verdict import VERDICT_METRICS
from facekd.evaluation.later import LATER_METRICS
from facekd.methods import unit_rows as _unit


FAR = 1e-3
MAX_IMPOSTORS = 500_000  # sampled (seeded) retained impostor pairs: 500 lie above the threshold
MIN_FACES = 4            # fewer usable faces: no enrolment and probe pair, the identity is skipped
MAX_HELD = 20            # fresh photos per erased person on LFW-sized identities
ESC_P = 1.5              # fit_esc's default, the published rule k = int(d * p / 100)
LOOKALIKES = 5
MOVED_TOL = 1e-4         # an edited unit embedding further than this from the original "moved"
METRICS = ("forget_rank1", "forget_tar", "kr_linear", "kr_knn", "mia", "detect_auc",
           "detect_auc_trained", "lookalike_fp", "false_match", "retain_rank1", "retain_tar",
           "template_cos", "template_top1", *VERDICT_METRICS, *LATER_METRICS)
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
               previous: Erasure, background: Any = None) -> Erasure:
    """Fit the registry method ``name`` (with any ``:key=value`` settings) on the person's fit
    photos ``forget`` ``(f, d)``, against everyone else's enrolment faces ``gallery`` ``(g, d)``
    labelled ``gallery_y`` ``(g,)``; all in the space ``previous`` already edited, as is
    ``background`` (a :class:`facekd.core.background.Background` of people enrolled nowhere, what
    ``facekd calibrate`` stores; None: none)."""
    base, kw = _split_method(name)
    context = registry.FitContext(gallery, gallery_y, previous, kw, background=background)
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
