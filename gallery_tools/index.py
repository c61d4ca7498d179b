"""FAISS index construction for a gallery, and the choice of CPU or GPU for searching.

* ``flat``: ``IndexIDMap2`` over ``IndexFlatIP`` (exact). Its storage *is* the float32 vectors,
  so the gallery keeps no second copy: it reads and edits them through a numpy view.
* ``ivf``: ``IndexIVFScalarQuantizer`` (8-bit codes, inner product) with ids and a hashtable
  direct map, so faces can be removed by id. The codes are quantised and cannot be transformed
  by a linear map, which is why the float32 vectors are kept beside it.

Vectors are L2-normalised before they get here: inner product = cosine similarity.

faiss is imported on first use, not with this module: commands that never touch an index (listing
identities, ``check`` of a reader) do not pay for loading it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from gallery_tools.errors import GalleryError
from gallery_tools.files import npy_data_offset, stream_file, verify_sha256

if TYPE_CHECKING:
    import faiss

KINDS = ("flat", "ivf")
GPU_ENV = "FACEKD_GALLERY_GPU"  # "0" forces CPU search even where a GPU build and device exist


def _faiss() -> Any:
    import faiss

    return faiss


def new_flat(d: int) -> faiss.IndexIDMap2:
    """An empty exact inner-product index with 64-bit face ids."""
    faiss = _faiss()
    return faiss.IndexIDMap2(faiss.IndexFlatIP(d))


def flat_inner(index: faiss.Index) -> faiss.IndexFlat:
    """The ``IndexFlatIP`` inside an ``IndexIDMap2`` (downcast, so its vectors can be viewed)."""
    return _faiss().downcast_index(index.index)


def flat_reserve(index: faiss.Index, n: int, ids: np.ndarray) -> np.ndarray:
    """Size an empty flat index for ``n`` vectors with face ``ids`` ``(n,)`` int64 and return
    its storage as a writable ``(n, d)`` float32 view, to be filled in place (e.g. read from a
    file into it): the index's own buffer is the only copy, with no add() from a second one."""
    inner = flat_inner(index)
    if index.ntotal or inner.ntotal:
        raise ValueError("flat_reserve needs an empty index")
    d = inner.d
    inner.codes.resize(int(n) * d * 4)
    inner.ntotal = index.ntotal = int(n)
    _faiss().copy_array_to_vector(np.ascontiguousarray(ids, dtype=np.int64), index.id_map)
    index.construct_rev_map()
    return flat_view(index, d)


def flat_view(index: faiss.Index, d: int) -> np.ndarray:
    """``(ntotal, d)`` float32 numpy view of a flat index's storage (no copy).

    Writes through the view edit the index. The view dangles after the index grows or shrinks:
    callers take a fresh one after every ``add``/``remove_ids``.
    """
    inner = flat_inner(index)
    n = int(inner.ntotal)
    if n == 0:
        return np.empty((0, d), dtype=np.float32)
    return _faiss().rev_swig_ptr(inner.get_xb(), n * d).reshape(n, d)


