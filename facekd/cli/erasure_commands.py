"""``facekd forget`` and ``facekd verify``: erase a person, and judge whether they are still found.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from facekd import methods
from facekd.cli.common import (EXIT_INCONCLUSIVE, EXIT_OK, EXIT_VERIFY_FAILED, IDENTITY,
                               _MethodChoice, _command, _emit, _fail, _open, _progress, _who)
from facekd.methods.scramble_defaults import ONE_PHOTO_FRONTIER, ONE_PHOTO_POOR, Q_ONE

# Said wherever a one-photo erasure is committed: each such gate opens wide, and they add up;
# the trade an operator can make instead (measured: ONE_PHOTO_FRONTIER).
_AUTO, _TIGHT = ONE_PHOTO_FRONTIER[None], ONE_PHOTO_FRONTIER[0.998]
ONE_PHOTO_SEQUENCE = (f"on LFW + dlib, 50 in sequence cost everyone else {_AUTO[1]:g} rank-1 "
                      f"points, {_TIGHT[1]:g} with [forget] scramble_q_one = 0.998, where the "
                      f"erased are found at {_TIGHT[0]:.1f} % instead of {_AUTO[0]:.1f} %")
# Said there too: the cover estimate is other people's, and a poor photo makes a poor gate.
_POOR, _POOR_FN = ONE_PHOTO_POOR["dlib"], ONE_PHOTO_POOR["facenet"]
ONE_PHOTO_GAMBLE = (f"the cover hangs on the photo: on LFW {_POOR[0]:g} % of single photos (dlib; "
                    f"FaceNet {_POOR_FN[0]:g} %) made a gate that opened fully on under 80 % of "
                    f"the person's other photos, and the estimate above cannot tell which photo "
                    f"(rank correlation {_POOR[1]:.2f}): check new photos with verify --images")


# forget warns once the ledger's gates together open on this share of everyone else's new
# photos. On LFW + dlib 50 erasures from all photos sum to about 1.3 % (everyone else lost 0.27
# rank-1 point), one-photo erasures pass 2 % after about 8 (about 1.7 points by then);
# docs/benchmarks.md, "One photo: the erased person or everyone else".
OTHERS_TOUCHED_WARN = 0.02
# forget suggests a background (calibrate) from this estimated share on, or when a gate on 2+ photos
# widened below WIDENED: LFW + dlib, gates fitted on 3 photos among 15 people read 4.8 % and cost
# people enrolled later 5.5 rank-1 points on average; through a workspace (q 0.95 in 8 of 8 draws)
# 13.0 points, where the estimate read 0.0 % twice; with 1,000 photos kept, 0.5 % and 0.7 points
# (docs/benchmarks.md, "Fourteenth round").
LATER_TOUCHED_NOTE = 0.01
WIDENED = 0.999
# ... or from this top of its interval: counted by identity, a gallery of tens of people cannot show
# that a gate on 2+ photos spares people enrolled later (docs/benchmarks.md, "Fifteenth round").
LATER_BOUND_NOTE = 0.05


def _later_text(params: dict, model: dict) -> str:
    """forget's line for people enrolled after it: no gate spares them (its estimate, the top of
    its 95 % interval counted by identity, the ledger's sum, and what keeps it down)."""
    share, kept = float(params["strangers_touched"]), int(params.get("background") or 0)
    n = int(params.get("strangers_touched_faces") or 0)
    people, bound = params.get("strangers_touched_people"), model.get("strangers_touched_bound")
    top = "" if bound is None else f"at most {100 * bound:.1f} % at 95 %; "
    of = f"{n} faces of {people} people" if people else f"{n} faces of people"
    line = (f"people enrolled later: no gate spares them; this one opens on about "
            f"{100 * share:.2f} % of their photos ({top}read off {of} it never saw")
    total, uncounted = (model.get(f"strangers_touched_{k}") for k in ("total", "uncounted"))
    if total is not None and (total > share or uncounted):
        line = (f"{line}; with the earlier erasures about {100 * total:.2f} %"
                + (f", not counting {uncounted} older" if uncounted else ""))
    if kept:
        return line + f"; {kept} of them photos kept by calibrate)"
    q, few = float(params.get("q", 1.0)), int(params.get("n") or 0) >= 2
    # one photo: its gate starts at Q_ONE; an ID-photo gallery's plain gate (nobody has two
    # photos, "heldout_from" "none") measured the same with a background: nothing to suggest
    one = not few and params.get("heldout_from") == "prior"
    widened = (few and q < WIDENED) or (one and q < Q_ONE)
    if (few or one) and (share >= LATER_TOUCHED_NOTE or widened
                         or (bound or 0) >= LATER_BOUND_NOTE):
        why = f"; the gate widened to q {q:g}" if widened else ""
        return line + (f"{why}); photos of people enrolled nowhere keep gates off them: `facekd "
                       "calibrate --images DIR` before the next erasure (docs/cli.md)")
    return line + ")"


