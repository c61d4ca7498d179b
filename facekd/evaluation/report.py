"""Plots and an HTML page for one deletion receipt (everything is drawn from the receipt alone).

Two PNGs: the erased identity's genuine-pair cosine histogram against the impostor distribution,
before and after the erasure; and forget-vs-retain metric bars before/after. The HTML page opens
with a one-screen summary for a data-protection officer (what was erased, when, how, what was
measured, what the erasure does not protect against: docs/threat-model.md), then embeds both
plots, the plots of a ``facekd bench`` run when one is found (:func:`find_bench`), and the receipt
JSON. Since the receipt holds only hashed ids and aggregate counts, so does the report.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any

import numpy as np

from facekd.state import receipt as rc

__all__ = ["plot_histograms", "plot_metrics", "render_html", "write_report", "find_bench",
           "BENCH_PLOTS"]

#: what ``facekd bench`` writes (facekd.evaluation.bench.write_outputs) that the report shows, with captions
BENCH_PLOTS = (("tradeoff.png", "Erasure trade-off: the erased person's re-enrolment rank-1 "
                "against everyone else's TAR@1e-3, per method (lower-right is better)"),
               ("sequential.png", "Many erasures one after another: what everyone else keeps"))
BENCH_DIR = "facekd-bench"  # bench's default --out
_METHODS = {
    "scramble": "gated scramble: a gate added to the model turns the person's faces into "
                "unrelated random strangers and leaves everyone else's unchanged",
    "esc": "ESC (Lee et al., CVPR 2025): the person's directions are projected out of the "
           "model's embedding space",
    "esc-t": "ESC-T (Lee et al., CVPR 2025): a trained linear map moves the person's faces away",
}

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


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.1f}&nbsp;%"


def _change(m: dict, key: str) -> str:
    """``before -> after`` of one metric, the after value with its 95% interval when the receipt
    carries one (a few probe photos make it wide, and a reader should see that)."""
    ci = ((m.get("intervals") or {}).get("after") or {}).get(key)
    band = (f" <small>(95&nbsp;% interval {float(ci[0]):.1f}&ndash;{float(ci[1]):.1f})</small>"
            if ci is not None else "")
    return f"{_pct(m['before'].get(key))} &rarr; <b>{_pct(m['after'].get(key))}</b>{band}"


def _summary(receipt: dict) -> str:
    """The one-screen summary: plain words and the receipt's own numbers, no identifiers but
    the salted hash."""
    m, model, fitted = receipt["metrics"], receipt["model"], receipt.get("fitted_on", {})
    far = f"{(m.get('fars') or [1e-3])[0]:g}"
    method = receipt["method"]
    chance = m.get("chance_rank1")
    leak = model.get("template_leak") or {}
    created = html.escape(str(receipt["created"]).replace("T", " ").replace("+00:00", " UTC"))
    if leak.get("rank") is not None:
        leak_text = (f"ranking everyone in the gallery by the edit puts this person at "
                     f"<b>rank {leak['rank']} of {leak.get('ranked_among', '?')}</b> (cosine "
                     f"{float(leak.get('cosine_to_mean_face', 0)):.2f} with their average face)")
    else:
        leak_text = "this receipt does not measure it (older receipt or method)"
    rows = [
        ("What was erased", "one person, recorded only as a salted hash "
         f"<code>{html.escape(receipt['identity_hash'][:16])}&hellip;</code> (no name, photo or "
         "file path is kept); their stored face records were deleted from the gallery"),
        ("When", f"{created} (receipt {html.escape(receipt['receipt_id'])}"
         + (", <b>dry run: nothing was changed</b>" if receipt.get("dry_run") else "") + ")"),
        ("How", f"<b>{html.escape(method)}</b>: {html.escape(_METHODS.get(method, 'see docs/cli.md'))};"
         f" fitted on {fitted.get('gallery_vectors', '?')} stored photo(s) and "
         f"{fitted.get('extra_images', 0)} sent with the request"),
        ("Can the system still find them?", f"re-enrolment rank-1 {_change(m, 'rank1_forget')}"
         + (f" (chance {100 * float(chance):.1f}&nbsp;%)" if chance is not None else "")
         + f"; genuine matches TAR@FAR&nbsp;{far} {_change(m, f'tar@{far}_forget')}"),
        ("Can a trained probe still tell them apart?",
         f"knowledge retention, linear probe {_change(m, 'kr_linear_forget')}, 5-NN "
         f"{_change(m, 'kr_knn_forget')}"),
        ("Everyone else", f"rank-1 {_change(m, 'rank1_retain')}, TAR@FAR&nbsp;{far} "
         f"{_change(m, f'tar@{far}_retain')} (retained accuracy)"),
    ]
    table = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    limits = [
        f"<b>The edited model reveals whom it erased.</b> {leak_text[0].upper() + leak_text[1:]}. "
        "Keep the edited model file confidential (serve it behind an API; do not distribute it).",
        "<b>Photos outside the gate.</b> New photos very unlike the ones used for the erasure "
        "(another decade, pose, camera) can still be recognised: check with "
        "<code>facekd verify --images</code> on photos that were not used.",
        "<b>Copies.</b> The original, unedited model still recognises the person, and copies of "
        "models, galleries, photos, backups and logs outside this workspace are not touched.",
        "<b>Deeper layers.</b> Only the final embedding is changed; someone with the model's "
        "internals can probe earlier layers.",
        "<b>Evidence, not proof.</b> These numbers were measured when the erasure was made, on "
        "the photos available then.",
    ]
    items = "".join(f"<li>{x}</li>" for x in limits)
    return (f'<section id="summary"><h2>Summary</h2><table class="summary">{table}</table>'
            f'<h3>What this erasure does not protect against</h3><ul>{items}</ul>'
            '<p class="note">Details: docs/threat-model.md in facekd.</p></section>')


def _bench_section(bench: dict | None) -> str:
    if not bench:
        return ""
    result = bench.get("result") or {}
    where = (f"dataset <code>{html.escape(Path(str(result['dataset'])).name)}</code>, encoder "
             f"<code>{html.escape(str(result.get('encoder', '?')))}</code>"
             if result.get("dataset") else "")
    figs = "".join(f"<figure>{_img(path)}<figcaption>{html.escape(caption)}</figcaption></figure>"
                   for caption, path in bench["plots"])
    return (f'<section id="bench"><h2>Benchmark (facekd bench)</h2><p>How the erasure methods '
            f"compare on a benchmark run{': ' + where if where else ''}; these are not "
            f"measurements of this deletion.</p>{figs}</section>")


_BADGE = {"PASS": "#1a7f37", "FAIL": "#b42318", "INCONCLUSIVE": "#9a6700", None: "#57606a"}


def _badge(verification: dict | None, receipt: dict) -> str:
    """The verdict the page opens with: the last ``facekd verify`` of this person (its ruling,
    rank-1 with its 95 % interval and bound, photo count, when), or "not verified yet" with
    forget's own measured ruling."""
    def pct(v: Any) -> str:
        return "n/a" if v is None else f"{100 * float(v):.1f}%"

    if verification is None:
        own = (receipt.get("verdict") or {}).get("status")
        text = ("Not verified yet: run <code>facekd verify --identity ID --images "
                "NEW_PHOTOS</code> with photos the gallery never saw."
                + (f" forget's own measurement on held-back stored faces: <b>{html.escape(own)}"
                   "</b>." if own else ""))
        status = None
    else:
        status = verification.get("status")
        r1 = (verification.get("figures") or {}).get("rank-1_after") or {}
        erased = verification.get("erased_photos") or {}
        text = (f"{html.escape(verification.get('reason', ''))}"
                f"<br>last verification {html.escape(str(verification.get('created', '')))} on "
                f"{int(verification.get('photos') or 0)} photos: re-enrolment rank-1 "
                f"{pct(r1.get('estimate'))} (95% {pct(r1.get('low'))}&ndash;{pct(r1.get('high'))}),"
                f" bound {pct(r1.get('bound'))}"
                + (f"; {erased.get('erased')} of {erased.get('photos')} photos erased by the gate"
                   if erased else ""))
    return (f'<div id="verdict" style="border:3px solid {_BADGE.get(status, _BADGE[None])};'
            f'padding:0.5em 1em;margin:0.5em 0 1em"><span style="background:'
            f'{_BADGE.get(status, _BADGE[None])};color:white;padding:2px 8px;font-weight:bold">'
            f'{html.escape(status or "NOT VERIFIED")}</span> {text}</div>')


