"""Benchmark the synthetic faces and the tiny samples encoder (a test fixture and demo, not a face
model). Writes the ``bench:samples`` section of docs/benchmarks.md.

Measures: render time per chip (the demo's 200 identities x 8 images), onnxruntime embedding time
per chip (2 threads, batch 64), and reports the encoder's accuracy on held-out identities and
images plus its training cost, as recorded in facekd/data/tiny_face_encoder.json by
samples/train_tiny_encoder.py (re-measured by tests/test_samples_encoder.py).

    python benchmarks/bench_samples.py
"""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort

# Run as `python benchmarks/bench_samples.py`: sys.path[0] is benchmarks/, so the shared helpers
# in benchmarks/_common.py import as a top-level module.
from _common import load_average, machine, versions, write_section
from facekd import fit_esc
from facekd.core import metrics
from facekd.encoders import load_encoder
from facekd.encoders.samples import model_info, model_path
from facekd.faces.synthfaces import render_dataset, render_identity


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def esc_table(forget_ids=(1042, 1001, 1100, 1150), ks=(1, 4, 8, 12)) -> str:
    """ESC on the samples encoder, re-enrolment protocol: 200 held-out identities x 10 images
    (first 5 enrolled); the erased identity gets 30 images (first 15 enrolled, ESC fitted on
    them, the other 15 probed). Mean over ``forget_ids``, each erased alone."""
    enc = load_encoder("samples")
    chips, labels = render_dataset(range(1000, 1200), 10, progress=False)
    emb = enc.embed(chips, batch_size=256, progress=False)
    rows = {k: [] for k in ks}
    base = []
    for t in forget_ids:
        keep = labels != t
        e = np.concatenate([emb[keep], enc.embed(render_identity(t, 30), progress=False)])
        y = np.concatenate([labels[keep], np.full(30, t)])
        enrol = np.zeros(len(y), bool)
        for lab in np.unique(y):
            idx = np.flatnonzero(y == lab)
            enrol[idx[: len(idx) // 2]] = True
        f = y == t

        def rank1(x, mask):
            hits = metrics.identification_hits(x[enrol], y[enrol], x[~enrol], y[~enrol])
            return float(hits[mask[~enrol]].mean())

        base.append((rank1(e, f), rank1(e, ~f)))
        for k in ks:
            a = fit_esc(e[f & enrol], k=k).apply(e)
            rows[k].append((rank1(a, f), rank1(a, ~f)))
    b = np.mean(base, 0)
    lines = ["| k | forget rank-1 % | retain rank-1 % |", "|---|---|---|",
             f"| 0 (original) | {100 * b[0]:.1f} | {100 * b[1]:.2f} |"]
    for k in ks:
        m = np.mean(rows[k], 0)
        lines.append(f"| {k} | {100 * m[0]:.1f} | {100 * m[1]:.2f} |")
    return "\n".join(lines)


def main() -> int:
    mach = (f"{machine()}, load average {load_average():.1f} at the start; "
            f"{versions('numpy', 'cv2', 'onnxruntime')}")
    ids = list(range(1000, 1200))
    t_render = best_of(lambda: render_dataset(ids, 8, progress=False), 2)
    chips, _ = render_dataset(ids, 8, progress=False)
    n = len(chips)

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(model_path()), so, providers=["CPUExecutionProvider"])
    x = ((chips.astype(np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2).copy()

    def embed():
        for i in range(0, n, 64):
            sess.run(None, {"input": x[i:i + 64]})

    embed()  # warm-up
    t_embed = best_of(embed)

    esc = esc_table()
    info = model_info()
    acc, tr = info["accuracy"], info["training"]
    hi, him, px = acc["heldout_identities"], acc["heldout_images"], info[
        "pixel_baseline_heldout_identities"]
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    section = f"""## Synthetic faces and the tiny samples encoder (`benchmarks/bench_samples.py`)

A **test fixture and demo, not a face model**: the encoder has only seen `facekd.faces.synthfaces`
renders (procedural cartoons of nobody). It exists so `facekd demo` and the tests run anywhere.

Machine: {mach}. Timings are the best of repeated runs and rise with the machine's load.

| stage | per chip | demo set (200 ids x 8 = {n} chips) |
|---|---|---|
| render (`render_dataset`, 1 process) | {1e3 * t_render / n:.2f} ms | {t_render:.2f} s |
| embed (onnxruntime CPU, 2 threads, batch 64) | {1e3 * t_embed / n:.2f} ms | {t_embed:.2f} s |

Encoder: `facekd/data/tiny_face_encoder.onnx`, {info['bytes']:,} bytes, {tr['parameters']:,}
parameters, 128-d, opset 17, ends in one Gemm; sha256 `{info['sha256'][:16]}...`.
Trained by `samples/train_tiny_encoder.py` with its defaults: {tr['n_identities']} training
identities ({tr['identities']}, render seed {tr['render_seed']}) x {tr['images_per_identity']} images,
{tr['steps']} steps of batch {tr['batch']}, {tr['loss']}, {tr['optimizer']}. Cost of training: render
{tr['render_s']:.0f} s, training {tr['train_s']:.0f} s wall / {tr['train_cpu_s']:.0f} s CPU with
{tr['threads']} threads, render + train + export {tr['total_s']:.0f} s wall (goal: 10 minutes).
{tr.get('timing_note', '')}

Accuracy (rank-1: first half of each identity's images enrolled, the rest probed, best-matching
face; TAR over all genuine pairs at the threshold giving FAR 1e-3 on all impostor pairs):

| set | identities | rank-1 % | TAR@FAR=1e-3 % |
|---|---|---|---|
| held-out identities (demo range {hi['ids']}, seed {hi['seed']}, {hi['images_per_id']} images each) | 200 | {pct(hi['rank1'])} | {pct(hi['tar_at_far_1e-3'])} |
| held-out images of training identities ({him['ids']}, images {him['images']}) | 200 | {pct(him['rank1'])} | {pct(him['tar_at_far_1e-3'])} |
| pixel baseline on the held-out identities (28x28 mean-centred pixels, cosine) | 200 | {pct(px['rank1'])} | {pct(px['tar_at_far_1e-3'])} |

Chance rank-1 is 0.5 %. tests/test_samples_encoder.py re-renders these sets and checks the
committed weights within {100 * info['tolerance']['rank1']:.0f} (rank-1) and
{100 * info['tolerance']['tar_at_far_1e-3']:.0f} (TAR) points.

ESC on this encoder (published uncentred ESC, `fit_esc(k=...)`; 200 held-out identities x 10
images, first 5 enrolled; the erased identity has 30 images, ESC fitted on its first 15 and the
other 15 probed after re-enrolment with the edited encoder; mean of identities 1042, 1001, 1100,
1150 erased one at a time; chance 0.5 %):

{esc}

With only 5 images of the person enrolled (the demo's setting) k = 4 already brings re-enrolment
rank-1 of 1042 to 0 (tests/test_samples_encoder.py); a larger re-enrolment set still finds the
person at small k, so erasing on this cosine-trained space costs about 1-3 retained points."""
    write_section("samples", section)
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
