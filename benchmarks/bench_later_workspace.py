"""People enrolled after an erasure, through a real workspace: init, enrol, calibrate, forget.

    FACEKD_CACHE=... python benchmarks/bench_later_workspace.py [--dataset DIR] [--encoder dlib]
        [--people 15] [--photos 3] [--background 1000] [--seeds 0,1,2,3,4,5,6,7] [--erase 1]
        [--no-write]

For each seed: ``--people`` LFW identities are enrolled with their first ``--photos`` photos
(``Workspace.enroll``); one of them (with 23+ photos) is forgotten from those photos
(``Workspace.forget``, with ``force``: a refused gate is committed and marked), in one copy of the
workspace as it is and in another after ``Workspace.calibrate`` stored up to ``--background`` photos
(at most 14 each) of half of the identities not enrolled. Then the other half, people enrolled
later, is enrolled with one photo each and searched with up to 9 more (embedded once by the base
encoder, then edited by each workspace's accumulated erasure, which equals the deployed encoder).
The rank-1 of those searches is compared with a workspace where nobody was erased, and the share
of them the edit changes with forget's estimate and the top of its interval. With ``--erase K``,
the first K enrolled people are forgotten one after another (the estimate is then forget's sum over
the ledger). Writes ``bench:later-workspace-ENCODER`` (``-K`` with K > 1). Photos are linked
from the dataset into a temporary folder, never copied.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from _common import REPO, changed_share, embedding_args, encoder_spec, load_average, publish

from facekd.workspace import Workspace

FACES = Path(os.environ.get("FACEKD_FACES_DIR", REPO.parent / "shared" / "data" / "faces"))
PER_BACKGROUND, PROBES, FRESH = 14, 9, 20


def _link(folder: Path, dataset: Path, people: list[str], lo: int, hi: int,
          room: int | None = None) -> int:
    """Link photos ``lo:hi`` of each person into ``folder/<person>/`` (at most ``room`` in all)."""
    n = 0
    for p in people:
        files = sorted((dataset / p).iterdir())[lo:hi]
        if room is not None:
            files = files[: room - n]
        if not files:
            break
        (folder / p).mkdir(parents=True)
        for f in files:
            os.symlink(f, folder / p / f.name)
        n += len(files)
    return n


def _later_rank1(ws: Workspace, vectors: np.ndarray, truth: list[str]) -> float:
    """Rank-1 of the later people's probes (base-encoder rows) through ``ws``'s deployed encoder."""
    names = {i.identity: i.name for i in ws.gallery.identities()}
    hits = ws.gallery.search(ws.erasure.apply(vectors), k=1)
    return float(np.mean([bool(m) and names.get(m[0].identity) == t for m, t in zip(hits, truth)]))


def one_seed(dataset: Path, encoder: str, people: int, photos: int, size: int, seed: int,
             base: Path, erase: int = 1) -> dict:
    ids = sorted(d.name for d in dataset.iterdir() if d.is_dir())
    random.Random(seed).shuffle(ids)
    target = next(i for i in ids if len(list((dataset / i).iterdir())) >= photos + FRESH)
    gal = [target] + [i for i in ids if i != target][: people - 1]
    rest = [i for i in ids if i not in gal]
    background, later = rest[: len(rest) // 2], rest[len(rest) // 2:]
    _link(base / "gallery", dataset, gal, 0, photos)
    _link(base / "background", dataset, background, 0, PER_BACKGROUND, room=size)
    _link(base / "later", dataset, later, 0, 1)
    probes = [(p, f) for p in later for f in sorted((dataset / p).iterdir())[1:1 + PROBES]]
    out: dict = {}
    for arm in ("none", "forget", "calibrate"):
        Workspace.init(base / arm, encoder).close()
        with Workspace.open(base / arm, writable=True) as ws:
            ws.enroll(base / "gallery", progress=False)
            if arm == "calibrate":
                out["kept"] = ws.calibrate(base / "background", progress=False)["photos"]
            if arm != "none":
                # --force: a gate forget would refuse for too little held-out cover is measured
                # too (marked), since what it costs people enrolled later is the question here
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    done = [ws.forget(ws.identity_named(p), progress=False, force=True).receipt
                            for p in gal[:erase]]  # one after another, the target first
                # forget's estimate with the ledger's (one erasure: its own), the sum of the
                # tops of their intervals, the widest gate and how many were forced
                out[arm] = {"strangers_touched": done[-1]["model"]["strangers_touched_total"],
                            "bound": sum(r["model"]["strangers_touched_bound"] for r in done),
                            "q": min(r["params"]["q"] for r in done),
                            "background": done[0]["params"]["background"],
                            "forced": sum(bool(r.get("forced_over")) for r in done)}
            if "vectors" not in out:
                vectors, sources, _ = ws.embed_images([f for _, f in probes], progress=False,
                                                      base=True)
                who = {str(f): p for p, f in probes}
                out["vectors"], out["truth"] = vectors, [who[str(s)] for s in sources]
            ws.enroll(base / "later", progress=False)
            out[f"rank1_{arm}"] = _later_rank1(ws, out["vectors"], out["truth"])
            if arm != "none":  # the share of their searches the deployed encoder changes
                out[arm]["changed"] = changed_share(ws.erasure.apply(out["vectors"]),
                                                    out["vectors"])
    out["probes"] = len(out.pop("truth"))
    out.pop("vectors")
    return out


def _cost(arm: dict) -> str:
    """forget's estimate for people enrolled later, the top of its interval (counted by identity)
    and the share of their searches the edit really changed."""
    return (f"{100 * arm['strangers_touched']:.1f} %, {100 * arm['bound']:.1f} %; "
            f"{100 * arm['changed']:.1f} %")


def table(rows: dict, size: int) -> str:
    out = ["| seed | searches | no erasure | forget: rank-1 (estimate, at most; share changed; "
           f"q) | calibrate (photos kept, at most {size}), then forget |", "|---|---|---|---|---|"]
    for seed, r in rows.items():
        f, c = r["forget"], r["calibrate"]
        forced = {a: "" if not r[a]["forced"] else " forced" if r[a]["forced"] == 1 else
                  f" forced {r[a]['forced']}" for a in ("forget", "calibrate")}
        out.append(f"| {seed} | {r['probes']} | {100 * r['rank1_none']:.1f} % "
                   f"| **{100 * r['rank1_forget']:.1f} %** ({_cost(f)}, "
                   f"{f['q']:g}{forced['forget']}) | {100 * r['rank1_calibrate']:.1f} % "
                   f"({r['kept']} kept, {c['background']} fitted against; "
                   f"{_cost(c)}, {c['q']:g}{forced['calibrate']}) |")
    return "\n".join(out)


def main() -> None:
    ap = embedding_args(__doc__, FACES)
    ap.add_argument("--people", type=int, default=15)
    ap.add_argument("--photos", type=int, default=3)
    ap.add_argument("--background", type=int, default=1000)
    ap.add_argument("--seeds", default="0,1,2,3,4,5,6,7")
    ap.add_argument("--erase", type=int, default=1, help="people forgotten one after another")
    a = ap.parse_args()
    load0, t0 = load_average(), time.perf_counter()
    rows = {}
    for seed in (int(s) for s in a.seeds.split(",")):
        base = Path(tempfile.mkdtemp(prefix="facekd-later-"))
        try:
            rows[seed] = one_seed(Path(a.dataset), a.encoder, a.people, a.photos, a.background,
                                  seed, base, a.erase)
        finally:
            shutil.rmtree(base, ignore_errors=True)
    name, spec = encoder_spec(a.encoder)
    seq = "" if a.erase == 1 else f"-{a.erase}"
    publish(f"later-workspace-{name}{seq}", f"## People enrolled later, through a workspace "
            f"({Path(a.dataset).name} + `{name}`"
            + ("" if a.erase == 1 else f", {a.erase} erasures in sequence")
            + ", `benchmarks/bench_later_workspace.py`)",
            f"python benchmarks/bench_later_workspace.py --encoder {spec} --people {a.people} "
            f"--photos {a.photos} --background {a.background} --seeds {a.seeds}"
            + ("" if a.erase == 1 else f" --erase {a.erase}"),
            f"{a.people} people enrolled with {a.photos} photos each, "
            + ("one forgotten from them; " if a.erase == 1 else
               f"{a.erase} forgotten from them one after another (the estimate: forget's sum over "
               "the ledger; at most: the sum of the tops of their intervals); ")
            + "the people enrolled later: half of the identities not enrolled, one photo "
            f"enrolled, up to {PROBES} searched; rank-1 of their searches. \"forced\": forget "
            "refused the gate for too little held-out cover and --force committed it (with more "
            "than one erasure: how many).",
            table(rows, a.background),
            load0=load0, t0=t0, no_write=a.no_write)


if __name__ == "__main__":
    main()
