"""The benchmark's report writers: the Markdown table (:func:`format_markdown`), the trade-off and
sequential plots (matplotlib, imported where used) and :func:`write_outputs` (``bench.json``,
``bench.md``, the PNGs).
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import Any

from facekd.core.erasure import Erasure
from facekd.core.metrics import template_leak
from facekd.core.separation import bench_banner
from facekd.fileio import write_atomic


# ---------------------------------------------------------------------- outputs
_COLUMNS = [("forget rank-1", "forget_rank1"), ("forget TAR", "forget_tar"),
            ("KR linear", "kr_linear"), ("KR 5-NN", "kr_knn"), ("MIA", "mia"),
            ("detect AUC", "detect_auc"), ("detect AUC (trained)", "detect_auc_trained"),
            ("look-alike FP", "lookalike_fp"), ("false match", "false_match"),
            ("retain rank-1", "retain_rank1"),
            ("retain TAR", "retain_tar"), ("template cos", "template_cos"),
            ("singled out", "template_top1"),
            ("over 2x chance", "replay_over"),
            ("minus a perfect erasure, points (95 %)", "minus_perfect"),
            ("verify PASS / FAIL / INCONCL.", "verdict"), ("verify wrong", "verdict_wrong"),
            ("fit s", "fit_s"), ("people", "n_erased")]


def _fmt(v: Any, sd: Any = None, spec: str = ".1f") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, int):
        return str(v)
    return f"{v:{spec}} ± {sd:{spec}}" if sd is not None else f"{v:{spec}}"


def _cells(r: dict) -> str:
    """One table row's metric cells: forget rank-1 with its s.d., fit time in ms precision,
    verify's rulings as PASS / FAIL / INCONCLUSIVE percentages and its wrong rulings."""
    def cell(k: str) -> str:
        if k == "verdict":
            got = [r.get(f"verdict_{s}") for s in ("pass", "fail", "inconclusive")]
            return "n/a" if None in got else " / ".join(f"{v:.0f}" for v in got)
        if k == "minus_perfect":
            got = [r.get(f"minus_perfect{x}") for x in ("", "_lo", "_hi")]
            return "n/a" if None in got else "{:+.1f} ({:+.1f} to {:+.1f})".format(*got)
        if k == "verdict_wrong":
            got = [r.get("verdict_false_pass"), r.get("verdict_false_fail")]
            return "n/a" if None in got else f"{sum(got):.0f}"
        return _fmt(r[k], r.get(f"{k}_sd") if k == "forget_rank1" else None,
                    ".3f" if k == "fit_s" else ".1f")

    return " | ".join(cell(k) for _, k in _COLUMNS)


