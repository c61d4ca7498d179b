"""Many erasures in sequence on a synthetic deployment: does everyone else stay recognisable, do
the erased stay erased, and what do the edited encoder and the gallery update cost as erasures
accumulate? Writes the ``bench:sequential`` section of docs/benchmarks.md.

    python benchmarks/bench_sequential.py [--erase 1000] [--retained 300] [--esc-up-to 100]
                                          [--no-write]

Data: ``facekd.faces.synthfaces`` renders, embedded with the tiny bundled encoder (``samples``). Each
erased person has 8 gallery faces (the fit) and 4 fresh renders no fit sees (2 re-enrolled by the
attacker, 2 probes); each retained person has 6 gallery faces and 6 probes. Step ``i`` fits on the
person's *current* stored vectors against everyone not yet erased, composes
``composite = composite.then(step)`` and updates the stored vectors with the new step alone, as
``facekd forget`` does. Retained metrics compare the deployed map (``composite.apply`` of the
original probes) against the stored, step-by-step-updated gallery, so they also check that
updating without images equals re-embedding.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import load_average, machine, versions, write_section

CHECKPOINTS = (0, 1, 10, 50, 100, 250, 500, 1000, 2000)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _data(n_erased: int, n_retained: int, seed: int = 0):
    from facekd.encoders import load_encoder
    from facekd.faces.synthfaces import render_dataset

    enc = load_encoder("samples")
    ids = list(range(10_000, 10_000 + n_erased + n_retained))
    chips, labels = render_dataset(ids, 12, seed=seed, progress=True)
    E = _unit(enc.embed(chips, batch_size=256, progress=True))
    return enc, E, labels, np.asarray(ids[:n_erased]), np.asarray(ids[n_erased:])


def _retained(stored, stored_y, probes, probe_y, far=1e-3):
    from facekd.core.metrics import identification_hits, pair_scores, tar_at_far

    rank1 = 100 * identification_hits(stored, stored_y, probes, probe_y).mean()
    allv, ally = np.vstack([stored, probes]), np.r_[stored_y, probe_y]
    gen, imp = pair_scores(allv, ally, max_impostor_pairs=300_000, seed=0)
    return rank1, 100 * tar_at_far(gen, imp, far)[0]


def _forget(composite, E, labels, gallery, gallery_y, erased, fresh_idx):
    """Re-enrolment rank-1 and genuine TAR of every erased person's fresh photos under the final
    map: their 2 re-enrolled photos join the stored gallery, the other 2 search it."""
    from facekd.core.metrics import identification_hits, pair_scores

    fresh = {p: composite.apply(E[fresh_idx[p]]) for p in erased}
    enrol = np.vstack([fresh[p][:2] for p in erased])
    probe = np.vstack([fresh[p][2:] for p in erased])
    ey = np.repeat(erased, 2)
    hits = identification_hits(np.vstack([gallery, enrol]), np.r_[gallery_y, ey], probe, ey)
    _, imp = pair_scores(gallery, gallery_y, max_impostor_pairs=300_000, seed=0)
    thr = np.quantile(imp, 1 - 1e-3)
    genuine = np.concatenate([(f @ f.T)[np.triu_indices(len(f), 1)] for f in fresh.values()])
    return 100 * hits.mean(), 100 * np.mean(genuine > thr)


def _latency(enc, composite, chips, batch: int, repeats: int = 20) -> float:
    """Median ms per batch of the edited encoder as exported ONNX (CPU, one session)."""
    import onnxruntime as ort

    edited = enc.with_erasure(composite) if not composite.is_identity else enc
    with tempfile.TemporaryDirectory() as tmp:
        path = edited.to_onnx(Path(tmp) / "m.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        x = edited.input_spec.to_tensor_array(chips[:batch])
        name = sess.get_inputs()[0].name
        sess.run(None, {name: x})
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            sess.run(None, {name: x})
            times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def run(method: str, up_to: int, enc, E, labels, erased_all, retained, chips, seed=0,
        q: float | None = None) -> list[dict]:
    from facekd.erasure import Erasure, fit_esc, fit_scramble

    rng = np.random.default_rng(seed)
    per = {int(p): rng.permutation(np.flatnonzero(labels == p)) for p in np.unique(labels)}
    erased = erased_all[:up_to]
    fit_idx = {p: per[p][:8] for p in erased}
    fresh_idx = {p: per[p][8:] for p in erased}
    ret_gal = np.concatenate([per[p][:6] for p in retained])
    ret_probe = np.concatenate([per[p][6:] for p in retained])
    # The stored gallery: retained people's 6 faces and erased people's 8, updated step by step.
    gal_idx = np.concatenate([ret_gal] + [fit_idx[p] for p in erased])
    stored, stored_y, src = E[gal_idx].copy(), labels[gal_idx].copy(), gal_idx.copy()
    composite = Erasure.identity(E.shape[1])
    rows, t_fit, t_update = [], 0.0, 0.0
    checkpoints = sorted({c for c in CHECKPOINTS if c <= up_to} | {up_to})
    for step in range(up_to + 1):
        if step in checkpoints:
            keep = np.isin(stored_y, retained)
            r1, tar = _retained(stored[keep], stored_y[keep], composite.apply(E[ret_probe]),
                                labels[ret_probe])
            t = time.perf_counter()
            composite.apply(stored)
            apply_ms = 1000 * (time.perf_counter() - t)
            row = {"method": method if q is None else f"{method} q={q}", "erased": step, "retain_rank1": r1, "retain_tar": tar,
                   "gates": composite.n_gates, "k": composite.k,
                   "fit_s_mean": t_fit / max(step, 1), "update_ms_mean": 1000 * t_update / max(step, 1),
                   "composite_apply_ms": apply_ms, "gallery_rows": int(len(stored)),
                   "latency_b1_ms": _latency(enc, composite, chips, 1),
                   "latency_b32_ms": _latency(enc, composite, chips, 32)}
            if step:
                row["forget_rank1"], row["forget_tar"] = _forget(
                    composite, E, labels, stored[keep], stored_y[keep], erased[:step], fresh_idx)
            rows.append(row)
            print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
        if step == up_to:
            break
        p = erased[step]
        mine = stored_y == p
        t = time.perf_counter()
        if method == "scramble":
            new = fit_scramble(stored[mine], stored[~mine], gallery_labels=stored_y[~mine],
                               scrambler=composite.scrambler, seed=seed, q=q)
        else:
            new = fit_esc(stored[mine], p=1.5)
        t_fit += time.perf_counter() - t
        t = time.perf_counter()
        stored, stored_y, src = stored[~mine], stored_y[~mine], src[~mine]  # rows removed
        new.apply(stored, out=stored)                        # everyone else: the new step only
        t_update += time.perf_counter() - t
        composite = composite.then(new)
    # The deployed map and the step-by-step gallery must agree (no images needed to update).
    rows[-1]["max_diff_deployed_vs_stored"] = float(np.abs(composite.apply(E[src]) - stored).max())
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--erase", type=int, default=1000)
    ap.add_argument("--retained", type=int, default=300)
    ap.add_argument("--esc-up-to", type=int, default=100)
    ap.add_argument("--q", type=float, action="append", default=None,
                    help="scramble gate quantile(s) to run besides the default (repeatable)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    load_before = load_average()
    t0 = time.perf_counter()
    enc, E, labels, erased, retained = _data(args.erase, args.retained)
    from facekd.faces.synthfaces import render_dataset

    chips, _ = render_dataset([20_000 + i for i in range(4)], 8, progress=False)
    rows = run("scramble", args.erase, enc, E, labels, erased, retained, chips)
    for q in args.q or []:
        rows += run("scramble", args.erase, enc, E, labels, erased, retained, chips, q=q)
    if args.esc_up_to:
        rows += run("esc", min(args.esc_up_to, args.erase), enc, E, labels, erased, retained, chips)
    wall = time.perf_counter() - t0
    head = ("| method | erased | retained rank-1 | retained TAR@1e-3 | erased rank-1 (all so far) "
            "| erased TAR@1e-3 | fit s/erasure | gallery update ms/erasure | composite apply ms "
            "| ONNX ms, batch 1 | ONNX ms, batch 32 |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        fr = f"{r['forget_rank1']:.2f}" if "forget_rank1" in r else "-"
        ft = f"{r['forget_tar']:.2f}" if "forget_tar" in r else "-"
        lines.append(f"| {r['method']} | {r['erased']} | {r['retain_rank1']:.2f} | "
                     f"{r['retain_tar']:.2f} | {fr} | {ft} | {r['fit_s_mean']:.3f} | "
                     f"{r['update_ms_mean']:.2f} | {r['composite_apply_ms']:.1f} | "
                     f"{r['latency_b1_ms']:.2f} | {r['latency_b32_ms']:.2f} |")
    last = [r for r in rows if r["method"] == "scramble"][-1]  # the default setting
    body = f"""## Erasures in sequence (`benchmarks/bench_sequential.py`)

