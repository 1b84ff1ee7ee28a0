"""Self-contained HTML reports that work offline: every figure is inline (SVG plots made
with matplotlib, PNG panels as base64), no file or network is fetched.

- `evaluate_report`: `DIR/evaluate/report.html`: the metrics table with bootstrap
  intervals, the calibration, ROC and PR curves, Dice against threshold with the oracle and
  calibrated thresholds marked, the lesion-size breakdown, detection, the panels;
- `scan_report`: `OUT/<stem>_report.html`: the summary, out-of-distribution warnings, the
  lesion table, the panels and the overlay of the map on the anatomy;
- `group_report`: `OUT/group_report.html`: every scan of a folder, its status and figures.

A small inline script marks the page `data-rendered="1"` when it ran, and records any script
error in `data-errors`; the suite's headless-Chromium test reads both.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from madad_jax.core import files

STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.warn{background:#fff3cd;border:1px solid #e0c060;padding:.5em 1em}.plots{display:flex;
flex-wrap:wrap;gap:1em}.plot{width:340px}img{max-width:100%}"""
SCRIPT = """<script>window.__errors=[];window.addEventListener('error',function(e){
window.__errors.push(String(e.message));document.body.dataset.errors=window.__errors.join('|');});
document.addEventListener('DOMContentLoaded',function(){var n=document.querySelectorAll(
'svg').length;document.body.dataset.plots=String(n);document.body.dataset.rendered='1';});
</script>"""


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return "–" if not np.isfinite(x) else f"{x:.4f}"
    return "–" if x is None else html.escape(str(x))


def _page(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>"
            f"{html.escape(title)}</title><style>{STYLE}</style>{SCRIPT}</head><body>"
            f"<h1>{html.escape(title)}</h1>" + "\n".join(body) + "</body></html>\n")


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """An HTML table of `rows`."""
    if not rows:
        return "<p>none</p>"
    cols = list(columns or rows[0].keys())
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in cols) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    return "<div class='plot'>" + text[text.index("<svg"):] + "</div>"


