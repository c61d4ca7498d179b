"""The forget pipeline: collect -> fit -> measure -> edit -> commit, for one identity.

1. **collect** the identity's stored vectors (+ ``--images`` photos embedded with the deployed
   encoder, refused when they do not look like the person);
2. **fit** the method from the registry (:mod:`facekd.methods`) and compose the new step with the
   accumulated erasure;
3. **measure** a twin fitted on the identity's enrolment half (:mod:`facekd.operations.measure`);
4. **judge** its held-out coverage (:func:`facekd.operations.measure.coverage`): under ``[forget]
   min_coverage`` the request is refused (one line, nothing committed) unless ``force``, which
   the receipt and ledger entry record as ``forced``;
5. **edit**: fold the composed erasure into the base encoder;
6. **commit** through :meth:`facekd.state.workspace.WorkspaceState.commit_deletion`: one ``gallery.save()``
   holds the gallery, the erasure, the fingerprints, the ledger and the receipt.

A **top-up** (``images`` for an identity already erased) embeds the photos as the deployed encoder
does, leaves those the accumulated erasure already scrambles fully, fits a further step on the
ones that escape against everyone now enrolled, and runs steps 3-6 on it, committing through
:meth:`~facekd.state.workspace.WorkspaceState.commit_top_up` (nothing removed; ledger ``kind`` ``top-up``).

Nothing in the workspace changes before step 6, so a refused or failed request leaves it as it was.
This module takes an open workspace as its first argument and never imports
:mod:`facekd.workspace` (which delegates ``Workspace.forget`` here).
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from facekd import methods
from facekd.core.erasure import Erasure, ErasureError
from facekd.errors import WorkspaceError
from facekd.faces.photos import list_images, normalize
from facekd.operations import measure
from facekd.operations.costs import gate_costs
from facekd.operations.refusals import _check_top_up_photos, _coverage_refusal
from facekd.state import receipt as rc
from facekd.state.config import as_identity

if TYPE_CHECKING:
    from facekd.state.workspace import WorkspaceState


STAGE_ENV = "FACEKD_TEST_PAUSE_AT"  # test instrumentation: sleep at a named forget stage


@dataclass
class ForgetResult:
    """Outcome of :func:`forget`. ``receipt`` is privacy-safe; nothing else is stored.

    ``kind`` is ``"erasure"`` or ``"top-up"``; ``coverage`` the fitted step's held-out coverage
    (:func:`facekd.operations.measure.coverage`); ``refusal`` why forget would not commit it (a dry run
    reports it; a real run raises it unless ``force``); ``top_up`` a top-up's photo counts.
    """

    receipt: dict
    committed: bool
    removed_faces: int
    report_table: str = ""
    receipt_path: Path | None = None
    already_erased: bool = False  # an earlier run committed this deletion; nothing changed now
    kind: str = "erasure"
    coverage: dict | None = None
    refusal: str | None = None
    forced: bool = False
    top_up: dict | None = None

    def to_dict(self) -> dict:
        return {"committed": self.committed, "removed_faces": self.removed_faces,
                "already_erased": self.already_erased, "kind": self.kind,
                "coverage": self.coverage, "refusal": self.refusal, "forced": self.forced,
                "top_up": self.top_up,
                "receipt_path": str(self.receipt_path) if self.receipt_path else None,
                "receipt": self.receipt}


def pause(stage: str) -> None:
    """Test hook: when ``$FACEKD_TEST_PAUSE_AT == stage``, announce it on stderr and sleep."""
    if os.environ.get(STAGE_ENV) == stage:
        print(f"facekd: paused at stage {stage}", file=sys.stderr, flush=True)
        time.sleep(float(os.environ.get("FACEKD_TEST_PAUSE_S", "120")))


def forget(ws: "WorkspaceState", identity: int, *, method: str | None = None, p: float | None = None,
           k: int | None = None, energy: float | None = None,
           images: str | os.PathLike | None = None, dry_run: bool = False,
           progress: bool = True, force: bool = False) -> ForgetResult:
    """Erase ``identity`` from encoder and gallery, measure, and commit atomically.

    Steps: fit on the identity's stored vectors (+ ``images`` embedded with the current edited
    encoder), compose with the accumulated erasure, evaluate before/after on the gallery's own
    vectors, remove the identity, project the rest, then one ``gallery.save()`` commits the
    gallery, the new erasure and encoder fingerprints, the ledger entry and the receipt.
    ``dry_run`` computes and reports the same (with the coverage and any refusal) but changes
    nothing. An identity already erased returns its committed receipt (``already_erased``), or
    with ``images`` is topped up (``kind="top-up"``; ``receipt == {}`` when every photo is already
    erased). ``images`` that do not look like the person, and a held-out coverage under
    ``[forget] min_coverage``, are refused unless ``force``.
    """
    if not dry_run:
        ws.require_writable()
    rule_given = (p, k, energy) != (None, None, None)
    # A direction-count rule names ESC: `forget --k 8` keeps meaning what it always meant.
    method = method or ("esc" if rule_given else ws.config.method)
    if method not in methods.names():
        raise WorkspaceError(f"unknown method {method!r}; use one of "
                             f"{', '.join(methods.names())}")
    if method != "esc" and rule_given:
        raise WorkspaceError("--p/--k/--energy only apply to --method esc")
    if sum(x is not None for x in (p, k, energy)) > 1:
        raise WorkspaceError("give at most one of p, k, energy")
    from facekd.progress import tqdm

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    # One tick per stage: the metrics stage (converged probes) can take a while.
    bar = tqdm(total=5, desc="forget", unit="stage", disable=not progress, leave=False)

    def lap(stage: str) -> None:
        nonlocal t0
        timings[stage] = time.perf_counter() - t0
        t0 = time.perf_counter()
        bar.set_postfix_str(stage)
        bar.update(1)
        pause(stage)

    try:
        return _forget(ws, identity, method, (p, k, energy), images, dry_run, progress, lap,
                       timings, force)
    finally:
        bar.close()


def _forget(ws: "WorkspaceState", identity: int, method: str, rule: tuple, images, dry_run: bool,
            progress: bool, lap: Callable[[str], None], timings: dict,
            force: bool) -> ForgetResult:
    identity = as_identity(identity)
    if not ws.gallery.has_identity(identity):
        done = ws.erased_entries(identity)
        if done and images is not None:
            # New photos of someone already erased: widen the erasure to them (a top-up).
            return _top_up(ws, identity, method, rule, images, dry_run, progress, lap, timings,
                           force)
        if done:
            # A re-run (e.g. after a kill that landed after the commit): the deletion is
            # there, so report it rather than fail; the request is idempotent.
            return _already_erased(ws, done[-1])
        raise WorkspaceError(f"unknown identity {identity}; list them with `facekd identities`")

    acc = ws.erasure
    forget_vecs, extra, n_stored, overridden = _collect(ws, identity, images, progress, force)
    lap("collect")

    all_vecs, labels = _gallery_arrays(ws)
    m, options = _method(ws, method, rule)
    others = labels != identity
    context = methods.FitContext(all_vecs[others], labels[others], acc, options,
                                 person=all_vecs[~others], identity=identity,
                                 background=ws.background)

    def fit(F: np.ndarray) -> Erasure:  # also refits the measured twin (measure.erasure_report)
        return m.fit(F, context)

    new = _fit_step(m, fit, forget_vecs)
    lap("fit")

    # Measured on held-out faces: a twin erasure fitted on the identity's enrolment half only,
    # so its probe half is unseen (re-enrolment rank-1, TAR) and MIA has real non-members.
    # The committed erasure uses every face, so it removes at least as much.
    step = _measure(ws, m.name, new, acc.then(new), all_vecs, labels, identity, fit, extra,
                    n_vectors=n_stored, n_images=len(extra))
    lap("metrics")
    return _finish(ws, identity, step, kind="erasure", top_up=None, overridden=overridden,
                   dry_run=dry_run, force=force, lap=lap, timings=timings)


@dataclass
class _Step:
    """A fitted step, measured, ready for the receipt and the commit."""

    method: str
    new: Erasure  # the step fitted now
    combined: Erasure  # the accumulated erasure, then ``new``
    report: Any  # facekd.core.metrics.ErasureReport
    protocol: str
    hists: dict
    leak: dict
    coverage: dict  # measure.coverage
    n_vectors: int
    n_images: int


def _gallery_arrays(ws: "WorkspaceState") -> tuple[np.ndarray, np.ndarray]:
    """``(vectors (N, d) float32, labels (N,) int64)`` of everyone enrolled.

    A view, not a copy of the gallery: read only, and only before the commit changes it."""
    vecs = np.asarray(getattr(ws.gallery, "vectors_view", ws.gallery.vectors)(), dtype=np.float32)
    return vecs, np.asarray(ws.gallery.labels(), dtype=np.int64)


def _method(ws: "WorkspaceState", method: str, rule: tuple) -> tuple[methods.Method, dict]:
    """The registered method and its options (the config's, an explicit ESC rule replacing it)."""
    cfg = ws.config
    m = methods.get(method)
    options = m.options_from_config(cfg)
    p, k, energy = rule
    if rule != (None, None, None):  # an explicit rule replaces the configured one
        options.update(p=cfg.p if p is None else p, k=k, energy=energy)
    return m, options


def _fit_step(m: methods.Method, fit: Callable[[np.ndarray], Erasure], F: np.ndarray) -> Erasure:
    """``fit(F)`` for ``F`` ``(n, d)``; a setting the method refuses, or a fitted step it refuses
    to commit (it would change nothing), becomes a WorkspaceError."""
    try:
        new = fit(F)
    except methods.MethodError as exc:
        raise WorkspaceError(str(exc)) from None
    refusal = m.refuse(new)
    if refusal:
        raise WorkspaceError(refusal)
    return new


def _measure(ws: "WorkspaceState", method: str, new: Erasure, combined: Erasure, vecs: np.ndarray,
             labels: np.ndarray, identity: int, fit: Callable[[np.ndarray], Erasure],
             extra: np.ndarray, *, n_vectors: int, n_images: int) -> _Step:
    """Before/after report, histograms, template leak and held-out coverage of ``new`` on
    ``vecs`` ``(N, d)`` / ``labels`` ``(N,)``, where ``identity``'s rows are the person's faces."""
    cfg = ws.config
    report, protocol, moved = measure.erasure_report(vecs, labels, identity, fit, new, extra, cfg)
    return _Step(method=method, new=new, combined=combined, report=report, protocol=protocol,
                 hists=measure.score_histograms(vecs, labels, identity, new, seed=cfg.seed),
                 leak=measure.template_leak(new, vecs, labels, identity),
                 coverage=measure.coverage(new, moved, cfg.min_coverage),
                 n_vectors=n_vectors, n_images=n_images)


def _finish(ws: "WorkspaceState", identity: int, step: _Step, *, kind: str, top_up: dict | None,
            overridden: list[str], dry_run: bool, force: bool, lap: Callable[[str], None],
            timings: dict) -> ForgetResult:
    """Refuse an erasure that covers too little (unless ``force``), build the receipt, and
    commit it (a deletion, or with ``kind="top-up"`` a further step) or report it (dry run)."""
    refusal = _coverage_refusal(step.coverage)
    if refusal and not dry_run:
        if not force:
            raise WorkspaceError(f"{refusal}; nothing was committed (--force commits anyway)")
        warnings.warn(f"{refusal} (--force given: committed anyway)", RuntimeWarning,
                      stacklevel=4)
        overridden = overridden + ["coverage"]
    base, edited, ledger = ws.base_encoder, ws.encoder, ws.ledger()
    new_edited = base.with_erasure(step.combined)
    gen_before = int(ws.gallery.generation)
    gen_after = gen_before + (0 if dry_run else 1)
    lap("edit")

    receipt = rc.build_receipt(
        identity_hash=ws.hash_identity(identity), method=step.method, params=dict(step.new.params),
        model={"family": base.family, "base_sha256": base.fingerprint,
               "edited_sha256_before": edited.fingerprint,
               "edited_sha256_after": new_edited.fingerprint,
               # directions: an ESC step after a gate sits in the tail, not in the basis
               "k_added": step.new.directions, "k_total": step.combined.directions,
               "gates_total": step.combined.n_gates, "deletions_total": len(ledger) + 1,
               "template_leak": step.leak, **gate_costs(ledger, step.new)},
        generation_before=gen_before, generation_after=gen_after,
        metrics={**step.report.to_dict(), "protocol": step.protocol}, histograms=step.hists,
        timings=timings, n_vectors=step.n_vectors, n_images=step.n_images,
        facekd_version=_version(), created=_now(), dry_run=dry_run, kind=kind,
        coverage=step.coverage, forced_over=overridden, top_up=top_up,
        verdict=measure.forget_verdict(step.report, ws.config))
    result = ForgetResult(receipt=receipt, committed=False, removed_faces=0,
                          report_table=step.report.table(), kind=kind, coverage=step.coverage,
                          refusal=refusal, forced=bool(overridden), top_up=top_up)
    if dry_run:
        return result
    return _commit(ws, identity, step, receipt, new_edited, result, lap)


def _commit(ws: "WorkspaceState", identity: int, step: _Step, receipt: dict, new_edited: Any,
            result: ForgetResult, lap: Callable[[str], None]) -> ForgetResult:
    """One save: the gallery, the erasure, the fingerprints, the ledger entry and the receipt."""
    # Every step that can fail on bad input is behind us: only now is the gallery changed, so a
    # raised error leaves this open workspace as it was, not half-edited.
    gen_before, gen_after = (receipt["gallery"][f"generation_{w}"] for w in ("before", "after"))
    entry = {"identity_hash": receipt["identity_hash"], "receipt_id": receipt["receipt_id"],
             "kind": result.kind, "method": step.method, "k": step.new.k,
             "gates": step.new.n_gates, "generation_before": gen_before,
             "generation_after": gen_after, "created": receipt["created"],
             **{k: receipt["model"][k] for k in ("others_touched", "strangers_touched")
                if k in receipt["model"]},
             **({"forced": True} if result.forced else {})}
    hook = lambda: pause("before-save")  # noqa: E731
    if result.kind == "top-up":
        removed, generation = 0, ws.commit_top_up(step.new, step.combined, new_edited, receipt,
                                                  entry, before_save=hook)
    else:
        removed, generation = ws.commit_deletion(identity, step.new, step.combined, new_edited,
                                                 receipt, entry, before_save=hook)
    lap("commit")
    if generation != gen_after:
        warnings.warn(f"gallery generation {generation} != expected {gen_after}",
                      RuntimeWarning, stacklevel=4)
    result.committed, result.removed_faces = True, removed
    if (receipt.get("verdict") or {}).get("status") == "FAIL":
        warnings.warn("the erasure is committed, but forget's own measurement still finds the "
                      f"person ({receipt['verdict']['reason']}); check with new photos (verify "
                      "--images), widen it with more photos, or try another method",
                      RuntimeWarning, stacklevel=4)
    pause("after-save")
    # Past the commit point: the erasure is in force whatever happens now. A failure to write the
    # derived receipt file (a full disk, a file-size limit) is a warning, not a failed forget; the
    # next `check` (or a re-run of this forget) writes it from the committed copy.
    try:
        result.receipt_path = ws.write_receipt_file(receipt["receipt_id"],
                                                    rc.to_json(receipt).encode())
    except (OSError, WorkspaceError) as exc:
        warnings.warn(f"the erasure is committed, but its receipt file was not written ({exc}); "
                      "`facekd check` writes it from the committed copy", RuntimeWarning,
                      stacklevel=4)
    return result


# ------------------------------------------------------------------------------ top-up
def _top_up(ws: "WorkspaceState", identity: int, method: str, rule: tuple, images, dry_run: bool,
            progress: bool, lap: Callable[[str], None], timings: dict,
            force: bool) -> ForgetResult:
    """Widen an erased identity's erasure to new photos: those the current erasure already
    scrambles fully are counted and left alone; a further step is fitted on the ones that escape,
    against everyone now enrolled, and committed after the earlier ones (``acc.then(new)``)."""
    acc = ws.erasure
    base_rows = _embed_request(ws, images, progress, base=True)  # (K, d) base-encoder rows
    levels = acc.gate_levels(base_rows)  # (K,): the most any earlier gate opened on each
    erased = levels >= 1.0
    counts = {"photos_given": int(len(erased)), "already_erased": int(erased.sum()),
              "escaped": int((~erased).sum())}
    if erased.all():
        return ForgetResult(receipt={}, committed=False, removed_faces=0, kind="top-up",
                            top_up=counts)
    all_vecs, labels = _gallery_arrays(ws)
    overridden = _check_top_up_photos(acc, base_rows, all_vecs, force)
    # As the deployed encoder embeds them: the new step runs after every earlier one.
    escaped = acc.apply(base_rows[~erased])
    lap("collect")

    m, options = _method(ws, method, rule)
    # Everyone now enrolled is "everyone else"; the chain's stranger map is reused through
    # context.previous, so a further gate joins the same chain.
    context = methods.FitContext(all_vecs, labels, acc, options, person=escaped,
                                 identity=identity, background=ws.background)

    def fit(F: np.ndarray) -> Erasure:
        return m.fit(F, context)

    new = _fit_top_up(m, fit, escaped, counts)
    lap("fit")
    step = _measure_top_up(ws, m.name, new, acc.then(new), (all_vecs, labels), identity, fit,
                           escaped, base_rows[~erased], counts)
    lap("metrics")
    return _finish(ws, identity, step, kind="top-up", top_up=counts, overridden=overridden,
                   dry_run=dry_run, force=force, lap=lap, timings=timings)


def _measure_top_up(ws: "WorkspaceState", method: str, new: Erasure, combined: Erasure,
                    gallery: tuple[np.ndarray, np.ndarray], identity: int,
                    fit: Callable[[np.ndarray], Erasure], escaped: np.ndarray,
                    escaped_base: np.ndarray, counts: dict) -> _Step:
    """:func:`_measure` for a top-up step, whose coverage is judged over every photo given.

    ``gallery``: everyone enrolled, ``(N, d)`` and ``(N,)``; ``escaped`` ``(e, d)`` the escaped
    photos as the deployed encoder embeds them, ``escaped_base`` the same by the base encoder.
    Adds ``newly_covered`` (escaped photos the widened erasure scrambles fully) to ``counts``."""
    # The person's gallery faces left with the erasure: the escaped photos stand in for them, so
    # the report measures the top-up's own effect (twin on half of them, probes the rest).
    vecs = np.concatenate([gallery[0], escaped])
    labs = np.concatenate([gallery[1], np.full(len(escaped), identity, dtype=np.int64)])
    step = _measure(ws, method, new, combined, vecs, labs, identity, fit,
                    np.empty((0, escaped.shape[1]), dtype=np.float32), n_vectors=0,
                    n_images=len(escaped))
    counts["newly_covered"] = int(np.count_nonzero(combined.gate_levels(escaped_base) >= 1.0))
    # A gate-less step covers no photo "fully": it is judged by the photos it moves instead.
    in_sample = (counts["newly_covered"] if new.n_gates
                 else measure.moved_share(new, escaped, held_out=False)["covered"])
    step.coverage = measure.top_up_coverage(step.coverage, counts, in_sample)
    return step


def _fit_top_up(m: methods.Method, fit: Callable[[np.ndarray], Erasure], escaped: np.ndarray,
                counts: dict) -> Erasure:
    """The further step, fitted on the ``escaped`` ``(e, d)`` photos; a method that cannot fit
    on so few (the scramble needs 2) says so in one line with the counts."""
    try:
        return _fit_step(m, fit, escaped)
    except ErasureError as exc:
        raise WorkspaceError(f"{counts['escaped']} of the {counts['photos_given']} photos "
                             f"escaped the erasure, and {m.name} cannot fit a further step on "
                             f"them: {exc}; add more photos of the person") from None


def _embed_request(ws: "WorkspaceState", images, progress: bool, *, base: bool = False) -> np.ndarray:
    """The ``--images`` photos embedded ``(m, d)`` (deployed encoder, or ``base``); unusable
    files are named in warnings, and none usable is an error."""
    rows, _, skipped = ws.embed_images(list_images(images), progress=progress, base=base)
    for path, reason in skipped:  # named: the operator sent these files
        warnings.warn(f"skipped {path}: {str(reason).removeprefix(f'{path}: ')}",
                      RuntimeWarning, stacklevel=4)
    if not len(rows):  # fitting without them would not be what was asked for
        raise WorkspaceError(f"{images}: no usable face in any of the --images photos")
    return rows


def _collect(ws: "WorkspaceState", identity: int, images, progress: bool, force: bool
             ) -> tuple[np.ndarray, np.ndarray, int, list[str]]:
    """``(faces to fit on (n, d), the --images part of them (m, d), stored count, the checks
    force overrode)``."""
    forget_vecs = np.asarray(ws.gallery.vectors(identity), dtype=np.float32)
    n_stored = len(forget_vecs)
    extra = np.empty((0, forget_vecs.shape[1]), dtype=np.float32)
    overridden: list[str] = []
    if images is not None:
        extra = _embed_request(ws, images, progress)
        if _check_request_photos(ws, identity, forget_vecs, extra, force):
            overridden.append("request photos")
        forget_vecs = np.concatenate([forget_vecs, extra])
    if len(forget_vecs) < ws.config.min_vectors:
        raise WorkspaceError(f"identity {identity} has {len(forget_vecs)} face vector(s); at least "
                             f"{ws.config.min_vectors} are needed to fit (add --images DIR)")
    return forget_vecs, extra, n_stored, overridden


def _already_erased(ws: "WorkspaceState", entry: dict) -> ForgetResult:
    """The committed receipt of an earlier deletion (its derived file re-created if missing)."""
    rid = entry["receipt_id"]
    receipt = ws.receipt(rid)
    path = ws.receipt_path(rid)
    if not path.exists() and ws.writable:
        ws.write_receipt_file(rid, bytes(ws.gallery.get_meta(f"receipt:{rid}")))
    return ForgetResult(receipt=receipt, committed=True, removed_faces=0,
                        receipt_path=path if path.exists() else None, already_erased=True)


def _check_request_photos(ws: "WorkspaceState", identity: int, stored: np.ndarray, extra: np.ndarray,
                          force: bool) -> bool:
    """Refuse (unless ``force``) --images photos that do not look like the person: their mean
    cosine to the person's gallery faces is below the gallery's match threshold, so fitting
    on them would erase someone else's face directions. True when ``force`` overrode it."""
    if len(stored) == 0:
        return False
    mean = float((normalize(extra) @ normalize(stored).T).mean())
    thr = measure.match_threshold(ws.gallery, ws.config)
    if thr is None or mean >= thr:
        return False
    msg = (f"the --images photos do not look like identity {identity}: mean cosine {mean:.3f} "
           f"to its gallery faces, below the match threshold {thr:.3f}")
    if not force:
        raise WorkspaceError(msg + "; check the folder, or pass --force")
    warnings.warn(msg + " (--force given)", RuntimeWarning, stacklevel=5)
    return True


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _version() -> str:
    from facekd import __version__

    return __version__
