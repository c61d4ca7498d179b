"""ESC-T: a learned element-wise mask on a full SVD basis of the person's embeddings (dense map).

ESC-T trains against a classifier head; a face encoder has none at deployment time, so the head is
a cosine classifier over identity prototypes: each identity's mean unit embedding, the person's
from their own gallery faces when the caller holds them, else from the forget set.

Imports nothing from the project but :mod:`facekd.core.erasure` and :mod:`facekd.methods.base`; torch
is imported inside :func:`fit_esc_t` (heavy, and only ESC-T needs it: ``import facekd`` and
``facekd --help`` stay light).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from facekd.core.erasure import Erasure, ErasureError, as_matrix
from facekd.methods.base import FitContext, MethodError, register, unit_rows

__all__ = ["fit_esc_t", "prototypes"]


def fit_esc_t(F: Any, prototypes: Any, forget_index: int, *, scale: float = 30.0,
              lr: float | None = None, epochs: int = 50, threshold: float = 0.7, seed: int = 0,
              batch_size: int = 64, device: Any = None, normalize_step: bool | None = None,
              reference: bool = False) -> Erasure:
    """Fit ESC-T: a learned element-wise mask on a full SVD basis of the forget embeddings.

    Faithful to the reference loop, with a cosine classifier over identity prototypes as the head
    (face encoders have no classifier at deployment time):

    * ``U`` = full ``(d, d)`` left singular basis of ``F^T`` (completed when ``n < d``);
    * mask ``M`` of ones, ``(d, d)``; features are edited as ``f (U*M)(U*M)^T``;
    * logits ``scale * cos(f', prototypes)``; loss = ``-CE`` over forget samples still classified
      as ``forget_index``; ``M <- clamp(M - lr * grad, 0, 1)``; stop as soon as none is;
    * finally ``M = (M > threshold)`` and ``A = (U*M)(U*M)^T``.

    Args:
        F: ``(n, d)`` forget embeddings (numpy or torch, CPU or CUDA).
        prototypes: ``(c, d)`` identity prototypes; row ``forget_index`` is the erased identity's.
        forget_index: row of ``prototypes`` that is the erased identity.
        device: torch device; defaults to ``F``'s device when it is a tensor, else CPU.
        normalize_step: divide each gradient by its largest absolute entry, so ``lr`` is the most
            any mask entry moves per step. Not in the reference code: its raw gradient shrinks with
            the forget set and the softmax's saturation, so no fixed ``lr`` suits every identity.
            Default: on (``lr`` 0.1), unless ``reference``.
        reference: the reference code's step exactly (raw gradient, ``lr`` 1e-3). On face-sized
            forget sets it rarely moves any mask entry past the threshold, i.e. erases nothing
            (see docs); ``params["masked_fraction"]`` makes such a no-op visible.
    """
    import torch  # heavy; only ESC-T needs it

    if normalize_step is None:
        normalize_step = not reference
    if lr is None:
        lr = 1e-3 if reference else 0.1
    if device is None:
        device = F.device if isinstance(F, torch.Tensor) else torch.device("cpu")
    f_np = as_matrix(F, "forget embeddings")
    d = f_np.shape[1]
    protos_np = as_matrix(prototypes, "prototypes", d=d)
    c = protos_np.shape[0]
    if not (isinstance(forget_index, (int, np.integer)) and 0 <= forget_index < c):
        raise ErasureError(f"forget_index must be an integer in [0, {c}), got {forget_index!r}")
    if c < 2:
        raise ErasureError("ESC-T needs prototypes of at least 2 identities (a classifier head)")
    for name, value in (("lr", lr), ("scale", scale)):
        if not value > 0:
            raise ErasureError(f"{name} must be positive, got {value!r}")
    if not 0.0 <= threshold <= 1.0:
        raise ErasureError(f"threshold must be in [0, 1], got {threshold!r}")

    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    dtype = torch.float32
    feats = torch.as_tensor(np.asarray(f_np, dtype=np.float32), device=device)
    protos = torch.nn.functional.normalize(
        torch.as_tensor(np.asarray(protos_np, dtype=np.float32), device=device), dim=1)
    # Full basis even when n < d: the reference code's reduced SVD crashes (or truncates) there.
    u_full, _, _ = np.linalg.svd(np.asarray(f_np, dtype=np.float64).T, full_matrices=True)
    u = torch.as_tensor(u_full, dtype=dtype, device=device)
    mask = torch.ones((d, d), dtype=dtype, device=device, requires_grad=True)
    target = int(forget_index)

    def logits_of(batch: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        um = u * m
        edited = (batch @ um) @ um.T
        return scale * torch.nn.functional.normalize(edited, dim=1) @ protos.T

    epochs_run, steps = 0, 0
    stopped_early = False
    for _ in range(int(epochs)):
        epochs_run += 1
        order = torch.randperm(feats.shape[0], generator=gen).to(device)
        any_correct = False
        for start in range(0, feats.shape[0], batch_size):
            batch = feats[order[start:start + batch_size]]
            out = logits_of(batch, mask)
            correct = out.argmax(dim=1) == target
            if not bool(correct.any()):
                continue
            any_correct = True
            labels = torch.full((int(correct.sum()),), target, device=device, dtype=torch.long)
            loss = -torch.nn.functional.cross_entropy(out[correct], labels)
            (grad,) = torch.autograd.grad(loss, mask)
            with torch.no_grad():
                if normalize_step:
                    grad = grad / grad.abs().max().clamp_min(torch.finfo(grad.dtype).tiny)
                mask -= lr * grad
                mask.clamp_(0.0, 1.0)
            steps += 1
        if not any_correct:
            stopped_early = True
            break

    with torch.no_grad():
        soft_acc = float((logits_of(feats, mask).argmax(dim=1) == target).float().mean())
        binary = (mask > threshold).to(dtype)
        um = u * binary
        a = (um @ um.T).double().cpu().numpy()
        hard_acc = float((logits_of(feats, binary).argmax(dim=1) == target).float().mean())
    params = {
        "scale": scale, "lr": lr, "epochs": epochs, "threshold": threshold, "seed": seed,
        "batch_size": batch_size, "normalize_step": normalize_step, "reference": reference,
        "n": int(f_np.shape[0]), "classes": c,
        "epochs_run": epochs_run, "steps": steps, "stopped_early": stopped_early,
        "masked_fraction": float(1.0 - binary.mean().item()),
        "forget_accuracy_soft_mask": soft_acc, "forget_accuracy": hard_acc,
    }
    return Erasure(method="esc-t", d=d, linear_map=a, params=params)



def prototypes(gallery: np.ndarray, labels: np.ndarray, person: np.ndarray,
               identity: int | None = None) -> tuple[np.ndarray, int]:
    """``(protos (c + 1, d) float32, row)``: the mean unit embedding of each of the ``c`` gallery
    identities and of the person (``person`` ``(m, d)``, labelled ``identity``; default: after
    every gallery label), in label order; ``row`` is the person's."""
    if identity is None:
        identity = int(labels.max()) + 1 if len(labels) else 0
    vecs = np.concatenate([gallery, person])
    labs = np.concatenate([labels, np.full(len(person), identity, dtype=labels.dtype)])
    uniq = np.unique(labs)
    protos = np.stack([unit_rows(vecs[labs == u]).mean(axis=0) for u in uniq])
    return protos, int(np.searchsorted(uniq, identity))


def _refuse(erasure: Erasure) -> str | None:
    if erasure.params.get("masked_fraction", 1.0) != 0.0:
        return None
    return (f"ESC-T masked nothing in {erasure.params['epochs_run']} epochs at lr "
            f"{erasure.params['lr']}: the erasure would change nothing; raise [forget] esc_t_lr "
            "(or set esc_t_normalize_step = true) in config.toml, or use --method esc")


@register("esc-t", options=("scale", "lr", "epochs", "threshold", "seed", "batch_size",
                            "normalize_step", "reference"),
          config={"esc_t_lr": "lr", "esc_t_normalize_step": "normalize_step", "seed": "seed"},
          refuse=_refuse, summary="published ESC-T: a learned mask on the person's SVD basis")
def _fit(forget: np.ndarray, context: FitContext) -> Erasure:
    if len(np.unique(context.gallery_labels)) < 1:
        raise MethodError("esc-t needs at least 2 enrolled identities (its classifier head)")
    person = forget if context.person is None else context.person
    protos, row = prototypes(context.gallery, np.asarray(context.gallery_labels), person,
                             context.identity)
    return fit_esc_t(forget, protos, row, **context.options)
