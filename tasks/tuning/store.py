"""The `tuning_results` table: what the tune flow found, and what the nightly reads back."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import duckdb

from tasks.tuning.search import TuningResult
from tasks.warehouse.connection import apply_schema, read_sql


def save_results(
    con: duckdb.DuckDBPyConnection,
    results: dict[str, TuningResult],
    source: str | None,
    fingerprint: str,
    protocol: dict[str, Any],
    flow_run_id: str | None = None,
) -> str:
    """One row per tuned modality, under one new tuning id (returned)."""
    apply_schema(con)
    tuning_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
    now = datetime.now(UTC)
    for r in results.values():
        con.execute(read_sql("tuning_insert.sql"), {
            "tuning_id": tuning_id, "modality": r.modality, "tuned_at": now, "source": source,
            "fingerprint": fingerprint, "parameters": json.dumps(r.update),
            "validation_ndcg": r.validation_ndcg, "default_ndcg": r.default_ndcg,
            "n_trials": r.n_trials, "seconds": r.seconds,
            "protocol": json.dumps(protocol, default=str), "flow_run_id": flow_run_id,
        })
    return tuning_id


def latest_results(
    con: duckdb.DuckDBPyConnection, source: str | None
) -> dict[str, dict[str, Any]]:
    """modality -> {update, tuning_id, validation_ndcg, default_ndcg} of the latest useful row.

    Read-only: a database from before the tune flow existed has no such table, hence nothing.
    """
    exists = con.execute(read_sql("tuning_table_exists.sql")).fetchall()[0][0]
    if not exists:
        return {}
    rows = con.execute(read_sql("tuning_latest.sql"), {"source": source}).fetchall()
    return {
        str(m): {"update": json.loads(p) if isinstance(p, str) else p, "tuning_id": str(t),
                 "validation_ndcg": float(v), "default_ndcg": float(d)}
        for m, p, t, v, d, _ in rows
    }
