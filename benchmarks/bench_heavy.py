"""One person enrolled with many photos among people with one: do scrambled faces drift to them?

    FACEKD_CACHE=... python benchmarks/bench_heavy.py [--dataset DIR] [--encoder dlib]
        [--people 40] [--heavy 1,8,32] [--draws 8] [--seed 0] [--no-write]

Each draw enrols ``--people`` LFW identities with one photo each, except one (drawn among those
with 53+ photos) enrolled with ``--heavy`` photos, and erases three of the single-photo people,
each alone, from their one photo (the default gated scramble). The stranger map is the
population's mean and covariance; read face by face, one heavily enrolled person pulls it, and
the erased people's scrambled new photos toward them. From outside: the share of the erased
people's 20 new photos whose best score against the edited gallery clears the threshold that
labels 1 % of never-enrolled people's photos MATCH (read off up to 1,500 of them, at most 10 each,
through the same edit), and the share of those labelled as the heavy person. A perfect erasure
is labelled MATCH about 1 % of the time. Both for the map read face by face (``stranger_cap``
None, the default) and with each identity counted at most ``STRANGER_CAP`` typical identities
(``fit_scramble``'s opt-in ``stranger_cap``). Writes ``bench:heavy-ENCODER``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from _common import REPO, embedding_args, encoder_spec, load_average, publish, unit_embeddings

from facekd.methods.scramble import fit_scramble

FACES = Path(os.environ.get("FACEKD_FACES_DIR", REPO.parent / "shared" / "data" / "faces"))
FPIR, OUTSIDE, PER_PERSON, FRESH, ERASED = 0.01, 1500, 10, 20, 3
STRANGER_CAP = 4.0  # the opt-in measured (fit_scramble's stranger_cap)
ARMS = {"face by face": None, f"capped at {STRANGER_CAP:g}": STRANGER_CAP}


def one_draw(x: np.ndarray, y: np.ndarray, people: int, heavy: int,
             rng: np.random.Generator) -> dict:
    """Per arm: ``(labelled MATCH, labelled as the heavy person)`` counts and the photos."""
    ids, counts = np.unique(y, return_counts=True)
    vip = rng.choice(ids[counts >= 53])
    erased = rng.choice(ids[(counts > FRESH) & (ids != vip)], ERASED, replace=False)
    rest = rng.choice(np.setdiff1d(ids, [vip, *erased]), people - 1 - ERASED, replace=False)
    singles = np.r_[erased, rest]
    rows = np.r_[[rng.choice(np.flatnonzero(y == i)) for i in singles],
                 rng.choice(np.flatnonzero(y == vip), heavy, replace=False)]
    labels = np.r_[singles, np.full(heavy, vip)]
    never = np.setdiff1d(ids, labels)
    outside = np.concatenate([rng.permutation(np.flatnonzero(y == i))[:PER_PERSON]
                              for i in never])
    outside = x[rng.permutation(outside)[:OUTSIDE]]
    out = {arm: [0, 0, 0] for arm in ARMS}
    for k, p in enumerate(erased):
        keep = labels != p
        g, gl = x[rows[keep]], labels[keep]
        fresh = x[rng.choice(np.setdiff1d(np.flatnonzero(y == p), rows[k]), FRESH,
                             replace=False)]
        for arm, cap in ARMS.items():
            e = fit_scramble(x[rows[k]][None], g, gallery_labels=gl, stranger_cap=cap)
            edited = e.apply(g).astype(np.float64)
            t = np.quantile((e.apply(outside) @ edited.T).max(axis=1), 1 - FPIR)
            s = e.apply(fresh) @ edited.T
            match = s.max(axis=1) > t
            o = out[arm]
            o[0] += int(match.sum())
            o[1] += int(np.sum(match & (gl[s.argmax(axis=1)] == vip)))
            o[2] += len(fresh)
    return out


def table(name: str, people: int, cells: dict) -> str:
    head = " | ".join(f"erased labelled MATCH, {arm} (as the heavy person)" for arm in ARMS)
    out = [f"| encoder | people | heavy person's photos | {head} |",
           "|---|---|---|" + "---|" * len(ARMS)]
    for heavy, draws in cells.items():
        row = []
        for arm in ARMS:
            m, v, n = (sum(d[arm][i] for d in draws) for i in range(3))
            row.append(f"{100 * m / n:.1f} % ({100 * v / n:.1f} %)")
        out.append(f"| {name} | {people} | {heavy} | " + " | ".join(row) + " |")
    return "\n".join(out)


def main() -> None:
    ap = embedding_args(__doc__, FACES, draws=8)
    ap.add_argument("--people", type=int, default=40)
    ap.add_argument("--heavy", default="1,8,32", help="the heavy person's photos, comma-separated")
    a = ap.parse_args()
    load0, t0 = load_average(), time.perf_counter()
    x, y = unit_embeddings(a.dataset, a.encoder)
    x = x.astype(np.float64)
    cells = {heavy: [one_draw(x, y, a.people, heavy, np.random.default_rng([a.seed, d, heavy]))
                     for d in range(a.draws)]
             for heavy in (int(k) for k in a.heavy.split(","))}
    name, spec = encoder_spec(a.encoder)
    publish(f"heavy-{name}", f"## One heavily enrolled person ({Path(a.dataset).name} + `{name}`, "
            "`benchmarks/bench_heavy.py`)",
            f"python benchmarks/bench_heavy.py --encoder {spec} --people {a.people} --heavy "
            f"{a.heavy} --draws {a.draws} --seed {a.seed}",
            f"{ERASED} people erased alone per draw, {FRESH} new photos each, {a.draws} draws "
            f"per row; the MATCH threshold labels {100 * FPIR:g} % of never-enrolled people's "
            "photos (up to "
            f"{OUTSIDE}, at most {PER_PERSON} each) MATCH after the edit.",
            table(name, a.people, cells), load0=load0, t0=t0, no_write=a.no_write)


if __name__ == "__main__":
    main()
