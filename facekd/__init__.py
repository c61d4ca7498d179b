"""facekd: erase an identity from a face encoder's feature space and prove it.

The math core is importable without torch or faiss::

    from facekd import fit_esc
    erasure = fit_esc(forget_embeddings)        # (n, d) -> Erasure
    edited = erasure.apply(gallery_embeddings)  # (N, d) float32, L2-normalised
"""

from facekd.erasure import Erasure, ErasureError, fit_esc, fit_esc_t, fit_scramble
from facekd.errors import FacekdError

try:
    from importlib.metadata import version as _version

    __version__ = _version("facekd")
except Exception:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"

__all__ = ["Erasure", "ErasureError", "FacekdError", "fit_esc", "fit_esc_t", "fit_scramble",
           "__version__"]
