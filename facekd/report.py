"""The public face of ``facekd report`` (docs/cli.md): ``from facekd.report import write_report``.

The HTML report lives with the other evaluation shells (:mod:`facekd.evaluation.report`); every
name of that module is importable from here too.
"""

from __future__ import annotations

from typing import Any

from facekd.evaluation import report as _shell
from facekd.evaluation.report import *  # noqa: F401,F403
from facekd.evaluation.report import __all__  # noqa: F401


def __getattr__(name: str) -> Any:
    """Any other name of :mod:`facekd.evaluation.report` (PEP 562)."""
    if name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(_shell, name)
