"""A self-contained HTML run report: metrics, lift, score distribution, segments, checks.

No JavaScript, no external assets: inline SVG and CSS, so the file can be mailed or archived and
still open years later.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

HEADLINE = ("ndcg", "recall", "precision", "coverage")
STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em}td,th{padding:3px 10px;border-bottom:1px solid #eee;
text-align:right}th{background:#f5f5f5}td:first-child,th:first-child{text-align:left}
.ok{color:#1a7f37}.bad{color:#c62828}.muted{color:#777}
"""


@dataclass
class ReportInput:
    run_id: str
    status: str
    message: str
    fusion_strategy: str
    metrics: pl.DataFrame  # model, metric, k, segment, value
    previous_metrics: pl.DataFrame | None  # same shape, last published run before this one
    previous_run_id: str | None
    scores: np.ndarray  # fused scores of the published list
    checks: pl.DataFrame  # suite, expectation, column_name, success, observed_value
    row_counts: dict[str, int]
    timings: dict[str, float]


def _table(frame: pl.DataFrame, digits: int = 4) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
    rows = []
    for row in frame.iter_rows():
        cells = []
        for v in row:
            if isinstance(v, float):
                text = "" if v != v else f"{v:.{digits}f}"
            elif isinstance(v, bool):
                text = f'<span class="{"ok" if v else "bad"}">{"pass" if v else "FAIL"}</span>'
                cells.append(f"<td>{text}</td>")
                continue
            else:
                text = html.escape("" if v is None else str(v))
            cells.append(f"<td>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _bars(labels: list[str], values: list[float], width: int = 520, fmt: str = "{:.4f}") -> str:
    """Horizontal bar chart as inline SVG; negative values extend left of the axis."""
    if not values:
        return '<p class="muted">no data</p>'
    row_h, label_w = 22, 110
    lo, hi = min(0.0, *values), max(0.0, *values)
    span = (hi - lo) or 1.0
    scale = (width - label_w - 70) / span
    zero = label_w + (-lo) * scale
    parts = [f'<svg width="{width}" height="{row_h * len(values) + 6}" role="img">']
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        y = i * row_h + 3
        x, w = (zero, v * scale) if v >= 0 else (zero + v * scale, -v * scale)
        colour = "#2e7d32" if v >= 0 else "#c62828"
        parts.append(
            f'<text x="0" y="{y + 14}" font-size="12">{html.escape(label)}</text>'
            f'<rect x="{x:.1f}" y="{y}" width="{max(w, 1):.1f}" height="{row_h - 6}" '
            f'fill="{colour}"/><text x="{x + max(w, 1) + 4:.1f}" y="{y + 13}" '
            f'font-size="11">{fmt.format(v)}</text>'
        )
    parts.append(
        f'<line x1="{zero:.1f}" x2="{zero:.1f}" y1="0" y2="{row_h * len(values) + 6}" '
        'stroke="#999"/></svg>'
    )
    return "".join(parts)


def _histogram(scores: np.ndarray, bins: int = 30, width: int = 520, height: int = 140) -> str:
    finite = scores[np.isfinite(scores)]
    if finite.size == 0:
        return '<p class="muted">no scores</p>'
    counts, edges = np.histogram(finite, bins=bins)
    bar_w = width / bins
    top = counts.max() or 1
    rects = "".join(
        f'<rect x="{i * bar_w:.1f}" y="{height - c / top * (height - 20):.1f}" '
        f'width="{bar_w - 1:.1f}" height="{c / top * (height - 20):.1f}" fill="#1565c0"/>'
        for i, c in enumerate(counts)
    )
    return (
        f'<svg width="{width}" height="{height + 16}" role="img">{rects}'
        f'<text x="0" y="{height + 14}" font-size="11">{edges[0]:.3g}</text>'
        f'<text x="{width - 40}" y="{height + 14}" font-size="11">{edges[-1]:.3g}</text></svg>'
    )


def lift_table(metrics: pl.DataFrame, previous: pl.DataFrame | None) -> pl.DataFrame:
    """Fused list now vs the previous published run, per headline metric (segment 'all')."""
    now = metrics.filter(
        (pl.col("model") == "fused")
        & (pl.col("segment") == "all")
        & pl.col("metric").is_in(HEADLINE)
    ).select("metric", pl.col("value").alias("now"))
    if previous is None or previous.height == 0:
        return now.with_columns(
            pl.lit(None, pl.Float64).alias("previous"),
            pl.lit(None, pl.Float64).alias("relative_lift"),
        )
    before = previous.filter((pl.col("model") == "fused") & (pl.col("segment") == "all")).select(
        "metric", pl.col("value").alias("previous")
    )
    return now.join(before, on="metric", how="left").with_columns(
        pl.when(pl.col("previous") > 0)
        .then(pl.col("now") / pl.col("previous") - 1)
        .otherwise(None)
        .alias("relative_lift")
    )


def render_report(data: ReportInput) -> str:
    m = data.metrics
    headline = (
        (
            m.filter((pl.col("segment") == "all") & pl.col("metric").is_in(HEADLINE))
            .pivot(on="metric", index="model", values="value")
            .sort("model")
        )
        if m.height
        else m
    )
    fused_ndcg = m.filter(
        (pl.col("model") == "fused") & (pl.col("metric") == "ndcg") & (pl.col("segment") == "all")
    )
    lift_vs_modalities: tuple[list[str], list[float]] = ([], [])
    if fused_ndcg.height:
        f = float(fused_ndcg["value"][0])
        singles = m.filter(
            (pl.col("metric") == "ndcg")
            & (pl.col("segment") == "all")
            & pl.col("model").is_in(["behavior", "content", "social", "popularity"])
        )
        for row in singles.sort("model").iter_rows(named=True):
            if row["value"] and row["value"] > 0:
                lift_vs_modalities[0].append(row["model"])
                lift_vs_modalities[1].append(f / row["value"] - 1)
    segments = (
        (
            m.filter(
                pl.col("metric").is_in(["ndcg", "recall", "n_users"]) & (pl.col("model") == "fused")
            ).pivot(on="metric", index="segment", values="value")
        )
        if m.height
        else m
    )
    status_class = "ok" if data.status == "published" else "bad"
    counts = pl.DataFrame({"table": list(data.row_counts), "rows": list(data.row_counts.values())})
    timings = pl.DataFrame({"step": list(data.timings), "seconds": list(data.timings.values())})
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>recfusion run {data.run_id}</title>"
        f"<style>{STYLE}</style></head><body>",
        f"<h1>recfusion run {html.escape(data.run_id)}</h1>",
        f"<p>Status: <b class='{status_class}'>{html.escape(data.status)}</b> · fusion: "
        f"{html.escape(data.fusion_strategy)}"
        + (f" · {html.escape(data.message)}" if data.message else "")
        + "</p>",
        "<h2>Metrics (hold-out, all users)</h2>",
        _table(headline) if headline.height else '<p class="muted">evaluation was skipped</p>',
        "<h2>Lift of the fused list over each modality (NDCG)</h2>",
        _bars(*lift_vs_modalities, fmt="{:+.1%}"),
        "<h2>Change against the previous published run "
        f"({html.escape(data.previous_run_id or 'none')})</h2>",
        _table(lift_table(m, data.previous_metrics)) if m.height else "",
        "<h2>Per segment (fused)</h2>",
        _table(segments) if segments.height else "",
        "<h2>Score distribution of the published list</h2>",
        _histogram(data.scores),
        "<h2>Data checks</h2>",
        _table(data.checks),
        "<h2>Row counts</h2>",
        _table(counts),
        "<h2>Timings</h2>",
        _table(timings, 2),
        "</body></html>",
    ]
    return "\n".join(parts)


def write_report(folder: Path, data: ReportInput, gx_pages: dict[str, str]) -> Path:
    """Write report.html and GX's own validation pages into the run's folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for suite, page in gx_pages.items():
        (folder / f"gx_{suite}.html").write_text(page, encoding="utf-8")
    path = folder / "report.html"
    path.write_text(render_report(data), encoding="utf-8")
    return path
