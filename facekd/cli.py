"""The ``facekd`` command: parse, call the Python API, print. No logic of its own.

Exit status: 0 ok, 1 verification failed, 2 bad input or usage. With ``--json`` stdout holds only
JSON; progress bars and warnings go to stderr. Errors print one line, ``error: ...``, on stderr.
Commands import the workspace, ``bench``, ``demo`` and ``report`` inside their bodies: that keeps
``facekd --help`` fast.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import sqlite3
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import click

from facekd import methods
from facekd.errors import USER_ERRORS
from facekd.terminal import printable

EXIT_OK, EXIT_VERIFY_FAILED, EXIT_USAGE, EXIT_INCONCLUSIVE = 0, 1, 2, 3
DEBUG_ENV = "FACEKD_DEBUG"  # set to 1: unexpected errors keep their traceback
class _IdentityType(click.ParamType):
    """``--identity``: an integer id that SQLite's INTEGER can hold; a name given here gets the
    hint to use ``--name``."""

    name = "ID"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            v = value
        else:
            try:
                v = int(str(value).strip())
            except ValueError:
                self.fail(f"{str(value)[:60]!r} is not an integer identity id; to pick a person "
                          "by the name enrol recorded, use --name", param, ctx)
        if not -(2 ** 63) <= v <= 2 ** 63 - 1:
            self.fail(f"{v} is outside the ids a gallery can store (a signed 64-bit integer)",
                      param, ctx)
        return v


IDENTITY = _IdentityType()


class _MethodChoice(click.Choice):
    """``--method``: one of the registered erasure methods (:mod:`facekd.methods`), read when the
    option is parsed, so a method registered after this module was imported is accepted too."""

    def __init__(self) -> None:
        super().__init__((), case_sensitive=True)

    @property
    def choices(self) -> tuple[str, ...]:
        return methods.names()

    @choices.setter
    def choices(self, _value: Any) -> None:  # click.Choice.__init__ assigns it; the registry rules
        pass


def _user_errors() -> tuple[type[BaseException], ...]:
    """Library errors a user can cause, plus the lock timeout and metrics' ValueError subclass."""
    extra: list[type[BaseException]] = []
    try:
        from facekd.metrics import MetricsError

        extra.append(MetricsError)
    except ImportError:  # pragma: no cover
        pass
    try:
        from filelock import Timeout

        extra.append(Timeout)
    except ImportError:  # pragma: no cover
        pass
    return tuple(USER_ERRORS) + tuple(extra)


def _fail(message: str, code: int = EXIT_USAGE) -> None:
    click.echo(f"error: {printable(str(message).strip())}", err=True)
    sys.exit(code)


def _os_message(exc: OSError) -> str:
    """One line for an OSError: the file, and what went wrong in words (no errno tuple)."""
    where = exc.filename or ""
    what = exc.strerror or str(exc) or type(exc).__name__
    hint = {errno.ENOSPC: "; free some space and retry (nothing was committed)",
            errno.EROFS: "; the workspace or target is on a read-only file system",
            errno.EACCES: "; check the permissions",
            errno.EFBIG: "; a file-size limit (ulimit -f) or the file system's own limit was "
                         "reached"}.get(exc.errno, "")
    return f"{where}: {what}{hint}" if where else f"{what}{hint}"


