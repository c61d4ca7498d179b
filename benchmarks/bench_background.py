"""What photos of people enrolled nowhere buy people enrolled later, measured by `facekd bench`.

    FACEKD_CACHE=... python benchmarks/bench_background.py [--dataset DIR] [--encoder dlib]
        [--people 15,40] [--photos 1,3,all] [--background 1000] [--draws 5] [--seed 0]
        [--no-write]

The dataset's identities are halved, every other one in name order: one half is the background
(``facekd bench --background``, what ``facekd calibrate`` stores: at most 20 photos of each, at
most ``--background`` in all), the other half the dataset ``facekd bench`` draws its small
workspace from (``--gallery-people``), whose identities left outside play people enrolled after
the erasure (:mod:`facekd.evaluation.later`). Both halves are folders of symbolic links to the
photos, made in a temporary directory (the photos are read in place, never copied). Each
workspace size runs :func:`facekd.evaluation.bench.run_bench` twice on the same draws, without
and with the background: the default gated scramble, 12 people erased alone per draw (fitted on
``--photos``) and 10 one after another (all their photos). Reported: the erased people's fresh
re-enrolment rank-1, its paired difference from a perfect erasure of the same people (95 %
bootstrap interval), what everyone enrolled lost, and for people enrolled later the rank-1 lost,
the share of their photos changed and forget's estimate with the top of its interval (how often
the share changed was above it); after the ten in sequence, the same and the ledger's sum.
Writes ``bench:background-ENCODER``.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from _common import REPO, embedding_args, encoder_spec, halves, load_average, publish

from facekd.evaluation.bench import run_bench

FACES = Path(os.environ.get("FACEKD_FACES_DIR", REPO.parent / "shared" / "data" / "faces"))
ERASE, SEQUENTIAL = 12, 10


def _pm(r: dict) -> str:
    return "n/a" if r.get("minus_perfect") is None else "{:+.1f} ({:+.1f} to {:+.1f})".format(
        r["minus_perfect"], r["minus_perfect_lo"], r["minus_perfect_hi"])


def table(name: str, runs: dict) -> str:
    out = ["| encoder | people | fit photos | erased: rank-1 | minus a perfect erasure, points "
           "| everyone enrolled: rank-1 lost | enrolled later: rank-1 lost | their photos "
           "changed | forget's estimate / its top | changed above the top |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    seq = []
    for people, (plain, kept) in runs.items():
        for a, b in zip(plain["rows"], kept["rows"]):
            lost = [plain["original"]["retain_rank1"] - r["retain_rank1"] for r in (a, b)]
            out.append(
                f"| {name} | {people} | {a['setting']} | {a['forget_rank1']:.1f} -> "
                f"{b['forget_rank1']:.1f} % | {_pm(a)} -> {_pm(b)} | {lost[0]:.2f} -> "
                f"{lost[1]:.2f} | **{a['later_lost']:.2f} -> {b['later_lost']:.2f}** | "
                f"{a['later_changed']:.1f} -> {b['later_changed']:.1f} % | "
                f"{a['later_estimate']:.1f} / {a['later_bound']:.1f} -> "
                f"{b['later_estimate']:.1f} / {b['later_bound']:.1f} % | "
                f"{a['later_over']:.1f} -> {b['later_over']:.1f} % |")
        a, b = plain["sequential"][-1], kept["sequential"][-1]
        lost = [s["sequential"][0]["retain_rank1"] - r["retain_rank1"]
                for s, r in ((plain, a), (kept, b))]
        seq.append(f"| {name} | {people} | {a['erased']} | {a['forget_rank1']:.1f} -> "
                   f"{b['forget_rank1']:.1f} % | {lost[0]:.2f} -> {lost[1]:.2f} | "
                   f"**{a['later_lost']:.2f} -> {b['later_lost']:.2f}** | "
                   f"{a['later_changed']:.1f} -> {b['later_changed']:.1f} % | "
                   f"{a['later_estimate']:.1f} -> {b['later_estimate']:.1f} % |")
    p = next(iter(runs.values()))[1]["protocol"]
    return "\n".join(out + [
        "", f"In sequence ({SEQUENTIAL} people erased one after another from all their photos; "
        "the erased re-checked under the final edit; the estimate is the ledger's sum, as "
        "forget prints it):", "",
        "| encoder | people | erased | erased: rank-1 | everyone enrolled: rank-1 lost | enrolled "
        "later: rank-1 lost | their photos changed | forget's estimate (sum) |",
        "|---|---|---|---|---|---|---|---|", *seq, "",
        f"Background: {p['background_photos']} photos of {p['background_people']} people; "
        f"people enrolled later: {p['later_people']} per workspace (the last size), "
        f"{p['later_searches']} searches."])


def main() -> None:
    ap = embedding_args(__doc__, FACES, draws=5, people="15,40", photos="1,3,all")
    ap.add_argument("--background", type=int, default=1000, help="background photos at most")
    a = ap.parse_args()
    load0, t0 = load_average(), time.perf_counter()
    runs = {}
    with tempfile.TemporaryDirectory(prefix="facekd-bg-") as tmp:
        ds, bg = halves(Path(a.dataset), Path(tmp), a.background)
        for people in (int(v) for v in a.people.split(",")):
            runs[people] = [run_bench(ds, a.encoder, methods="scramble", erase=ERASE,
                                      sequential=SEQUENTIAL, fit_photos=a.photos,
                                      gallery_people=people, draws=a.draws, seed=a.seed,
                                      background=extra)
                            for extra in (None, bg)]
    name, spec = encoder_spec(a.encoder)
    publish(f"background-{name}", f"## What a background buys people enrolled later, through "
            f"`facekd bench` ({Path(a.dataset).name} + `{name}`, `benchmarks/bench_background.py`)",
            f"python benchmarks/bench_background.py --encoder {spec} --people {a.people} "
            f"--photos {a.photos} --background {a.background} --draws {a.draws} --seed {a.seed}",
            f"{a.draws} draws x {ERASE} people erased alone per workspace size, without -> with "
            "the background (the same draws); percent and rank-1 points.", table(name, runs),
            load0=load0, t0=t0, no_write=a.no_write)


if __name__ == "__main__":
    main()