# ------------------------------------------------------------------------------ forget
@click.command()
@click.option("--identity", type=IDENTITY, default=None, help="Integer identity id to erase.")
@click.option("--name", default=None,
              help="The person to erase, by the name enrol recorded (instead of --identity).")
@click.option("--method", type=_MethodChoice(), default=None,
              help="Erasure method (default from config.toml: scramble, the gated scramble; "
                   "esc and esc-t are the published methods). --p/--k/--energy imply esc.")
@click.option("--p", "p", type=float, default=None, help="Erase int(d * p / 100) directions.")
@click.option("--k", "k", type=int, default=None, help="Erase exactly K directions.")
@click.option("--energy", type=float, default=None,
              help="Erase the fewest directions holding this share of the energy.")
@click.option("--images", type=click.Path(path_type=Path), default=None,
              help="Extra photos of the person to fit on (embedded with the deployed encoder). "
                   "For an identity already erased: new photos to widen its erasure to (top-up).")
@click.option("--dry-run", is_flag=True, help="Compute and report; change nothing.")
@click.option("--force", is_flag=True,
              help="Commit although a check refuses: --images that do not look like the person, "
                   "or a held-out coverage under [forget] min_coverage (recorded as forced).")
@_command
def forget(workspace: Path, as_json: bool, identity: int | None, name: str | None,
           method: str | None, p: float | None, k: int | None, energy: float | None,
           images: Path | None, dry_run: bool, force: bool) -> None:
    """Erase an identity from the encoder and the gallery (atomic)."""
    if sum(x is not None for x in (p, k, energy)) > 1:
        _fail("give at most one of --p, --k, --energy")
    with _open(workspace, writable=not dry_run) as ws:
        # The receipt is keyed by the id's salted hash alone; the name only finds the id here.
        identity = _who(ws, identity, name)
        res = ws.forget(identity, method=method, p=p, k=k, energy=energy, images=images,
                        dry_run=dry_run, progress=_progress(), force=force)
    r = res.receipt
    if res.kind == "top-up" and not r:
        n = res.top_up["photos_given"]
        _emit(as_json, res.to_dict(), f"all {n} photos are already erased; nothing to top up")
        return
    if res.already_erased:
        _emit(as_json, res.to_dict(), f"identity {identity} was already erased: receipt "
                                      f"{r['receipt_id']} (committed {r.get('created', '?')}); "
                                      "nothing changed")
        return

    def text() -> str:
        model = r["model"]
        what = (f"{model.get('gates_total', 0)} gate(s) in the edited encoder"
                if r["method"] == "scramble" else
                f"{model['k_added']} direction(s) erased ({model['k_total']} in total"
                + (f", after {model['gates_total']} gate(s)" if model.get("gates_total") else "")
                + ")")
        v = r.get("verdict") or {}
        return "\n".join([
            *_forget_head(res, identity, dry_run),
            f"method {r['method']}, {what}; gallery generation "
            f"{r['gallery']['generation_before']} -> {r['gallery']['generation_after']}",
            f"edited encoder weights sha256 {model['edited_sha256_after'][:16]}...",
            *([f"template leak: the edited model ranks this person {model['template_leak']['rank']}"
               f" of {model['template_leak']['ranked_among']} enrolled identities (serve it, do "
               "not distribute it; docs/threat-model.md)"] if "template_leak" in model else []),
            *([f"verify with --identity {identity}: names of erased people are not kept"]
              if name is not None and not dry_run else []),
            "", res.report_table,
            *([f"forget's own measurement (held-back stored faces, 95% intervals): "
               f"{v['status']}: {v['reason']}"] if v else []),
            *(["confirm on new photos: facekd verify --identity ID --images DIR"]
              if v and not dry_run else []), ""])

    data = res.to_dict()
    if name is not None:  # stdout for the operator who named the person; never in the receipt
        data["identity"] = identity
    _emit(as_json, data, text)