Machine: {machine()}; {versions('facekd', 'numpy', 'onnxruntime')}. 1-minute load average
{load_before:.1f} before, {load_average():.1f} after; wall {wall:.0f} s. Command:
`python benchmarks/bench_sequential.py --erase {args.erase} --retained {args.retained}
--esc-up-to {args.esc_up_to}{''.join(f' --q {q}' for q in args.q or [])}`.

Synthetic deployment: {args.erase + args.retained} `facekd.faces.synthfaces` identities embedded with the tiny
`samples` encoder; {args.erase} are erased one after another (8 gallery faces each, the fit; 4 fresh
renders no fit saw: 2 re-enrolled by the attacker, 2 probes), {args.retained} are never erased (6 gallery
faces, 6 probes). Each step is fitted on the current stored vectors and updates them with the new
step alone (as `facekd forget`); "retained" compares the deployed map on fresh probes with that
stored gallery. "erased" = every person erased so far, under the final map. ONNX latency: the
edited tiny encoder exported with its tail, onnxruntime CPU, 1 thread, median of 20 runs.
Deployed map vs step-by-step gallery after the last step: max difference
{last.get('max_diff_deployed_vs_stored', float('nan')):.1e}.

{chr(10).join(lines)}"""
    print(body)
    if not args.no_write:
        write_section("sequential", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
