"""The run report: one set of tables, rendered as self-contained HTML and as Prefect markdown.

The HTML file has no JavaScript and no external assets (inline SVG and CSS), so it can be mailed
or archived and still open years later; it links the Great Expectations Data Docs pages of the
run by relative paths, so the folder beside the database can be copied whole. The markdown is
what the Prefect UI shows, which cannot open files on the worker: it says where they are.

Numbers are shown as what they are: counts as integers, per-user means with their standard
errors, coverage as a share of the recommendable catalogue (a value outside [0, 1] is flagged,
never shown as if it were one), the fused list's lift over every other evaluated list, and a
change against the previous published run only when that run measured the same thing.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from tasks.fusion.plan import FUSERS
from tasks.outputs.checks import CheckOutcome
from tasks.warehouse.connection import connect, read_sql

HEADLINE = ("ndcg", "recall", "precision", "coverage")
#: Per-user means at K: shown with their standard error and their K.
AT_K = ("ndcg", "recall", "precision")
#: Shares of a whole, which must lie in [0, 1].
SHARES = ("coverage",)
SEGMENT_ORDER = ("all", "cold_pool", "cold", "warm", "with_friends")
FUSED = "fused"
NO_PREVIOUS = "no previous published run"
NOT_COMPARABLE_DATA = "not comparable: different data"
NOT_COMPARABLE_PROTOCOL = "not comparable: different evaluation protocol"
NOT_COMPARABLE_K = "not comparable: different K"
STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em}td,th{padding:3px 10px;border-bottom:1px solid #eee;
text-align:right}th{background:#f5f5f5}td:first-child,th:first-child{text-align:left}
.ok,.up{color:#1a7f37}.bad,.down{color:#c62828}.muted{color:#777}code{font-size:.9em}
"""


@dataclass(frozen=True)
class DataDocs:
    """Where Great Expectations' Data Docs site of the database and this run's pages are."""

    index: Path
    pages: Mapping[str, Path] = field(default_factory=dict)  # suite -> this run's page
    problems: Mapping[str, str] = field(default_factory=dict)  # suite -> why it has no page

    @classmethod
    def of(cls, outcomes: Sequence[CheckOutcome]) -> DataDocs | None:
        """The site and pages the run's check suites wrote (None without a file context)."""
        index = next((c.docs_index for c in outcomes if c.docs_index), None)
        if index is None:
            return None
        return cls(index, {c.suite: c.docs_page for c in outcomes if c.docs_page},
                   {c.suite: c.docs_problem for c in outcomes if c.docs_problem})


@dataclass
class ReportInput:
    run_id: str
    status: str
    message: str
    fusion_strategy: str
    metrics: pl.DataFrame  # model, metric, k, segment, value[, std_error]
    previous_metrics: pl.DataFrame | None  # same shape, last published run before this one
    previous_run_id: str | None
    scores: np.ndarray  # fused scores of the published list
    checks: pl.DataFrame  # suite, expectation, column_name, success, observed_value
    row_counts: dict[str, int]
    timings: dict[str, float]
    #: Why the previous run cannot be compared with this one ('' when it can): see `comparability`.
    not_comparable: str = ""
    data_docs: DataDocs | None = None
    #: The published fusion plan (`FusionPlan.to_dict()`), its `selection` the recipes compared
    #: on validation; None when the run did not evaluate.
    plan: Mapping[str, Any] | None = None
    #: Rows this run quarantined: per table, file and reason, with a count and a first example.
    quarantine: pl.DataFrame | None = None


# --- comparability -------------------------------------------------------------------------


