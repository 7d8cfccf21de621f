"""Prefect artifacts of a run, under stable keys so the UI shows their history side by side.

`recfusion-report` is the whole report as markdown: the Prefect UI cannot follow `file://` links
to the worker's disk, so the report itself lives in the UI and names the host and paths of the
HTML file and the Great Expectations Data Docs.
"""

from __future__ import annotations

import socket
from pathlib import Path

import polars as pl
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.outputs.report import ReportInput, headline_frame, lift_table, render_markdown

KEYS = {
    "metrics": "recfusion-metrics",
    "lift": "recfusion-lift",
    "checks": "recfusion-checks",
    "row_counts": "recfusion-row-counts",
    "report": "recfusion-report",
}


def _records(frame: pl.DataFrame) -> list[dict[str, object]]:
    return [
        {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
        for row in frame.iter_rows(named=True)
    ]


def publish_artifacts(data: ReportInput, report: Path | None, host: str | None = None) -> None:
    """The run's tables as Prefect artifacts, and the whole report as markdown."""
    host = host or socket.gethostname()
    headline = headline_frame(data.metrics) if data.metrics.height else data.metrics
    if headline.height:
        create_table_artifact(
            key=KEYS["metrics"],
            table=_records(headline),
            description=f"Hold-out metrics of run {data.run_id} ({data.status}); "
            "<metric>_se is its standard error",
        )
        create_table_artifact(
            key=KEYS["lift"],
            table=_records(lift_table(data.metrics, data.previous_metrics, data.not_comparable)),
            description=f"Fused list of run {data.run_id} vs previous published run "
            f"{data.previous_run_id or '(none)'}",
        )
    create_table_artifact(
        key=KEYS["checks"],
        table=_records(data.checks),
        description=f"Data checks of run {data.run_id}",
    )
    create_table_artifact(
        key=KEYS["row_counts"],
        table=[{"table": t, "rows": n} for t, n in data.row_counts.items()],
        description=f"Rows read, added, quarantined and published by run {data.run_id}",
    )
    create_markdown_artifact(
        key=KEYS["report"],
        markdown=render_markdown(data, host, report.resolve() if report else None),
        description=f"Report of run {data.run_id} ({data.status}) on {host}",
    )
