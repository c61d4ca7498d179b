"""Progress on long work: a bar for a person at a terminal, one line now and then in a log.

:func:`tqdm` takes tqdm's arguments. On a terminal it is tqdm's bar; when stderr is not a
terminal (a log file, a pipe, CI) it is :class:`LineProgress`, which prints one plain line every
``$FACEKD_PROGRESS_INTERVAL`` seconds (default 10): what, how many of how many, the rate and the
time left. ``$FACEKD_PROGRESS=0`` silences the lines (the CLI's ``--json`` does too, through
``disable``).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable, Iterator

__all__ = ["tqdm", "LineProgress"]

INTERVAL_ENV, ENABLE_ENV = "FACEKD_PROGRESS_INTERVAL", "FACEKD_PROGRESS"


def tqdm(iterable: Iterable | None = None, *, disable: bool | None = False, **kwargs: Any):
    """tqdm's bar on a terminal, :class:`LineProgress` elsewhere (see the module docstring)."""
    from tqdm.auto import tqdm as bar

    if disable or sys.stderr.isatty() or os.environ.get(ENABLE_ENV) == "0":
        return bar(iterable, disable=bool(disable) or not sys.stderr.isatty(), **kwargs)
    return LineProgress(iterable, total=kwargs.get("total"), desc=kwargs.get("desc") or "",
                        unit=kwargs.get("unit") or "it")


class LineProgress:
    """A tqdm look-alike (iterate, ``update``, ``set_postfix``, ``close``, ``with``) that writes
    ``desc: n/total unit (p%), r unit/s, about m:ss left`` to stderr at most every interval."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None,
                 desc: str = "", unit: str = "it") -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self.interval = float(os.environ.get(INTERVAL_ENV, "10"))
        self.start = self.last = time.monotonic()
        self.postfix = ""
        self.printed = False

    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._line(now)

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True,
                    **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if self.printed:  # a long task that reported says when it ended
            self._line(time.monotonic(), done=True)
            self.printed = False

    def _line(self, now: float, *, done: bool = False) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = self.n / elapsed
        parts = [f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total else "")
                 + f" {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{rate:.1f} {self.unit}/s")
        if done:
            parts.append(f"done in {_clock(elapsed)}")
        elif self.total and rate > 0:
            parts.append(f"about {_clock((self.total - self.n) / rate)} left")
        if self.postfix:
            parts.append(self.postfix)
        print(", ".join(parts), file=sys.stderr, flush=True)
        self.printed = True


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
