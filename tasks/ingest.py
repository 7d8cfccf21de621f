"""Ingest a source folder into the warehouse's raw tables, idempotently.

`read_source` is pure (files -> validated frames); `load_source` writes them in one transaction,
so a file that is unusable as a whole stops the run before anything changes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl

from tasks.contract import SIDE_TABLE_VALIDATORS, Validated, validate_events
from tasks.source_files import find_table_files, read_table_file
from tasks.warehouse import execute_script, read_sql

log = logging.getLogger(__name__)

DEDUP_KEYS = {"items": ["item_id"], "users": ["user_id"], "social": ["user_id", "friend_id"]}


@dataclass
class IngestReport:
    """What one ingest did, per table: rows read, rows added, rows quarantined."""

    read: dict[str, int]
    added: dict[str, int]
    quarantined: dict[str, int]
    warnings: list[str]


def read_source(source_dir: Path, now: datetime | None = None) -> dict[str, Validated]:
    """Read and validate every table file of a source (SourceError: a file unusable as a whole)."""
    validated: dict[str, Validated] = {}
    for table, path in find_table_files(Path(source_dir)).items():
        frame = read_table_file(path)
        if table == "events":
            validated[table] = validate_events(frame, path, now)
        else:
            validated[table] = SIDE_TABLE_VALIDATORS[table](frame, path)
    return validated


def _count(con: duckdb.DuckDBPyConnection, table: str) -> int:
    return int(con.execute(f"SELECT count(*) FROM raw.{table}").fetchall()[0][0])


def load_source(
    con: duckdb.DuckDBPyConnection, validated: dict[str, Validated], run_id: str
) -> IngestReport:
    """Write validated tables and quarantined rows in one transaction."""
    report = IngestReport({}, {}, {}, [])
    now = datetime.now(UTC)
    con.execute("BEGIN TRANSACTION")
    try:
        for table, v in validated.items():
            good = v.good
            if table in DEDUP_KEYS:  # within one file, the last row for a key wins
                good = good.unique(subset=DEDUP_KEYS[table], keep="last", maintain_order=True)
            before = _count(con, table)
            con.register(f"staged_{table}", good.to_arrow())
            execute_script(
                con,
                read_sql(f"ingest_{table}.sql"),
                {"source_file": v.source_file, "run_id": run_id},
            )
            con.unregister(f"staged_{table}")
            report.read[table] = v.good.height + v.quarantine.height
            report.added[table] = _count(con, table) - before
            report.quarantined[table] = v.quarantine.height
            report.warnings.extend(v.warnings)
            if v.quarantine.height:
                q = v.quarantine.with_columns(
                    pl.lit(run_id).alias("run_id"),
                    pl.lit(table).alias("table_name"),
                    pl.lit(v.source_file).alias("source_file"),
                    pl.lit(now).alias("quarantined_at"),
                )
                con.register("staged_quarantine", q.to_arrow())
                con.execute(
                    "INSERT INTO raw.quarantine SELECT run_id, table_name, source_file, "
                    "row_number, "
                    "reason, CAST(row_data AS JSON), quarantined_at FROM staged_quarantine"
                )
                con.unregister("staged_quarantine")
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    for warning in report.warnings:
        log.warning(warning)
    return report
