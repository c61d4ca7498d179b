"""The ``facekd`` command (``main``); its command groups are the modules of this package."""

from facekd.cli.main import cli, main  # noqa: F401
