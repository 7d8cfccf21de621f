"""The `runs` table: one row per run, written when it starts and when it ends."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import duckdb


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


def abandon_stale_runs(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Runs still 'running' while we hold the run lock died mid-way (killed): mark them failed.

    Returns their run ids, so what they left on disk can be removed too.
    """
    rows = con.execute(
        "UPDATE runs SET status = 'failed', finished_at = now(), "
        "message = 'abandoned: the process stopped before finishing' "
        "WHERE status = 'running' RETURNING run_id"
    ).fetchall()
    return sorted(str(r[0]) for r in rows)


def start_run(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    parameters: dict[str, Any],
    source: str,
    flow_name: str,
    flow_run_id: str | None,
    triggered_by: str,
) -> None:
    con.execute(
        "INSERT INTO runs (run_id, flow_name, flow_run_id, triggered_by, status, parameters, "
        "source, "
        "started_at) VALUES (?, ?, ?, ?, 'running', CAST(? AS JSON), ?, ?)",
        [
            run_id,
            flow_name,
            flow_run_id,
            triggered_by,
            json.dumps(parameters, default=str),
            source,
            datetime.now(UTC),
        ],
    )


def record_data_window(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    as_of: datetime | None,
    start: datetime | None,
    end: datetime | None,
    n_users: int,
    n_items: int,
    n_events: int,
    fingerprint: str,
) -> None:
    con.execute(
        "UPDATE runs SET as_of = ?, data_start = ?, data_end = ?, n_users = ?, n_items = ?, "
        "n_events = ?, data_fingerprint = ? WHERE run_id = ?",
        [as_of, start, end, n_users, n_items, n_events, fingerprint, run_id],
    )


def fail_run(con: duckdb.DuckDBPyConnection, run_id: str, message: str) -> None:
    con.execute(
        "UPDATE runs SET status = 'failed', finished_at = ?, message = ? WHERE run_id = ?",
        [datetime.now(UTC), message[:2000], run_id],
    )


def run_status(con: duckdb.DuckDBPyConnection, run_id: str) -> str | None:
    rows = con.execute("SELECT status FROM runs WHERE run_id = ?", [run_id]).fetchall()
    return str(rows[0][0]) if rows else None
