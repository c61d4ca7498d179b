"""50 one-photo erasures in sequence, without and with a background: what everyone else loses.

    FACEKD_CACHE=... python benchmarks/bench_background_sequence.py [--dataset DIR]
        [--encoder dlib] [--people 50] [--fit 1] [--background 1000] [--draws 5] [--seed 0]
        [--no-write]

The dataset's identities are halved as in ``bench_background.py`` (``_common.halves``): one half
is the background, the other the gallery. Per draw, `facekd bench`'s sequential protocol
(``facekd.evaluation.sequential``, as ``bench_guard.py`` runs it): ``--people`` people erased
one after another with the default gated scramble, each fitted on ``--fit`` of their photos
against everyone not yet erased, once without and once with the background (edited by every
step, as a workspace edits what ``facekd calibrate`` stored). Reported: everyone else's rank-1
lost (mean and worst draw), the erased people's fresh re-enrolment rank-1 under the final edit,
and the gates' own estimate of what they cost everyone else, summed. Writes
``bench:background-sequence-ENCODER``.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from _common import REPO, embedding_args, encoder_spec, halves, load_average, publish

from facekd.encoders import load_encoder
from facekd.evaluation import bench as B
from facekd.evaluation.dataset import embed_background
from facekd.progress import tqdm

FACES = Path(os.environ.get("FACEKD_FACES_DIR", REPO.parent / "shared" / "data" / "faces"))


def one_draw(x0: np.ndarray, y: np.ndarray, bg, people: int, fit: str, seed: int) -> dict:
    """``{arm: (rank-1 lost, erased rank-1, estimate)}`` of one draw (points, percent)."""
    ids, counts = np.unique(y, return_counts=True)
    seq = B._draw(dict(zip(ids.tolist(), counts.tolist())), people,
                  np.random.default_rng([seed, 1]))
    split = B.split_enrol_probe(y, seed=seed)
    out = {}
    for arm, extra in (("without", None), ("with", bg)):
        with tqdm(disable=True) as bar:
            rows, _, _ = B._sequential(x0, y, split, seq.people, seq.held, "scramble", seed, bar,
                                       fit, background=extra)
        out[arm] = (rows[0]["retain_rank1"] - rows[-1]["retain_rank1"],
                    rows[-1]["forget_rank1"], rows[-1]["others_touched"])
    return out


def main() -> None:
    ap = embedding_args(__doc__, FACES, draws=5)
    ap.add_argument("--people", type=int, default=50)
    ap.add_argument("--fit", default="1", help="photos each erasure is fitted on: K or all")
    ap.add_argument("--background", type=int, default=1000, help="background photos at most")
    a = ap.parse_args()
    load0, t0 = load_average(), time.perf_counter()
    enc = load_encoder(a.encoder)
    with tempfile.TemporaryDirectory(prefix="facekd-bg-") as tmp:
        ds, bg_dir = halves(Path(a.dataset), Path(tmp), a.background)
        E, y, _ = B._usable(B.embed_dataset(ds, enc))
        bg, _ = embed_background(bg_dir, enc, ds)
    x0 = B._unit(E)
    with threadpool_limits(limits=1, user_api="blas"):
        draws = [one_draw(x0, y, bg, a.people, a.fit, a.seed + i) for i in range(a.draws)]
    name, spec = encoder_spec(a.encoder)
    rows = []
    for arm in ("without", "with"):
        lost, found, est = (np.array([d[arm][k] for d in draws]) for k in range(3))
        rows.append(f"| {name} | {arm} | **{lost.mean():.2f}** ({lost.max():.2f}) | "
                    f"{found.mean():.2f} % | {est.mean():.2f} % | "
                    + " ".join(f"{v:.2f}" for v in lost) + " |")
    body = "\n".join([
        "| encoder | background | everyone else: rank-1 lost, mean (worst draw) | the erased "
        "after all: rank-1 | gates' estimate, summed | per draw |", "|---|---|---|---|---|---|",
        *rows, "", f"{len(np.unique(y))} identities enrolled ({len(y)} faces), the background "
        f"{bg.photos} photos of {len(np.unique(bg.groups))} others."])
    publish(f"background-sequence-{name}",
            f"## {a.people} erasures in sequence from {a.fit} photo(s), without and with a "
            f"background ({Path(a.dataset).name} + `{name}`, "
            "`benchmarks/bench_background_sequence.py`)",
            f"python benchmarks/bench_background_sequence.py --encoder {spec} --people "
            f"{a.people} --fit {a.fit} --background {a.background} --draws {a.draws} "
            f"--seed {a.seed}",
            f"{a.draws} draws (seeds {a.seed}-{a.seed + a.draws - 1}); `facekd bench`'s "
            "sequential protocol on the half of the identities not in the background.", body,
            load0=load0, t0=t0, no_write=a.no_write)


if __name__ == "__main__":
    main()
