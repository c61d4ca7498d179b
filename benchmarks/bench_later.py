"""People enrolled after an erasure: no gate spares them. What does it cost them, and a background?

    FACEKD_CACHE=... python benchmarks/bench_later.py [--dataset DIR] [--encoder dlib]
        [--people 15,40,62] [--photos 1,2,3,5] [--background 1000] [--draws 5] [--seed 0]
        [--no-write]

Each draw enrols ``--people`` LFW identities with ``--photos`` photos each and erases three of
them, each alone, from those photos (the default gated scramble). The identities not enrolled
are halved: one half is the operator's background (``facekd calibrate``: up to
``--background`` photos, at most 20 of each person), the other half plays people enrolled later,
each with their first photo enrolled into the edited gallery and their other photos (at most 9)
probing it. Gates spare the enrolled people they score highest (``facekd.methods.spare``), not
people enrolled after them. Measured, for each erasure fitted without and with the background
(``fit_scramble(background=...)``, what ``forget`` does when calibrate stored one): the share
of the erased person's 20 new photos the gate changes, their re-enrolment rank-1 (half the new
photos enrolled, averaged over every split: :func:`facekd.core.verdict.split_hit_rates`),
everyone else's rank-1 lost (their other photos, at most 10, against the edited gallery), the
rank-1 lost by people enrolled later, and forget's own estimate of the share of their photos
the gate opens on (``params["strangers_touched"]``), with the share of their photos it changes
and how often that is above the top of forget's interval (counted by identity,
:func:`facekd.operations.costs.later_bound`; and by face, as before) or below its lower end; and
for everyone enrolled, forget's figure (``others_touched``) against the share of their new photos
the gate changes. Writes ``bench:later-ENCODER``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from _common import (BG_PER_PERSON, REPO, changed_share, embedding_args, encoder_spec,
                     load_average, publish, unit_embeddings)

from facekd.core import verdict
from facekd.core.metrics import wilson_interval
from facekd.methods.scramble import fit_scramble
from facekd.operations.costs import gate_costs, later_bound

FACES = Path(os.environ.get("FACEKD_FACES_DIR", REPO.parent / "shared" / "data" / "faces"))
FRESH, ERASED, OWN, LATER_PER_PERSON = 20, 3, 10, 10
FIGURES = ("cover", "rank1", "lost", "later", "estimate", "opened")


def _rank1(gallery: np.ndarray, labels: np.ndarray, probes: np.ndarray,
           truth: np.ndarray) -> float:
    return float(np.mean(labels[(probes @ gallery.T).argmax(axis=1)] == truth))


def one_draw(x: np.ndarray, y: np.ndarray, people: int, photos: int, size: int,
             rng: np.random.Generator) -> list[dict]:
    """Per erased person: ``{arm: {figure: value}}`` (fractions)."""
    ids, counts = np.unique(y, return_counts=True)
    erased = rng.choice(ids[counts >= photos + FRESH], ERASED, replace=False)
    gal_ids = np.r_[erased, rng.choice(np.setdiff1d(ids, erased), people - ERASED,
                                       replace=False)]
    order = {i: rng.permutation(np.flatnonzero(y == i)) for i in gal_ids}
    rows = np.concatenate([order[i][:photos] for i in gal_ids])
    g, gy = x[rows], y[rows]
    others = np.setdiff1d(gal_ids, erased)
    own = np.concatenate([order[i][photos:photos + OWN] for i in others])
    rest = rng.permutation(np.setdiff1d(ids, gal_ids))
    calib, later_ids = rest[: len(rest) // 2], rest[len(rest) // 2:]
    bg = rng.permutation(np.concatenate([rng.permutation(np.flatnonzero(y == i))[:BG_PER_PERSON]
                                         for i in calib]))[:size]
    later = np.concatenate([np.flatnonzero(y == i)[:LATER_PER_PERSON] for i in later_ids])
    first = np.r_[True, y[later][1:] != y[later][:-1]]
    out = []
    for p in erased:
        keep = gy != p
        G, GY = g[keep], gy[keep]
        fresh = x[order[p][photos:photos + FRESH]]
        r_own = _rank1(G, GY, x[own], y[own])
        r_later = _rank1(np.vstack([G, x[later[first]]]), np.r_[GY, y[later[first]]],
                         x[later[~first]], y[later[~first]])
        row = {}
        for arm, extra in (("without", {}), ("background", {"background": x[bg],
                                                             "background_labels": y[bg]})):
            e = fit_scramble(x[order[p][:photos]], G, gallery_labels=GY, **extra)
            s, ge = e.apply(fresh).astype(np.float64), e.apply(G)
            lx, ox = e.apply(x[later]), e.apply(x[own])
            people_seen, costs = e.params["strangers_touched_people"], gate_costs([], e)
            row[arm] = {
                "cover": changed_share(s, fresh),
                "rank1": float(verdict.split_hit_rates(s, (s @ ge.T).max(axis=1)).mean()),
                "lost": r_own - _rank1(ge, GY, ox, y[own]),
                "later": r_later - _rank1(np.vstack([ge, lx[first]]), np.r_[GY, y[later[first]]],
                                          lx[~first], y[later[~first]]),
                "estimate": float(e.params["strangers_touched"]),
                # the share of their photos it changes, against the top of forget's interval
                # counted by identity (what forget prints) and by face (before)
                "opened": changed_share(lx, x[later]),
                "bound": later_bound(e.params),
                "by_face": later_bound({**e.params, "strangers_touched_people": None}),
                "low": wilson_interval(e.params["strangers_touched"] * people_seen,
                                       people_seen)[0],
                # everyone enrolled: forget's figure, its interval, and their new photos changed
                "own_changed": changed_share(ox, x[own]),
                **{k: costs[k] for k in ("others_touched", "others_touched_interval")}}
        out.append(row)
    return out


def _over(rows: list[dict], arm: str) -> str:
    """``"k (f) of n"``: erasures whose share changed is above forget's bound (by face)."""
    k = sum(r[arm]["opened"] > r[arm]["bound"] for r in rows)
    f = sum(r[arm]["opened"] > r[arm]["by_face"] for r in rows)
    return f"{k} ({f}) of {len(rows)}"


