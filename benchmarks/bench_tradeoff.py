"""How many photos and how many directions does ESC need to erase a person for good?

Writes the ``bench:tradeoff`` section of docs/benchmarks.md.

Protocol (fresh re-enrolment, the test a gallery-only delete fails): for one erased identity at a
time, fit ESC (``fit_esc``) on some of their photos, edit every embedding, then

* **forget rank-1**: enrol half of the person's *held-out* photos (never in the fit) into the
  edited gallery of everyone else, probe with the other half (chance = 1 / identities);
* **forget TAR@1e-3**: genuine pairs among the held-out photos, threshold from edited impostor
  pairs of retained identities at FAR 1e-3;
* **retain rank-1 / TAR@1e-3**: everyone else's enrolment half vs probe half, edited.

Each number is the mean over several erased identities, each erased alone from the original model,
over a grid of fit-set sizes x rules (``k`` = 1, 2, 4, 8, 16 where ``k <= rank(F)``; energy 0.8,
0.9, 0.95; and the published default ``p = 1.5``).

Encoders:
1. ``samples`` (synthetic faces, facekd.faces.synthfaces): 200 identities x 8 gallery images; fits on the
   8 gallery images, + 16 and + 48 extra renders; 10 fresh renders held out.
2. ``dlib`` on LFW (``lfw_150px``, identities with >= 20 detected faces) when the data exists:
   ``$FACEKD_FACES_DIR`` or ``<repo>/../shared/data/faces``. Erased people have >= 40 faces: 20 are
   held out, fits use 5 / 10 / 20 / all the others. Embeddings go through the encoder's ONNX
   export (onnxruntime is ~3x faster than torch here, docs/benchmarks.md#encoders) and are cached
   in ``$FACEKD_CACHE`` (default ``~/.cache/facekd``)/bench_tradeoff, never in the repository.

    python benchmarks/bench_tradeoff.py [--quick] [--no-lfw] [--no-write]

Privacy: nothing about an erased identity is printed beyond aggregate percentages.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Run as `python benchmarks/bench_tradeoff.py`: sys.path[0] is benchmarks/, so the shared helpers
# in benchmarks/_common.py import as a top-level module.
from _common import REPO, load_average, machine, versions, write_section
from facekd import fit_esc
from facekd.core.metrics import identification_hits, pair_scores, split_enrol_probe, tar_at_far
from facekd.erasure import ErasureError
from facekd.fileio import write_atomic

FACES_DIR = Path(os.environ.get("FACEKD_FACES_DIR", REPO.parent / "shared" / "data" / "faces"))
CACHE_DIR = (Path(os.environ.get("FACEKD_CACHE") or Path.home() / ".cache" / "facekd")
             / "bench_tradeoff")
FAR = 1e-3
MAX_IMPOSTORS = 500_000  # sampled (seeded) retained impostor pairs: 500 above the 1e-3 threshold
RULES: list[tuple[str, dict]] = (
    [(f"k={k}", {"k": k}) for k in (1, 2, 4, 8, 16)]
    + [(f"energy {e:g}", {"energy": e}) for e in (0.8, 0.9, 0.95)]
    + [("published p=1.5", {"p": 1.5})]
)
METRICS = ("forget_rank1", "forget_tar", "retain_rank1", "retain_tar")


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass
class Case:
    """One erased identity: everyone else's embeddings and the person's held-out photos.

    retained: ``(n, d)`` float32 original embeddings of everyone else; retained_y: ``(n,)`` ints;
    enrol: ``(n,)`` bool enrolment half. fresh_enrol / fresh_probe: ``(m, d)`` held-out photos of
    the erased person (never in any fit). fits: fit-set name -> ``(f, d)`` fit embeddings.
    """

    retained: np.ndarray
    retained_y: np.ndarray
    enrol: np.ndarray
    fresh_enrol: np.ndarray
    fresh_probe: np.ndarray
    fits: dict[str, np.ndarray]


def evaluate(case: Case, erasure, seed: int = 0) -> dict[str, float]:
    """The four metrics (percent) of one erasure (``None`` = the original model)."""
    edit = erasure.apply if erasure is not None else _unit
    r = edit(case.retained)
    fe, fp = edit(case.fresh_enrol), edit(case.fresh_probe)
    y, en = case.retained_y, case.enrol
    forget_label = int(y.max()) + 1
    gal = np.vstack([r[en], fe])
    gal_y = np.concatenate([y[en], np.full(len(fe), forget_label)])
    forget_hits = identification_hits(gal, gal_y, fp, np.full(len(fp), forget_label))
    retain_hits = identification_hits(r[en], y[en], r[~en], y[~en])
    gen_r, imp_r = pair_scores(r, y, max_impostor_pairs=MAX_IMPOSTORS, seed=seed)
    tar_r, thr = tar_at_far(gen_r, imp_r, FAR)
    held = np.vstack([fe, fp])
    gen_f, _ = pair_scores(held, np.zeros(len(held), np.int64), max_impostor_pairs=0)
    return {"forget_rank1": 100 * forget_hits.mean(), "forget_tar": 100 * np.mean(gen_f > thr),
            "retain_rank1": 100 * retain_hits.mean(), "retain_tar": 100 * tar_r}


def _se(values: list[float]) -> float:
    """Standard error of the mean over erased identities (they differ far more than probes do)."""
    v = np.asarray(values, np.float64)
    return float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


def run_grid(cases: list[Case], progress_label: str) -> dict:
    """Mean metrics over ``cases`` for the original model and every (fit set, rule) pair.

    Returns ``{"original": metrics, "rows": [(fit, rule, metrics | None, mean k, n_fit)]}``; a
    rule is ``None`` when ``k > rank(F)`` for some case (the fit set spans too few directions).
    """
    from tqdm.auto import tqdm

    orig = [evaluate(c, None) for c in cases]
    out = {"original": {m: float(np.mean([o[m] for o in orig])) for m in METRICS}, "rows": []}
    out["original"]["forget_rank1_se"] = _se([o["forget_rank1"] for o in orig])
    fit_names = list(cases[0].fits)
    jobs = [(f, r) for f in fit_names for r in RULES]
    for fit, (rule, kw) in tqdm(jobs, desc=progress_label, unit="config"):
        res, ks, ns = [], [], []
        for c in cases:
            F = c.fits[fit]
            ns.append(len(F))
            try:
                er = fit_esc(F, **kw)
            except ErasureError:  # k > rank(F): not a valid configuration for this fit set
                res = None
                break
            ks.append(er.k)
            res.append(evaluate(c, er))
        mean = None if res is None else {m: float(np.mean([x[m] for x in res])) for m in METRICS}
        if mean is not None:
            mean["forget_rank1_se"] = _se([x["forget_rank1"] for x in res])
        out["rows"].append((fit, rule, mean, float(np.mean(ks)) if ks else None,
                            float(np.mean(ns))))
    return out


# ---------------------------------------------------------------------- synthetic faces
def synthetic_cases(n_erased: int, seed: int = 0) -> tuple[list[Case], dict]:
    from facekd.encoders import load_encoder
    from facekd.faces.synthfaces import render_dataset, render_identity

    enc = load_encoder("samples")
    ids = list(range(1000, 1200))
    per, extra_max, fresh = 8, 48, 10
    chips, labels = render_dataset(ids, per, seed=0)
    E = enc.embed(chips, batch_size=256, progress=True)
    rng = np.random.default_rng(seed)
    erased = rng.choice(ids, size=n_erased, replace=False)
    cases = []
    for f in erased:
        keep = labels != f
        y = labels[keep]
        extra = enc.embed(render_identity(int(f), extra_max, seed=0, image_offset=500),
                          batch_size=256, progress=False)
        held = enc.embed(render_identity(int(f), fresh, seed=0, image_offset=1000),
                         batch_size=256, progress=False)
        gallery = E[labels == f]
        cases.append(Case(
            retained=E[keep], retained_y=y, enrol=split_enrol_probe(y, seed=seed),
            fresh_enrol=held[:fresh // 2], fresh_probe=held[fresh // 2:],
            fits={f"gallery {per}": gallery,
                  f"gallery {per} + 16 extra": np.vstack([gallery, extra[:16]]),
                  f"gallery {per} + 48 extra": np.vstack([gallery, extra])}))
    info = {"identities": len(ids), "per": per, "erased": len(erased), "fresh": fresh,
            "dim": enc.dim}
    return cases, info


# ---------------------------------------------------------------------- LFW + dlib
def _atomic_save(path: Path, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_atomic(path, buf.getvalue())


def lfw_embeddings(root: Path, min_images: int = 20) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(n, 128)`` float32 dlib embeddings and ``(n,)`` labels (identity index) of every detected
    face of LFW identities with >= ``min_images`` files; cached by files + encoder fingerprint."""
    from facekd.encoders import load_encoder
    from facekd.encoders.onnx_model import OnnxEncoder
    from facekd.faces import chips_from_files

    people = sorted(p for p in root.iterdir() if p.is_dir()
                    and sum(1 for _ in p.glob("*.jpg")) >= min_images)
    files = [f for p in people for f in sorted(p.glob("*.jpg"))]
    names = [f.parent.name for f in files]
    enc = load_encoder("dlib", device="cpu")
    key = hashlib.sha256(json.dumps([enc.fingerprint, [
        (str(f.relative_to(root)), f.stat().st_size) for f in files]]).encode()).hexdigest()[:16]
    cache = CACHE_DIR / f"lfw_dlib_{key}.npz"
    info = {"people": len(people), "files": len(files), "cache": "hit"}
    if cache.is_file():
        z = np.load(cache)
        info.update(skipped=int(z["skipped"]), embed_s=float(z["embed_s"]))
        return z["E"], z["labels"], info
    info["cache"] = "miss"
    t = time.perf_counter()
    res = chips_from_files(files, enc.input_spec, progress=True)
    detect_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = enc.to_onnx(Path(tmp) / "dlib.onnx")
        onx = OnnxEncoder(onnx_path, input_spec=enc.input_spec)
        # The export must be the same network: compare a few chips with torch before trusting it.
        ref = enc.embed(res.chips[:4], progress=False)
        got = onx.embed(res.chips[:4], progress=False)
        if not np.allclose(ref, got, atol=1e-4):
            raise SystemExit("ONNX export disagrees with torch: max diff "
                             f"{np.abs(ref - got).max()}")
        t = time.perf_counter()
        E = onx.embed(res.chips, batch_size=32, progress=True)
        embed_s = time.perf_counter() - t
    person_index = {n: i for i, n in enumerate(sorted(set(names)))}
    labels = np.asarray([person_index[names[s]] for s in res.sources], np.int64)
    info.update(skipped=len(res.skipped), embed_s=embed_s, detect_s=detect_s)
    _atomic_save(cache, E=E.astype(np.float32), labels=labels, skipped=len(res.skipped),
                 embed_s=embed_s)
    return E.astype(np.float32), labels, info


