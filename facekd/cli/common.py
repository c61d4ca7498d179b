"""What every ``facekd`` command shares: exit codes, the identity and method parameter types, the
workspace option, the user-error mapping (one ``error:`` line on stderr), ``--json`` output, and
opening the workspace (imported inside :func:`_open`, which keeps ``facekd --help`` fast).
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
        from facekd.core.metrics import MetricsError

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
