"""Text that reaches a terminal: names, paths and messages with their control characters escaped.

A name like ``"\\x1b]0;pwned\\x07"`` or ``"Bob\\n  1234  5  Alice"`` would set the window title or
forge a row when printed raw; :func:`printable` is the one place that makes such text inert.
"""

from __future__ import annotations

import unicodedata

__all__ = ["printable"]

# Cc: C0/C1 controls (ESC, BEL, CR, LF...); Cf: format characters (bidi overrides that reorder
# what follows); Zl/Zp: line and paragraph separators; Cs: lone surrogates from undecodable
# file names.
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def _escape(ch: str) -> str:
    code = ord(ch)
    if ch == "\n":
        return "\\n"
    if ch == "\t":
        return "\\t"
    if ch == "\r":
        return "\\r"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object) -> str:
    """``str(text)`` with every control, format and separator character written as a
    Python-style escape (``\\x1b``, ``\\n``, ``\\u202e``): inert, and always one line."""
    s = str(text)
    if s.isprintable():
        return s
    return "".join(_escape(ch) if unicodedata.category(ch) in _ESCAPED_CATEGORIES else ch
                   for ch in s)
