"""ONNX edit/export benchmark: latency of the edited model vs the original, edit + export time.

A randomly initialised ResNet-50-sized face encoder (bottleneck ResNet-50 body at 112x112, then
global pool -> Linear(2048, 512) -> BatchNorm1d, i.e. insightface's Gemm + BN ending) is exported
to ONNX once; then, timed:

* edit + export: load the file as an OnnxEncoder, fold a k=7 ESC erasure into it, write it;
* the same through ``facekd.encoders.onnx_export.export`` (parity check included), fp32 and fp16;
* median latency at batch 32 on onnxruntime's CPU provider of the original, the folded edit and
  (for comparison) an edit appended as a separate MatMul, runs interleaved in one process.

Writes its section of docs/benchmarks.md between ``<!-- bench:onnx -->`` markers.
Usage: python benchmarks/bench_onnx.py [--reps 20] [--batch 32] [--no-write]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

# Run as `python benchmarks/bench_onnx.py`: sys.path[0] is benchmarks/, so the shared helpers in
# benchmarks/_common.py import as a top-level module.
from _common import load_average, machine, versions, write_section
from facekd.encoders.onnx_export import export
from facekd.encoders.onnx_model import OnnxEncoder
from facekd.erasure import fit_esc
from facekd.onnx.graph import append_matmul


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * 4
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        return torch.relu(self.body(x) + self.down(x))


class ResNet50Face(nn.Module):
    """ResNet-50 body ([3, 4, 6, 3] bottlenecks) -> 512-d embedding via Linear + BatchNorm1d."""

    def __init__(self, dim: int = 512):
        super().__init__()
        layers = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
        cin = 64
        for i, (width, blocks) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)]):
            for b in range(blocks):
                layers.append(Bottleneck(cin, width, 2 if b == 0 else 1))
                cin = width * 4
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(cin, dim)
        self.features = nn.BatchNorm1d(dim)

    def forward(self, x):
        return self.features(self.fc(self.body(x)))


def build_model(path: Path) -> int:
    torch.manual_seed(0)
    model = ResNet50Face().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_var.uniform_(0.5, 1.5)
                m.running_mean.normal_(0, 0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(1, 3, 112, 112), str(path), dynamo=False,
                          opset_version=17, input_names=["input.1"], output_names=["fc1"],
                          dynamic_axes={"input.1": {0: "N"}, "fc1": {0: "N"}})
    return sum(p.numel() for p in model.parameters())


def latency(paths: dict[str, Path], batch: int, reps: int) -> dict[str, list[float]]:
    """Seconds per batch for each model, runs interleaved (order reversed every other round) so
    load bursts from other processes hit all models alike."""
    sessions = {k: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
                for k, p in paths.items()}
    x = np.random.default_rng(0).normal(size=(batch, 3, 112, 112)).astype(np.float32)
    for s in sessions.values():  # warm-up
        for _ in range(2):
            s.run(None, {s.get_inputs()[0].name: x})
    times: dict[str, list[float]] = {k: [] for k in sessions}
    order = list(sessions)
    for r in range(reps):
        for k in (order if r % 2 == 0 else order[::-1]):
            s = sessions[k]
            t = time.perf_counter()
            s.run(None, {s.get_inputs()[0].name: x})
            times[k].append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    env = (f"{machine()}; {versions('onnxruntime', 'onnx', 'torch')}; 1-min load average at "
           f"start {load_average():.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "r50.onnx"
        n_params = build_model(src)
        erasure = fit_esc(np.random.default_rng(1).normal(size=(20, 512)), k=7)

        t = time.perf_counter()
        enc = OnnxEncoder(src)
        edited = enc.with_erasure(erasure)
        edited.to_onnx(tmp / "edited.onnx")
        t_edit = time.perf_counter() - t

        appended = copy.deepcopy(enc.model)  # the non-folded alternative, for comparison only
        append_matmul(appended.graph, appended.graph.output[0].name, erasure.matrix(),
                      np.float32)
        onnx.save(appended, str(tmp / "appended.onnx"))

        t = time.perf_counter()
        r32 = export(edited, tmp / "export32.onnx")
        t_exp32 = time.perf_counter() - t
        t = time.perf_counter()
        r16 = export(edited, tmp / "export16.onnx", fp16=True)
        t_exp16 = time.perf_counter() - t

        runs = latency({"original": src, "original_again": src, "folded": tmp / "edited.onnx",
                        "appended": tmp / "appended.onnx"}, args.batch, args.reps)
        size_mb = src.stat().st_size / 1e6

    lat = {k: statistics.median(v) for k, v in runs.items()}
    best = {k: min(v) for k, v in runs.items()}
    over = {k: 100 * (lat[k] / lat["original"] - 1) for k in lat}
    over_best = {k: 100 * (best[k] / best["original"] - 1) for k in best}
    label = {"original": "original", "original_again": "original, second session (A/A noise floor)",
             "folded": "edited, folded (what facekd ships; target <= 2%)",
             "appended": "edited, appended MatMul (comparison only)"}
    lines = [
        "## ONNX edit and export (`benchmarks/bench_onnx.py`)",
        "",
        f"Machine: {env}. No GPU was available to this run: every number is onnxruntime's CPU "
        "provider; the GPU parity/latency run (onnxruntime-gpu, CUDA/TensorRT) is still to do.",
        "",
        f"Model: random ResNet-50-sized face encoder, {n_params / 1e6:.1f} M parameters, "
        f"{size_mb:.0f} MB ONNX, 112x112 input, ends Gemm + BatchNormalization (512-d); "
        f"erasure: ESC k={erasure.k}. Edit path taken: `{edited.surgery}` (folded, no new node).",
        "",
        "| step | seconds |",
        "|---|---|",
        f"| load + fold erasure + write edited ONNX (target < 10 s) | {t_edit:.2f} |",
        f"| `export()` fp32 incl. parity on {r32.n_chips} chips | {t_exp32:.2f} |",
        f"| `export()` fp16 incl. parity on {r16.n_chips} chips | {t_exp16:.2f} |",
        "",
        f"Parity vs the edited encoder: fp32 max |diff| {r32.max_abs_diff:.2e}, min cosine "
        f"{r32.min_cosine:.7f}; fp16 ({r16.size_bytes / 1e6:.0f} MB) max |diff| "
        f"{r16.max_abs_diff:.2e}, min cosine {r16.min_cosine:.6f}. Provider used: {r32.provider}.",
        "",
        f"Latency, batch {args.batch}, median of {args.reps} interleaved runs each (CPU provider):",
        "",
        "| model | median ms / batch | overhead (median) | min ms / batch | overhead (min) |",
        "|---|---|---|---|---|",
        *[f"| {label[k]} | {1e3 * lat[k]:.1f} | {over[k]:+.2f}% | {1e3 * best[k]:.1f} | "
          f"{over_best[k]:+.2f}% |" for k in label],
        "",
        "The folded graph has the same nodes and tensor shapes as the original (only weight "
        "values differ), so its difference is measurement noise: compare it with the A/A row, "
        "the same file in a second session.",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("onnx", text)


if __name__ == "__main__":
    main()
