"""The gallery's exception type."""

from __future__ import annotations

from facekd.errors import FacekdError


class GalleryError(FacekdError):
    """A gallery cannot be created, opened, changed or saved as asked.

    Raised for bad input (wrong shapes, unknown identity), a read-only gallery asked to change,
    a writer lock held by another process, a mismatched encoder fingerprint, and missing or
    corrupt files (truncated index, missing vector file, a foreign SQLite database).
    """


__all__ = ["GalleryError"]
