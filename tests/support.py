"""Helpers shared by the flow tests: read a DuckDB file, run the nightly flow for real."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from flows.nightly import RunSummary, nightly
from tasks.config import RunParameters


def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    """Read-only, short-lived: like an analyst's client between runs."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def run_nightly(source: Path, db: Path, **extra: Any) -> RunSummary:
    """One real Prefect flow run; returns its summary whatever the outcome."""
    state = nightly(
        params=RunParameters(source=str(source), db=str(db), **extra), return_state=True
    )
    summary = state.result(raise_on_failure=False)
    assert isinstance(summary, RunSummary), summary
    return summary


def flow_run_logs(flow_run_id: Any) -> list[str]:
    """Every log line of one flow run, oldest first.

    Prefect ships log lines to its API in batches every few seconds, and a flow run returns
    without waiting for the last batch: on a loaded machine the run's last lines were not there
    yet. So the batch is sent first; and the lines are read in pages, as the API answers a limited
    number per request.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()

    page = 200
    lines: list[str] = []
    with get_client(sync_client=True) as client:
        while True:
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                limit=page,
                offset=len(lines),
            )
            lines += [log.message for log in logs]
            if len(logs) < page:
                return lines
