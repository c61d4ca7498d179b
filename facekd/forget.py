"""The forget pipeline: collect -> fit -> measure -> edit -> commit, for one identity.

1. **collect** the identity's stored vectors (+ ``--images`` photos embedded with the deployed
   encoder, refused when they do not look like the person);
2. **fit** the method from the registry (:mod:`facekd.methods`) and compose the new step with the
   accumulated erasure;
3. **measure** a twin fitted on the identity's enrolment half (:mod:`facekd.measure`);
4. **edit**: fold the composed erasure into the base encoder;
5. **commit** through :meth:`facekd.workspace.Workspace.commit_deletion`: one ``gallery.save()``
   holds the gallery, the erasure, the fingerprints, the ledger and the receipt.

Nothing in the workspace changes before step 5, so a refused or failed request leaves it as it was.
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
from typing import TYPE_CHECKING, Callable

import numpy as np

from facekd import measure, methods
from facekd import receipt as rc
from facekd.config import as_identity
from facekd.erasure import Erasure
from facekd.errors import WorkspaceError
from facekd.photos import list_images, normalize

if TYPE_CHECKING:
    from facekd.workspace import Workspace

__all__ = ["ForgetResult", "forget", "STAGE_ENV"]

STAGE_ENV = "FACEKD_TEST_PAUSE_AT"  # test instrumentation: sleep at a named forget stage


@dataclass
class ForgetResult:
    """Outcome of :func:`forget`. ``receipt`` is privacy-safe; nothing else is stored."""

    receipt: dict
    committed: bool
    removed_faces: int
    report_table: str = ""
    receipt_path: Path | None = None
    already_erased: bool = False  # an earlier run committed this deletion; nothing changed now

    def to_dict(self) -> dict:
        return {"committed": self.committed, "removed_faces": self.removed_faces,
                "already_erased": self.already_erased,
                "receipt_path": str(self.receipt_path) if self.receipt_path else None,
                "receipt": self.receipt}


def pause(stage: str) -> None:
    """Test hook: when ``$FACEKD_TEST_PAUSE_AT == stage``, announce it on stderr and sleep."""
    if os.environ.get(STAGE_ENV) == stage:
        print(f"facekd: paused at stage {stage}", file=sys.stderr, flush=True)
        time.sleep(float(os.environ.get("FACEKD_TEST_PAUSE_S", "120")))


def forget(ws: "Workspace", identity: int, *, method: str | None = None, p: float | None = None,
           k: int | None = None, energy: float | None = None,
           images: str | os.PathLike | None = None, dry_run: bool = False,
           progress: bool = True, force: bool = False) -> ForgetResult:
    """Erase ``identity`` from encoder and gallery, measure, and commit atomically.

    Steps: fit on the identity's stored vectors (+ ``images`` embedded with the current edited
    encoder), compose with the accumulated erasure, evaluate before/after on the gallery's own
    vectors, remove the identity, project the rest, then one ``gallery.save()`` commits the
    gallery, the new erasure and encoder fingerprints, the ledger entry and the receipt.
    ``dry_run`` computes and reports the same but changes nothing. An identity already erased
    returns its committed receipt (``already_erased``). ``images`` that do not look like the
    person are refused unless ``force``.
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


