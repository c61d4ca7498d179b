"""The ``facekd`` command: parse, call the Python API, print. No logic of its own.

Exit status: 0 ok, 1 verification failed, 2 bad input or usage. With ``--json`` stdout holds only
JSON; progress bars and warnings go to stderr. Errors print one line, ``error: ...``, on stderr.
Commands import the workspace, ``bench``, ``demo`` and ``report`` inside their bodies: that keeps
``facekd --help`` fast.

This module is the group and the entry point; the commands are grouped in
:mod:`facekd.cli.workspace_commands` (init, enroll, calibrate, identities, search, check,
ledger),
:mod:`facekd.cli.erasure_commands` (forget, verify), :mod:`facekd.cli.export_commands`
(export-onnx, report) and :mod:`facekd.cli.evaluation_commands` (demo, bench), on what
:mod:`facekd.cli.common` shares.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from facekd.cli import (erasure_commands, evaluation_commands, export_commands,
                        workspace_commands)
from facekd.cli.common import DEFAULT_WORKSPACE, EXIT_OK, WORKSPACE_ENV, _WORKSPACE_TYPE, _fail


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="facekd")
@click.option("--workspace", "-w", type=_WORKSPACE_TYPE, default=None,
              help=f"Workspace directory for the command (default ${WORKSPACE_ENV}, else "
                   f"./{DEFAULT_WORKSPACE}); also accepted after the command name.")
@click.pass_context
def cli(ctx: click.Context, workspace: Path | None) -> None:
    """Erase people from a face encoder and its FAISS gallery, and prove it."""
    ctx.obj = {"workspace": workspace}


for _command in (workspace_commands.init, workspace_commands.enroll, workspace_commands.calibrate,
                 workspace_commands.identities,
                 workspace_commands.search, workspace_commands.check, erasure_commands.forget,
                 erasure_commands.verify, export_commands.export_onnx, export_commands.report,
                 workspace_commands.ledger, evaluation_commands.demo, evaluation_commands.bench):
    cli.add_command(_command)


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
