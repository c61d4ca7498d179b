"""The public face of the measurements: ``from facekd.metrics import erasure_report, ...``.

They live in the math core, one module per concept (:mod:`facekd.core.metrics`); every name of
that package is importable from here too.
"""

from __future__ import annotations

from typing import Any

from facekd.core import metrics as _core
from facekd.core.metrics import *  # noqa: F401,F403
from facekd.core.metrics import __all__  # noqa: F401


def __getattr__(name: str) -> Any:
    """Any other name of :mod:`facekd.core.metrics` (PEP 562)."""
    if name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(_core, name)