def _forget_head(res: Any, identity: int, dry_run: bool) -> list[str]:
    """forget's first lines: what was (or would be) done, the top-up's photo counts, the held-out
    coverage against its floor, and a refusal a dry run would meet."""
    from facekd.operations.measure import coverage_text

    r, top = res.receipt, res.top_up
    verb = "topped up" if res.kind == "top-up" else "erased"
    if dry_run:
        lines = [f"dry run: identity {identity} would be {verb} (nothing changed)"]
    elif top is not None:
        lines = [f"topped up identity {identity}: a further step, receipt {r['receipt_id']}"]
    else:
        lines = [f"erased identity {identity}: {res.removed_faces} face(s) removed, receipt "
                 f"{r['receipt_id']}"]
    if top is not None:
        lines.append(f"{top['photos_given']} photo(s) given: {top['already_erased']} already "
                     f"erased, {top['escaped']} escaped, {top['newly_covered']} of them now "
                     "scrambled fully")
    cov = res.coverage
    if (line := coverage_text(cov)) is not None:
        lines.append(line)
    params, model = r.get("params") or {}, r.get("model") or {}
    if "others_touched" in model:
        uncounted = model.get("others_touched_uncounted") or 0
        ci = model.get("others_touched_interval")
        ci = "" if not ci else f" (95% {100 * ci[0]:.2f}-{100 * ci[1]:.2f})"
        opened = params.get("others_opened")
        spares = (f" (it opens on {100 * opened:.2f} % and lets through those that match "
                  "someone enrolled)" if opened is not None and params.get("spared_faces") else "")
        lines.append(f"everyone else: the gate changes about {100 * model['others_touched']:.2f} "
                     f"%{ci} of their new photos{spares} (each may then fail to match its "
                     "owner); with "
                     f"the earlier erasures about {100 * model['others_touched_total']:.2f} %"
                     + (f" (not counting {uncounted} older one(s))" if uncounted else ""))
        if model["others_touched_total"] >= OTHERS_TOUCHED_WARN:
            lines.append(f"  together the gates open on {100 * OTHERS_TOUCHED_WARN:g} % or more of "
                         "everyone else's new photos: their accuracy pays for it (measure it on "
                         "your photos with facekd bench --sequential)")
    if params.get("strangers_touched") is not None:
        lines.append(_later_text(params, model))
    if params.get("spared_faces"):
        lines.append("  the gate lets through faces that match one of the "
                     f"{params['spared_faces']} enrolled people nearest it ([forget] scramble_spare): their mean faces are "
                     "now part of the edited model; keep it as private as the gallery")
    if params.get("n") == 1 and "gallery_touched" in params:
        lines.append(f"  fitted on one photo: the gate opens wide; one-photo erasures add up "
                     f"({ONE_PHOTO_SEQUENCE}): give every photo you have")
        lines.append(f"  {ONE_PHOTO_GAMBLE}")
    if cov is not None and cov.get("look_alike_guard"):
        lines.append("  someone enrolled looks like this person: the gate stops as short of them "
                     "as this coverage allows ([forget] scramble_guard)")
    if cov is not None and cov.get("step"):
        st = cov["step"]
        alone = "n/a" if st["share"] is None else f"{st['share']:.2f}"
        lines.append(f"  the further step alone: {alone} of {st['faces']} escaped photo(s) held "
                     f"out, {st['in_sample']} of those it was fitted on")
    if res.forced:
        lines.append("forced: --force overrode the refusal ("
                     + ", ".join(r.get("forced_over", [])) + "); the ledger records it")
    if dry_run and res.refusal:
        lines.append(f"forget would refuse this: {res.refusal} (--force commits anyway)")
    return lines


@click.command()
@click.option("--identity", type=IDENTITY, default=None, help="The erased identity's id.")
@click.option("--name", default=None,
              help="By the name enrol recorded, while the person is enrolled (names of erased "
                   "people are not kept: after forget, use --identity).")
