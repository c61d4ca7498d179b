"""gallery_tools: a durable FAISS face gallery that takes an erasure without images.

>>> from gallery_tools import Gallery
>>> g = Gallery.create("gal", 512, encoder_fingerprint=enc.fingerprint)   # doctest: +SKIP
>>> g.add(vectors, identities); g.save()                                   # doctest: +SKIP
"""

from gallery_tools.errors import GalleryError
from gallery_tools.gallery import Gallery
from gallery_tools.store import IdentityInfo
from gallery_tools.vectors import CheckReport, Match
from gallery_tools.enroll import EnrollResult, enroll  # noqa: E402  (binds the function, not the module)

__all__ = ["Gallery", "GalleryError", "Match", "CheckReport", "IdentityInfo", "enroll",
           "EnrollResult"]
