"""Plots and an HTML page for one deletion receipt (everything is drawn from the receipt alone).

Two PNGs: the erased identity's genuine-pair cosine histogram against the impostor distribution,
before and after the erasure; and forget-vs-retain metric bars before/after. The HTML page embeds
both and the receipt JSON. Since the receipt holds only hashed ids and aggregate counts, so does
the report.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any

import numpy as np

from facekd import receipt as rc

__all__ = ["plot_histograms", "plot_metrics", "render_html", "write_report"]

_BARS = [("rank-1", "rank1"), ("TAR@{far}", "tar@{far}"), ("KR linear", "kr_linear"),
         ("KR 5-NN", "kr_knn"), ("KR weak", "kr_weak")]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _density(counts: list[int], widths: np.ndarray) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64)
    return c / max(c.sum(), 1.0) / widths


def plot_histograms(receipt: dict, out: str | os.PathLike) -> Path:
    """Genuine-pair cosines of the erased identity vs impostors, before | after. Writes a PNG."""
    plt = _pyplot()
    h = receipt["histograms"]
    edges = np.asarray(h["edges"])
    widths, left = np.diff(edges), edges[:-1]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, tag in zip(axes, ("before", "after")):
        ax.bar(left, _density(h[f"impostor_{tag}"], widths), width=widths, align="edge",
               alpha=0.5, color="tab:gray", label="impostor pairs (retained)")
        ax.bar(left, _density(h[f"forget_genuine_{tag}"], widths), width=widths, align="edge",
               alpha=0.7, color="tab:red", label="genuine pairs (erased identity)")
        thr = (receipt["metrics"].get("thresholds") or {}).get(tag) or {}
        for far, value in thr.items():
            ax.axvline(value, color="k", ls="--", lw=1, label=f"threshold @ FAR {far}")
        ax.set_title(f"{tag} the erasure")
        ax.set_xlabel("cosine score")
        ax.set_xlim(-0.5, 1.0)
    axes[0].set_ylabel("density")
    axes[1].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return _save(fig, out)


def plot_metrics(receipt: dict, out: str | os.PathLike) -> Path:
    """Grouped bars: forget/retain x before/after for rank-1, TAR, KR probes. Writes a PNG."""
    plt = _pyplot()
    m = receipt["metrics"]
    far = f"{(m.get('fars') or [1e-3])[0]:g}"
    names, series = [], {("forget", "before"): [], ("forget", "after"): [],
                         ("retain", "before"): [], ("retain", "after"): []}
    for label, key in _BARS:
        key = key.format(far=far)
        if f"{key}_forget" not in m.get("before", {}):
            continue
        names.append(label.format(far=far))
        for (group, tag), values in series.items():
            v = m[tag].get(f"{key}_{group}")
            values.append(np.nan if v is None else v)
    fig, ax = plt.subplots(figsize=(10, 3.6))
    x = np.arange(len(names))
    colours = {("forget", "before"): "#f4a6a6", ("forget", "after"): "#c0392b",
               ("retain", "before"): "#a6c8f4", ("retain", "after"): "#1f5fa8"}
    for i, ((group, tag), values) in enumerate(series.items()):
        label = f"{'erased' if group == 'forget' else 'retained'}, {tag}"
        ax.bar(x + (i - 1.5) * 0.2, values, width=0.2, color=colours[(group, tag)], label=label)
    ax.axhline(100 * m.get("chance_rank1", 0), color="k", ls=":", lw=1, label="chance rank-1")
    ax.set_xticks(x, names)
    ax.set_ylabel("percent")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    fig.tight_layout()
    return _save(fig, out)


def _save(fig: Any, out: str | os.PathLike) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    _pyplot().close(fig)
    return rc.write_atomic(out, buf.getvalue())


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def render_html(receipt: dict, histograms_png: Path, metrics_png: Path) -> str:
    """A self-contained HTML page (PNG embedded as data URIs)."""
    m = receipt["metrics"]
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td><td>{_fmt(m['after'].get(k))}</td></tr>"
        for k, v in m.get("before", {}).items())
    model, gal = receipt["model"], receipt["gallery"]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>facekd receipt {html.escape(receipt['receipt_id'])}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}td,th{{padding:2px 10px;
text-align:right}}td:first-child{{text-align:left}}pre{{background:#f4f4f4;padding:1em;overflow:auto}}
</style></head><body>
<h1>Deletion receipt {html.escape(receipt['receipt_id'])}</h1>
<p>Identity (salted HMAC-SHA256): <code>{html.escape(receipt['identity_hash'])}</code><br>
Method <b>{html.escape(receipt['method'])}</b>, {model.get('k_added')} direction(s) erased
({model.get('k_total')} in total); gallery generation {gal['generation_before']} &rarr;
{gal['generation_after']}; {html.escape(receipt['created'])}, facekd {html.escape(receipt['facekd_version'])}<br>
Base encoder sha256 <code>{html.escape(model['base_sha256'])}</code><br>
Edited encoder sha256 <code>{html.escape(model['edited_sha256_after'])}</code></p>
<h2>Score distributions</h2>{_img(histograms_png)}
<h2>Forget vs retain</h2>{_img(metrics_png)}
<table><tr><th>metric (%)</th><th>before</th><th>after</th></tr>{rows}</table>
<p>{html.escape(str(m.get('protocol', '')))}</p>
<h2>Receipt</h2><pre>{html.escape(rc.to_json(receipt))}</pre>
</body></html>
"""


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.1f}" if isinstance(v, (int, float)) else html.escape(str(v))


def write_report(ws: Any, *, html_out: str | os.PathLike | None = None,
                 receipt_id: str | None = None) -> dict:
    """Write ``reports/<receipt>-histograms.png``, ``...-metrics.png`` and the HTML page.

    ``ws`` is an open :class:`~facekd.workspace.Workspace`; default receipt: the latest deletion.
    Returns the paths written.
    """
    from facekd.workspace import WorkspaceError

    if receipt_id is None:
        entries = ws.ledger()
        if not entries:
            raise WorkspaceError("no deletions yet: nothing to report (run `facekd forget`)")
        receipt_id = entries[-1]["receipt_id"]
    receipt = ws.receipt(receipt_id)
    out_dir = Path(ws.root) / "reports"
    hist = plot_histograms(receipt, out_dir / f"{receipt_id}-histograms.png")
    bars = plot_metrics(receipt, out_dir / f"{receipt_id}-metrics.png")
    page = Path(html_out) if html_out is not None else Path(ws.root) / "report.html"
    rc.write_atomic(page, render_html(receipt, hist, bars).encode())
    return {"receipt_id": receipt_id, "html": page, "histograms_png": hist, "metrics_png": bars}
