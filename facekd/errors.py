"""The library's exception types. Every error a user can cause is one of :data:`USER_ERRORS`."""

from __future__ import annotations

from facekd.core.erasure import ErasureError


class FacekdError(Exception):
    """Base class of facekd's own errors (bad input, unknown identity, corrupt files...)."""


class EncoderError(FacekdError, ValueError):
    """An encoder file or input chips are unusable (wrong format, shape, dtype, dimension)."""


class FaceError(FacekdError):
    """An image cannot be read or holds no usable face."""


class WorkspaceError(FacekdError):
    """A workspace is missing, busy, inconsistent, or an operation on it is not allowed."""


class PackError(FacekdError):
    """An insightface model pack cannot take the edited model as asked."""


# The CLI turns these into exit status 2 with a one-line message.
USER_ERRORS = (FacekdError, ErasureError)

__all__ = ["FacekdError", "EncoderError", "FaceError", "PackError", "WorkspaceError", "ErasureError",
           "USER_ERRORS"]