def _forget(ws: "Workspace", identity: int, method: str, rule: tuple, images, dry_run: bool,
            progress: bool, lap: Callable[[str], None], timings: dict,
            force: bool) -> ForgetResult:
    cfg = ws.config
    identity = as_identity(identity)
    h = ws.hash_identity(identity)
    if not ws.gallery.has_identity(identity):
        done = ws.erased_entries(identity)
        if done:
            # A re-run (e.g. after a kill that landed after the commit): the deletion is
            # there, so report it rather than fail; the request is idempotent.
            return _already_erased(ws, done[-1])
        raise WorkspaceError(f"unknown identity {identity}; list them with `facekd identities`")

    base, edited, acc = ws.base_encoder, ws.encoder, ws.erasure
    forget_vecs, extra, n_stored = _collect(ws, identity, images, progress, force)
    lap("collect")

    # A view, not a copy of the gallery: read only, and only before remove/apply below.
    all_vecs = np.asarray(getattr(ws.gallery, "vectors_view", ws.gallery.vectors)(),
                          dtype=np.float32)
    labels = np.asarray(ws.gallery.labels(), dtype=np.int64)
    m = methods.get(method)
    options = m.options_from_config(cfg)
    p, k, energy = rule
    if rule != (None, None, None):  # an explicit rule replaces the configured one
        options.update(p=cfg.p if p is None else p, k=k, energy=energy)
    others = labels != identity
    context = methods.FitContext(all_vecs[others], labels[others], acc, options,
                                 person=all_vecs[~others], identity=identity)

    def fit(F: np.ndarray) -> Erasure:  # also refits the measured twin (measure.erasure_report)
        return m.fit(F, context)

    try:
        new = fit(forget_vecs)
    except methods.MethodError as exc:
        raise WorkspaceError(str(exc)) from None
    refusal = m.refuse(new)
    if refusal:
        raise WorkspaceError(refusal)
    params = dict(new.params)
    combined = acc.then(new)
    lap("fit")

    # Measured on held-out faces: a twin erasure fitted on the identity's enrolment half only,
    # so its probe half is unseen (re-enrolment rank-1, TAR) and MIA has real non-members.
    # The committed erasure uses every face, so it removes at least as much.
    report, protocol = measure.erasure_report(all_vecs, labels, identity, fit, new, extra, cfg)
    hists = measure.score_histograms(all_vecs, labels, identity, new, seed=cfg.seed)
    lap("metrics")

    new_edited = base.with_erasure(combined)
    gen_before = int(ws.gallery.generation)
    gen_after = gen_before + (0 if dry_run else 1)
    lap("edit")

    leak = measure.template_leak(new, all_vecs, labels, identity)
    receipt = rc.build_receipt(
        identity_hash=h, method=method, params=params,
        model={"family": base.family, "base_sha256": base.fingerprint,
               "edited_sha256_before": edited.fingerprint,
               "edited_sha256_after": new_edited.fingerprint,
               "k_added": new.k, "k_total": combined.k, "gates_total": combined.n_gates,
               "deletions_total": len(ws.ledger()) + 1, "template_leak": leak},
        generation_before=gen_before, generation_after=gen_after,
        metrics={**report.to_dict(), "protocol": protocol}, histograms=hists,
        timings=timings, n_vectors=n_stored, n_images=len(extra),
        facekd_version=_version(), created=_now(), dry_run=dry_run)
    table = report.table()
    if dry_run:
        return ForgetResult(receipt=receipt, committed=False, removed_faces=0, report_table=table)

    # Every step that can fail on bad input is behind us: only now is the gallery changed, so a
    # raised error leaves this open workspace as it was, not half-edited.
    entry = {"identity_hash": h, "receipt_id": receipt["receipt_id"], "method": method,
             "k": new.k, "gates": new.n_gates, "generation_before": gen_before,
             "generation_after": gen_after, "created": receipt["created"]}
    removed, generation = ws.commit_deletion(identity, new, combined, new_edited, receipt, entry,
                                             before_save=lambda: pause("before-save"))
    lap("commit")
    if generation != gen_after:
        warnings.warn(f"gallery generation {generation} != expected {gen_after}",
                      RuntimeWarning, stacklevel=3)
    pause("after-save")
    path = ws.write_receipt_file(receipt["receipt_id"], rc.to_json(receipt).encode())
    return ForgetResult(receipt=receipt, committed=True, removed_faces=removed,
                        report_table=table, receipt_path=path)


def _collect(ws: "Workspace", identity: int, images, progress: bool, force: bool
             ) -> tuple[np.ndarray, np.ndarray, int]:
    """``(faces to fit on (n, d), the --images part of them (m, d), stored count)``."""
    forget_vecs = np.asarray(ws.gallery.vectors(identity), dtype=np.float32)
    n_stored = len(forget_vecs)
    extra = np.empty((0, forget_vecs.shape[1]), dtype=np.float32)
    if images is not None:
        extra, _, skipped = ws.embed_images(list_images(images), progress=progress)
        for path, reason in skipped:  # named: the operator sent these files
            warnings.warn(f"skipped {path}: {str(reason).removeprefix(f'{path}: ')}",
                          RuntimeWarning, stacklevel=4)
        if not len(extra):  # fitting without them would not be what was asked for
            raise WorkspaceError(f"{images}: no usable face in any of the --images photos")
        _check_request_photos(ws, identity, forget_vecs, extra, force)
        forget_vecs = np.concatenate([forget_vecs, extra])
    if len(forget_vecs) < ws.config.min_vectors:
        raise WorkspaceError(f"identity {identity} has {len(forget_vecs)} face vector(s); at least "
                             f"{ws.config.min_vectors} are needed to fit (add --images DIR)")
    return forget_vecs, extra, n_stored


def _already_erased(ws: "Workspace", entry: dict) -> ForgetResult:
    """The committed receipt of an earlier deletion (its derived file re-created if missing)."""
    rid = entry["receipt_id"]
    receipt = ws.receipt(rid)
    path = ws.receipt_path(rid)
    if not path.exists() and ws.writable:
        ws.write_receipt_file(rid, bytes(ws.gallery.get_meta(f"receipt:{rid}")))
    return ForgetResult(receipt=receipt, committed=True, removed_faces=0,
                        receipt_path=path if path.exists() else None, already_erased=True)


def _check_request_photos(ws: "Workspace", identity: int, stored: np.ndarray, extra: np.ndarray,
                          force: bool) -> None:
    """Refuse (unless ``force``) --images photos that do not look like the person: their mean
    cosine to the person's gallery faces is below the gallery's match threshold, so fitting
    on them would erase someone else's face directions."""
    if len(stored) == 0:
        return
    mean = float((normalize(extra) @ normalize(stored).T).mean())
    thr = measure.match_threshold(ws.gallery, ws.config)
    if thr is None or mean >= thr:
        return
    msg = (f"the --images photos do not look like identity {identity}: mean cosine {mean:.3f} "
           f"to its gallery faces, below the match threshold {thr:.3f}")
    if not force:
        raise WorkspaceError(msg + "; check the folder, or pass --force")
    warnings.warn(msg + " (--force given)", RuntimeWarning, stacklevel=5)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _version() -> str:
    from facekd import __version__

    return __version__