def lfw_cases(E: np.ndarray, labels: np.ndarray, n_erased: int, *, held_out: int = 20,
              min_faces: int = 20, min_erased: int = 40, seed: int = 0) -> tuple[list[Case], dict]:
    ids, counts = np.unique(labels, return_counts=True)
    ok = ids[counts >= min_faces]  # detection may drop a face or two below the file count
    keep = np.isin(labels, ok)
    E, labels = E[keep], labels[keep]
    big = ids[counts >= min_erased]
    rng = np.random.default_rng(seed)
    erased = rng.choice(big, size=min(n_erased, len(big)), replace=False)
    cases = []
    for f in erased:
        idx = rng.permutation(np.flatnonzero(labels == f))
        held, pool = E[idx[:held_out]], E[idx[held_out:]]
        y = labels[labels != f]
        fits = {f"{n} photos": pool[:n] for n in (5, 10, 20)}
        fits["all others (n-20)"] = pool
        cases.append(Case(retained=E[labels != f], retained_y=y,
                          enrol=split_enrol_probe(y, seed=seed),
                          fresh_enrol=held[:held_out // 2], fresh_probe=held[held_out // 2:],
                          fits=fits))
    info = {"identities": len(ok), "faces": int(len(labels)), "candidates": len(big),
            "erased": len(erased), "held_out": held_out,
            "all_others_mean": float(np.mean([len(c.fits["all others (n-20)"]) for c in cases]))}
    return cases, info


# ---------------------------------------------------------------------- report
def table(result: dict, chance: float) -> str:
    lines = ["| fit photos | rule | mean k | forget rank-1 (± s.e.) | forget TAR@1e-3 "
             "| retain rank-1 | retain TAR@1e-3 |", "|---|---|---|---|---|---|---|"]
    o = result["original"]
    lines.append(f"| (none: original model) | - | 0 | "
                 f"{o['forget_rank1']:.1f} ± {o['forget_rank1_se']:.1f} | "
                 f"{o['forget_tar']:.1f} | {o['retain_rank1']:.1f} | {o['retain_tar']:.1f} |")
    for fit, rule, m, k, _ in result["rows"]:
        if m is None:
            lines.append(f"| {fit} | {rule} | n/a (k > rank) | | | | |")
            continue
        lines.append(f"| {fit} | {rule} | {k:.1f} | "
                     f"{m['forget_rank1']:.1f} ± {m['forget_rank1_se']:.1f} | "
                     f"{m['forget_tar']:.1f} | {m['retain_rank1']:.1f} | {m['retain_tar']:.1f} |")
    lines.append(f"\nChance rank-1: {100 * chance:.2f}%. All numbers are percentages.")
    return "\n".join(lines)


def findings(result: dict, name: str, chance: float, max_drop: float = 2.0) -> str:
    """Sentences computed from the numbers (nothing here is typed in by hand)."""
    o = result["original"]
    out = [f"- {name}: original model: re-enrolled forget rank-1 {o['forget_rank1']:.1f}, "
           f"retain rank-1 {o['retain_rank1']:.1f}, retain TAR {o['retain_tar']:.1f}."]
    fitted = [r[2] for r in result["rows"] if r[2] is not None]
    tar = [m["forget_tar"] for m in fitted]
    r1 = [m["forget_rank1"] for m in fitted]
    out.append(f"  - over all {len(fitted)} fitted rows: forget TAR@1e-3 "
               f"{min(tar):.1f}-{max(tar):.1f} "
               f"but forget rank-1 after fresh re-enrolment {min(r1):.1f}-{max(r1):.1f} "
               f"(chance {100 * chance:.2f}).")
    if max(tar) < 5 and np.median(r1) > 10 * 100 * chance:
        out.append("    A verification threshold rejects the erased person's held-out pairs in "
                   "every row, yet fresh re-enrolment still identifies them at "
                   f"{np.median(r1) / (100 * chance):.0f}x chance in the median row: "
                   "judging erasure by TAR alone overstates it.")
    fits = list(dict.fromkeys(r[0] for r in result["rows"]))
    for fit in fits:
        rows = [r for r in result["rows"] if r[0] == fit and r[2] is not None]
        best = min(rows, key=lambda r: r[2]["forget_rank1"])
        cheap = [r for r in rows if o["retain_rank1"] - r[2]["retain_rank1"] <= max_drop
                 and o["retain_tar"] - r[2]["retain_tar"] <= max_drop]
        pub = next(r for r in rows if r[1].startswith("published"))
        s = (f"  - fit on {fit}: lowest forget rank-1 {best[2]['forget_rank1']:.1f} ({best[1]}, "
             f"retain rank-1 {best[2]['retain_rank1']:.1f}, retain TAR "
             f"{best[2]['retain_tar']:.1f}); published default: forget rank-1 "
             f"{pub[2]['forget_rank1']:.1f}, forget TAR {pub[2]['forget_tar']:.1f}")
        if cheap:
            c = min(cheap, key=lambda r: r[2]["forget_rank1"])
            s += (f"; best costing <= {max_drop:g} points of retain rank-1 and TAR: {c[1]} "
                  f"-> forget rank-1 {c[2]['forget_rank1']:.1f}, forget TAR "
                  f"{c[2]['forget_tar']:.1f}")
        else:
            s += f"; no rule costs <= {max_drop:g} points of retain rank-1 and TAR"
        out.append(s + ".")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="3 erased identities per encoder (smoke run)")
    ap.add_argument("--no-lfw", action="store_true", help="skip the real-face (LFW + dlib) part")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md")
    # 5 probes per erased person: 24 people -> 120 probes, so one probe moves a mean < 1 point
    ap.add_argument("--synthetic-erased", type=int, default=24)
    ap.add_argument("--lfw-erased", type=int, default=12)
    args = ap.parse_args()
    n_syn = 3 if args.quick else args.synthetic_erased
    n_lfw = 3 if args.quick else args.lfw_erased
    mach = (f"{machine()}, load average {load_average():.1f} at the start; "
            f"{versions('numpy', 'torch', 'onnxruntime')}")
    t0 = time.perf_counter()
    parts = [
        "## ESC trade-off: fit photos x erased directions (`benchmarks/bench_tradeoff.py`)",
        "",
        f"Machine: {mach}. Command: `python benchmarks/bench_tradeoff.py"
        f"{' --quick' if args.quick else ''}{' --no-lfw' if args.no_lfw else ''}`.",
        "",
        "Protocol (fresh re-enrolment): each erased identity is erased alone from the original "
        "model with `fit_esc` (uncentred, as published) on the listed fit photos; every embedding "
        "is edited. *Forget rank-1*: half of the person's held-out photos (never in any fit) are "
        "enrolled into the edited gallery of everyone else (their enrolment halves), the other "
        "half "
        "search it. *Forget TAR@1e-3*: genuine pairs among the held-out photos against the "
        f"threshold at FAR 1e-3 of edited retained impostor pairs ({MAX_IMPOSTORS:,} seeded "
        "samples). *Retain*: everyone else's enrolment half vs probe half, edited; TAR over all "
        "their genuine pairs. Means over the erased identities (± standard error over them); "
        "`n/a` = k exceeds the fit set's "
        "rank. Energy rules take the smallest k holding that share of ||F||^2; the published "
        "default is p = 1.5 -> k = int(128 * 1.5 / 100) = 1.",
        "",
    ]
    summary = []

    cases, info = synthetic_cases(n_syn)
    res = run_grid(cases, "synthetic grid")
    parts += [f"### Synthetic faces, `samples` encoder (d = {info['dim']})", "",
              f"{info['identities']} identities x {info['per']} gallery renders; {info['erased']} "
              f"erased identities (seeded draw), each with {info['fresh']} fresh held-out renders "
              f"({info['fresh'] // 2} enrolled, {info['fresh'] // 2} probes); extra fit renders "
              "are "
              "other fresh images (never the held-out ones).", "",
              table(res, 1 / info["identities"]), ""]
    summary.append(findings(res, "synthetic", 1 / info["identities"]))
    print(table(res, 1 / info["identities"]))

    lfw_root = FACES_DIR / "lfw_150px"
    if not args.no_lfw and lfw_root.is_dir():
        E, labels, einfo = lfw_embeddings(lfw_root)
        cases, info = lfw_cases(E, labels, n_lfw)
        res = run_grid(cases, "LFW grid")
        parts += ["### Real faces: LFW (`lfw_150px`) + dlib's ResNet (d = 128)", "",
                  f"{einfo['files']} photos of the {einfo['people']} LFW identities with >= 20 "
                  f"files; dlib detection + alignment (`chips_from_files`), {einfo['skipped']} "
                  f"without a detected face; {info['faces']} faces of {info['identities']} "
                  f"identities kept (>= 20 faces). Embedded with the dlib encoder's ONNX export "
                  f"(checked against torch) in {einfo['embed_s']:.0f} s. {info['erased']} erased "
                  f"identities drawn (seeded) from the {info['candidates']} with >= 40 faces; "
                  f"{info['held_out']} of each person's photos are held out "
                  f"({info['held_out'] // 2} enrolled, {info['held_out'] // 2} probes), the fits "
                  "use "
                  f"5 / 10 / 20 / all of the others (mean {info['all_others_mean']:.0f}).", "",
                  table(res, 1 / info["identities"]), ""]
        summary.append(findings(res, "LFW + dlib", 1 / info["identities"]))
        print(table(res, 1 / info["identities"]))
    elif not args.no_lfw:
        parts += [f"(LFW not found under {FACES_DIR.name}/: real-face part skipped.)", ""]

    parts += ["### What the numbers say (generated from the tables above)", "", *summary, "",
              f"Total run time {time.perf_counter() - t0:.0f} s."]
    text = "\n".join(parts)
    print("\n".join(summary))
    if not args.no_write:
        path = write_section("tradeoff", text)
        print(f"wrote the bench:tradeoff section of {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
