"""The `runs` table: one row per run, written when it starts and when it ends.

`runs` lives in the private warehouse and reaches analysts with the analyst copy. When a run's
failure cannot get there (the warehouse cannot be written: someone holds it, the disk is full;
or the analyst copy cannot be refreshed), it goes to a small sidecar file next to the analyst
copy instead; the next run, holding the run lock, copies it into `runs`, so the reason survives
and the run is not later mistaken for one that was killed ("abandoned").
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from tasks.warehouse.connection import read_sql, real_path

log = logging.getLogger(__name__)


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


def abandon_stale_runs(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Runs still 'running' while we hold the run lock died mid-way (killed): mark them failed.

    Returns their run ids, so what they left on disk can be removed too.
    """
    rows = con.execute(read_sql("runs_abandon_stale.sql")).fetchall()
    return sorted(str(r[0]) for r in rows)


def start_run(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    parameters: dict[str, Any],
    source: str,
    flow_name: str,
    flow_run_id: str | None,
    triggered_by: str,
    *,
    deployment_name: str | None = None,
    trigger_detail: str | None = None,
    trigger_note: str | None = None,
    trigger_overrides: dict[str, Any] | None = None,
) -> None:
    """The run's row, with what started it: enough to tell a 2 a.m. schedule from a hand trigger.

    `parameters` are the ones the run applies (a deployment's saved values merged with the
    trigger's); `trigger_overrides` what the trigger changed from those saved values.
    """
    con.execute(read_sql("runs_start.sql"), {
        "run_id": run_id, "flow_name": flow_name, "flow_run_id": flow_run_id,
        "triggered_by": triggered_by, "parameters": json.dumps(parameters, default=str),
        "source": source, "started_at": datetime.now(UTC), "deployment_name": deployment_name,
        "trigger_detail": trigger_detail, "trigger_note": trigger_note,
        "trigger_overrides": None if trigger_overrides is None
        else json.dumps(trigger_overrides, default=str),
    })


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
    con.execute(read_sql("runs_data_window.sql"), {
        "as_of": as_of, "data_start": start, "data_end": end, "n_users": n_users,
        "n_items": n_items, "n_events": n_events, "fingerprint": fingerprint, "run_id": run_id,
    })


def reject_run(con: duckdb.DuckDBPyConnection, run_id: str, message: str) -> None:
    """Mark a running run rejected (refused for its parameters); it published nothing."""
    con.execute(read_sql("runs_reject.sql"), {
        "finished_at": datetime.now(UTC), "message": message[:2000], "run_id": run_id,
    })


def fail_run(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    message: str,
    finished_at: datetime | None = None,
) -> None:
    """Mark a running run failed; a run already published or rejected keeps its status (the live
    list is a view over published runs, so flipping one would change what analysts see)."""
    con.execute(read_sql("runs_fail.sql"), {
        "finished_at": finished_at or datetime.now(UTC), "message": message[:2000],
        "run_id": run_id,
    })


def failure_sidecar(db: str | Path) -> Path:
    """Where failures that could not be written into the database wait for the next run."""
    return Path(f"{real_path(db)}.failed-runs.jsonl")


def record_failure_beside(db: str | Path, run_id: str, message: str) -> Path:
    """Append a run's failure to the sidecar (one JSON line, flushed to disk)."""
    path = failure_sidecar(db)
    line = json.dumps(
        {"run_id": run_id, "message": message[:2000], "finished_at": datetime.now(UTC).isoformat()}
    )
    with path.open("a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return path


def apply_failures_beside(con: duckdb.DuckDBPyConnection, db: str | Path) -> list[str]:
    """Copy the sidecar's failures into `runs` (only runs still 'running'), then remove it.

    Call while holding the run lock and before `abandon_stale_runs`. Re-applying after a crash
    between the two steps changes nothing: a run already failed is left alone. A torn last line
    (a run killed while writing it) is skipped.
    """
    path = failure_sidecar(db)
    if not path.exists():
        return []
    applied: list[str] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
            run_id, message = str(entry["run_id"]), str(entry["message"])
            finished_at = datetime.fromisoformat(entry["finished_at"])
        except (ValueError, KeyError, TypeError):
            log.warning("%s: skipped an unreadable line: %.200s", path, line)
            continue
        if run_status(con, run_id) == "running":
            fail_run(con, run_id, message, finished_at)
            applied.append(run_id)
    path.unlink()
    return applied


def run_status(con: duckdb.DuckDBPyConnection, run_id: str) -> str | None:
    rows = con.execute(read_sql("runs_status.sql"), {"run_id": run_id}).fetchall()
    return str(rows[0][0]) if rows else None


def record_evaluation(
    con: duckdb.DuckDBPyConnection, run_id: str, evaluation: dict[str, Any]
) -> None:
    """How the run evaluated itself: splits (kind, cutoff, users, events), plan, tuning used."""
    con.execute(read_sql("runs_evaluation.sql"),
                {"evaluation": json.dumps(evaluation, default=str), "run_id": run_id})