def format_markdown(result: dict) -> str:
    """bench.md: the single-erasure table (original first) and the sequential table."""
    p = result["protocol"]
    n = p.get("draws", 1)
    draws = f" per draw x {n} draws" if n > 1 else ""
    head = "| method | fit photos | " + " | ".join(c for c, _ in _COLUMNS) + " |"
    lines = [f"# facekd bench: `{Path(result['dataset']).name}`, encoder `{result['encoder']}`", "",
             f"{p['faces']} faces of {p['identities']} identities ({p['identities_skipped']} "
             f"skipped with < {p['min_faces']} faces, {p['images_skipped']} images without a "
             f"usable face, {p['fallback_images']} whole-image fallbacks); chance rank-1 "
             f"{result['chance_rank1']:.2f}%"
             + (f"; unrelated strangers' photos re-enrolled as one person (what a perfect "
                f"erasure reaches, verify's yardstick) {p['strangers_rank1']:.2f}%"
                if "strangers_rank1" in p else "")
             + (f"; a perfect erasure person by person (each erased person's fresh photos "
                f"replaced by as many unrelated strangers', replayed over 200 splits) "
                f"{p['perfect_rank1']:.2f}%, {p['perfect_over']:.0f}% of them over 2x chance "
                f"(verify on them: PASS {p['perfect_pass']:.0f} / FAIL {p['perfect_fail']:.0f} / "
                f"INCONCLUSIVE {p['perfect_inconclusive']:.0f}%)"
                if p.get("perfect_rank1") is not None else "")
             + f". Embeddings: cache {p['cache']}."
             + (f" Small gallery: {p['gallery_people']} identities take part."
                if p.get("gallery_people") else "")
             + (f" Background (people enrolled nowhere, what `facekd calibrate` stores): "
                f"{p['background_photos']} photos of {p['background_people']} people, "
                "fitted against by gated methods"
                + (f"; {p['background_left_out']} dataset identities with a background folder "
                   "of the same name left out" if p.get("background_left_out") else "") + "."
                if p.get("background_photos") else ""),
             *bench_banner(result), "",
             f"## Single erasure ({p['erased']} people{draws}, each erased alone; {p['held']} "
             f"fresh photos each: {p['fresh_enrol']} re-enrolled, {p['fresh_probe']} probes)", "",
             head, "|" + "---|" * (len(_COLUMNS) + 2)]
    lines.append(f"| original | - | {_cells(result['original'])} |")
    lines += [f"| {r['method']} | {r['setting']} | {_cells(r)} |" for r in result["rows"]]
    lines += ["", "Percent; forget rank-1 is mean ± s.d. over the erased people. MIA: 50 = ideal "
              "(n/a: fewer than " f"{p['mia_min_per_class']} photos per class). Detect AUC: the "
              "erased person's edited fresh photos vs retained probes (50 = indistinguishable). "
              f"Look-alike FP: faces of the {p['lookalikes']} nearest retained identities that "
              "the erasure moved at all. False match: pairs of (erased fresh photo, someone "
              "else's gallery face) above the FAR 1e-3 threshold (the original's are the person's "
              "look-alikes; a stranger's would be about 0.1). Template: what the edited model alone gives away "
              "(facekd.metrics.template_leak): |cosine| between the direction the edit singles out "
              "and the person's mean face minus the population mean, and how often the person "
              "ranks first among all identities by that direction (singled out, %). verify: "
              "percent of the erased people that `facekd verify` rules PASS / FAIL / "
              "INCONCLUSIVE on their fresh photos (facekd.verdict); over 2x chance: percent of the "
              "erased people whom the attack replayed over 200 random splits of their fresh "
              "photos finds over 2x chance (compare the perfect erasure's above: no erasure "
              "brings everyone under it); minus a perfect erasure: the erased people's replayed "
              "rank-1 minus a perfect erasure's of the same people (mean, with its 95 % "
              "bootstrap interval over people; an interval reaching 0 or below: no easier to "
              "find than a perfect erasure; n/a for the original); verify wrong: percent ruled "
              "PASS while the attack replayed over 200 random splits finds them over 2x chance, "
              "or FAIL while it finds them at or under it (facekd.evaluation.bench_verdict)."]
    lines += [f"Fit setting {s!r} skipped for {k} of {p['erased']} people (no more than {s} "
              "non-fresh photos)." for s, k in p["fit_photos_skipped"].items() if k]
    if n > 1:
        lines += _draw_notes(result)
    lines.append("")
    lines += _later_table(result)
    if result["sequential"]:
        later = p.get("later_people", 0) > 0
        lines += [f"## Sequential erasure ({p['sequential']} people, one after another; "
                  f"{p['sequential_held']} fresh photos each)", "",
                  "| method | erased | retain rank-1 | retain TAR | forget rank-1 | forget TAR "
                  "| gates' estimate |" + (" enrolled later: rank-1 lost, points | photos changed "
                                           "| gates' estimate for them |" if later else ""),
                  "|---|---|---|---|---|---|---|" + ("---|---|---|" if later else "")]
        for r in result["sequential"]:
            lines.append(f"| {r['method']} | {r['erased']} | {_fmt(r['retain_rank1'])} | "
                         f"{_fmt(r['retain_tar'])} | {_fmt(r['forget_rank1'])} | "
                         f"{_fmt(r['forget_tar'])} | {_fmt(r.get('others_touched'))} |"
                         + (" " + " | ".join(_fmt(r.get(k), spec=".2f" if k == "later_lost"
                                                  else ".1f")
                                             for k in ("later_lost", "later_changed",
                                                       "later_estimate")) + " |"
                            if later else ""))
        apply = ", ".join(f"{m} {v * 1e3:.1f} ms" for m, v in p["sequential_apply_s"].items())
        lines += ["", f"Retained = people never erased. Forget numbers (last row per method): "
                  "every erased person's fresh photos under the final composite. Gates' "
                  "estimate: the share of everyone else's new photos the gates open on, summed "
                  "over the gates as each fit estimated it (what forget reports; n/a: not "
                  "gated): an estimate, not a bound (on LFW retain rank-1 lost 0.1-1.1x it). "
                  "Apply time of "
                  f"the final composite on the {p['sequential_gallery_rows']}-row gallery: "
                  f"{apply}.", ""]
    return "\n".join(lines)