@click.option("--images", type=click.Path(path_type=Path), default=None,
              help="Photos of the person (ideally unseen) for the re-enrolment attack.")
@click.option("--no-record", is_flag=True,
              help="Do not record the outcome in the workspace (read-only run).")
@_command
def verify(workspace: Path, as_json: bool, identity: int | None, name: str | None,
           images: Path | None, no_record: bool) -> None:
    """Judge whether an erased identity is still found: PASS (exit 0), FAIL (exit 1) or
    INCONCLUSIVE (exit 3: the photos cannot decide)."""
    from facekd.errors import WorkspaceError

    writable = not no_record
    try:
        ws = _open(workspace, writable=writable)
    except WorkspaceError:
        if not writable:
            raise
        # A workspace this user may not write (or one another writer holds) is still verified;
        # the outcome is just not recorded.
        ws, writable = _open(workspace), False
    with ws:
        res = ws.verify(_who(ws, identity, name), images=images, progress=_progress(),
                        record=writable)
    _emit(as_json, res.to_dict(), lambda: format_verify(res))
    sys.exit({"PASS": EXIT_OK, "FAIL": EXIT_VERIFY_FAILED}.get(res.status, EXIT_INCONCLUSIVE))


def format_verify(res: Any) -> str:
    """Human-readable verify result (numbered images and scores, never names or paths)."""
    pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    lines = []
    if res.id_threshold is not None:
        lines.append(f"one-to-many MATCH threshold {res.id_threshold:.3f} (FPIR "
                     f"{pct(res.bound.get('fpir'))}); one-to-one {res.threshold:.3f} "
                     f"(FAR {res.bound.get('far'):g})" if res.threshold is not None else
                     f"one-to-many MATCH threshold {res.id_threshold:.3f}")
    for im in res.images:
        gate = "" if im["gate"] is None else (
            "  erased" if im["gate"] >= 1.0 else "  NOT erased" if im["gate"] == 0
            else f"  partly erased ({im['gate']:.2f})")
        lines.append(f"  image {im['image']:<4} best {im['best_identity']!s:>10}  score "
                     f"{im['score']:+.3f}  {'MATCH' if im['match'] else 'no match'}{gate}")
    e = res.erased_photos
    if e is not None:
        lo, hi = e["interval"]
        line = (f"{e['erased']} of {e['photos']} photos are erased ({pct(e['share'])}, 95% "
                f"{pct(lo)}-{pct(hi)})")
        if e["not_erased"]:
            shown = ", ".join(map(str, e["not_erased"][:10])) + (
                ", ..." if len(e["not_erased"]) > 10 else "")
            line += (f"; not erased: image {shown}. Widen the erasure with them: "
                     "facekd forget --identity ID --images DIR_OF_THOSE_PHOTOS")
        lines += ["", line]
    a, b = res.attack, res.bound
    if a is not None:
        lines += ["", f"re-enrolment attack over every split of {a['photos']} photos "
                      f"({a['enrolled']} enrolled, {a['probes']} probes), 95% intervals:"]
        for name in a["after"]:
            f, g = a["after"][name], a["before"].get(name)
            before = "" if g is None else (f"   before the edit {pct(g['estimate'])} "
                                           f"[{pct(g['low'])}, {pct(g['high'])}]")
            lines.append(f"  {name:<7} {pct(f['estimate']):>6} [{pct(f['low'])}, "
                         f"{pct(f['high'])}]  bound <= {pct(f['bound'])}  {f['ruling']}{before}")
        lines.append(f"  bound: {b['factor']:g} x max(chance 1/{b['identities'] + 1} = "
                     f"{pct(b['chance'])}, what {a['enrolled']} unrelated strangers' photos "
                     f"reach here {pct(b.get('stranger_baseline'))}); TAR <= "
                     f"{pct(b['max_tar'])}")
        r = res.retained
        lines.append(f"  everyone else: rank-1 {pct(r.get('rank1'))}, TAR {pct(r.get('tar'))}")
    lines += [f"note: {n}" for n in res.notes]
    lines.append(f"{res.status}: {res.reason}")
    if not res.recorded:
        lines.append("(not recorded in the workspace)")
    return "\n".join(lines)
