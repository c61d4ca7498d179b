"""Erasure methods, one module each, behind one protocol and registered by name.

``get(name).fit(forget, FitContext(...)) -> Erasure``; :func:`names` lists them for the CLI, the
workspace and ``facekd bench`` (:mod:`facekd.methods.base` explains how to add one). Importing this
package registers the built-in methods: ``esc``, ``esc-t`` and ``scramble``.
"""

from facekd.methods.base import (FitContext, Method, MethodError, get, names, register, unit_rows,
                                 unregister)
from facekd.methods import esc, esc_t, scramble  # noqa: E402,F401  (registers the built-ins)
from facekd.methods.esc import fit_esc, select_k
from facekd.methods.esc_t import fit_esc_t
from facekd.methods.scramble import fit_scramble

__all__ = ["FitContext", "Method", "MethodError", "fit_esc", "fit_esc_t",
           "fit_scramble", "get", "names", "register", "select_k", "unit_rows", "unregister"]
