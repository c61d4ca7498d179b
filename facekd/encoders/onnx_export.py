"""Export any encoder (edited or not) to one ONNX file for GPU serving, with a parity report.

``export(encoder, path)`` writes the encoder's graph (optionally with float16 weights and compute,
float32 input/output), runs it with onnxruntime on the best execution provider available, and
compares its embeddings with the source encoder's on a batch of chips. The file is only moved into
place once the parity check has run, so a failed export never replaces a good file.

Execution providers are chosen TensorRT -> CUDA -> CPU from what onnxruntime reports
(:func:`select_providers`); the report says which one actually ran (``session.get_providers()``),
because onnxruntime silently falls back to CPU when e.g. the CUDA libraries are missing.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import onnxruntime as ort

from facekd.encoders.base import Encoder, validate_chips
from facekd.encoders.export_gated import body_error, gated_parity
from facekd.encoders.onnx_head import bake_preprocessing as bake, raw_pixel_spec
from facekd.encoders.tail_onnx import split_tail
from facekd.errors import EncoderError
from facekd.onnx.graph import toposort, write_model
from facekd.onnx.providers import PROVIDER_PRIORITY, select_providers

__all__ = ["ExportReport", "export", "check_target", "select_providers", "to_fp16",
           "PROVIDER_PRIORITY"]

log = logging.getLogger(__name__)

PARITY_CHIPS = 16  # chips in the default parity batch
FP32_MIN_COSINE = 0.99999
FP16_MIN_COSINE = 0.999


@dataclass
class ExportReport:
    """What :func:`export` wrote and how well the file reproduces the source encoder.

    Parity is measured on ``n_chips`` chips: ``max_abs_diff`` on raw embeddings, ``min_cosine`` /
    ``mean_cosine`` between source and exported embeddings of the same chip.
    """

    path: str
    fp16: bool
    providers_requested: list[str]
    providers_used: list[str]
    n_chips: int
    max_abs_diff: float
    max_abs_diff_normalized: float
    min_cosine: float
    mean_cosine: float
    dim: int
    input_name: str
    output_name: str
    input_spec: dict
    size_bytes: int
    seconds: float
    erasure_k: int | None = None
    warnings: list[str] = field(default_factory=list)
    #: a gated erasure's check above its gates (:func:`facekd.encoders.export_gated.gated_parity`)
    gated: dict | None = None
    #: sha256 of the written file's bytes (what ``sha256sum`` prints; not the weights' fingerprint)
    file_sha256: str | None = None

    @property
    def provider(self) -> str:
        """The execution provider that actually ran the parity check."""
        return self.providers_used[0] if self.providers_used else "none"

    @property
    def passed(self) -> bool:
        """Parity within the usual tolerance (cosine >= 0.99999 fp32, >= 0.999 fp16), and the
        file's gated tail as the encoder's above every gate (float32 in both: >= 0.99999)."""
        tail = (self.gated or {}).get("tail_min_cosine")
        return (self.min_cosine >= (FP16_MIN_COSINE if self.fp16 else FP32_MIN_COSINE)
                and (tail is None or tail >= FP32_MIN_COSINE))

    def gated_message(self) -> str:
        """How the file treats faces above the gates, or ``""`` without a gated erasure."""
        g = self.gated
        if not g or not g["probes"]:
            return "" if not g else f"; no gate of the erasure can open (gates {g['gates']})"
        return (f"; gated faces ({g['probes']} probes above {g['gates'] - g['gates_closed']} "
                f"gate(s)): tail parity min cosine {g['tail_min_cosine']:.6f}; with the body's "
                f"error ({g['body_error']:.1e}) they get the in-process edit's stranger at cosine "
                f"min {g['min_cosine']:.3f} / mean {g['mean_cosine']:.3f}, "
                f"{100 * g['still_strangers']:.0f}% still below every gate")

    def message(self) -> str:
        """One line for humans: where it went, which provider ran it, parity."""
        return (f"exported {'fp16' if self.fp16 else 'fp32'} ONNX to {self.path} "
                f"({self.size_bytes / 1e6:.1f} MB); ran on {self.provider}; parity over "
                f"{self.n_chips} chips: min cosine {self.min_cosine:.6f}, max |diff| "
                f"{self.max_abs_diff:.2e}" + self.gated_message()
                + "".join(f"; {w}" for w in self.warnings))

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(provider=self.provider, passed=self.passed)
        return d


def to_fp16(model):
    """``model`` with float16 weights and compute, float32 graph inputs and outputs."""
    try:  # imported here: an optional part of onnxruntime, needed by fp16 exports only
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as exc:  # pragma: no cover - part of every onnxruntime wheel we know of
        raise EncoderError(f"fp16 export needs onnxruntime.transformers: {exc}") from None
    # A gated tail stays float32: its gate must open where the float64 reference opens it, and
    # its stranger map multiplies the embedding by ~200 before a Cos. It is cut off, the body is
    # converted (its output stays float32), and the tail is put back unchanged.
    body, reattach = split_tail(model)
    with warnings.catch_warnings():  # it warns on every weight it clips to the fp16 range
        warnings.simplefilter("ignore")
        half = convert_float_to_float16(body, keep_io_types=True)
    toposort(half.graph)
    return reattach(half)


_SYSTEM_TREES = ("/proc", "/sys", "/dev")  # kernel interfaces and devices, never model files


def _is_onnx_model(path: Path) -> bool:
    """Whether ``path`` holds an ONNX model (ModelProto with an ir_version and a graph)."""
    try:
        with open(path, "rb") as fh:
            if fh.read(1) != b"\x08":  # field 1 (ir_version, varint): how every writer starts
                return False
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # any parse failure means "not a model"
        return False
    return model.ir_version > 0 and len(model.graph.node) > 0


def check_target(path: str | os.PathLike, *, protect: Sequence[str | os.PathLike] = (),
                 force: bool = False) -> Path:
    """Refuse an export target whose replacement could destroy data; returns it resolved.

    Refused (:class:`EncoderError`): a path inside any of ``protect`` (a workspace: its gallery,
    config and receipts), a directory, anything that is not a regular file (device, FIFO,
    socket) or lies under /proc, /sys or /dev, and an existing file that is not an ONNX model
    unless ``force``. An existing ONNX model is replaced (atomically).
    """
    raw = Path(path)
    target = raw.expanduser().resolve()  # symlinks followed: a link into a workspace is refused
    for root in protect:
        root = Path(root).expanduser().resolve()
        if target == root or root in target.parents:
            raise EncoderError(f"{raw}: is inside the workspace {root}; export somewhere else "
                               "(it would overwrite the workspace's files)")
    if any(target == Path(t) or Path(t) in target.parents for t in _SYSTEM_TREES):
        raise EncoderError(f"{raw}: is a system path, not a place for a model file")
    if target.is_dir():
        raise EncoderError(f"{raw}: is a directory; give a file name such as model.onnx")
    if target.exists() or raw.is_symlink():
        if not target.is_file():
            raise EncoderError(f"{raw}: exists and is not a regular file (device, FIFO, socket "
                               "or dangling link); refusing to replace it")
        if not force and not _is_onnx_model(target):
            raise EncoderError(f"{raw}: exists and is not an ONNX model; refusing to overwrite it "
                               "(pass --force to replace it)")
    elif target.parent.exists() and not target.parent.is_dir():
        raise EncoderError(f"{raw}: its parent {target.parent} is not a directory")
    return target


def _default_chips(size: int, n: int = PARITY_CHIPS) -> np.ndarray:
    """Deterministic smooth random chips: noise alone would be unlike any face, blur helps a bit."""
    rng = np.random.default_rng(1234)
    coarse = rng.integers(0, 256, size=(n, 8, 8, 3)).astype(np.float32)
    reps = -(-size // 8)
    chips = np.kron(coarse, np.ones((1, reps, reps, 1), np.float32))[:, :size, :size]
    chips += rng.normal(0, 12, size=chips.shape)
    return np.clip(chips, 0, 255).astype(np.uint8)


def _normalize(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _run_session(session, x: np.ndarray, step: int = 8) -> np.ndarray:
    """Run ``x`` ``(n, 3, H, W)`` through ``session`` in batches (padding a static batch axis)."""
    inp, out = session.get_inputs()[0], session.get_outputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    step = fixed or step
    parts = []
    for start in range(0, len(x), step):
        chunk = x[start:start + step]
        n = len(chunk)
        if fixed and n < step:
            chunk = np.concatenate([chunk, np.zeros((step - n,) + chunk.shape[1:], chunk.dtype)])
        parts.append(session.run([out.name], {inp.name: chunk})[0][:n])
    return np.concatenate(parts).astype(np.float32)


def export(encoder: Encoder, path: str | os.PathLike, *, fp16: bool = False,
           check_chips: np.ndarray | None = None, providers: str | Sequence[str] | None = None,
           opset: int = 17, require_cosine: float | None = None,
           bake_preprocessing: bool = False) -> ExportReport:
    """Write ``encoder`` as one ONNX file and check it against the encoder itself.

    Args:
        encoder: any facekd encoder (edited or not).
        path: destination ``.onnx``; replaced atomically.
        fp16: float16 weights and compute with float32 input/output.
        check_chips: ``(n, size, size, 3)`` uint8 RGB chips for the parity check (real aligned faces
            are best); default 16 deterministic synthetic chips.
        providers: execution providers (or aliases) to prefer; see :func:`select_providers`.
        opset: ONNX opset for encoders exported from torch (ONNX encoders keep theirs).
        require_cosine: refuse (raise, leave ``path`` untouched) when the min cosine is lower.
        bake_preprocessing: prepend a Sub/Mul head so the file takes raw RGB pixels (what
            insightface feeds a model whose first nodes are named Sub/Mul); see
            :mod:`facekd.encoders.onnx_head`.

    Returns:
        An :class:`ExportReport`; ``report.provider`` is the provider that really ran.
    """
    if not isinstance(encoder, Encoder):
        raise EncoderError(f"expected a facekd Encoder, got {type(encoder).__name__}")
    t0 = time.perf_counter()
    spec = encoder.input_spec
    chips = _default_chips(spec.size) if check_chips is None else validate_chips(check_chips, spec.size)
    requested = select_providers(prefer=providers)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix=".facekd-export-", dir=path.parent) as tmp:
        raw = Path(tmp) / "model.onnx"
        try:
            encoder.to_onnx(raw, opset=opset)
        except onnx.checker.ValidationError as exc:  # e.g. a torch export the checker rejects
            raise EncoderError(f"the encoder's ONNX graph fails onnx.checker: "
                               f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        try:
            model = onnx.load(str(raw))
        except Exception as exc:
            raise EncoderError(f"the encoder wrote an unreadable ONNX file: {exc}") from None
        if len(model.graph.output) != 1:
            raise EncoderError(f"exported graph has {len(model.graph.output)} outputs; expected 1")
        if fp16:
            model = to_fp16(model)
        file_spec = spec
        if bake_preprocessing:  # after fp16: the head stays float32, like the input
            model, file_spec = bake(model, spec), raw_pixel_spec(spec)
        staged = write_model(model, Path(tmp) / "staged.onnx")
        try:  # on the file: the C++ checker needs no second in-memory serialisation
            onnx.checker.check_model(str(staged))
        except onnx.checker.ValidationError as exc:
            raise EncoderError(f"exported model fails onnx.checker: {str(exc).splitlines()[0]}") from None
        try:
            session = ort.InferenceSession(str(staged), providers=requested)
        except Exception as exc:
            raise EncoderError(f"onnxruntime cannot load the exported model: "
                               f"{str(exc).splitlines()[0]}") from None
        used = list(session.get_providers())
        inp, out = session.get_inputs()[0], session.get_outputs()[0]
        got = _run_session(session, file_spec.to_tensor_array(chips))
        ref = encoder.embed(chips, progress=False)
        if got.shape != ref.shape:
            raise EncoderError(f"exported model emits {got.shape}; the encoder emits {ref.shape}")
        cos = np.sum(_normalize(got) * _normalize(ref), axis=1)
        gated = None
        if encoder.erasure is not None and encoder.erasure.tail:
            # check chips rarely open a gate: the tail is checked above every gate on embeddings
            error = body_error(onnx.load(str(raw)), model, spec.to_tensor_array(chips),
                               file_spec.to_tensor_array(chips), requested)
            gated = gated_parity(model, encoder.erasure.tail, error)
        notes = []
        if used[0] != requested[0]:
            notes.append(f"{requested[0]} was requested but onnxruntime ran {used[0]}")
        report = ExportReport(
            path=str(path), fp16=fp16, providers_requested=requested, providers_used=used,
            n_chips=len(chips), max_abs_diff=float(np.max(np.abs(got - ref))),
            max_abs_diff_normalized=float(np.max(np.abs(_normalize(got) - _normalize(ref)))),
            min_cosine=float(cos.min()), mean_cosine=float(cos.mean()), dim=int(ref.shape[1]),
            input_name=inp.name, output_name=out.name, input_spec=file_spec.to_dict(),
            size_bytes=staged.stat().st_size, seconds=0.0,
            erasure_k=None if encoder.erasure is None else int(encoder.erasure.k),
            warnings=notes, gated=gated)
        if require_cosine is not None and report.min_cosine < require_cosine:
            raise EncoderError(f"export refused: min cosine {report.min_cosine:.6f} < "
                               f"{require_cosine} against the source encoder; {path} left as it was")
        from gallery_tools.files import file_sha256

        report.file_sha256 = file_sha256(staged)
        os.replace(staged, path)
    report.seconds = time.perf_counter() - t0
    for note in notes:
        log.warning(note)
    log.info(report.message())
    return report