def read_run_records(db: str | Path, run_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The `runs` rows of the given runs, as dicts keyed by run id.

    Whole rows, so a column another version adds (`evaluation_protocol`) is there when it exists.
    """
    ids = [r for r in run_ids if r]
    if not ids:
        return {}
    with connect(db, read_only=True) as con:
        cursor = con.execute(read_sql("report_run_records.sql"), {"run_ids": ids})
        names = [d[0] for d in cursor.description or []]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    return {str(r["run_id"]): r for r in rows}


def comparability(
    current: Mapping[str, Any] | None,
    previous: Mapping[str, Any] | None,
    metrics: pl.DataFrame | None = None,
    previous_metrics: pl.DataFrame | None = None,
) -> str:
    """'' when the previous run's metrics measure the same thing as this run's, else why not.

    Same data (the snapshot's fingerprint) and, where runs record it, the same evaluation
    protocol; without a protocol column the metrics' K is compared as the least that must hold.
    """
    if previous is None:
        return NO_PREVIOUS
    if current is None:
        return NOT_COMPARABLE_DATA
    fingerprint = current.get("data_fingerprint")
    if fingerprint is None or fingerprint != previous.get("data_fingerprint"):
        return NOT_COMPARABLE_DATA
    if "evaluation_protocol" in current or "evaluation_protocol" in previous:
        protocol = current.get("evaluation_protocol")
        if protocol is None or protocol != previous.get("evaluation_protocol"):
            return NOT_COMPARABLE_PROTOCOL
    if (
        metrics is not None
        and previous_metrics is not None
        and set(metrics["k"].unique().to_list()) != set(previous_metrics["k"].unique().to_list())
    ):
        return NOT_COMPARABLE_K
    return ""


# --- tables (numbers) ----------------------------------------------------------------------


def model_kind(model: str) -> str:
    """What an evaluated list is: the published list, a fusion, a baseline or a single source."""
    if model == FUSED:
        return "published"
    if model in FUSERS:
        return "fusion"
    if model.endswith("_baseline"):
        return "baseline"
    return "source"


def _model_order(models: Iterable[str]) -> list[str]:
    rank = {"published": 0, "source": 1, "fusion": 2, "baseline": 3}
    return sorted(set(models), key=lambda m: (rank[model_kind(m)], m))


def _with_se(metrics: pl.DataFrame) -> pl.DataFrame:
    """The metrics frame with a `std_error` column (null when it was not recorded)."""
    if "std_error" in metrics.columns:
        return metrics
    return metrics.with_columns(pl.lit(None, pl.Float64).alias("std_error"))


def metric_k(metrics: pl.DataFrame) -> int | None:
    ks = metrics["k"].drop_nulls().unique().sort().to_list() if metrics.height else []
    return int(ks[-1]) if ks else None


def _wide(metrics: pl.DataFrame, index: str, names: Sequence[str]) -> pl.DataFrame:
    """One row per `index` value; a column per metric and `<metric>_se` for its error.

    Counts (`n_*`) become Int64: a pivot puts them in the Float64 value column.
    """
    m = _with_se(metrics).filter(pl.col("metric").is_in(list(names)))
    if m.height == 0:
        return pl.DataFrame({index: []}, schema={index: pl.String})
    values = m.pivot(on="metric", index=index, values="value", aggregate_function="first")
    errors = m.filter(pl.col("std_error").is_not_null())
    if errors.height:
        se = errors.pivot(on="metric", index=index, values="std_error", aggregate_function="first")
        se = se.rename({c: f"{c}_se" for c in se.columns if c != index})
        values = values.join(se, on=index, how="left")
    present = [n for n in names if n in values.columns]
    columns = [index]
    for n in present:
        columns.append(n)
        if f"{n}_se" in values.columns:
            columns.append(f"{n}_se")
    counts = [pl.col(n).round(0).cast(pl.Int64) for n in present if n.startswith("n_")]
    return values.select(columns).with_columns(counts)


def headline_frame(metrics: pl.DataFrame) -> pl.DataFrame:
    """Per evaluated list on the headline users (segment `all`): users, metrics and errors."""
    wide = _wide(metrics.filter(pl.col("segment") == "all"), "model", ("n_users", *HEADLINE))
    if wide.height == 0:
        return wide
    order = {m: i for i, m in enumerate(_model_order(wide["model"].to_list()))}
    return (
        wide.with_columns(
            pl.col("model").map_elements(model_kind, return_dtype=pl.String).alias("kind"),
            pl.col("model").replace_strict(order, return_dtype=pl.Int64).alias("_order"),
        )
        .sort("_order")
        .select("model", "kind", pl.exclude("model", "kind", "_order"))
    )


def source_lift_frame(metrics: pl.DataFrame, metric: str = "ndcg") -> pl.DataFrame:
    """The fused list's relative lift over every other evaluated list (segment `all`).

    Every list in the metrics is a row, whatever its name; one scoring 0 has no lift (null).
    """
    rows = _with_se(metrics).filter((pl.col("segment") == "all") & (pl.col("metric") == metric))
    fused = rows.filter(pl.col("model") == FUSED)
    schema = {
        "model": pl.String,
        "kind": pl.String,
        metric: pl.Float64,
        f"{metric}_se": pl.Float64,
        "relative_lift": pl.Float64,
    }
    if fused.height == 0:
        return pl.DataFrame(schema=schema)
    f = float(fused["value"][0])
    others = {r["model"]: r for r in rows.filter(pl.col("model") != FUSED).iter_rows(named=True)}
    out = []
    for model in _model_order(others):
        value, se = others[model]["value"], others[model]["std_error"]
        lift = f / value - 1 if value is not None and value > 0 else None
        out.append(
            {
                "model": model,
                "kind": model_kind(model),
                metric: value,
                f"{metric}_se": se,
                "relative_lift": lift,
            }
        )
    return pl.DataFrame(out, schema=schema)


def segment_frame(metrics: pl.DataFrame, model: str = FUSED) -> pl.DataFrame:
    """One list's users and per-user means with errors, per segment (`all` first)."""
    wide = _wide(metrics.filter(pl.col("model") == model), "segment", ("n_users", *AT_K))
    if wide.height == 0:
        return wide
    known = {s: i for i, s in enumerate(SEGMENT_ORDER)}
    return wide.sort(
        pl.col("segment").replace_strict(known, default=len(known), return_dtype=pl.Int64),
        "segment",
    )


def lift_table(
    metrics: pl.DataFrame, previous: pl.DataFrame | None, not_comparable: str = NO_PREVIOUS
) -> pl.DataFrame:
    """Fused list now vs the previous published run, per headline metric (segment 'all').

    `not_comparable` is `comparability`'s verdict: unless it is '', no previous value or change
    is given, only the reason.
    """
    now = metrics.filter(
        (pl.col("model") == FUSED) & (pl.col("segment") == "all") & pl.col("metric").is_in(HEADLINE)
    ).select("metric", pl.col("value").alias("now"))
    if not_comparable or previous is None or previous.height == 0:
        return now.with_columns(
            pl.lit(None, pl.Float64).alias("previous"),
            pl.lit(None, pl.Float64).alias("relative_lift"),
            pl.lit(not_comparable or NO_PREVIOUS).alias("comparison"),
        )
    before = previous.filter((pl.col("model") == FUSED) & (pl.col("segment") == "all")).select(
        "metric", pl.col("value").alias("previous")
    )
    return now.join(before, on="metric", how="left").with_columns(
        pl.when(pl.col("previous") > 0)
        .then(pl.col("now") / pl.col("previous") - 1)
        .otherwise(None)
        .alias("relative_lift"),
        pl.lit("same data and protocol").alias("comparison"),
    )


def _change(comparison: pl.DataFrame) -> pl.DataFrame:
    """`lift_table` for display: the relative lift is a change between runs here."""
    return comparison.drop("comparison").rename({"relative_lift": "change"})


def check_summary(checks: pl.DataFrame) -> pl.DataFrame:
    """Per suite, in order of appearance: how many expectations passed and failed."""
    if checks.height == 0:
        return pl.DataFrame(schema={"suite": pl.String, "passed": pl.Int64, "failed": pl.Int64})
    return (
        checks.with_row_index("_i")
        .group_by("suite")
        .agg(
            pl.col("_i").min(),
            pl.col("success").sum().cast(pl.Int64).alias("passed"),
            (~pl.col("success")).sum().cast(pl.Int64).alias("failed"),
        )
        .sort("_i")
        .drop("_i")
    )


def failed_checks(checks: pl.DataFrame) -> pl.DataFrame:
    """The checks that failed, with what was seen (GX's first unexpected values among it)."""
    return checks.filter(~pl.col("success")).drop("success")


def _weights(weights: Mapping[str, float] | None) -> str:
    return ", ".join(f"{m} {w:g}" for m, w in (weights or {}).items())


def _stacker(summary: Mapping[str, Any] | None) -> str:
    if not summary:
        return ""
    return (f"{summary.get('learner')}, bags: {summary.get('bags')}, trained on "
            f"{summary.get('n_train_rows')} rows ({summary.get('n_train_positives')} positive)")


def plan_frame(plan: Mapping[str, Any]) -> pl.DataFrame:
    """The published plan: one row per recipe it uses, with the users it is for."""
    rows = []
    cold, cold_max = plan.get("cold"), plan.get("cold_max")
    for users, recipe in (
        ("all" if not cold else f"more than {cold_max} items", plan.get("default")),
        (f"at most {cold_max} items (cold)", cold),
    ):
        if recipe:
            rows.append({
                "users": users, "recipe": str(recipe.get("recipe")),
                "fuser": str(recipe.get("fuser")), "weights": _weights(recipe.get("weights")),
                "normalisation": str(recipe.get("normalisation") or ""),
                "stacker": _stacker(recipe.get("stacker")),
            })
    return pl.DataFrame(rows, schema=dict.fromkeys(
        ("users", "recipe", "fuser", "weights", "normalisation", "stacker"), pl.String))


def selection_frame(plan: Mapping[str, Any]) -> pl.DataFrame:
    """Every recipe compared on validation: its NDCG and paired gain over the one it challenged."""
    columns = {"role": pl.String, "recipe": pl.String, "ndcg": pl.Float64, "gain": pl.Float64,
               "gain_se": pl.Float64, "vs": pl.String, "n_users": pl.Int64}
    rows = [
        {"role": str(r.get("role", "")), "recipe": str(r.get("recipe")), "ndcg": r.get("ndcg"),
         "gain": r.get("gain"), "gain_se": r.get("std_error"), "vs": str(r.get("vs", "")),
         "n_users": r.get("n_users")}
        for r in plan.get("selection") or []
    ]
    return pl.DataFrame(rows, schema=columns)


# --- cells (text) --------------------------------------------------------------------------

Cell = tuple[str, str | None]  # text, css class


def _header(column: str, k: int | None) -> str:
    if column in AT_K:
        return f"{column}@{k}" if k else column
    return {
        "n_users": "users",
        "coverage": "coverage (share of recommendable items)",
        "relative_lift": "lift of fused",
        "column_name": "column",
        "observed_value": "observed",
        "success": "result",
    }.get(column, column)


def _number(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _cell(column: str, value: Any, se: Any, digits: int) -> Cell:
    if isinstance(value, bool):
        return ("pass", "ok") if value else ("FAIL", "bad")
    if column in ("relative_lift", "change"):
        if value is None:
            return "", None
        return f"{value:+.1%}", "up" if value >= 0 else "down"
    if column in SHARES and isinstance(value, float) and not 0.0 <= value <= 1.0:
        return f"{value:.4f} (not a share: outside [0, 1])", "bad"
    text = _number(value, digits)
    if text and isinstance(se, float) and math.isfinite(se):
        text += f" ± {se:.{digits}f}"
    return text, None


def cells(
    frame: pl.DataFrame, k: int | None = None, digits: int = 4
) -> tuple[list[str], list[list[Cell]]]:
    """Headers and text cells of a frame; a `<col>_se` column joins its `<col>` as '± se'."""
    columns = [c for c in frame.columns if not (c.endswith("_se") and c[:-3] in frame.columns)]
    rows = []
    for row in frame.iter_rows(named=True):
        rows.append([_cell(c, row[c], row.get(f"{c}_se"), digits) for c in columns])
    return [_header(c, k) for c in columns], rows


# --- HTML ----------------------------------------------------------------------------------


def _html_table(headers: list[str], rows: list[list[Cell]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        tds = []
        for text, css in row:
            inner = html.escape(text)
            tds.append(
                f'<td><span class="{css}">{inner}</span></td>' if css else f"<td>{inner}</td>"
            )
        body.append("<tr>" + "".join(tds) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _table(frame: pl.DataFrame, k: int | None = None, digits: int = 4) -> str:
    if frame.height == 0:
        return '<p class="muted">none</p>'
    return _html_table(*cells(frame, k, digits))


def _bars(labels: list[str], values: list[float], width: int = 560, fmt: str = "{:.4f}") -> str:
    """Horizontal bar chart as inline SVG; negative values extend left of the axis."""
    if not values:
        return '<p class="muted">no data</p>'
    row_h, label_w = 22, 170
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


def _href(target: Path, base: Path | None) -> str:
    """A link that survives copying the database's folder: relative to the report's folder."""
    if base is None:
        return target.resolve().as_uri()
    return html.escape(Path(os.path.relpath(target.resolve(), base.resolve())).as_posix())


def _html_checks(data: ReportInput, base: Path | None) -> str:
    docs = data.data_docs
    parts = []
    if docs is not None:
        parts.append(
            "<p>Great Expectations Data Docs of this database: "
            f'<a href="{_href(docs.index, base)}">index of every run\'s validations</a> '
            f"(<code>{html.escape(str(docs.index))}</code>)</p>"
        )
    items = []
    for row in check_summary(data.checks).iter_rows(named=True):
        suite = row["suite"]
        verdict = (
            f'<span class="ok">all {row["passed"]} passed</span>'
            if not row["failed"]
            else f'<span class="bad">{row["failed"]} failed</span>, {row["passed"]} passed'
        )
        link = ""
        if docs is not None and suite in docs.pages:
            href = _href(docs.pages[suite], base)
            link = f' · <a href="{href}">this run\'s validation page</a>'
        elif docs is not None and suite in docs.problems:
            problem = html.escape(docs.problems[suite])
            link = f' · <span class="bad">no Data Docs page for this run: {problem}</span>'
        elif docs is not None:
            link = ' · <span class="muted">no Data Docs page (checked by recfusion itself)</span>'
        items.append(f"<li><b>{html.escape(suite)}</b>: {verdict}{link}</li>")
    parts.append("<ul>" + "".join(items) + "</ul>" if items else '<p class="muted">none</p>')
    parts.append(_table(data.checks))
    return "\n".join(parts)


def _counts_and_timings(data: ReportInput) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The run's row counts and step timings as two small tables."""
    counts = pl.DataFrame(
        {"table": list(data.row_counts), "rows": [int(v) for v in data.row_counts.values()]},
        schema={"table": pl.String, "rows": pl.Int64},
    )
    timings = pl.DataFrame(
        {"step": list(data.timings), "seconds": [float(v) for v in data.timings.values()]},
        schema={"step": pl.String, "seconds": pl.Float64},
    )
    return counts, timings


def _html_plan(data: ReportInput) -> str:
    if data.plan is None:
        return '<p class="muted">the run did not evaluate: given or default weights</p>'
    selection = selection_frame(data.plan)
    return _table(plan_frame(data.plan)) + (
        "<p>Chosen on validation among:</p>" + _table(selection) if selection.height else ""
    )


def _html_quarantine(data: ReportInput) -> str:
    q = data.quarantine
    if q is None or q.height == 0:
        return ""
    return f"<h3>Rows quarantined by this run ({int(q['rows'].sum())})</h3>" + _table(q)


def render_report(data: ReportInput, base: Path | None = None) -> str:
    """The report as one HTML page; links are relative to `base` (the page's folder) if given."""
    m = data.metrics
    k = metric_k(m) if m.height else None
    lift = source_lift_frame(m)
    with_lift = lift.filter(pl.col("relative_lift").is_not_null())
    no_lift = lift.filter(pl.col("relative_lift").is_null())["model"].to_list()
    comparison = lift_table(m, data.previous_metrics, data.not_comparable) if m.height else None
    status_class = "ok" if data.status == "published" else "bad"
    counts, timings = _counts_and_timings(data)
    previous = html.escape(data.previous_run_id or "none")
    if comparison is None:
        comparison_html = '<p class="muted">evaluation was skipped</p>'
    elif data.not_comparable or data.previous_metrics is None:
        comparison_html = f"<p><b>{html.escape(data.not_comparable or NO_PREVIOUS)}</b></p>"
    else:
        comparison_html = _table(_change(comparison), k)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>recfusion run {html.escape(data.run_id)}</title>"
        f"<style>{STYLE}</style></head><body>",
        f"<h1>recfusion run {html.escape(data.run_id)}</h1>",
        f"<p>Status: <b class='{status_class}'>{html.escape(data.status)}</b> · fusion: "
        f"{html.escape(data.fusion_strategy)}"
        + (f" · {html.escape(data.message)}" if data.message else "")
        + "</p>",
        f"<h2>Metrics (hold-out, all users{f', K={k}' if k else ''}; ± standard error)</h2>",
        _table(headline_frame(m), k) if m.height else '<p class="muted">evaluation was skipped</p>',
        f"<h2>Lift of the fused list over every other list (ndcg{f'@{k}' if k else ''})</h2>",
        _bars(
            [f"{r['model']} ({r['kind']})" for r in with_lift.iter_rows(named=True)],
            with_lift["relative_lift"].to_list(),
            fmt="{:+.1%}",
        ),
        (
            f'<p class="muted">no lift over {html.escape(", ".join(no_lift))}: it scored 0</p>'
            if no_lift
            else ""
        ),
        _table(lift, k) if lift.height else "",
        f"<h2>Change against the previous published run ({previous})</h2>",
        comparison_html,
        "<h2>Per segment (fused)</h2>",
        _table(segment_frame(m), k) if m.height else "",
        "<h2>Fusion plan</h2>",
        _html_plan(data),
        "<h2>Score distribution of the published list</h2>",
        _histogram(data.scores),
        "<h2>Data checks</h2>",
        _html_checks(data, base),
        _html_quarantine(data),
        "<h2>Row counts</h2>",
        _table(counts),
        "<h2>Timings</h2>",
        _table(timings, digits=2),
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)


def write_report(folder: Path, data: ReportInput) -> Path:
    """Write report.html into the run's folder (beside the database)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "report.html"
    path.write_text(render_report(data, base=folder), encoding="utf-8")
    return path


# --- markdown ------------------------------------------------------------------------------

MARKDOWN_CELL_CHARS = 200


def _md_text(text: str) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    if len(text) > MARKDOWN_CELL_CHARS:
        text = text[: MARKDOWN_CELL_CHARS - 1] + "…"
    return text


def _md_table(frame: pl.DataFrame, k: int | None = None, digits: int = 4) -> str:
    if frame.height == 0:
        return "_none_"
    headers, rows = cells(frame, k, digits)
    numeric = [
        dtype.is_numeric() and not name.endswith("_se")
        for name, dtype in frame.schema.items()
        if not (name.endswith("_se") and name[:-3] in frame.columns)
    ]
    lines = [
        "| " + " | ".join(_md_text(h) for h in headers) + " |",
        "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
    ]
    for row in rows:
        texts = [f"**{_md_text(t)}**" if css == "bad" and t else _md_text(t) for t, css in row]
        lines.append("| " + " | ".join(texts) + " |")
    return "\n".join(lines)


def plan_markdown(data: ReportInput) -> str:
    """The plan the run published, and every recipe it was chosen against on validation."""
    if data.plan is None:
        return ("_the run did not evaluate: its lists use the given weights, or each "
                "modality's default weight_")
    out = [_md_table(plan_frame(data.plan)), ""]
    selection = selection_frame(data.plan)
    if selection.height:
        out += ["Chosen on validation among (NDCG per user; gain ± standard error over the "
                "recipe it challenged):", "", _md_table(selection)]
    return "\n".join(out)


def failures_markdown(data: ReportInput) -> str:
    """What failed, with examples: the checks that did not pass, and the quarantined rows."""
    failed = failed_checks(data.checks)
    out = [
        f"### Failed checks ({failed.height} of {data.checks.height})",
        _md_table(failed) if failed.height else f"_all {data.checks.height} checks passed_",
        "",
    ]
    q = data.quarantine
    rows = int(q["rows"].sum()) if q is not None and q.height else 0
    out += [
        f"### Rows quarantined by this run ({rows}; first example of each reason)",
        _md_table(q) if q is not None and q.height else "_none_",
    ]
    return "\n".join(out)


def render_markdown(data: ReportInput, host: str, report_path: Path | None) -> str:
    """The report's tables as markdown, for a Prefect artifact; says where the files are."""
    m = data.metrics
    k = metric_k(m) if m.height else None
    out = [
        f"# recfusion run `{data.run_id}`: {data.status}",
        f"Fusion: **{data.fusion_strategy}**"
        + (f" · {_md_text(data.message)}" if data.message else ""),
        "",
        f"Files on host `{host}` (the Prefect UI cannot open them; open them there or copy them):",
        f"- HTML report: `{report_path}`"
        if report_path
        else "- HTML report: not written (see logs)",
    ]
    docs = data.data_docs
    if docs is not None:
        out.append(f"- Great Expectations Data Docs (every run): `{docs.index}`")
        out += [f"  - this run's `{suite}` validation: `{p}`" for suite, p in docs.pages.items()]
        out += [
            f"  - **no Data Docs page for `{suite}`**: {_md_text(problem)}"
            for suite, problem in docs.problems.items()
        ]
    out += [
        "",
        f"## Metrics (hold-out, all users{f', K={k}' if k else ''}; ± standard error)",
        _md_table(headline_frame(m), k) if m.height else "_evaluation was skipped_",
        "",
        f"## Lift of the fused list over every other list (ndcg{f'@{k}' if k else ''})",
        _md_table(source_lift_frame(m), k) if m.height else "_evaluation was skipped_",
        "",
        f"## Change against the previous published run ({data.previous_run_id or 'none'})",
    ]
    if not m.height:
        out.append("_evaluation was skipped_")
    elif data.not_comparable or data.previous_metrics is None:
        out.append(f"**{data.not_comparable or NO_PREVIOUS}**")
    else:
        out.append(_md_table(_change(lift_table(m, data.previous_metrics, "")), k))
    summary = check_summary(data.checks)
    counts, timings = _counts_and_timings(data)
    out += [
        "",
        "## Per segment (fused)",
        _md_table(segment_frame(m), k) if m.height else "_evaluation was skipped_",
        "",
        "## Fusion plan",
        plan_markdown(data),
        "",
        "## Data checks",
        _md_table(summary),
        "",
        failures_markdown(data),
        "",
        "### Every check",
        _md_table(data.checks),
        "",
        "## Row counts",
        _md_table(counts),
        "",
        "## Timings",
        _md_table(timings, digits=2),
    ]
    return "\n".join(out) + "\n"
