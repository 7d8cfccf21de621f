"""Backfill: the nightly flow as of each day in a range, as subflows, skipping days already done."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import duckdb
from prefect import flow, get_run_logger
from pydantic import BaseModel, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from flows.nightly import RunSummary, nightly
from flows.triggers import apply_deployment_parameters
from tasks.config import RunParameters
from tasks.parameter_rules import PARAMETER_CONFIG
from tasks.warehouse.connection import connect, read_sql


class BackfillParameters(BaseModel):
    """A date range to (re)build; each day is one nightly run as of that day's end (UTC)."""

    model_config = PARAMETER_CONFIG

    start: date = Field(description="First day (inclusive).")
    end: date = Field(description="Last day (inclusive), on or after start.")
    force: bool = Field(False, description="Run days that already have a published run again.")
    run: RunParameters = Field(
        default_factory=RunParameters,
        description="Parameters of each run; leave as_of empty (each day sets its own).",
    )

    @model_validator(mode="after")
    def _range(self) -> BackfillParameters:
        problems = []
        if self.end < self.start:
            problems.append(
                InitErrorDetails(
                    type=PydanticCustomError(
                        "end_before_start", f"is before start ({self.start.isoformat()})"
                    ),
                    loc=("end",),
                    input=self.end.isoformat(),
                )
            )
        if self.run.as_of is not None:
            problems.append(
                InitErrorDetails(
                    type=PydanticCustomError(
                        "as_of_in_backfill",
                        "must be empty: a backfill runs as of each day's end in turn",
                    ),
                    loc=("run", "as_of"),
                    input=self.run.as_of.isoformat(),
                )
            )
        if problems:
            raise ValidationError.from_exception_data(type(self).__name__, problems)
        return self


def end_of_day(day: date) -> datetime:
    """Runs 'as of a day' see every event up to that day's last instant (UTC)."""
    return datetime.combine(day + timedelta(days=1), time(0), tzinfo=UTC) - timedelta(
        microseconds=1
    )


def published_as_of(db: str) -> set[datetime]:
    """Days already published, from the analyst copy: read outside the run lock, it never
    waits for (or blocks) a run; a day committed by a run killed before its analyst copy was
    swapped in is not there yet, and is run again."""
    if not Path(db).exists():  # no database yet: nothing was published
        return set()
    # Any other trouble reading it fails the backfill, rather than silently running again every
    # day it already published.
    with connect(db, read_only=True) as con:
        try:
            rows = con.execute(read_sql("published_days.sql")).fetchall()
        except duckdb.CatalogException:  # no runs table yet: nothing was published
            return set()
    return {r[0].astimezone(UTC) for r in rows}


@flow(name="recfusion-backfill", log_prints=True)
def backfill(params: BackfillParameters) -> list[RunSummary]:
    logger = get_run_logger()
    params, _ = apply_deployment_parameters(params, BackfillParameters)  # keeps the rest
    if params.end < params.start:
        raise ValueError(f"end {params.end} is before start {params.start}")
    done = published_as_of(params.run.db)
    summaries: list[RunSummary] = []
    day = params.start
    while day <= params.end:
        as_of = end_of_day(day)
        if as_of in done and not params.force:
            logger.info("%s already published; skipping (force=True to rerun)", day)
        else:
            run_params = params.run.model_copy(update={"as_of": as_of})
            state = nightly(params=run_params, return_state=True)
            summary = state.result(raise_on_failure=False)
            if isinstance(summary, RunSummary):
                summaries.append(summary)
                logger.info(
                    "%s: run %s %s %s", day, summary.run_id, summary.status, summary.message
                )
        day += timedelta(days=1)
    return summaries
