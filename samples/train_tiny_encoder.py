"""Train the tiny synthetic-face encoder shipped as facekd/data/tiny_face_encoder.onnx.

A test fixture and demo model, NOT a face model: it has only ever seen facekd.faces.synthfaces renders.

    python samples/train_tiny_encoder.py                  # a few minutes on 2 idle CPU cores
    python samples/train_tiny_encoder.py --out /tmp/enc.onnx --steps 200   # quick smoke run

Training identities are 100000.. with render seed 1, disjoint in both number and seed from the
demo's identities (1000.., seed 0) on which the model is evaluated. Loss: CosFace (normalised
embeddings and class weights, additive cosine margin), so the embedding space is spread over the
sphere like an ArcFace-style encoder, unlike dlib's narrow cone. The last layers are
Linear + BatchNorm1d; the BatchNorm is folded into the Linear before export, so the ONNX graph
ends in one Gemm into which an erasure folds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facekd.core import metrics
from facekd.faces.synthfaces import render_dataset

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "facekd" / "data" / "tiny_face_encoder.onnx"

TRAIN_ID0, TRAIN_SEED = 100_000, 1
EVAL_IDS, EVAL_SEED, EVAL_IMAGES = list(range(1000, 1200)), 0, 10
# How far a fresh measurement of the committed model may stray from its JSON (absolute, as a
# fraction): renders are bitwise deterministic, so only float differences between onnxruntime
# builds/CPUs can move a few near-tied scores.
TOLERANCE = {"rank1": 0.01, "tar_at_far_1e-3": 0.02}


def conv_bn(cin: int, cout: int, stride: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.PReLU(cout))


class TinyFaceNet(nn.Module):
    """(N, 3, 112, 112) float32 normalised -> (N, dim) embedding (not L2-normalised).

    Built for 2-CPU training and ~1 ms/chip inference (about 8 M multiply-adds): the renders'
    identity cues (shapes, colours, layout) survive a 2x average pool, so convolutions start at
    56x56 and stop at 7x7, where a flattened map keeps the spatial layout for the final Linear.
    """

    def __init__(self, dim: int = 128, width: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        c0, c1, c2 = width
        self.features = nn.Sequential(
            nn.AvgPool2d(2),                                    # 56
            conv_bn(3, c0, 2),                                  # 28
            conv_bn(c0, c1, 2), conv_bn(c1, c1),                # 14
            conv_bn(c1, c2, 2), conv_bn(c2, c2), conv_bn(c2, c2),  # 7
            nn.Conv2d(c2, 32, 1, bias=False), nn.BatchNorm2d(32),
        )
        self.dropout = nn.Dropout(0.2)
        self.linear = nn.Linear(32 * 7 * 7, dim)
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).flatten(1)
        return self.bn(self.linear(self.dropout(x)))


class ExportNet(nn.Module):
    """The trained net with BatchNorm1d folded into the final Linear (graph ends in one Gemm)."""

    def __init__(self, net: TinyFaceNet):
        super().__init__()
        self.features = net.features
        bn = net.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        self.linear = nn.Linear(net.linear.in_features, net.linear.out_features)
        with torch.no_grad():
            self.linear.weight.copy_(net.linear.weight * scale[:, None])
            self.linear.bias.copy_((net.linear.bias - bn.running_mean) * scale + bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x).flatten(1))


class CosFace(nn.Module):
    """Large-margin cosine loss: s * (cos(theta_y) - m) for the true class."""

    def __init__(self, dim: int, n_classes: int, s: float = 30.0, m: float = 0.35):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_classes, dim) * 0.01)
        self.s, self.m = s, m

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = F.linear(F.normalize(emb), F.normalize(self.weight))
        cos = cos - self.m * F.one_hot(labels, cos.shape[1]).to(cos.dtype)
        return F.cross_entropy(self.s * cos, labels)


def normalise(chips: np.ndarray) -> torch.Tensor:
    """(n, 112, 112, 3) uint8 RGB -> (n, 3, 112, 112) float32, (x - 127.5) / 127.5."""
    x = torch.from_numpy(chips).permute(0, 3, 1, 2).float()
    return x.sub_(127.5).div_(127.5)


def _render_chunk(args):
    ids, n, seed = args
    return render_dataset(ids, n, seed=seed, progress=False)


def render_parallel(ids: list[int], n: int, seed: int, workers: int) -> tuple[np.ndarray, np.ndarray]:
    chunks = [(ids[i::workers], n, seed) for i in range(workers)]
    with ProcessPoolExecutor(workers) as pool:
        parts = list(pool.map(_render_chunk, chunks))
    chips = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return chips, labels


# --- evaluation ---------------------------------------------------------------------------------

def first_half_enrolled(labels: np.ndarray) -> np.ndarray:
    """``(n,)`` bool: the first half (by image index) of each identity's images is enrolled."""
    enrol = np.zeros(len(labels), bool)
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        enrol[idx[: len(idx) // 2]] = True
    return enrol


def accuracy(emb: np.ndarray, labels: np.ndarray) -> dict:
    """Rank-1 (first half enrolled, rest probed, best-matching face) and TAR@FAR=1e-3 (all pairs)."""
    enrol = first_half_enrolled(labels)
    rank1 = metrics.identification_rate(emb[enrol], labels[enrol], emb[~enrol], labels[~enrol])
    tar, _ = metrics.tar_at_far(*metrics.pair_scores(emb, labels), 1e-3)
    return {"rank1": round(rank1, 4), "tar_at_far_1e-3": round(tar, 4)}


def evaluate(embed, n_train_ids: int, n_train_images: int) -> dict:
    """Accuracy on held-out identities (the demo range) and held-out images of training ids."""
    chips, labels = render_dataset(EVAL_IDS, EVAL_IMAGES, seed=EVAL_SEED, progress=False)
    e = embed(chips)
    out = {"heldout_identities": {"ids": f"{EVAL_IDS[0]}..{EVAL_IDS[-1]}", "seed": EVAL_SEED,
                                  "images_per_id": EVAL_IMAGES,
                                  **accuracy(e, labels)}}
    ids = list(range(TRAIN_ID0, TRAIN_ID0 + min(200, n_train_ids)))
    chips, labels = render_dataset(ids, EVAL_IMAGES, seed=TRAIN_SEED, image_offset=n_train_images,
                                   progress=False)
    e = embed(chips)
    out["heldout_images"] = {"ids": f"{ids[0]}..{ids[-1]}", "seed": TRAIN_SEED,
                             "images": f"{n_train_images}..{n_train_images + EVAL_IMAGES - 1}",
                             **accuracy(e, labels)}
    return out


def pixel_baseline() -> dict:
    """Pixel matching on the held-out identities: how hard the renders are without an encoder.

    Chips are area-averaged to 28x28 (less noise, a stronger baseline than full-resolution
    pixels) and each is mean-centred before cosine matching.
    """
    chips, labels = render_dataset(EVAL_IDS, EVAL_IMAGES, seed=EVAL_SEED, progress=False)
    return accuracy(pixel_features(chips), labels)


def pixel_features(chips: np.ndarray) -> np.ndarray:
    """(n, 112, 112, 3) uint8 -> (n, 2352) float32: 28x28 area-averaged, mean-centred pixels."""
    x = chips.reshape(len(chips), 28, 4, 28, 4, 3).astype(np.float32).mean((2, 4))
    x = x.reshape(len(chips), -1)
    return x - x.mean(1, keepdims=True)


def export_onnx(net: TinyFaceNet, path: Path) -> None:
    exp = ExportNet(net.eval()).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp files are private; this one is package data
    try:
        torch.onnx.export(exp, torch.zeros(1, 3, 112, 112), tmp, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["embedding"],
                          dynamic_axes={"input": {0: "N"}, "embedding": {0: "N"}})
        import onnx

        model = onnx.load(tmp)
        model.doc_string = ("facekd tiny synthetic-face encoder: a TEST FIXTURE AND DEMO, not a face "
                            "model. Trained only on facekd.synthfaces renders.")
        spec = {"size": 112, "mean": [127.5] * 3, "std": [127.5] * 3, "channel_order": "RGB",
                "alignment": "none"}  # read by facekd.encoders.onnx_model (key facekd.input_spec)
        for k, v in {"facekd.input_spec": json.dumps(spec), "facekd.family": "samples",
                     "facekd.note": "test fixture and demo only, not a face model"}.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = k, v
        with open(tmp, "wb") as f:
            f.write(model.SerializeToString())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(suffix=".json", dir=path.parent)
    os.chmod(tmp, 0o644)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="ONNX path (JSON goes beside it)")
    ap.add_argument("--identities", type=int, default=1000, help="training identities")
    ap.add_argument("--images", type=int, default=24, help="training images per identity")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="torch seed (init, batches)")
    ap.add_argument("--evaluate", action="store_true",
                    help="only re-measure the model at --out and refresh its JSON")
    args = ap.parse_args(argv)
    if args.evaluate:
        return reevaluate(args.out, args.threads)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    ids = list(range(TRAIN_ID0, TRAIN_ID0 + args.identities))
    chips, labels = render_parallel(ids, args.images, TRAIN_SEED, max(1, args.threads))
    y = torch.from_numpy(np.searchsorted(np.asarray(ids), labels))
    t_render = time.perf_counter() - t0
    print(f"rendered {len(chips)} chips in {t_render:.0f}s", flush=True)

    net = TinyFaceNet(args.dim)
    head = CosFace(args.dim, len(ids))
    params = list(net.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps,
                                                pct_start=0.1)
    gen = torch.Generator().manual_seed(args.seed)
    net.train()
    t1, c1 = time.perf_counter(), time.process_time()
    perm, pos, running = torch.randperm(len(chips), generator=gen), 0, None
    for step in range(args.steps):
        if pos + args.batch > len(perm):
            perm, pos = torch.randperm(len(chips), generator=gen), 0
        idx = perm[pos:pos + args.batch]
        pos += args.batch
        x = normalise(chips[idx.numpy()])
        loss = head(net(x), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 100 == 0 or step == args.steps - 1:
            el = time.perf_counter() - t1
            print(f"step {step:5d}/{args.steps} loss {running:.3f} "
                  f"({(step + 1) * args.batch / el:.0f} chips/s, {el:.0f}s)", flush=True)
    t_train, c_train = time.perf_counter() - t1, time.process_time() - c1

    net.eval()
    export_onnx(net, args.out)
    embed = ort_embedder(args.out, args.threads)
    probe = chips[:64]  # the ONNX file must compute what the torch model computes
    with torch.inference_mode():
        ref = net(normalise(probe)).numpy()
    max_diff = float(np.abs(embed(probe) - ref).max())
    n_params = sum(p.numel() for p in ExportNet(net).parameters())
    info = {
        "note": "Test fixture and demo only: trained on facekd.synthfaces renders, NOT a face model.",
        "file": args.out.name,
        "input": {"name": "input", "shape": ["N", 3, 112, 112], "dtype": "float32",
                  "normalisation": "(x - 127.5) / 127.5", "channel_order": "RGB"},
        "output": {"name": "embedding", "shape": ["N", args.dim], "l2_normalised": False},
        "opset": 17,
        "onnx_vs_torch_max_abs_diff": max_diff,
        "training": {"identities": f"{ids[0]}..{ids[-1]}", "render_seed": TRAIN_SEED,
                     "n_identities": len(ids), "images_per_identity": args.images,
                     "steps": args.steps, "batch": args.batch,
                     "optimizer": "AdamW wd 5e-4, OneCycle", "lr": args.lr,
                     "loss": "CosFace s=30 m=0.35", "torch_seed": args.seed, "dim": args.dim,
                     "parameters": int(n_params), "threads": args.threads,
                     "render_s": round(t_render, 1), "train_s": round(t_train, 1),
                     "train_cpu_s": round(c_train, 1),
                     "total_s": round(time.perf_counter() - t0, 1),
                     "torch": torch.__version__, "python": platform.python_version(),
                     "machine": platform.processor() or platform.machine()},
    }
    info = with_accuracy(info, args.out, embed)
    print(f"total {info['training']['total_s']}s", flush=True)
    return 0


def ort_embedder(path: Path, threads: int):
    """chips (n, 112, 112, 3) uint8 -> (n, d) float32 through onnxruntime on the CPU."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    def embed(c: np.ndarray) -> np.ndarray:
        return np.concatenate([sess.run(None, {"input": normalise(c[i:i + 256]).numpy()})[0]
                               for i in range(0, len(c), 256)])
    return embed


def with_accuracy(info: dict, path: Path, embed) -> dict:
    """Measure accuracy, fingerprint the file, write the JSON beside it (atomically)."""
    tr = info["training"]
    info = dict(info)
    info["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    info["bytes"] = path.stat().st_size
    n_ids = tr.get("n_identities") or len(range(*[int(v) + i for i, v in
                                                  enumerate(tr["identities"].split(".."))]))
    info["accuracy"] = evaluate(embed, int(n_ids), int(tr["images_per_identity"]))
    info["pixel_baseline_heldout_identities"] = pixel_baseline()
    info["tolerance"] = TOLERANCE
    write_json(path.with_suffix(".json"), info)
    print(json.dumps({k: info[k] for k in ("accuracy", "pixel_baseline_heldout_identities",
                                           "bytes", "sha256")}, indent=2), flush=True)
    return info


def reevaluate(path: Path, threads: int) -> int:
    """``--evaluate``: re-measure an existing model and refresh its JSON (training info kept)."""
    info = json.loads(path.with_suffix(".json").read_text())
    with_accuracy(info, path, ort_embedder(path, threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
