"""Plumbing shared by the benchmark scripts: describe the machine, name the versions, and write a
script's own marked section of docs/benchmarks.md.

Each script owns one block ``<!-- bench:NAME -->`` ... ``<!-- /bench:NAME -->`` of the shared
document; ``write_section`` replaces that block (or appends it) and leaves every other byte alone.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import os
import platform
import re
import subprocess
import tempfile
from pathlib import Path

from filelock import FileLock

# A photo an edit changes: its cosine to itself before the edit below 0.999 (as in facekd bench).
from facekd.evaluation.later import changed_share  # noqa: F401
from facekd.fileio import write_atomic

__all__ = ["DOC", "REPO", "load_average", "machine", "versions", "write_section"]

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmarks.md"
# Outside the repo so it is never committed; serialises the read-modify-write of DOC between
# benchmarks that finish at the same time.
_LOCK = Path(tempfile.gettempdir()) / "facekd-benchmarks-md.lock"


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        found = re.search(r"^Model name:\s*(.+)$", out, re.M)
        if found:
            return found.group(1).strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    try:  # no lscpu (minimal containers): the kernel's own description
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _ram_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return int(line.split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine() -> str:
    """``"<CPU model>, <n> logical cores, <r> GiB RAM"``; the load average is not part of it
    (see ``load_average``), since it changes during a run."""
    ram = _ram_gib()
    mem = f"{ram:.0f} GiB RAM" if ram is not None else "RAM unknown"
    return f"{_cpu_model()}, {os.cpu_count()} logical cores, {mem}"


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        pass
    # An import name whose distribution is called otherwise (faiss -> faiss-cpu, cv2 -> opencv-*).
    for dist in metadata.packages_distributions().get(name, ()):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    # Some binary wheels (dlib-bin) do not declare their top-level module in their metadata.
    try:
        return str(importlib.import_module(name).__version__)
    except Exception:  # noqa: BLE001 - absent or broken: the package is simply left out
        return None


def versions(*packages: str) -> str:
    """``"Python 3.11.7, numpy 2.4.6, ..."``: Python, then each named package (distribution or
    import name, in the given order) that is installed; absent ones are left out."""
    parts = [f"Python {platform.python_version()}"]
    for name in packages:
        version = _version(name)
        if version is not None:
            parts.append(f"{name} {version}")
    return ", ".join(parts)


def load_average() -> float:
    """The 1-minute load average (NaN where the platform has none): the box is shared, so each
    benchmark records how busy it was."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return float("nan")


def write_section(name: str, text: str) -> Path:
    """Replace the ``<!-- bench:name -->`` ... ``<!-- /bench:name -->`` block of DOC with
    ``text`` (or append it, after a blank line, when the block is absent), atomically and under a
    file lock; returns DOC's path.

    ``text`` is the body without the markers (they are added); a body that already starts and
    ends with this section's markers is taken as is. Every byte outside the block is kept.
    """
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    body = text.strip()
    if body.startswith(begin) and body.endswith(end):
        block = body
    else:
        block = f"{begin}\n{body}\n{end}"
    doc = Path(DOC)
    doc.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(_LOCK)):
        old = doc.read_text(encoding="utf-8") if doc.exists() else "# Benchmarks\n"
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        if pattern.search(old):
            new = pattern.sub(lambda _m: block, old)  # a function: no backslash escapes in block
        else:
            new = old.rstrip() + "\n\n" + block + "\n"
        write_atomic(doc, new.encode("utf-8"))
    return doc


def unit_embeddings(dataset: str | os.PathLike, encoder: str):
    """``(x, y)``: every usable face of ``dataset`` embedded by the ``encoder`` spec (cached under
    ``$FACEKD_CACHE``), ``x`` ``(n, d)`` unit float32 rows, ``y`` ``(n,)`` identities."""
    import numpy as np

    from facekd.encoders import load_encoder
    from facekd.evaluation import bench

    E, y, _ = bench._usable(bench.embed_dataset(dataset, load_encoder(encoder)))
    return bench._unit(E).astype(np.float32), y


def encoder_spec(encoder: str) -> tuple[str, str]:
    """``(name, spec)`` of an ``--encoder`` spec, the spec naming the weights' file, not this
    machine's path (for the command line a section prints)."""
    name, colon, path = encoder.partition(":")
    return name, f"{name}{colon}{Path(path).name}"




def embedding_args(doc: str, faces: Path, *, draws: int | None = None,
                   people: str | None = None,
                   photos: str | None = None) -> "argparse.ArgumentParser":
    """A parser with ``--dataset`` (default ``faces / "lfw_150px"``), ``--encoder`` (dlib) and
    ``--no-write`` (print, leave docs alone), described by ``doc``'s first line; with ``draws``,
    also ``--draws`` (that default) and ``--seed`` (0); with ``people`` / ``photos``, those
    comma-separated lists of gallery sizes / photos enrolled per person (those defaults)."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--dataset", default=str(faces / "lfw_150px"))
    ap.add_argument("--encoder", default="dlib")
    ap.add_argument("--no-write", action="store_true", help="print, leave docs alone")
    if draws is not None:
        ap.add_argument("--draws", type=int, default=draws)
        ap.add_argument("--seed", type=int, default=0)
    if people is not None:
        ap.add_argument("--people", default=people, help="gallery sizes, comma-separated")
    if photos is not None:
        ap.add_argument("--photos", default=photos, help="photos enrolled per person")
    return ap


def section_head(title: str, load0: float, t0: float, command: str) -> str:
    """A section's heading and its machine line: the machine, numpy / scipy / dlib versions, the
    load average at ``load0`` and now, the wall time since ``t0`` (``time.perf_counter()``) and
    the ``command`` that wrote it."""
    import time

    return (f"{title}\n\nMachine: {machine()}; {versions('numpy', 'scipy', 'dlib')}. 1-minute load "
            f"average {load0:.1f} before, {load_average():.1f} after; wall "
            f"{time.perf_counter() - t0:.0f} s. Command: `{command}`.")


def publish(section: str, title: str, command: str, note: str, body: str, *, load0: float,
            t0: float, no_write: bool) -> None:
    """Write ``bench:section`` (:func:`section_head`'s heading and machine line, then ``note`` and
    ``body``), or print it with ``no_write``."""
    text = f"{section_head(title, load0, t0, command)} {note}".rstrip() + f"\n\n{body}"
    print(text if no_write else f"wrote {write_section(section, text)}")


BG_PER_PERSON = 20  # photos of each background person, at most


def halves(root: Path, out: Path, size: int) -> tuple[Path, Path]:
    """``(dataset, background)``: ``root``'s identities halved, every other one in name order,
    as folder trees of symbolic links under ``out`` (the photos are read in place, never copied):
    the background gets at most ``BG_PER_PERSON`` photos of each of its people and ``size`` in
    all (what ``facekd calibrate`` would store), the dataset everyone else with all their
    photos."""
    from facekd.evaluation.dataset import identity_folders

    ds, bg, kept = out / "dataset", out / "background", 0
    for i, folder in enumerate(identity_folders(root)):
        photos = sorted(f for f in folder.iterdir() if f.is_file())
        into = bg if i % 2 == 1 and kept < size else ds
        if into is bg:
            photos = photos[:min(BG_PER_PERSON, size - kept)]
            kept += len(photos)
        (into / folder.name).mkdir(parents=True)
        for f in photos:
            (into / folder.name / f.name).symlink_to(f.resolve())
    return ds, bg