def _run_mapped(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; every error becomes one ``error:`` line and exit 2 (warnings are printed as
    ``warning:`` lines only when the command succeeds, so a failure prints exactly one line)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = fn(*args, **kwargs)
        except _user_errors() as exc:
            _fail(str(exc) or type(exc).__name__)
        except OSError as exc:  # disk full, read-only file system, permissions, /proc...
            _fail(_os_message(exc))
        except sqlite3.Error as exc:  # a damaged page, a full disk during the commit
            _fail(f"gallery database: {exc}")
        except MemoryError:
            _fail("out of memory")
        except (click.exceptions.Exit, click.ClickException, SystemExit, KeyboardInterrupt):
            raise
        except Exception as exc:  # a bug: still one line, the traceback on request
            if os.environ.get(DEBUG_ENV):
                raise
            _fail(f"internal error ({type(exc).__name__}: {exc}); rerun with {DEBUG_ENV}=1 "
                  "and report it")
    for w in caught:
        if not issubclass(w.category, DeprecationWarning):
            click.echo(f"warning: {printable(w.message)}", err=True)
    return result


WORKSPACE_ENV, DEFAULT_WORKSPACE = "FACEKD_WORKSPACE", "facekd-workspace"
_WORKSPACE_TYPE = click.Path(file_okay=False, path_type=Path)


def _given_workspace() -> Path | None:
    """``-w`` as given before the command name (``facekd -w DIR init``), else ``None``."""
    root = click.get_current_context().find_root()
    return (root.obj or {}).get("workspace")


def _workspace(here: Path | None, *, fallback: bool = True) -> Path | None:
    """The workspace a command works on: ``-w`` after the command name, or before it, or (with
    ``fallback``) $FACEKD_WORKSPACE, or ./facekd-workspace. Two different ``-w`` values are
    refused rather than one silently winning: forget in the wrong workspace erases the wrong
    gallery."""
    before = _given_workspace()
    if here is not None and before is not None and Path(here) != Path(before):
        _fail(f"two workspaces given: -w {printable(before)} before the command and "
              f"-w {printable(here)} after it; give one")
    chosen = here or before
    if chosen is None and fallback:
        chosen = os.environ.get(WORKSPACE_ENV) or DEFAULT_WORKSPACE
    return None if chosen is None else Path(chosen)


def _command(fn: Callable) -> Callable:
    """Common options (--workspace, --json) and the error-to-exit-status mapping."""

    @click.option("--workspace", "-w", type=_WORKSPACE_TYPE, default=None,
                  help=f"Workspace directory (default ${WORKSPACE_ENV}, else ./{DEFAULT_WORKSPACE}); "
                       "also accepted before the command name.")
    @click.option("--json", "as_json", is_flag=True, help="Print only JSON on stdout.")
    @functools.wraps(fn)
    def wrapper(*args: Any, workspace: Path | None = None, **kwargs: Any) -> Any:
        return _run_mapped(fn, *args, workspace=_workspace(workspace), **kwargs)

    return wrapper


def _progress() -> bool:
    """Progress on stderr for long work, except with ``--json``: a bar on a terminal, a plain
    line every 10 s in a log or pipe (:mod:`facekd.progress`)."""
    ctx = click.get_current_context(silent=True)
    return not (ctx is not None and ctx.params.get("as_json"))


def _emit(as_json: bool, data: Any, text: str | Callable[[], str]) -> None:
    """``data`` as indented JSON (``data`` may be a callable that builds it) or ``text``."""
    if as_json:
        click.echo(json.dumps(data() if callable(data) else data, indent=2, default=str))
    else:
        click.echo(text() if callable(text) else text)


def _open(workspace: Path, *, writable: bool = False, verify: bool = True):
    from facekd.workspace import Workspace

    return Workspace.open(workspace, writable=writable, verify=verify)


def _who(ws: Any, identity: int | None, name: str | None, *, required: bool = True) -> int | None:
    """The identity id from ``--identity ID`` or ``--name NAME`` (exactly one when ``required``,
    at most one otherwise); an unknown name is a WorkspaceError (exit 2)."""
    if identity is not None and name is not None:
        _fail("give --identity or --name, not both")
    if identity is None and name is None:
        if required:
            _fail("give --identity ID or --name NAME")
        return None
    return identity if name is None else ws.identity_named(name)


def _report_skipped(skipped: list) -> None:
    """Name every skipped image and why, on stderr (the batch went on without it)."""
    for path, reason in skipped:
        reason = str(reason).removeprefix(f"{path}: ")
        click.echo(f"skipped {printable(path)}: {printable(reason)}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="facekd")
@click.option("--workspace", "-w", type=_WORKSPACE_TYPE, default=None,
              help=f"Workspace directory for the command (default ${WORKSPACE_ENV}, else "
                   f"./{DEFAULT_WORKSPACE}); also accepted after the command name.")
@click.pass_context
def cli(ctx: click.Context, workspace: Path | None) -> None:
    """Erase people from a face encoder and its FAISS gallery, and prove it."""
    ctx.obj = {"workspace": workspace}


# ------------------------------------------------------------------------------ workspace
@cli.command()
@click.option("--encoder", required=True, metavar="SPEC",
              help="dlib | dlib:PATH | facenet:PATH | onnx:PATH | insightface:DIR | samples "
                   "(insightface:DIR: a model-pack folder or a pack name under "
                   "~/.insightface/models; its recognition model, and its detector's 5 "
                   "landmarks for alignment)")
@click.option("--aligned", is_flag=True, help="Images are already aligned chips (no detection).")
@click.option("--index", default="flat", show_default=True, help="FAISS index kind.")
@click.option("--threshold", type=float, default=None,
              help="Match threshold (cosine); default: auto, from the gallery at FAR 1e-3.")
@click.option("--gallery", "backend", default="faiss", show_default=True, metavar="SPEC",
              help="Where the gallery vectors live: faiss (in the workspace), "
                   "milvus://HOST:PORT/NAME (credentials from MILVUS_TOKEN or MILVUS_USER + "
                   "MILVUS_PASSWORD) or milvus-lite:PATH.db (relative to the workspace).")
@_command
def init(workspace: Path, as_json: bool, encoder: str, aligned: bool, index: str,
         threshold: float | None, backend: str) -> None:
    """Create a workspace for an encoder."""
    from facekd.workspace import Workspace

    family, _, arg = encoder.partition(":")
    if family.strip().lower() == "insightface" and arg:
        from facekd.encoders.insightface import resolve_pack

        encoder = f"insightface:{resolve_pack(arg)}"  # later commands run from anywhere
    with Workspace.init(workspace, encoder, aligned=aligned, index=index,
                        match_threshold=threshold, backend=backend) as ws:
        enc = ws.base_encoder
        model_file, file_sha = _model_file(enc)
        data = {"workspace": str(ws.root), "encoder": encoder, "family": enc.family,
                "dim": enc.dim, "fingerprint": enc.fingerprint,
                "model": str(enc.path) if getattr(enc, "path", None) else None,
                "detector": getattr(enc.input_spec, "detector", None),
                "input_spec": enc.input_spec.to_dict(), "input_spec_source": enc.input_spec_source,
                "input_spec_guessed": enc.input_spec_guessed,
                "model_file": model_file, "model_file_sha256": file_sha}
    if enc.input_spec_guessed:
        warnings.warn(f"{model_file or encoder} says nothing about its input (no facekd.input_spec "
                      f"or input_mean/input_std metadata, no preprocessing head): assuming "
                      f"ArcFace's {enc.input_spec.describe()}; if the model expects another, every "
                      "embedding is wrong: add the metadata (docs/cli.md, 'Input contracts')")
    lines = [f"workspace {data['workspace']}: encoder {encoder} "
             f"({enc.family}, d={enc.dim}, weights sha256 {enc.fingerprint[:12]}...)",
             f"  input: {enc.input_spec.describe()}; from {enc.input_spec_source}"]
    label = "recognition model" if family.strip().lower() == "insightface" else "model file"
    if model_file:
        lines.append(f"  {label}: {model_file} (file sha256 {file_sha[:12]}...)")
    if family.strip().lower() == "insightface":
        if data["detector"] and not aligned:
            lines.append(f"  faces: the pack's detector {data['detector']} (5 landmarks, "
                         "insightface's alignment)")
    _emit(as_json, data, "\n".join(printable(line) for line in lines))


def _model_file(enc: Any) -> tuple[str | None, str | None]:
    """``(path, sha256 of its bytes)`` of the file an encoder was loaded from, when it has one
    (the fingerprint hashes the weight arrays instead: it survives re-saving, the file's does not)."""
    source = getattr(enc, "source", None)
    if source:
        return source["file"], source["file_sha256"]
    path = getattr(enc, "path", None)
    if path and Path(path).is_file():
        import hashlib

        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return str(path), h.hexdigest()
    return None, None


def _separation_warning(ws: Any) -> dict | None:
    """The gallery's own identity separation (:mod:`facekd.separation`); warns when the encoder
    cannot tell the enrolled people apart, so a broken encoder is not deployed silently."""
    from facekd.separation import identity_separation, warning_text

    gallery = ws.gallery
    vectors = gallery.vectors_view() if hasattr(gallery, "vectors_view") else gallery.vectors()
    check = identity_separation(vectors, gallery.labels())
    if check is not None and not check["usable"]:
        warnings.warn(warning_text(check, "the gallery") + "; enrolment and erasure figures "
                      "are meaningless with it")
    return check


@cli.command()
@click.argument("tree", type=click.Path(path_type=Path))
@click.option("--ids", "ids_csv", type=click.Path(path_type=Path), default=None,
              help="CSV mapping folder names to integer identity ids.")
@click.option("--merge", is_flag=True,
              help="Allow CSV rows that put a folder under an id already used by another folder "
                   "or an enrolled person (merges them into one identity).")
@_command
def enroll(workspace: Path, as_json: bool, tree: Path, ids_csv: Path | None, merge: bool) -> None:
    """Enrol a folder-per-identity image tree with the deployed (edited) encoder."""
    with _open(workspace, writable=True) as ws:
        res = ws.enroll(tree, ids_csv=ids_csv, progress=_progress(), merge=merge)
        total = len(ws.identities())
        check = _separation_warning(ws) if res.added else None
    _report_skipped(res.skipped)
    data = {"added": int(res.added), "skipped_existing": int(res.skipped_existing),
            "skipped": len(res.skipped), "identities": len(res.identities),
            "gallery_identities": total,
            "assigned": [{"name": name, "identity": int(ident), "new": bool(new)}
                         for name, ident, new in res.assigned], "encoder_check": check}
    summary = (f"enrolled {data['added']} face(s) of {data['identities']} identities "
               f"({data['skipped_existing']} already present, {data['skipped']} skipped); "
               f"gallery holds {total} identities")
    mapping = [f"  {a['identity']:>10}  {printable(a['name'])}{'' if a['new'] else '  (as before)'}"
               for a in data["assigned"]]
    _emit(as_json, data, "\n".join(
        [summary] + (["identity ids for folders named by person:"] + mapping if mapping else [])))


@cli.command()
@_command
def identities(workspace: Path, as_json: bool) -> None:
    """List the gallery's identities."""
    with _open(workspace) as ws:
        infos = ws.identities()
    # Built only in the form asked for: 100k identities cost 0.1 s per form.
    _emit(as_json, (lambda: [{"identity": int(i.identity), "name": i.name, "faces": int(i.n_faces)}
                             for i in infos]),
          lambda: "\n".join([f"{'identity':>10}  {'faces':>5}  name"]
                            + [f"{i.identity:>10}  {i.n_faces:>5}  {printable(i.name or '')}"
                               for i in infos]))


@cli.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.option("-k", "k", type=click.IntRange(1, 100), default=5, show_default=True)
@click.option("--identity", type=IDENTITY, default=None,
              help="Compare with this identity's faces only (is IMAGE this person?).")
@click.option("--name", default=None, help="As --identity, by the name enrol recorded.")
@_command
def search(workspace: Path, as_json: bool, image: Path, k: int, identity: int | None,
           name: str | None) -> None:
    """Best gallery matches for the largest face in IMAGE."""
    with _open(workspace) as ws:
        res = ws.search(image, k=k, identity=_who(ws, identity, name, required=False))
    thr = res["threshold"]

    def text() -> str:
        image = printable(res["image"])
        how = ("one-to-many, FPIR" if res["threshold_kind"] == "fpir" else "one-to-one, FAR")
        lines = [f"{image}  (match threshold {thr:.3f}, {how})" if thr is not None else image]
        for m in res["matches"]:
            lines.append(f"  {m['identity']:>10}  {m['score']:+.3f}  "
                         f"{'MATCH' if m['match'] else '     '}  {printable(m['name'] or '')}")
        return "\n".join(lines)

    _emit(as_json, res, text)


@cli.command()
@click.option("--repair", is_flag=True,
              help="First delete what a writer deletes on open: an earlier generation's files "
                   "(which may hold erased faces) and crashed saves' temp files.")
@_command
def check(workspace: Path, as_json: bool, repair: bool) -> None:
    """Check gallery files, encoder state, ledger and receipts; exit 1 on a problem."""
    if repair:  # a writer's open removes the stale files (gallery_tools.generations)
        _open(workspace, writable=True).close()
    with _open(workspace, verify=False) as ws:  # check reports damaged files, open refuses them
        res = ws.check()
    _emit(as_json, res, "ok" if res["ok"] else "\n".join(
        ["problems:"] + [printable(p) for p in res["problems"]]))
    if not res["ok"]:
        sys.exit(EXIT_VERIFY_FAILED)


# ------------------------------------------------------------------------------ forget
@cli.command()
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
    if cov is not None and cov.get("share") is not None:
        lines.append(f"coverage {cov['share']:.2f} ({cov['covered']} of {cov['faces']} "
                     f"{'held-out' if cov['held_out'] else 'seen'} photos: {cov['criterion']}); "
                     f"floor {cov['floor']:.2f}")
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


@cli.command()
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


# ------------------------------------------------------------------------------ outputs
@cli.command("export-onnx")
@click.argument("out", type=click.Path(path_type=Path), required=False)
@click.option("--fp16", is_flag=True, help="Store weights in float16.")
@click.option("--original", is_flag=True, help="Export the unedited encoder (it still knows everyone).")
@click.option("--force", is_flag=True, help="Replace OUT even if it is not an ONNX model.")
@click.option("--bake-preprocessing", is_flag=True,
              help="Prepend a Sub/Mul head: the file takes raw RGB pixels (as insightface feeds "
                   "a model whose graph normalises its own input).")
@click.option("--insightface-pack", "pack", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="An insightface model pack folder: write the edited model into "
                                 "a copy of it at OUT (a new folder), under the file name "
                                 "FaceAnalysis loads.")
@click.option("--in-place", is_flag=True,
              help="With --insightface-pack: edit the pack itself (no OUT); the replaced file "
                   "and manifest.json are backed up beside the pack.")
@_command
def export_onnx(workspace: Path, as_json: bool, out: Path | None, fp16: bool, original: bool,
                force: bool, bake_preprocessing: bool, pack: Path | None, in_place: bool) -> None:
    """Export the deployed (edited) encoder to ONNX, with a parity report.

    OUT must lie outside the workspace; an existing OUT is replaced (atomically) only when it is
    an ONNX model, or with --force. With --insightface-pack, OUT is the folder for the edited
    copy of the pack (or absent, with --in-place)."""
    if pack is not None:
        if in_place == (out is not None):
            _fail("with --insightface-pack give OUT (a new folder for the edited copy) or "
                  "--in-place, not both")
        with _open(workspace) as ws:
            res = ws.export_to_insightface_pack(pack, out=out, in_place=in_place, fp16=fp16,
                                                original=original)
        _emit(as_json, res, lambda: "\n".join(
            [f"wrote {printable(res['file'])} (replacing the pack's {printable(res['replaced'])})",
             f"  insightface FaceAnalysis loads: {printable(res['loaded_by_insightface'])}"]
            + ([f"  original backed up in {printable(res['backup'])}"] if res["backup"] else [])
            + (["  manifest.json sha256 updated"] if res["manifest_updated"] else [])
            + (["  a Sub/Mul preprocessing head was baked in (insightface feeds raw pixels)"]
               if res["baked_head"] else [])
            + ([f"  note: the encoder's chips are aligned as {res['alignment']!r}; FaceAnalysis.get "
                "aligns with the ArcFace template"] if res["alignment"] != "arcface" else [])
            + [f"  parity: min cosine {res['export']['min_cosine']:.6f}, max |diff| "
               f"{res['export']['max_abs_diff']:.2e}"]))
        return
    if in_place:
        _fail("--in-place only applies with --insightface-pack")
    if out is None:
        _fail("missing argument OUT (the .onnx file to write)")
    with _open(workspace) as ws:
        rep = ws.export_onnx(out, fp16=fp16, original=original, force=force,
                             bake_preprocessing=bake_preprocessing)
    data = rep.to_dict() if hasattr(rep, "to_dict") else {"path": str(out)}
    data.setdefault("path", str(out))
    _emit(as_json, data, lambda: f"wrote {printable(out)}\n" + "\n".join(
        f"  {key}: {val}" for key, val in data.items() if key != "path"))


@cli.command()
@click.option("--html", "html_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="HTML file to write (default WORKSPACE/report.html).")
@click.option("--receipt", "receipt_id", default=None, help="Receipt id (default: the latest).")
@click.option("--bench", "bench_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="A `facekd bench --out` folder whose plots to include (default: WORKSPACE/bench, "
                   "then facekd-bench beside the workspace, then ./facekd-bench, when present).")
@_command
def report(workspace: Path, as_json: bool, html_out: Path | None, receipt_id: str | None,
           bench_dir: Path | None) -> None:
    """An HTML page for a deletion receipt: a one-screen summary, plots, bench plots, receipt."""
    from facekd.report import write_report

    with _open(workspace) as ws:
        res = write_report(ws, html_out=html_out, receipt_id=receipt_id, bench_dir=bench_dir)
    data = {key: str(v) if isinstance(v, Path) else v for key, v in res.items()}
    _emit(as_json, data, lambda: "\n".join(
        [f"wrote {v}" for key, v in data.items() if key in ("html", "histograms_png", "metrics_png")]
        + ([f"  with the bench plots from {data['bench']}"] if data.get("bench") else [])))


@cli.command()
@click.option("--receipt", "receipt_id", default=None, help="Print this receipt in full.")
@_command
def ledger(workspace: Path, as_json: bool, receipt_id: str | None) -> None:
    """List committed deletions (hashed identities only), or print one receipt."""
    with _open(workspace) as ws:
        if receipt_id:
            rec = ws.receipt(receipt_id)
            _emit(as_json, rec, lambda: json.dumps(rec, indent=2))
            return
        entries = ws.ledger()
    _emit(as_json, entries, lambda: "\n".join(
        [f"{'receipt':<22} {'identity hash':<18} {'kind':<8} {'method':<8} {'edit':<11} created"]
        + [f"{e['receipt_id']:<22} {e['identity_hash'][:16]:<18} {e.get('kind', 'erasure'):<8} "
           f"{e['method']:<8} {_edit_size(e):<11} {e['created']}"
           + ("  (forced)" if e.get("forced") else "") for e in entries]) if entries
        else "no deletions yet")


# ------------------------------------------------------------------------------ demo
@cli.command()
@click.option("--workspace", "-w", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to build the demo workspace (default: a fresh temp dir).")
@click.option("--identities", "n_ids", type=click.IntRange(3, 100000), default=200, show_default=True)
@click.option("--images", "n_images", type=click.IntRange(4, 1000), default=8, show_default=True)
@click.option("--dataset", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder-per-identity photos to use instead of synthetic faces.")
@click.option("--encoder", default=None, help="Encoder for --dataset (e.g. dlib).")
@click.option("--request-images", type=click.IntRange(0, 1000), default=40, show_default=True,
              help="Synthetic demo: extra photos of the person sent with the deletion request.")
@click.option("--method", type=_MethodChoice(), default=None,
              help="Erasure method (default: scramble, the workspace default).")
@click.option("--k", type=click.IntRange(1, None), default=None,
              help="ESC: erase exactly K directions.")
@click.option("--energy", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="ESC: erase the directions holding this share of the person's energy.")
@click.option("--json", "as_json", is_flag=True, help="Print only JSON on stdout.")
def demo(workspace: Path | None, n_ids: int, n_images: int, dataset: Path | None,
         encoder: str | None, request_images: int, method: str | None, k: int | None,
         energy: float | None, as_json: bool) -> None:
    """End to end: enrol, forget one person, export ONNX, verify, print before/after."""
    from facekd.demo import run_demo

    # -w before or after "demo"; never $FACEKD_WORKSPACE: a demo must not build into a real one.
    workspace = _workspace(workspace, fallback=False)
    log = (lambda msg: click.echo(msg, err=True)) if as_json else click.echo
    try:
        res = run_demo(workspace, identities=n_ids, images=n_images, dataset=dataset,
                       encoder=encoder, method=method, k=k, energy=energy,
                       request_images=request_images, echo=log, progress=_progress())
    except _user_errors() as exc:
        _fail(str(exc))
    if as_json:
        click.echo(json.dumps(res, indent=2, default=str))
    if res["verify"]["status"] == "FAIL":  # INCONCLUSIVE: the demo's few photos cannot decide
        sys.exit(EXIT_VERIFY_FAILED)


# ------------------------------------------------------------------------------ bench
@cli.command()
@click.option("--dataset", required=True, type=click.Path(path_type=Path),
              help="Folder-per-identity photo tree (jpg/png/pgm).")
@click.option("--encoder", required=True, metavar="SPEC",
              help="dlib | dlib:PATH | facenet:PATH | onnx:PATH | insightface:DIR | samples")
@click.option("--methods", default=",".join(methods.names()), show_default=True,
              help="Comma-separated erasure methods; a method may carry settings, e.g. "
                   "scramble:alpha=1.1:q=0.9999 or esc:k=8.")
@click.option("--erase", type=click.IntRange(1, None), default=12, show_default=True,
              help="People erased one at a time (single-erasure rows).")
@click.option("--sequential", type=click.IntRange(0, None), default=20, show_default=True,
              help="People erased one after another per method (0 = off).")
@click.option("--fit-photos", default="all,10", show_default=True,
              help="Fit on all non-fresh photos and/or only K of them: all | 10 | 1,2,3,5,all.")
@click.option("--gallery-people", type=click.IntRange(3, None), default=None,
              help="A small workspace: only N identities take part (the erased people and a "
                   "seeded draw of others); default: all.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default="facekd-bench", show_default=True, help="Output folder.")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Embedding cache root (default $FACEKD_CACHE or ~/.cache/facekd).")
@click.option("--json", "as_json", is_flag=True, help="Print only JSON on stdout.")
def bench(dataset: Path, encoder: str, methods: str, erase: int, sequential: int,
          fit_photos: str, gallery_people: int | None, seed: int, out_dir: Path,
          cache: Path | None, as_json: bool) -> None:
    """Benchmark erasure methods on your own photos: forget, retain, attacks, sequential."""
    from facekd.bench import format_markdown, run_bench, write_outputs

    log = (lambda msg: click.echo(msg, err=True)) if as_json else click.echo
    try:
        res = run_bench(dataset, encoder, methods=methods, erase=erase, sequential=sequential,
                        fit_photos=fit_photos, gallery_people=gallery_people, seed=seed,
                        cache=cache, progress=_progress(),
                        echo=log)
        paths = write_outputs(res, out_dir)
    except _user_errors() as exc:
        _fail(str(exc) or type(exc).__name__)
    except OSError as exc:  # e.g. an unwritable --out
        _fail(f"{exc.filename or ''}: {exc.strerror or exc}")
    log("wrote " + ", ".join(str(p) for p in paths.values()))
    if as_json:
        click.echo(json.dumps(res, indent=2))
    else:
        click.echo("\n" + format_markdown(res))


def _edit_size(entry: dict) -> str:
    """A ledger entry's edit: ``1 gate`` for the scramble, ``k=3`` for ESC (older entries: k)."""
    gates = entry.get("gates", 0)
    return f"{gates} gate{'s' * (gates != 1)}" if gates else f"k={entry.get('k', 0)}"


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: click usage errors become one ``error:`` line, exit 2."""
    try:
        rv = cli.main(args=argv, prog_name="facekd", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        _fail(exc.format_message())
    sys.exit(rv if isinstance(rv, int) else EXIT_OK)


if __name__ == "__main__":
    main()
