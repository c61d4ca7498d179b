"""The public face of the erasure: ``from facekd.erasure import Erasure, fit_esc, ...``.

:class:`Erasure` and the array checks live in the math core (:mod:`facekd.core.erasure`); the fit
functions in the methods (:mod:`facekd.methods`), one module per method. This module sits above
both and gives their names on first access (PEP 562), so ``import facekd`` stays light and the
math core never imports the methods.
"""

from __future__ import annotations

from typing import Any

from facekd.core import erasure as _core
from facekd.core.erasure import Erasure, ErasureError, as_matrix, single_threaded_blas

__all__ = ["Erasure", "ErasureError", "as_matrix", "single_threaded_blas", "fit_esc", "fit_esc_t",
           "fit_scramble", "select_k"]


def __getattr__(name: str) -> Any:
    """``fit_esc``, ``select_k``, ``fit_esc_t``, ``fit_scramble`` and ``RIDGE_GRID`` from the
    methods; any other name of :mod:`facekd.core.erasure` from there."""
    if name in ("fit_esc", "select_k"):
        from facekd.methods import esc

        return getattr(esc, name)
    if name == "fit_esc_t":
        from facekd.methods import esc_t

        return esc_t.fit_esc_t
    if name in ("fit_scramble", "RIDGE_GRID"):
        from facekd.methods import scramble

        return getattr(scramble, name)
    if not name.startswith("__"):
        return getattr(_core, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
