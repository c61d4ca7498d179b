"""Synthetic identity clusters on the unit sphere, shared by the unit tests."""

from __future__ import annotations

import numpy as np


def identity_clusters(n_ids: int = 100, per_id: int = 20, d: int = 128, *, spread: float = 0.35,
                      shared_axis: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(n_ids * per_id, d)`` float32 unit embeddings and ``(n,)`` int64 labels.

    Each identity has a random unit centre; samples are ``centre + spread * noise / sqrt(d)``,
    renormalised. ``shared_axis`` > 0 adds a common direction to every centre, imitating the
    narrow cone of dlib's embedding space.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    if shared_axis:
        axis = rng.normal(size=d)
        axis /= np.linalg.norm(axis)
        centres = centres + shared_axis * axis
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(n_ids), per_id)
    x = centres[labels] + spread * rng.normal(size=(len(labels), d)) / np.sqrt(d)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels.astype(np.int64)


def twin_clusters(c: float, *, n_ids: int = 80, per_id: int = 40, d: int = 64,
                  seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Cone-shaped identity clusters where identity 1 looks like identity 0 (its centre is 0's
    moved by ``c``), as siblings do: ``(n, d)`` float64 unit rows and ``(n,)`` labels."""
    rng = np.random.default_rng(seed)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    centres = unit(rng.normal(size=(n_ids, d)) + 2.0 * unit(rng.normal(size=(1, d))))
    centres[1] = unit(centres[:1] + c * unit(rng.normal(size=(1, d))))[0]
    y = np.repeat(np.arange(n_ids), per_id)
    return unit(centres[y] + 0.5 * rng.normal(size=(len(y), d)) / np.sqrt(d)), y
