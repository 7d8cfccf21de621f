"""Prefect artifacts of a run, under stable keys so the UI shows their history side by side.

`recfusion-report` is the whole report as markdown: the Prefect UI cannot follow `file://` links
to the worker's disk, so the report itself lives in the UI and names the host and paths of the
HTML file and the Great Expectations Data Docs. `recfusion-progress` moves at every step of a
run and ends at 100% however the run ends, saying how.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from pathlib import Path
from uuid import UUID

import polars as pl
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from tasks.outputs.report import (
    ReportInput,
    failures_markdown,
    headline_frame,
    lift_table,
    plan_markdown,
    render_markdown,
    segment_frame,
)

KEYS = {
    "metrics": "recfusion-metrics",
    "lift": "recfusion-lift",
    "checks": "recfusion-checks",
    "row_counts": "recfusion-row-counts",
    "report": "recfusion-report",
    "progress": "recfusion-progress",
    "segments": "recfusion-segments",
    "plan": "recfusion-plan",
    "failures": "recfusion-failures",
}

log = logging.getLogger(__name__)


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
            key=KEYS["segments"],
            table=_records(segment_frame(data.metrics)),
            description=f"Fused list of run {data.run_id} per user segment (all, cold, warm, "
            "with friends, …); <metric>_se is its standard error",
        )
    create_markdown_artifact(
        key=KEYS["plan"],
        markdown=f"# Fusion plan of run `{data.run_id}`\n\n{plan_markdown(data)}\n",
        description=f"The fusion plan run {data.run_id} published, and what it was chosen among",
    )
    create_markdown_artifact(
        key=KEYS["failures"],
        markdown=f"# What failed in run `{data.run_id}`\n\n{failures_markdown(data)}\n",
        description=f"Failed checks and quarantined rows of run {data.run_id}, with examples",
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


class Progress:
    """A run's progress artifact: one key for every run, moved after each step, 100% at the end.

    The end says how the run ended (published, rejected, failed and why), so a run that stops
    half-way does not sit at a stale percentage. Trouble reaching the API never fails the run.
    """

    def __init__(self, run_id: str, steps: Sequence[str]) -> None:
        self.run_id = run_id
        self.steps = tuple(steps)
        self.done = 0
        self.artifact: UUID | None = None
        try:
            created = create_progress_artifact(
                progress=0.0, key=KEYS["progress"], description=self.describe()
            )
            self.artifact = created if isinstance(created, UUID) else None  # sync in a flow
        except Exception as exc:
            log.warning("could not create the progress artifact of run %s: %s", run_id, exc)

    def describe(self, ended: str | None = None) -> str:
        if ended is not None:
            return f"run {self.run_id} {ended}"
        running = self.steps[self.done] if self.done < len(self.steps) else "report"
        return f"run {self.run_id}: {self.done}/{len(self.steps)} steps done; now {running}"

    def percent(self) -> float:
        return round(100.0 * self.done / len(self.steps), 1) if self.steps else 100.0

    def step_done(self, name: str) -> None:
        self.done = self.steps.index(name) + 1
        self._update(self.percent(), self.describe())

    def within(self, name: str, fraction: float, note: str) -> None:
        """Part of the way through step `name` (a long one, e.g. recommend's user shards)."""
        at = self.steps.index(name)
        share = min(max(fraction, 0.0), 1.0)
        percent = round(100.0 * (at + share) / len(self.steps), 1)
        self._update(percent, f"run {self.run_id}: {at}/{len(self.steps)} steps done; "
                              f"now {name}: {note}")

    def finish(self, status: str, message: str = "") -> None:
        """100%, and how the run ended (its one-line message, shortened)."""
        text = " ".join(message.split())
        ended = f"{status}: {text[:400]}" if text else status
        self._update(100.0, self.describe(ended))

    def _update(self, percent: float, description: str) -> None:
        if self.artifact is None:
            return
        try:
            update_progress_artifact(self.artifact, percent, description=description)
        except Exception as exc:
            log.warning("could not update the progress artifact of run %s: %s", self.run_id, exc)