def render_html(receipt: dict, histograms_png: Path, metrics_png: Path,
                bench: dict | None = None, verification: dict | None = None) -> str:
    """A self-contained HTML page (PNG embedded as data URIs); ``bench`` from :func:`find_bench`;
    ``verification``: the person's last recorded verify (``None``: not verified yet)."""
    m = receipt["metrics"]
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td><td>{_fmt(m['after'].get(k))}</td></tr>"
        for k, v in m.get("before", {}).items())
    model, gal = receipt["model"], receipt["gallery"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>facekd erasure report {html.escape(receipt['receipt_id'])}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:1em auto;line-height:1.35}}
td,th{{padding:2px 10px;text-align:right}}td:first-child{{text-align:left}}
pre{{background:#f4f4f4;padding:1em;overflow:auto}}img{{max-width:100%}}
table.summary th{{text-align:left;vertical-align:top;white-space:nowrap;padding-right:1em}}
table.summary td{{text-align:left}}#summary{{border:2px solid #444;padding:0 1em 0.5em}}
#summary ul{{margin-top:0.2em}}#summary h3{{margin-bottom:0.2em}}.note{{color:#555;font-size:90%}}
figure{{margin:1em 0}}</style></head><body>
<h1>Erasure report {html.escape(receipt['receipt_id'])}</h1>
{_badge(verification, receipt)}
{_summary(receipt)}
<h2>Details</h2>
<p>Identity (salted HMAC-SHA256): <code>{html.escape(receipt['identity_hash'])}</code><br>
Method <b>{html.escape(receipt['method'])}</b>, {_edit_size(model)}; gallery generation {gal['generation_before']} &rarr;
{gal['generation_after']}; {html.escape(receipt['created'])}, facekd {html.escape(receipt['facekd_version'])}<br>
Base encoder weights sha256 <code>{html.escape(model['base_sha256'])}</code><br>
Edited encoder weights sha256 <code>{html.escape(model['edited_sha256_after'])}</code></p>
<h2>Score distributions</h2>{_img(histograms_png)}
<h2>Forget vs retain</h2>{_img(metrics_png)}
<table><tr><th>metric (%)</th><th>before</th><th>after</th></tr>{rows}</table>
<p>{html.escape(str(m.get('protocol', '')))}</p>
{_bench_section(bench)}
<h2>Receipt</h2><pre>{html.escape(rc.to_json(receipt))}</pre>
</body></html>
"""


def _edit_size(model: dict) -> str:
    """What the edit added: gates (scramble) or erased directions (ESC / ESC-T)."""
    if model.get("gates_total"):
        return f"{model['gates_total']} gate(s) in the edited model"
    return f"{model.get('k_added')} direction(s) erased ({model.get('k_total')} in total)"


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.1f}" if isinstance(v, (int, float)) else html.escape(str(v))


def find_bench(ws_root: str | os.PathLike, bench_dir: str | os.PathLike | None = None) -> dict | None:
    """The plots (and ``bench.json``) of a ``facekd bench`` run: in ``bench_dir`` when given
    (:class:`~facekd.workspace.WorkspaceError` when it holds none), else the first of
    ``WORKSPACE/bench``, ``WORKSPACE/../facekd-bench`` and ``./facekd-bench`` (bench's default
    ``--out``) that holds any; ``None`` when there is none.

    Returns ``{"dir": Path, "plots": [(caption, png path)], "result": bench.json dict | None}``.
    """
    import json

    from facekd.workspace import WorkspaceError

    root = Path(ws_root)
    candidates = ([Path(bench_dir)] if bench_dir is not None else
                  [root / "bench", root.parent / BENCH_DIR, Path.cwd() / BENCH_DIR])
    for d in candidates:
        plots = [(caption, d / name) for name, caption in BENCH_PLOTS if (d / name).is_file()]
        if plots:
            try:
                result = json.loads((d / "bench.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                result = None  # the plots stand on their own
            return {"dir": d, "plots": plots, "result": result if isinstance(result, dict) else None}
    if bench_dir is not None:
        raise WorkspaceError(f"{bench_dir}: no facekd bench plots there ("
                             f"{', '.join(n for n, _ in BENCH_PLOTS)}); run `facekd bench --out "
                             f"{bench_dir}` first")
    return None


def write_report(ws: Any, *, html_out: str | os.PathLike | None = None,
                 receipt_id: str | None = None, bench_dir: str | os.PathLike | None = None) -> dict:
    """Write ``reports/<receipt>-histograms.png``, ``...-metrics.png`` and the HTML page.

    ``ws`` is an open :class:`~facekd.workspace.Workspace`; default receipt: the latest deletion.
    ``bench_dir``: a ``facekd bench --out`` folder whose plots to include (default: found by
    :func:`find_bench`). Returns the paths written (``bench``: the folder used, or ``None``).
    """
    from facekd.workspace import WorkspaceError

    if receipt_id is None:
        entries = ws.ledger()
        if not entries:
            raise WorkspaceError("no deletions yet: nothing to report (run `facekd forget`)")
        receipt_id = entries[-1]["receipt_id"]
    receipt = ws.receipt(receipt_id)
    bench = find_bench(ws.root, bench_dir)
    out_dir = Path(ws.root) / "reports"
    hist = plot_histograms(receipt, out_dir / f"{receipt_id}-histograms.png")
    bars = plot_metrics(receipt, out_dir / f"{receipt_id}-metrics.png")
    mine = [v for v in ws.verifications() if v.get("identity_hash") == receipt["identity_hash"]]
    page = Path(html_out) if html_out is not None else Path(ws.root) / "report.html"
    rc.write_atomic(page, render_html(receipt, hist, bars, bench,
                                      mine[-1] if mine else None).encode())
    return {"receipt_id": receipt_id, "html": page, "histograms_png": hist, "metrics_png": bars,
            "bench": bench["dir"] if bench else None}
