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
