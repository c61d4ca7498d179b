"""An ID-photo gallery: everyone enrolled with one photo, one person erased from theirs.

    FACEKD_CACHE=... python benchmarks/bench_id_gallery.py [--dataset DIR] [--encoder dlib]
        [--people 40,62] [--draws 5] [--erase 6] [--seed 0] [--no-write]

Nobody in such a gallery has two photos, so there is no within-identity prior to learn and no
pair to estimate a one-photo gate's cover with: ``fit_scramble`` fits the plain ridge gate
(``RIDGE_BLIND``; ``params["heldout_from"] == "none"``). For each draw, ``--people`` identities
with 21 or more photos are enrolled with one seeded photo each; ``--erase`` of them are erased,
each alone, by the default fit on that photo. Measured on 20 further photos of the person,
never fitted:

* re-enrolment rank-1: 10 of the 20 (edited) enrolled beside everyone's one photo, the other 10
  searched; the mean over 50 random half splits, as verify's replay reads it;
* the same for a perfect erasure: one photo each of 20 people enrolled nowhere in its place;
* the share of the 20 whose gate opens fully, and the share labelled MATCH (as someone else)
  above the one-to-many threshold at which 1 % of never-enrolled people's photos match;
* everyone else: rank-1 of all their other photos against their one enrolled photo, points lost.

Writes ``bench:id-gallery-ENCODER``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from _common import REPO, embedding_args, encoder_spec, load_average, publish, unit_embeddings

from facekd.core.erasure import Erasure
from facekd.evaluation.settings import fit_method

FACES = Path(os.environ.get("FACEKD_FACES_DIR", REPO.parent / "shared" / "data" / "faces"))
NEW, SPLITS, FPIR = 20, 50, 0.01


def _replay(person: np.ndarray, gallery: np.ndarray, rng: np.random.Generator) -> float:
    """Mean rank-1 of ``person`` ``(20, d)``'s half-split re-enrolment against ``gallery``."""
    best = (person @ gallery.T).max(axis=1)
    hits = []
    for _ in range(SPLITS):
        order = rng.permutation(len(person))
        enrol, probe = order[:len(person) // 2], order[len(person) // 2:]
        hits.append(np.mean((person[probe] @ person[enrol].T).max(axis=1) > best[probe]))
    return float(np.mean(hits))


def _one_each(y: np.ndarray, people: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``(len(people),)`` rows: one seeded photo of each of ``people``."""
    return np.array([rng.choice(np.flatnonzero(y == i)) for i in people])


def _draw(y: np.ndarray, people: int, rng: np.random.Generator
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ids, gallery, enrolled)``: every identity, ``people`` of those with ``NEW + 1`` or more
    photos, and the row of the one photo each is enrolled with."""
    ids, counts = np.unique(y, return_counts=True)
    pool = ids[counts >= NEW + 1]
    gallery = rng.choice(pool, min(people, len(pool)), replace=False)
    return ids, gallery, _one_each(y, gallery, rng)


def _rank1_lost(x: np.ndarray, y: np.ndarray, others: np.ndarray, rows: np.ndarray,
                erasure: Erasure, rng: np.random.Generator) -> float:
    """Everyone else's rank-1 lost (a fraction): up to 3,000 of ``others``' photos searched
    against their one enrolled photo each (``rows``), before and after ``erasure``."""
    probes = np.setdiff1d(np.flatnonzero(np.isin(y, others)), rows)
    probes = probes[rng.permutation(len(probes))[:3000]]

    def rank1(edit: Erasure) -> float:
        g, p = (edit.apply(x[r]).astype(np.float64) for r in (rows, probes))
        return float(np.mean(others[(p @ g.T).argmax(axis=1)] == y[probes]))

    return rank1(Erasure.identity(x.shape[1])) - rank1(erasure)


def erase_one(x: np.ndarray, y: np.ndarray, enrolled: dict, person: int, outsiders: np.ndarray,
              rng: np.random.Generator, method: str = "scramble") -> dict:
    """One person erased from their one enrolled photo; every figure above (fractions)."""
    others = np.array([i for i in enrolled if i != person])
    g_rows = np.array([enrolled[i] for i in others])
    e = fit_method(method, x[[enrolled[person]]], x[g_rows], others, Erasure.identity(x.shape[1]))
    assert e.params["heldout_from"] == "none"
    apply = lambda v: e.apply(v).astype(np.float64)  # noqa: E731
    fresh = rng.choice(np.setdiff1d(np.flatnonzero(y == person), [enrolled[person]]), NEW,
                       replace=False)
    g0, g1, f1 = x[g_rows].astype(np.float64), apply(x[g_rows]), apply(x[fresh])
    strangers = _one_each(y, rng.choice(outsiders, NEW, replace=False), rng)
    nev = x[np.isin(y, outsiders)]
    nev = apply(nev[rng.permutation(len(nev))[:1000]])
    threshold = np.quantile((nev @ g1.T).max(axis=1), 1 - FPIR)
    lost = _rank1_lost(x, y, others, g_rows, e, rng)
    return {"rank1": _replay(f1, g1, rng),
            "before": _replay(x[fresh].astype(np.float64), g0, rng),
            "perfect": _replay(x[strangers].astype(np.float64), g0, rng),
            "gated": float(np.mean(e.tail[0].gates(x[fresh].astype(np.float64))[:, 0] >= 1)),
            "match": float(np.mean((f1 @ g1.T).max(axis=1) > threshold)),
            "lost": lost, "chance": 1.0 / (len(others) + 1)}


def run(x: np.ndarray, y: np.ndarray, people: int, draws: int, erase: int, seed: int,
        method: str = "scramble") -> list:
    rows = []
    for draw in range(draws):
        rng = np.random.default_rng([seed, draw, people])
        ids, gallery, enrolled = _draw(y, people, rng)
        by_person = dict(zip(gallery.tolist(), enrolled.tolist()))
        outsiders = np.setdiff1d(ids, gallery)
        for person in rng.choice(gallery, erase, replace=False):
            rows.append(erase_one(x, y, by_person, int(person), outsiders, rng, method))
    return rows


def run_sequence(x: np.ndarray, y: np.ndarray, people: int, erase: int, draws: int,
                 seed: int, method: str = "scramble") -> list:
    """``erase`` people of a ``people``-person ID-photo gallery erased one after another, each
    from their one photo against the gallery as the earlier erasures left it (the steps
    composed, as a workspace does): per draw, everyone else's rank-1 points lost and the erased
    people's replayed rank-1 after all of them (fractions)."""
    out = []
    for draw in range(draws):
        rng = np.random.default_rng([seed, draw, people, erase])
        ids, gallery, enrolled = _draw(y, people, rng)
        erased = gallery[:erase]  # the draw's order is already random
        composite = Erasure.identity(x.shape[1])
        for k, person in enumerate(erased):
            alive = np.isin(gallery, erased[k + 1:]) | ~np.isin(gallery, erased)
            xe = composite.apply(x[enrolled])
            composite = composite.then(fit_method(method, xe[[k]], xe[alive],
                                                  gallery[alive], composite))
        never = ~np.isin(gallery, erased)
        g0 = x[enrolled[never]].astype(np.float64)
        g1 = composite.apply(x[enrolled[never]]).astype(np.float64)
        others = gallery[never]
        lost = _rank1_lost(x, y, others, enrolled[never], composite, rng)
        found = [_replay(composite.apply(x[rng.choice(np.setdiff1d(np.flatnonzero(y == p),
                                                                  enrolled), NEW,
                                                       replace=False)]).astype(np.float64),
                         g1, rng) for p in erased]
        strangers = _one_each(y, rng.choice(np.setdiff1d(ids, gallery), NEW, replace=False), rng)
        out.append({"lost": lost, "rank1": float(np.mean(found)),
                    "perfect": _replay(x[strangers].astype(np.float64), g0, rng),
                    "chance": 1.0 / (len(others) + 1)})
    return out


def sequence_line(seq: list[int] | None, rows: list | None) -> str:
    if not rows:
        return ""
    col = {k: 100 * np.array([r[k] for r in rows]) for k in rows[0]}
    return (f"\n\nIn sequence: {seq[1]} of {seq[0]} people erased one after another, each from "
            f"their one photo, {len(rows)} draws. Everyone else's rank-1 lost "
            f"**{col['lost'].mean():.2f}** points on average (worst draw {col['lost'].max():.2f}); "
            f"the erased, after all {seq[1]}, found at {col['rank1'].mean():.1f} % (replayed; a "
            f"perfect erasure in the {seq[0] - seq[1]}-person gallery left: "
            f"{col['perfect'].mean():.1f} %).")


def table(name: str, results: dict) -> str:
    out = ["| encoder | people | erased | rank-1 before | rank-1 after [95 %] | perfect erasure "
           "| over 2x chance (perfect) | gate fully open | erased labelled MATCH "
           "| everyone else's rank-1 lost, mean (worst) |", "|---|" * 1 + "---|" * 9]
    for people, rows in results.items():
        col = {k: 100 * np.array([r[k] for r in rows]) for k in rows[0]}
        lo, hi = np.quantile([np.mean(np.random.default_rng(i).choice(col["rank1"],
                                                                     len(col["rank1"])))
                              for i in range(2000)], [0.025, 0.975])
        over = lambda k: np.mean(col[k] > 2 * col["chance"])  # noqa: E731
        out.append(f"| {name} | {people} | {len(rows)} | {col['before'].mean():.1f} % "
                   f"| **{col['rank1'].mean():.1f} %** [{lo:.1f}, {hi:.1f}] "
                   f"| {col['perfect'].mean():.1f} % | {100 * over('rank1'):.0f} % "
                   f"({100 * over('perfect'):.0f} %) | {col['gated'].mean():.1f} % "
                   f"| {col['match'].mean():.1f} % | {col['lost'].mean():.2f} "
                   f"({col['lost'].max():.2f}) |")
    return "\n".join(out)


def main() -> None:
    ap = embedding_args(__doc__, FACES, draws=5, people="40,62")
    ap.add_argument("--erase", type=int, default=6, help="people erased (each alone) per draw")
    ap.add_argument("--sequence", default="62:20",
                    help="PEOPLE:ERASED, erased one after another (empty: none)")
    a = ap.parse_args()
    load0, t0 = load_average(), time.perf_counter()
    x, y = unit_embeddings(a.dataset, a.encoder)
    sizes = [int(p) for p in a.people.split(",")]
    with threadpool_limits(limits=1, user_api="blas"):
        results = {p: run(x, y, p, a.draws, a.erase, a.seed) for p in sizes}
        seq = ([int(v) for v in a.sequence.split(":")] if a.sequence else None)
        chained = run_sequence(x, y, seq[0], seq[1], a.draws, a.seed) if seq else None
    name, spec = encoder_spec(a.encoder)
    publish(f"id-gallery-{name}", f"## An ID-photo gallery ({Path(a.dataset).name} + `{name}`, "
            "`benchmarks/bench_id_gallery.py`)",
            f"python benchmarks/bench_id_gallery.py --encoder {spec} --people {a.people} "
            f"--draws {a.draws} --erase {a.erase} --seed {a.seed} --sequence '{a.sequence}'",
            f"Everyone enrolled with one photo; each erased person alone, from that photo; {NEW} "
            f"new photos each, never fitted; rank-1 replayed over {SPLITS} half splits; MATCH at "
            f"FPIR {FPIR:g}.", table(name, results) + sequence_line(seq, chained), load0=load0,
            t0=t0, no_write=a.no_write)


if __name__ == "__main__":
    main()
