"""A gallery's committed state as plain arrays, for the crash tests of both backends: after a kill,
what a fresh open sees must equal exactly the state before or the state after the interrupted
commit."""

from __future__ import annotations

import numpy as np


def gallery_state(g) -> dict:
    """Face ids, labels, vectors, the ``round`` meta key and the generation of an open gallery."""
    return {"face_ids": g.face_ids(), "labels": g.labels(), "vectors": g.vectors(),
            "meta": g.get_meta("round"), "generation": g.generation}


def same_state(found: dict, want: dict) -> bool:
    """Equal generations, meta, ids and labels; vectors equal to float32 storage rounding."""
    return (found["generation"] == want["generation"] and found["meta"] == want["meta"]
            and np.array_equal(found["face_ids"], want["face_ids"])
            and np.array_equal(found["labels"], want["labels"])
            and np.allclose(found["vectors"], want["vectors"], atol=1e-4))