def _below(r: dict) -> bool:
    return r["opened"] < r["low"]


def _above_others(r: dict) -> bool:
    return r["own_changed"] > r["others_touched_interval"][1]


def _count(rows: list[dict], arm: str, test) -> str:
    return f"{sum(test(r[arm]) for r in rows)} of {len(rows)}"


def table(name: str, cells: dict, size: int) -> str:
    out = [f"| encoder | people x photos | erased: changed / rank-1, without -> with {size} "
           "background photos | everyone enrolled: rank-1 lost | enrolled later: rank-1 lost "
           "| forget's estimate for them (share opened) | share it changes: mean / above forget's "
           "bound (by face before) |", "|---|---|---|---|---|---|---|"]
    for (people, photos), rows in cells.items():
        m = {a: {f: 100 * np.mean([r[a][f] for r in rows]) for f in FIGURES}
             for a in ("without", "background")}
        w, b = m["without"], m["background"]
        out.append(f"| {name} | {people} x {photos} | {w['cover']:.1f} / {w['rank1']:.1f} -> "
                   f"{b['cover']:.1f} / {b['rank1']:.1f} % | {w['lost']:.2f} -> {b['lost']:.2f} "
                   f"| **{w['later']:.2f} -> {b['later']:.2f}** | {w['estimate']:.2f} -> "
                   f"{b['estimate']:.2f} % | {w['opened']:.2f} / {_over(rows, 'without')} -> "
                   f"{b['opened']:.2f} / {_over(rows, 'background')} |")
    every = [r for rows in cells.values() for r in rows]
    out.append(f"\nThe share changed was above forget's bound (counted by identity) in "
               f"{_over(every, 'without')} erasures without a background, "
               f"{_over(every, 'background')} with one (in brackets: above the interval counted "
               "by face, which forget printed before). It was below the lower end counted by "
               f"identity (forget does not print it) in {_count(every, 'without', _below)} and "
               f"{_count(every, 'background', _below)}.")
    ot, changed = (100 * np.mean([r[a][k] for r in every for a in ("without", "background")])
                   for k in ("others_touched", "own_changed"))
    out.append(f"\nEveryone enrolled: forget's figure for them (`others_touched`) read {ot:.2f} % "
               f"on average where the gates changed {changed:.2f} % of their new photos; the "
               f"share changed was above the top of its interval in "
               f"{_count(every, 'without', _above_others)} erasures without a background and "
               f"{_count(every, 'background', _above_others)} with one.")
    return "\n".join(out)


def main() -> None:
    ap = embedding_args(__doc__, FACES, draws=5, people="15,40,62", photos="1,2,3,5")
    ap.add_argument("--background", type=int, default=1000, help="background photos at most")
    a = ap.parse_args()
    load0, t0 = load_average(), time.perf_counter()
    x, y = unit_embeddings(a.dataset, a.encoder)
    cells = {}
    for people in (int(v) for v in a.people.split(",")):
        for photos in (int(v) for v in a.photos.split(",")):
            cells[(people, photos)] = [
                row for d in range(a.draws)
                for row in one_draw(x, y, people, photos, a.background,
                                    np.random.default_rng([a.seed, d, people, photos]))]
    name, spec = encoder_spec(a.encoder)
    publish(f"later-{name}", f"## People enrolled later ({Path(a.dataset).name} + `{name}`, "
            "`benchmarks/bench_later.py`)",
            f"python benchmarks/bench_later.py --encoder {spec} --people {a.people} --photos "
            f"{a.photos} --background {a.background} --draws {a.draws} --seed {a.seed}",
            f"{a.draws} draws x {ERASED} people erased alone, {FRESH} new photos each; people "
            f"enrolled later: half the identities not enrolled, first photo enrolled, up to "
            f"{LATER_PER_PERSON - 1} more probing; the background from the other half (at most "
            f"{BG_PER_PERSON} each). Percent; with one photo the background only raises the "
            "gate's threshold (fit_scramble keeps it out of the discriminant).",
            table(name, cells, a.background),
            load0=load0, t0=t0, no_write=a.no_write)


if __name__ == "__main__":
    main()