def _later_table(result: dict) -> list[str]:
    """The single-erasure rows' cost to people enrolled after the erasure (``--gallery-people``
    leaves people outside the workspace to play them), and what forget says of it."""
    p = result["protocol"]
    if not p.get("later_people"):
        return ["People enrolled after an erasure (no gate spares them): not measured, every "
                "identity is enrolled; `--gallery-people N` leaves the others to play them.", ""]
    out = [f"## People enrolled later ({p['later_people']} from outside the workspace: one photo "
           f"enrolled after the erasure, {p['later_searches']} searches)", "",
           "| method | fit photos | their rank-1 | rank-1 lost, points | photos changed "
           "| forget's estimate | its 95 % top | changed above the top |",
           "|---|---|---|---|---|---|---|---|"]
    o = result["original"]
    out.append(f"| original | - | {_fmt(o.get('later_rank1'))} | - | - | - | - | - |")
    for r in result["rows"]:
        out.append(f"| {r['method']} | {r['setting']} | " + " | ".join(
            _fmt(r.get(k), spec=".2f" if k == "later_lost" else ".1f")
            for k in ("later_rank1", "later_lost", "later_changed", "later_estimate",
                      "later_bound", "later_over")) + " |")
    out += ["", "Percent. Each erased person's erasure alone; the people enrolled later search "
            "the edited gallery of everyone else with their one enrolled photo added. Photos "
            "changed: cosine to the original below 0.999. Forget's estimate and its top: what "
            "`facekd forget` prints for them (the share of their photos the gate opens on, and "
            "the top of its 95 % interval counted over the people it was read off); changed "
            "above the top: percent of erasures where the share changed exceeded it (a 95 % "
            "top should be exceeded in at most a few). n/a: the method has no gate and states "
            "no figure. No gate spares them: in LFW galleries of tens of people this cost was "
            "far larger than everyone enrolled's (docs/benchmarks.md); photos of people "
            "enrolled nowhere (`--background DIR`, `facekd calibrate` in a workspace) keep "
            "gates off them.", ""]
    return out


def _draw_notes(result: dict) -> list[str]:
    """What pooling over draws means, and each draw's forget and retained rank-1 per row."""
    p = result["protocol"]
    out = ["", f"Pooled over {p['draws']} draws (seeds {', '.join(map(str, p['seeds']))}): each "
           "draws the erased people, the small gallery's others, the enrolment split and the "
           "fresh photos afresh. A cell is the mean of the draws' cells; forget rank-1's ± is the "
           "s.d. over every erased person of every draw (the first draw's skip counts above). "
           "Per draw, forget rank-1 / retain rank-1:"]
    for r in [result["original"] | {"method": "original", "setting": "-"}, *result["rows"]]:
        d = r.get("per_draw", {})
        fr, rr = (" ".join(_fmt(v) for v in d.get(k, [])) for k in ("forget_rank1",
                                                                  "retain_rank1"))
        out.append(f"- {r['method']} ({r['setting']}): {fr} / {rr}")
    return out


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _plot_tradeoff(result: dict) -> bytes:
    """Forget rank-1 vs retained TAR@1e-3, one point per method/setting and the original."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.add_subplot()
    o = result["original"]
    ax.scatter([o["retain_tar"]], [o["forget_rank1"]], marker="*", s=160, c="k", label="original")
    for r in result["rows"]:
        ax.scatter([r["retain_tar"]], [r["forget_rank1"]], s=50,
                   label=f"{r['method']} ({r['setting']} photos)")
    ax.axhline(result["chance_rank1"], ls="--", c="grey", lw=1, label="chance rank-1")
    ax.set_xlabel("retained TAR@1e-3 (%)")
    ax.set_ylabel("erased person, re-enrolled rank-1 (%)")
    ax.set_title("Erasure trade-off (lower-right is better)")
    ax.legend(fontsize=8)
    return _png(fig)


def _plot_sequential(result: dict) -> bytes:
    """Retained TAR@1e-3 vs number of people erased, one line per method."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.add_subplot()
    for m in dict.fromkeys(r["method"] for r in result["sequential"]):
        pts = [(r["erased"], r["retain_tar"]) for r in result["sequential"] if r["method"] == m]
        ax.plot(*zip(*pts), marker="o", label=m)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("people erased one after another")
    ax.set_ylabel("retained TAR@1e-3 (%)")
    ax.set_title("Sequential erasure: what everyone else keeps")
    ax.legend(fontsize=8)
    return _png(fig)


def write_outputs(result: dict, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write bench.json, bench.md, tradeoff.png and (with sequential rows) sequential.png."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    out = Path(out_dir).expanduser()
    files = {"json": (out / "bench.json", json.dumps(result, indent=2).encode()),
             "md": (out / "bench.md", format_markdown(result).encode()),
             "tradeoff_png": (out / "tradeoff.png", _plot_tradeoff(result))}
    if result["sequential"]:
        files["sequential_png"] = (out / "sequential.png", _plot_sequential(result))
    for path, data in files.values():
        write_atomic(path, data)
    return {k: v[0] for k, v in files.items()}
