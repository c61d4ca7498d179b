"""Is verify's verdict right? A 40-person LFW workspace judged from outside. Writes the
``bench:verdict-lfw`` section of docs/benchmarks.md.

    python benchmarks/bench_verdict_lfw.py [--seed 20261205] [--people 40] [--encoder dlib] [--no-write]
    python benchmarks/bench_verdict_lfw.py --enrol 3 --erased-enrol 1   # an ID-photo-like gallery

Built as a new user would: ``lfw_deepfunneled`` + dlib (or ``--encoder``, e.g. ``facenet:PATH``;
its own ``bench:verdict-lfw-<name>`` section), ``people`` identities drawn with a seed
the other benchmarks never use, up to 20 photos enrolled each; ``erase`` of them with >= 52
photos are enrolled with 32 and keep 20 further photos back ("new photos": never enrolled,
never fitted; ``--enrol`` / ``--erased-enrol`` change the 20 and the 32: a gallery of a few photos
each, the erased fitted on one, is the common hard case, with its own ``bench:verdict-lfw-few-E-K``
section). They are erased one after another with the default method, each verified with its
20 new photos right after its erasure and again after the last one. One more such person is
erased with ESC-T on a copy of the enrolled workspace (a leaky erasure verify must FAIL).

The outside judge never calls facekd's verify:

* the edited encoder is exported to ONNX and run with onnxruntime on the new photos' face chips;
* the re-enrolment attack is replayed over 200 random half splits of them against the gallery's
  stored vectors: mean rank-1, against 2 x chance = 2 / (identities + 1);
* photos of people enrolled nowhere (every photo of 60 other LFW people) and the erased people's
  new photos are searched in the gallery; a photo is labelled MATCH above verify's one-to-many
  threshold (FPIR 1 %).

verify is wrong when it PASSes a person the replay finds over 2 x chance, or FAILs one the
replay finds at or under it; INCONCLUSIVE is never wrong, and its count is reported.
Photos are read in place (symlinks); nothing is copied into the repository.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import REPO, load_average, machine, versions, write_section

FACES = Path(os.environ.get("FACEKD_FACES_DIR", REPO.parent / "shared" / "data" / "faces"))
ENROL, ERASED_ENROL, NEW, SPLITS = 20, 32, 20, 200
ESC_T_ENROL = ERASED_ENROL  # the ESC-T control keeps 32 photos whatever --erased-enrol says


def _pick(dataset: Path, people: int, erase: int, seed: int):
    """``(gallery folders, erased folders, ESC-T folder, never-enrolled folders)``."""
    folders = sorted(p for p in dataset.iterdir() if p.is_dir())
    count = {f: len(list(f.glob("*.jpg"))) for f in folders}
    rng = np.random.default_rng(seed)
    big = [f for f in folders if count[f] >= ERASED_ENROL + NEW]
    big = [big[i] for i in rng.permutation(len(big))]
    erased, esc_t = big[:erase], big[erase]
    rest = [f for f in folders if f not in big[:erase + 1]]
    rest = [rest[i] for i in rng.permutation(len(rest))]
    gallery = erased + [esc_t] + rest[:people - erase - 1]
    return gallery, erased, esc_t, rest[people - erase - 1:][:60]


def _tree(root: Path, gallery: list[Path], special: dict[Path, int], seed: int,
          enrol: int = ENROL, later: dict[Path, int] | None = None):
    """Symlink tree (ids 1000...): ``enrol`` photos of each gallery person, ``special[folder]``
    of each special person, who also gets a folder of NEW photos enrolled nowhere; a person in
    ``later`` gets photos up to ``later[folder]`` in a second tree, ``root / "later"``."""
    tree, new, later = root / "tree", {}, later or {}
    rng = np.random.default_rng(seed)
    ids = {}
    for i, folder in enumerate(gallery):
        ids[folder] = 1000 + i
        files = sorted(folder.glob("*.jpg"))
        files = [files[j] for j in rng.permutation(len(files))]
        k = special.get(folder, enrol)
        # New photos come after the first ERASED_ENROL, whatever is enrolled: the same new
        # photos in every setting.
        enrol_files = files[:k]
        (tree / str(ids[folder])).mkdir(parents=True)
        for f in enrol_files:
            (tree / str(ids[folder]) / f.name).symlink_to(f.resolve())
        if folder in later:
            (root / "later" / str(ids[folder])).mkdir(parents=True)
            for f in files[k:later[folder]]:
                (root / "later" / str(ids[folder]) / f.name).symlink_to(f.resolve())
        if folder in special:
            new[ids[folder]] = root / "new" / str(ids[folder])
            new[ids[folder]].mkdir(parents=True)
            for j, f in enumerate(files[ERASED_ENROL:ERASED_ENROL + NEW]):
                (new[ids[folder]] / f"{j:04d}.jpg").symlink_to(f.resolve())
    return tree, new


def _onnx_embed(onnx_path: Path, spec, files: list[Path]) -> np.ndarray:
    """The exported model run with onnxruntime on facekd's face chips: ``(m, d)`` unit rows."""
    import onnxruntime as ort

    from facekd.faces import chips_from_files

    res = chips_from_files([str(f) for f in files], spec, select="largest")
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: spec.to_tensor_array(np.stack(res.chips))})
    x = out[0].astype(np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _replay(person: np.ndarray, gallery: np.ndarray, rng: np.random.Generator) -> float:
    """Mean rank-1 of the half-split re-enrolment attack over SPLITS random splits."""
    best = (person @ gallery.T).max(axis=1)
    m, e = len(person), len(person) // 2
    rates = []
    for _ in range(SPLITS):
        order = rng.permutation(m)
        enrol, probe = order[:e], order[e:]
        rates.append(np.mean((person[probe] @ person[enrol].T).max(axis=1) > best[probe]))
    return float(np.mean(rates))


def _judge(ws, ident: int, folder: Path, onnx_path: Path, rng) -> dict:
    v = ws.verify(ident, images=folder, progress=False, record=False)
    gallery = np.asarray(ws.gallery.vectors(), np.float64)
    person = _onnx_embed(onnx_path, ws.encoder.input_spec, sorted(folder.iterdir()))
    replay = _replay(person, gallery, rng)
    bound = 2.0 / (len(ws.gallery.identities()) + 1)
    a = v.attack["after"]["rank-1"]
    wrong = (v.status == "PASS" and replay > bound) or (v.status == "FAIL" and replay <= bound)
    return {"status": v.status, "rank1": a["estimate"], "low": a["low"], "high": a["high"],
            "verify_bound": a["bound"], "replay": replay, "judge_bound": bound,
            "wrong": wrong, "erased": (v.erased_photos or {}).get("erased"),
            "photos": v.attack["photos"], "reason": v.reason,
            "match_others": float(np.mean([im["match"] for im in v.images]))}


def _match_rate(ws, folders: list[Path]) -> tuple[float, float, int]:
    """Share of never-enrolled people's photos labelled MATCH in a one-to-many search (at most
    ENROL photos each, so that one person with 500 photos does not stand for the rest), per
    photo and per person (each person's share, averaged)."""
    from facekd.operations.measure import identification_threshold

    files = [f for folder in folders for f in sorted(folder.glob("*.jpg"))[:ENROL]]
    owner = [folder for folder in folders for _ in sorted(folder.glob("*.jpg"))[:ENROL]]
    vecs, sources, _ = ws.embed_images(files, progress=False)
    who = np.array([owner[files.index(Path(s))].name for s in sources])
    thr = identification_threshold(ws.gallery, ws.config)
    match = np.array([h[0].score for h in ws.gallery.search(vecs, k=1)]) > thr
    per_person = np.mean([match[who == w].mean() for w in np.unique(who)])
    return float(match.mean()), float(per_person), len(match)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=20261205)
    ap.add_argument("--people", type=int, default=40)
    ap.add_argument("--erase", type=int, default=3)
    ap.add_argument("--encoder", default="dlib", help="encoder spec, e.g. facenet:graph_final.pb")
    ap.add_argument("--enrol", type=int, default=ENROL, help="photos enrolled per person (at most)")
    ap.add_argument("--erased-enrol", type=int, default=ERASED_ENROL,
                    help="photos enrolled of each erased person (what forget fits on)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if not 1 <= args.erased_enrol <= ERASED_ENROL or not 1 <= args.enrol:
        ap.error(f"--erased-enrol must be 1-{ERASED_ENROL}, --enrol >= 1")
    from facekd.core.metrics import wilson_interval
    from facekd.workspace import Workspace

    dataset = FACES / "lfw_deepfunneled"
    if not dataset.is_dir():
        print(f"no LFW at {dataset}; set FACEKD_FACES_DIR", file=sys.stderr)
        return 2
    load_before, t0 = load_average(), time.perf_counter()
    rng = np.random.default_rng(args.seed)
    rows, log = [], []
    with tempfile.TemporaryDirectory(prefix="facekd-verdict-lfw-") as tmp:
        root = Path(tmp)
        gallery, erased, esc_t, outsiders = _pick(dataset, args.people, args.erase, args.seed)
        # The ESC-T person is enrolled like everyone else here and topped up to ESC_T_ENROL
        # photos in the copy ESC-T runs on: 32 photos of one person in a gallery of single
        # photos would be the gallery's largest share of faces (until the twelfth round they were
        # enrolled in both).
        tree, new = _tree(root, gallery, {**{f: args.erased_enrol for f in erased},
                                          esc_t: min(args.enrol, ESC_T_ENROL)}, args.seed,
                          args.enrol, later={esc_t: ESC_T_ENROL})
        ids = {f: 1000 + i for i, f in enumerate(gallery)}
        ws_dir, onnx_path = root / "ws", root / "edited.onnx"
        Workspace.init(ws_dir, args.encoder).close()
        with Workspace.open(ws_dir, writable=True) as ws:
            enrolled = ws.enroll(tree, progress=False)
        shutil.copytree(ws_dir, root / "ws-esc-t")
        with Workspace.open(ws_dir) as ws:
            stranger_before, person_before, n_out = _match_rate(ws, outsiders)
        # One after another, each judged right after its erasure.
        for f in erased:
            with Workspace.open(ws_dir, writable=True) as ws:
                ws.forget(ids[f], progress=False)
                ws.export_onnx(onnx_path, force=True)
                row = {"when": "right after", **_judge(ws, ids[f], new[ids[f]], onnx_path, rng)}
            rows.append(row)
            print(row, flush=True)
        with Workspace.open(ws_dir) as ws:
            for f in erased:
                row = {"when": f"after all {len(erased)}",
                       **_judge(ws, ids[f], new[ids[f]], onnx_path, rng)}
                rows.append(row)
                print(row, flush=True)
            stranger_after, person_after, _ = _match_rate(ws, outsiders)
            n_ids = len(ws.gallery.identities())
        with Workspace.open(root / "ws-esc-t", writable=True) as ws:
            ws.enroll(root / "later", progress=False)
            ws.forget(ids[esc_t], method="esc-t", progress=False)
            ws.export_onnx(onnx_path, force=True)
            row = {"when": "ESC-T", **_judge(ws, ids[esc_t], new[ids[esc_t]], onnx_path, rng)}
        rows.append(row)
        print(row, flush=True)
    wall = time.perf_counter() - t0
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    erased_match = [r["match_others"] for r in rows if r["when"] != "ESC-T"]
    lo, hi = wilson_interval(stranger_after * n_out, n_out)
    table = ["| person | when | verify | rank-1 [95 %] (verify's bound) | outside replay (2x chance) "
             "| erased photos | right? |", "|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows):
        table.append(f"| {i % len(erased) + 1 if r['when'] != 'ESC-T' else 'ESC-T'} | {r['when']} "
                     f"| {r['status']} | {pct(r['rank1'])} [{pct(r['low'])}, {pct(r['high'])}] "
                     f"({pct(r['verify_bound'])}) | {pct(r['replay'])} ({pct(r['judge_bound'])}) "
                     f"| {r['erased'] if r['erased'] is not None else '-'}/{r['photos']} "
                     f"| {'WRONG' if r['wrong'] else 'yes'} |")
    wrong = sum(r["wrong"] for r in rows)
    name, _, path = args.encoder.partition(":")
    title = "" if name == "dlib" else f", encoder `{name}`"
    command = "" if args.encoder == "dlib" else f" --encoder {name}:{Path(path).name}"
    few = (args.enrol, args.erased_enrol) != (ENROL, ERASED_ENROL)
    if few:
        command += f" --enrol {args.enrol} --erased-enrol {args.erased_enrol}"
        title += f", {args.enrol} photos each, the erased fitted on {args.erased_enrol}"
    body = f"""## Is verify right? A {args.people}-person LFW workspace judged from outside{title} (`benchmarks/bench_verdict_lfw.py`)

Machine: {machine()}; {versions('facekd', 'numpy', 'onnxruntime', 'dlib')}. 1-minute load average
{load_before:.1f} before, {load_average():.1f} after; wall {wall:.0f} s.
Command: `python benchmarks/bench_verdict_lfw.py --seed {args.seed}{command}`.

lfw_deepfunneled + {name}, {args.people} people drawn with seed {args.seed} ({enrolled.added} faces
enrolled: up to {args.enrol} photos each; the {len(erased)} erased {args.erased_enrol} each, with {NEW}
more photos of each kept back). The {len(erased)} are erased one after another
with the default gated scramble, and one more person with ESC-T on a copy of the enrolled
workspace, where they are topped up to {ESC_T_ENROL} photos. The outside judge runs the exported edited ONNX with onnxruntime on the {NEW} new
photos and replays the half-split attack over {SPLITS} random splits against the stored gallery
({n_ids} identities after the erasures).

{chr(10).join(table)}

- verify wrong (PASS over 2x chance, or FAIL at or under it): **{wrong} of {len(rows)}**;
  INCONCLUSIVE {sum(r['status'] == 'INCONCLUSIVE' for r in rows)}, PASS
  {sum(r['status'] == 'PASS' for r in rows)}, FAIL {sum(r['status'] == 'FAIL' for r in rows)}.
- Photos of {len(outsiders)} never-enrolled people ({n_out} photos, at most {ENROL} each) labelled
  MATCH in a one-to-many search: {pct(stranger_before)} % before the erasures, {pct(stranger_after)} %
  after (95 % {pct(lo)}-{pct(hi)}, photos taken as independent); averaged per person
  {pct(person_before)} % / {pct(person_after)} %. The configured FPIR is 1 %.
- The erased people's new photos labelled MATCH (as someone else): {', '.join(pct(x) + ' %' for x in erased_match)}.
"""
    print(body)
    if not args.no_write:
        section = "verdict-lfw" if name == "dlib" else f"verdict-lfw-{name}"
        write_section(section + (f"-few-{args.enrol}-{args.erased_enrol}" if few else ""), body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
