"""Prefect artifacts of a run, under stable keys so the UI shows their history side by side."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from prefect.artifacts import create_link_artifact, create_table_artifact

from tasks.report import HEADLINE, lift_table

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


def publish_artifacts(
    run_id: str,
    status: str,
    metrics: pl.DataFrame,
    previous: pl.DataFrame | None,
    previous_run_id: str | None,
    checks: pl.DataFrame,
    row_counts: dict[str, int],
    report: Path | None,
) -> None:
    headline = metrics.filter((pl.col("segment") == "all") & pl.col("metric").is_in(HEADLINE))
    if headline.height:
        table = headline.pivot(on="metric", index="model", values="value").sort("model")
        create_table_artifact(
            key=KEYS["metrics"],
            table=_records(table),
            description=f"Hold-out metrics of run {run_id} ({status})",
        )
        create_table_artifact(
            key=KEYS["lift"],
            table=_records(lift_table(metrics, previous)),
            description=f"Fused list of run {run_id} vs previous published run "
            f"{previous_run_id or '(none)'}",
        )
    create_table_artifact(
        key=KEYS["checks"],
        table=_records(checks),
        description=f"Great Expectations results of run {run_id}",
    )
    create_table_artifact(
        key=KEYS["row_counts"],
        table=[{"table": t, "rows": n} for t, n in row_counts.items()],
        description=f"Rows read, added, quarantined and published by run {run_id}",
    )
    if report is not None:
        create_link_artifact(
            key=KEYS["report"],
            link=report.resolve().as_uri(),
            link_text=f"HTML report of run {run_id}",
            description="Self-contained report next to the database",
        )
