"""The erasure-method protocol and its registry.

A method fits an :class:`~facekd.core.erasure.Erasure` on the forget set ``(n, d)`` and a
:class:`FitContext` (everyone else's gallery faces, the erasure already applied to them, the
method's settings)::

    @register("mine", options=("strength",), config={"mine_strength": "strength"})
    def fit_mine(forget: np.ndarray, context: FitContext) -> Erasure: ...

``facekd forget`` (the workspace), ``facekd bench`` and the CLI's ``--method`` choices all read
:func:`names` and :func:`get`, so a new method is one module under ``facekd/methods/`` (imported by
the package's ``__init__``) plus its tests.

Imports nothing from the project but :mod:`facekd.core.erasure` (pure math).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from facekd.core.erasure import Erasure, ErasureError

__all__ = ["FitContext", "Method", "MethodError", "get", "names", "register", "unit_rows",
           "unregister"]


class MethodError(ErasureError):
    """A method cannot fit in this context: an unknown setting, too few other people..."""


@dataclass(frozen=True)
class FitContext:
    """What a method may fit on besides the forget set, all in the space the new erasure applies to.

    Attributes:
        gallery: ``(N, d)`` float32 embeddings of everyone else (the person's faces excluded).
        gallery_labels: ``(N,)`` int64 identity of each ``gallery`` row.
        previous: the erasure already applied to these embeddings (``Erasure.identity(d)`` for a
            first deletion); a gated step reuses its stranger map so gates merge into one chain.
        options: the method's settings (keyword arguments of its fit; names in ``Method.options``).
        person: ``(m, d)`` the person's own gallery faces when the caller holds them (the
            workspace does; ``None``: the forget set stands for them).
        identity: the person's label in ``gallery_labels``' numbering, when the caller knows it.
        background: faces of people enrolled nowhere (``facekd calibrate``), in the same space:
            a :class:`facekd.core.background.Background` (``vectors`` ``(M, d)``, ``groups``
            ``(M,)``); ``None``: none stored. A gated method keeps its gate off them.
    """

    gallery: np.ndarray
    gallery_labels: np.ndarray
    previous: Erasure
    options: Mapping[str, Any] = field(default_factory=dict)
    person: np.ndarray | None = None
    identity: int | None = None
    background: Any = None


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length: ``(n, d)`` float32."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


FitFunction = Callable[[np.ndarray, FitContext], Erasure]


@dataclass(frozen=True)
class Method:
    """A registered erasure method (see :func:`register`).

    Attributes:
        name: what ``--method`` / ``--methods`` / ``config.toml`` call it.
        fit_fn: ``(forget (n, d), FitContext) -> Erasure``.
        options: the settings ``fit_fn`` accepts in ``context.options``.
        config: ``config.toml`` ``[forget]`` key -> the option it sets (the workspace's settings).
        refuse_fn: ``Erasure -> str | None``: why a fitted erasure must not be committed (e.g. it
            changes nothing), or ``None``.
        summary: one line for listings.
    """

    name: str
    fit_fn: FitFunction
    options: tuple[str, ...] = ()
    config: Mapping[str, str] = field(default_factory=dict)
    refuse_fn: Callable[[Erasure], str | None] | None = None
    summary: str = ""

    def fit(self, forget: np.ndarray, context: FitContext) -> Erasure:
        """Fit on ``forget`` ``(n, d)``; raises :class:`MethodError` on a setting it does not take."""
        self.check_options(context.options)
        return self.fit_fn(forget, context)

    def check_options(self, options: Mapping[str, Any]) -> None:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            takes = ", ".join(self.options) or "no settings"
            raise MethodError(f"{self.name} got an unexpected keyword setting {unknown[0]!r} "
                              f"(it takes {takes})")

    def options_from_config(self, config: Any) -> dict[str, Any]:
        """``{option: value}`` read from a config object's attributes named in :attr:`config`."""
        return {option: getattr(config, key) for key, option in self.config.items()}

    def refuse(self, erasure: Erasure) -> str | None:
        return self.refuse_fn(erasure) if self.refuse_fn is not None else None


_METHODS: dict[str, Method] = {}


def register(name: str, *, options: tuple[str, ...] = (), config: Mapping[str, str] | None = None,
             refuse: Callable[[Erasure], str | None] | None = None,
             summary: str = "") -> Callable[[FitFunction], FitFunction]:
    """Decorator: register ``fit(forget, context) -> Erasure`` as the method ``name``.

    Raises ``ValueError`` if ``name`` is taken (use :func:`unregister` first to replace one)."""
    if not name or name != name.strip().lower() or any(c in name for c in ",:= "):
        raise ValueError(f"method name {name!r}: lower case, no ',', ':', '=' or spaces")

    def decorator(fn: FitFunction) -> FitFunction:
        if name in _METHODS:
            raise ValueError(f"erasure method {name!r} is already registered")
        _METHODS[name] = Method(name, fn, tuple(options), dict(config or {}), refuse, summary)
        return fn

    return decorator


def unregister(name: str) -> None:
    """Remove the method ``name`` (a no-op if there is none)."""
    _METHODS.pop(name, None)


def names() -> tuple[str, ...]:
    """Registered method names, in registration order."""
    return tuple(_METHODS)


def get(name: str) -> Method:
    """The method ``name``; raises :class:`MethodError` listing the known ones otherwise."""
    try:
        return _METHODS[name]
    except KeyError:
        raise MethodError(f"unknown method {name!r}; use one of {', '.join(_METHODS)}") from None