def ivf_nlist(n: int) -> int:
    """Number of IVF lists for ``n`` vectors: about sqrt(n), with >= 39 training points per list.

    sqrt(n) rather than the often quoted 4 sqrt(n): k-means cost grows with nlist squared (more
    centroids, and more training points for them), and the gallery retrains on every apply().
    """
    return int(max(1, min(math.isqrt(max(n, 1)), n // 39)))


def ivf_nprobe(nlist: int) -> int:
    """Lists visited per query: 1/16 of them, at least 8 (recall ~0.99 on face-like data)."""
    return int(min(nlist, max(8, nlist // 16)))


def build_ivf(vectors: np.ndarray, ids: np.ndarray, *, seed: int = 1234) -> faiss.Index:
    """Train an IVF-SQ8 index on a sample of ``vectors`` ``(n, d)`` and add all of them with ``ids``."""
    faiss = _faiss()
    n, d = vectors.shape
    nlist = ivf_nlist(n)
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit,
                                          faiss.METRIC_INNER_PRODUCT)
    index.own_fields = True
    quantizer.this.disown()  # owned by the IVF index from here on
    sample = min(n, 50 * nlist)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))
    index.cp.seed = seed
    index.train(np.ascontiguousarray(vectors[rows]))
    index.set_direct_map_type(faiss.DirectMap.Hashtable)
    for start in range(0, n, 65536):
        index.add_with_ids(np.ascontiguousarray(vectors[start:start + 65536]), ids[start:start + 65536])
    index.nprobe = ivf_nprobe(nlist)
    return index


def read_flat(fh: BinaryIO, d: int, ids: np.ndarray) -> tuple[faiss.Index, str | None]:
    """A flat index of the ``.npy`` vector file open (unbuffered) in ``fh``, its ``(n, d)``
    float32 rows under face ``ids`` ``(n,)`` int64: one read straight into the index's own
    storage, hashed as it passes (no intermediate copy). Returns the index and the file's
    sha256 (hex; None for ``n == 0``, when the file is not read)."""
    index = new_flat(d)
    if not len(ids):
        return index, None
    storage = flat_reserve(index, len(ids), ids)
    return index, stream_file(fh, storage, offset=npy_data_offset(fh))


def read_ivf(path: Path, size: int, sha: str, n: int, *, verify: bool) -> faiss.Index:
    """Read a committed IVF index file, refused (GalleryError) when missing, not ``size`` bytes,
    (``verify``) not of sha256 ``sha``, unreadable, or not holding ``n`` faces."""
    if not path.is_file():
        raise GalleryError(f"{path}: index file missing (the gallery is incomplete)")
    if path.stat().st_size != size:
        raise GalleryError(f"{path}: index file is {path.stat().st_size} bytes, "
                           f"expected {size} (truncated or overwritten)")
    if verify:
        verify_sha256(path, sha, "index")
    try:
        index = _faiss().read_index(str(path))
    except RuntimeError as exc:
        raise GalleryError(f"{path}: unreadable FAISS index ({str(exc)[:200]})") from None
    if index.ntotal != n:
        raise GalleryError(f"{path}: index holds {index.ntotal} faces, database {n}")
    return index


def serialize(index: faiss.Index) -> np.ndarray:
    """The bytes of a CPU ``index`` as FAISS writes it to a file (``(nbytes,)`` uint8)."""
    return _faiss().serialize_index(index)


def gpu_available(faiss_module: Any = None) -> bool:
    """True when this faiss build has GPU support, a device is visible and it is not disabled.

    Takes the module as an argument (default: faiss) so the choice is testable on CPU-only
    machines.
    """
    if os.environ.get(GPU_ENV, "1") == "0":
        return False
    faiss_module = _faiss() if faiss_module is None else faiss_module
    if not hasattr(faiss_module, "StandardGpuResources") or not hasattr(faiss_module, "index_cpu_to_gpu"):
        return False
    try:
        return int(faiss_module.get_num_gpus()) > 0
    except Exception:  # a GPU build without a driver raises here
        return False


class SearchDevice:
    """Holds GPU resources (when available) and a GPU copy of the index for searching.

    The CPU index stays the source of truth; the GPU copy is dropped on every change and rebuilt
    lazily, and saving always goes through the CPU index.
    """

    def __init__(self, faiss_module: Any = None):
        self._faiss = faiss_module  # None: faiss itself, imported when first needed
        self._use_gpu: bool | None = None
        self._res = None
        self._gpu_index = None

    @property
    def use_gpu(self) -> bool:
        if self._use_gpu is None:
            self._use_gpu = gpu_available(self._faiss)
        return self._use_gpu

    @use_gpu.setter
    def use_gpu(self, value: bool) -> None:
        self._use_gpu = bool(value)

    def invalidate(self) -> None:
        self._gpu_index = None

    def index_for_search(self, cpu_index: faiss.Index) -> faiss.Index:
        if not self.use_gpu:
            return cpu_index
        if self._gpu_index is None:
            module = self._faiss or _faiss()
            if self._res is None:
                self._res = module.StandardGpuResources()
            try:
                self._gpu_index = module.index_cpu_to_gpu(self._res, 0, cpu_index)
            except Exception:  # an index type without a GPU implementation: search on CPU
                self.use_gpu = False
                return cpu_index
        return self._gpu_index
