"""The public face of verify's statistics and rulings: ``from facekd.verdict import combine, ...``.

They live in the math core (:mod:`facekd.core.verdict`); every name of that module is importable
from here too.
"""

from __future__ import annotations

from typing import Any

from facekd.core import verdict as _core
from facekd.core.verdict import *  # noqa: F401,F403
from facekd.core.verdict import __all__  # noqa: F401


def __getattr__(name: str) -> Any:
    """Any name of :mod:`facekd.core.verdict` (PEP 562)."""
    if name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(_core, name)