def _figure(title: str, xlabel: str, ylabel: str) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 3.2))
    ax = fig.add_subplot()
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def curves(maps: np.ndarray, segmentations: np.ndarray, oracle: float | None,
           calibrated: float | None, max_points: int = 200_000) -> list[str]:
    """ROC, PR and Dice-vs-threshold plots as inline SVG."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    from madad_jax.evaluation import metrics

    y = (np.asarray(segmentations) > 0).ravel()
    s = np.asarray(maps, np.float32).ravel()
    if y.size > max_points:  # an even subsample keeps the curves' shape
        idx = np.linspace(0, y.size - 1, max_points).astype(np.int64)
        y, s = y[idx], s[idx]
    out = []
    if 0 < y.sum() < y.size:
        fpr, tpr, _ = roc_curve(y, s)
        fig, ax = _figure("ROC (pixels)", "false-positive rate", "true-positive rate")
        ax.plot(fpr, tpr)
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        out.append(_svg(fig))
        prec, rec, _ = precision_recall_curve(y, s)
        fig, ax = _figure("precision-recall (pixels)", "recall", "precision")
        ax.plot(rec, prec)
        out.append(_svg(fig))
    d = metrics.dice_curve(maps, segmentations)
    fig, ax = _figure("Dice against threshold", "threshold", "mean slice Dice")
    ax.plot(metrics.DICE_THRESHOLDS, d)
    for t, name, c in ((oracle, "oracle", "tab:red"), (calibrated, "calibrated", "tab:green")):
        if t is not None:
            ax.axvline(t, color=c, ls="--", label=f"{name} {t:.3f}")
    if oracle is not None or calibrated is not None:
        ax.legend()
    out.append(_svg(fig))
    return out


def _png(path: str | None) -> str:
    if not path or not os.path.isfile(path):
        return ""
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode()
    return f"<img alt='{html.escape(os.path.basename(path))}' src='data:image/png;base64,{data}'>"


def _with_interval(name: str, value: Any, iv: Mapping[str, Any] | None) -> dict[str, Any]:
    lo = hi = None
    if iv:
        lo, hi = iv.get("low"), iv.get("high")
    return {"figure": name, "value": value, "95% CI low": lo, "95% CI high": hi}


def evaluate_report(path: str, result: Mapping[str, Any], maps: np.ndarray,
                    segmentations: np.ndarray | None, panels: str | None = None) -> str:
    """Write `report.html` for an evaluate result; returns its path."""
    iv = result.get("intervals") or {}
    cal = result.get("calibrated") or {}
    rows = [_with_interval(k, result.get(k), iv.get(k))
            for k in ("max_dice", "f1_max", "auroc", "ap")]
    civ = iv.get("calibrated") or {}
    for k in ("dice", "precision", "recall", "fpr", "mean_slice_dice"):
        if k in cal:
            rows.append(_with_interval(f"calibrated {k}", cal[k], None))
    for k, v in (cal.get("per_volume") or {}).items():
        if isinstance(v, float):
            rows.append(_with_interval(f"calibrated per-volume {k}", v,
                                       civ.get(f"per_volume_{k}")))
    body = ["<h2>Metrics</h2>", "<p>Oracle figures use the best of 201 thresholds on the test "
            "set itself; calibrated figures use the threshold chosen on healthy validation "
            "voxels (no test labels).</p>", table(rows)]
    rec = cal.get("calibration")
    if rec:
        body += ["<h2>Calibration</h2>", table([{k: rec.get(k) for k in (
            "method", "threshold", "target_fpr", "achieved_fpr", "split", "healthy_voxels")}])]
    det = result.get("detection") or {}
    if det:
        body += ["<h2>Detection (contains a lesion)</h2>",
                 f"<p>score: {html.escape(str(det.get('score', '')))}</p>",
                 table([{"unit": u, **{k: det[u].get(k) for k in ("n", "n_with_lesion",
                                                                  "auroc", "ap", "note")}}
                        for u in ("slice", "volume") if u in det])]
    sizes = result.get("by_lesion_size") or {}
    size_rows = [{"bin": b, **{k: v for k, v in sizes[b].items() if not isinstance(v, dict)}}
                 for b in ("small", "medium", "large") if isinstance(sizes.get(b), dict)]
    if size_rows:
        body += ["<h2>Lesion-size breakdown</h2>", table(size_rows)]
    if segmentations is not None:
        body += ["<h2>Curves</h2>", "<div class='plots'>"] + curves(
            maps, segmentations, result.get("max_dice_threshold"), cal.get("threshold")) + [
            "</div>"]
    if panels:
        body += ["<h2>Panels</h2>", _png(panels)]
    return files.atomic_write(path, _page("madad-jax evaluation", body))


def scan_report(path: str, stem: str, summary: Mapping[str, Any],
                lesion_rows: Sequence[Mapping[str, Any]] | None,
                images: Mapping[str, str]) -> str:
    """Write `<stem>_report.html` for one predicted scan."""
    body = []
    warnings = summary.get("warnings") or []
    if warnings:
        body.append("<div class='warn'><b>Out of the training distribution:</b><ul>"
                    + "".join(f"<li>{html.escape(w)}</li>" for w in warnings) + "</ul></div>")
    body += ["<h2>Summary</h2>", table([{k: summary.get(k) for k in (
        "input", "checkpoint", "step", "geometry", "num_slices", "map_max", "voxel_auroc",
        "voxel_auprc") if k in summary}])]
    les = summary.get("lesions")
    body.append("<h2>Lesions</h2>")
    if les is None:
        body.append("<p>no calibration: the continuous map only</p>")
    else:
        body += [f"<p>threshold {_fmt(les.get('threshold'))} ({_fmt(les.get('method'))}), "
                 f"{les.get('num_lesions')} lesions, {_fmt(les.get('total_volume_ml'))} mL</p>",
                 table(lesion_rows or [])]
    for title, key in (("Overlay", "overlay"), ("Panels", "panels")):
        body += [f"<h2>{title}</h2>", _png(images.get(key))]
    if images.get("viewer_name"):  # a sibling file: the link survives the final rename
        name = html.escape(os.path.basename(images["viewer_name"]))
        body.append(f"<p><a href='{name}'>Interactive viewer</a> (every slice, the map over "
                    "the scan; nilearn <code>view_img</code>)</p>")
    return files.atomic_write(path, _page(f"madad-jax: {stem}", body))


def group_report(path: str, rows: Sequence[Mapping[str, Any]],
                 columns: Sequence[str]) -> str:
    """Write the group report of a folder prediction."""
    ok = sum(r.get("status") == "ok" for r in rows)
    body = [f"<p>{ok} of {len(rows)} scans predicted.</p>", table(rows, columns)]
    return files.atomic_write(path, _page("madad-jax: group", body))
