"""Which single photo makes a good gate? Each photo's real cover against what the fit estimates.

    FACEKD_CACHE=... python benchmarks/bench_one_photo.py [--dataset DIR] [--encoder dlib]
        [--min-photos 20] [--photos 3] [--seed 7] [--no-write]

For every identity with at least ``--min-photos`` faces, ``--photos`` of its photos are drawn
(seeded); for each, the default ``fit_scramble`` is fitted on that one photo against everyone
else's faces (labelled) and its real cover is read: the share of the identity's other photos
whose gate opens fully. Reported: the mean real cover and the fit's estimate
(``params["heldout_gated_fully"]``, which forget prints and a refusal reads), the spread of the
real cover over photos (5th and 10th percentiles, the share under 80 % and under 50 %), and how
well the estimate ranks the photos (Spearman's rho), beside a typicality reading the fit could
make of the photo itself (its mean cosine to its 10 nearest faces of other people). Writes
``bench:one-photo-ENCODER``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from _common import REPO, embedding_args, encoder_spec, load_average, publish, unit_embeddings

from facekd.methods.scramble import fit_scramble

FACES = Path(os.environ.get("FACEKD_FACES_DIR", REPO.parent / "shared" / "data" / "faces"))


def photo_rows(x: np.ndarray, y: np.ndarray, min_photos: int, photos: int, seed: int
               ) -> np.ndarray:
    """``(k, 3)``: per fitted photo, its real cover, the fit's estimate and its typicality.
    ``x`` ``(n, d)`` unit float32 embeddings, ``y`` ``(n,)`` identities."""
    ids, counts = np.unique(y, return_counts=True)
    rng = np.random.default_rng(seed)
    rows = []
    for person in ids[counts >= min_photos]:
        mine, rest = np.flatnonzero(y == person), np.flatnonzero(y != person)
        for a in rng.choice(mine, min(photos, len(mine)), replace=False):
            e = fit_scramble(x[[a]], x[rest], gallery_labels=y[rest], seed=int(a))
            others = mine[mine != a]
            real = float(np.mean(e.tail[0].gates(x[others].astype(np.float64))[:, 0] >= 1.0))
            typical = float(np.sort(x[rest] @ x[a])[-10:].mean())
            rows.append((real, e.params["heldout_gated_fully"], typical))
    return np.array(rows)


def table(encoder: str, rows: np.ndarray, identities: int) -> str:
    from scipy.stats import spearmanr

    real, est, typical = rows.T
    return "\n".join([
        "| encoder | photos fitted (identities) | real cover: mean (5th / 10th percentile) "
        "| estimated | under 80 % / under 50 % | rho(estimate, real) | rho(typicality, real) |",
        "|---|---|---|---|---|---|---|",
        f"| {encoder} | {len(rows)} ({identities}) | {100 * real.mean():.1f} % "
        f"({100 * np.quantile(real, 0.05):.0f} / {100 * np.quantile(real, 0.10):.0f}) "
        f"| {100 * est.mean():.1f} % | {100 * np.mean(real < 0.8):.1f} / "
        f"{100 * np.mean(real < 0.5):.1f} % | {spearmanr(est, real).statistic:.2f} "
        f"| {spearmanr(typical, real).statistic:.2f} |"])


def main() -> None:
    ap = embedding_args(__doc__, FACES)
    ap.add_argument("--min-photos", type=int, default=20)
    ap.add_argument("--photos", type=int, default=3, help="single photos fitted per identity")
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    load0, t0 = load_average(), time.perf_counter()
    x, y = unit_embeddings(a.dataset, a.encoder)
    with threadpool_limits(limits=1, user_api="blas"):
        rows = photo_rows(x, y, a.min_photos, a.photos, a.seed)
    ids, counts = np.unique(y, return_counts=True)
    name, spec = encoder_spec(a.encoder)
    publish(f"one-photo-{name}", f"### Which single photo makes a good gate? "
            f"({Path(a.dataset).name} + `{name}`, `benchmarks/bench_one_photo.py`)",
            f"python benchmarks/bench_one_photo.py --encoder {spec} --min-photos {a.min_photos} "
            f"--photos {a.photos} --seed {a.seed}", "",
            table(name, rows, int(np.sum(counts >= a.min_photos))), load0=load0, t0=t0,
            no_write=a.no_write)


if __name__ == "__main__":
    main()
