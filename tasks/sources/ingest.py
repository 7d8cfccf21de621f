"""Ingest a source folder into the warehouse's raw tables, idempotently.

`read_source` is pure (files -> validated frames); `load_source` writes them in one transaction,
so a file that is unusable as a whole stops the run before anything changes.

What a re-ingest does: a row whose key (event_id or the row's content for events; the id for
items and users; the (user, friend) pair for social) is stored with the same content changes
nothing; with new content the newest ingested row replaces the stored one and counts as
`updated`. A bad row already quarantined from the same file is not quarantined again.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa

from tasks.progress import expected_finish
from tasks.sources import contract
from tasks.sources.contract import (
    SIDE_TABLE_VALIDATORS,
    Validated,
    validate_events,
    validate_spilled,
)
from tasks.sources.files import (
    RawTable,
    SourceError,
    csv_chunks,
    find_table_files,
    parquet_chunks,
    parquet_rows,
    read_table_file,
    unrecognised_files,
)
from tasks.warehouse.connection import execute_script, read_sql

log = logging.getLogger(__name__)


@dataclass
class IngestReport:
    """What one ingest did, per table: rows read, added, updated (same key, new content) and
    quarantined (bad rows found in the file, including any quarantined by an earlier ingest)."""

    read: dict[str, int]
    added: dict[str, int]
    quarantined: dict[str, int]
    warnings: list[str]
    updated: dict[str, int] = field(default_factory=dict)

    def row_counts(self) -> dict[str, int]:
        """Per table: `<table>_read`, `_added`, `_quarantined` (the report's row counts)."""
        return ({f"{t}_read": n for t, n in self.read.items()}
                | {f"{t}_added": n for t, n in self.added.items()}
                | {f"{t}_quarantined": n for t, n in self.quarantined.items()})


#: Tables whose rows are validated one at a time (items are not: their embedding size is the
#: file's most common one), so a big Parquet file of them is read and validated in chunks.
STREAMED_TABLES = ("events", "users", "social")
#: A CSV file bigger than this is split by DuckDB into a temporary Parquet file and validated a
#: chunk at a time (a few million rows); smaller ones are read in one go.
STREAM_CSV_BYTES = 256 << 20


#: Told after each validated chunk of a big file: (table, rows so far, rows in the file; None
#: for a CSV, whose row count is known only at its end).
OnChunk = Callable[[str, int, int | None], None]


@dataclass
class ChunkProgress:
    """Rows validated so far of each big file, the rate and the expected finish: a log line.

    Make it when validation starts: a file's rate counts from then, or from the last line of
    the file read before it."""

    mark: float = field(default_factory=time.perf_counter)
    started: dict[str, float] = field(default_factory=dict)

    def line(self, table: str, done: int, total: int | None) -> str:
        now = time.perf_counter()
        elapsed = max(now - self.started.setdefault(table, self.mark), 1e-9)
        self.mark = now
        text = f"ingest: {table} {done:,}{f'/{total:,}' if total else ''} rows validated"
        text += f", {done / elapsed:,.0f} rows/s"
        if total:
            text += f", {expected_finish(done, total, elapsed)}"
        return text


def _counting(table: str, total: int | None, on_chunk: OnChunk | None) -> Callable[[int], None]:
    done = 0

    def add(rows: int) -> None:
        nonlocal done
        done += rows
        if on_chunk is not None:
            on_chunk(table, done, total)

    return add


def _validator(table: str, now: datetime | None) -> Callable[[RawTable], Validated]:
    if table == "events":
        return lambda raw: validate_events(raw, now)
    return SIDE_TABLE_VALIDATORS[table]


def _validate(
    table: str, path: Path, now: datetime | None, on_chunk: OnChunk | None = None
) -> Validated:
    try:
        validate = _validator(table, now)
        rows = (parquet_rows(path) if table in STREAMED_TABLES
                and path.suffix.lower() == ".parquet" else 0)
        if rows > contract.CHUNK_ROWS:
            return validate_spilled(parquet_chunks(path, contract.CHUNK_ROWS), validate,
                                    _counting(table, rows, on_chunk))
        big_csv = (
            table in STREAMED_TABLES
            and path.suffix.lower() == ".csv"
            and path.stat().st_size > STREAM_CSV_BYTES
        )
        chunks = csv_chunks(path, contract.CHUNK_ROWS) if big_csv else None
        if chunks is not None:
            return validate_spilled(chunks, validate, _counting(table, None, on_chunk))
        return validate(read_table_file(path))
    except SourceError:
        raise
    except Exception as exc:  # a bug, but retrying cannot help and the file must be named
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise SourceError(
            f"{path}: could not be validated ({type(exc).__name__}: {detail})"
        ) from exc


def read_source(
    source_dir: Path, now: datetime | None = None, on_chunk: OnChunk | None = None
) -> dict[str, Validated]:
    """Read and validate every table file of a source (SourceError: a file unusable as a whole).

    A file big enough to be read in chunks tells `on_chunk` after each one."""
    files = find_table_files(Path(source_dir))
    validated = {table: _validate(table, path, now, on_chunk) for table, path in files.items()}
    validated["events"].warnings[:0] = unrecognised_files(Path(source_dir), files)
    return validated


def _arrow_stream(frame: pl.DataFrame, rows: int = 500_000) -> pa.RecordBatchReader:
    """A frame for DuckDB to scan once, converted to Arrow a slice at a time (a whole copy of a
    5M-event frame is ~0.4 GB)."""
    schema = frame.slice(0, 0).to_arrow().schema

    def batches() -> Iterator[pa.RecordBatch]:
        for offset in range(0, frame.height, rows):
            yield from frame.slice(offset, rows).to_arrow().to_batches()

    return pa.RecordBatchReader.from_batches(schema, batches())


def _changes(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    return {change: int(n) for change, n in con.execute(read_sql("ingest_changes.sql")).fetchall()}


def load_source(
    con: duckdb.DuckDBPyConnection, validated: dict[str, Validated], run_id: str
) -> IngestReport:
    """Write validated tables and quarantined rows in one transaction."""
    report = IngestReport({}, {}, {}, [], {})
    execute_script(con, read_sql("ingest_memory.sql"))
    con.execute("BEGIN TRANSACTION")
    try:
        for table, v in validated.items():
            source_file = os.path.abspath(v.source_file)
            params: dict[str, object] = {
                "source_file": source_file,
                "run_id": run_id,
                "table_name": table,
            }
            # A spilled file goes through DuckDB's own Parquet reader, which streams it within
            # the ingest's memory limit.
            staged = (
                con.read_parquet(str(v.spill)) if v.spill is not None else _arrow_stream(v.good)
            )
            con.register(f"staged_{table}", staged)
            execute_script(con, read_sql(f"ingest_{table}.sql"), params)
            con.unregister(f"staged_{table}")
            changes = _changes(con)
            examples = (
                [k for (k,) in con.execute(read_sql("ingest_updated_examples.sql")).fetchall()]
                if changes.get("updated")
                else []
            )
            con.execute(read_sql("ingest_done.sql"))
            report.read[table] = v.read
            report.added[table] = changes.get("added", 0)
            report.updated[table] = changes.get("updated", 0)
            report.quarantined[table] = v.quarantine.height
            report.warnings.extend(v.warnings)
            repeated = v.good_rows - sum(changes.values())
            if repeated:
                report.warnings.append(
                    f"{v.source_file}: {repeated} row(s) share their key with a later row of the "
                    "file; the later row wins"
                )
            if report.updated[table]:
                report.warnings.append(
                    f"{v.source_file}: {report.updated[table]} {table} row(s) replace a stored row "
                    f"with the same key and new content (newest wins), e.g. {', '.join(examples)}"
                )
            if v.quarantine.height:
                con.register("staged_quarantine", v.quarantine.to_arrow())
                execute_script(con, read_sql("ingest_quarantine.sql"), params)
                con.unregister("staged_quarantine")
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    finally:
        execute_script(con, read_sql("ingest_memory_reset.sql"))
    report.warnings.extend(id_warnings(con))
    for warning in report.warnings:
        log.warning(warning)
    return report


#: Fewer events than this share naming an id the items (users) file knows is worth a warning:
#: usually ids written differently in the two files (`2` and `2.0`, padded, another case).
MATCH_SHARE_WARNING = 0.5


def id_warnings(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Warnings about ids across the whole warehouse (not only this ingest's files): events
    whose ids mostly miss the items or users file, and ids that differ only by Unicode
    normalisation. Ids are never rewritten: they are keys of other systems."""
    warnings = []
    row = con.execute(read_sql("ingest_id_matches.sql")).fetchone()
    assert row is not None
    (events, items, users, with_item, with_user, lost_item, lost_user, an_item, a_user,
     events_file, items_file, users_file) = row
    for side, article, known, matched, lost, example, file in (
        ("item", "an", items, with_item, lost_item, an_item, items_file),
        ("user", "a", users, with_user, lost_user, a_user, users_file),
    ):
        if events and known and matched < MATCH_SHARE_WARNING * events:
            warnings.append(
                f"only {matched / events:.1%} of the events ({events_file}) name {article} {side} "
                f"that {file} knows (below {MATCH_SHARE_WARNING:.0%}): e.g. {side}_id {lost!r} is "
                f"not there, whose {side} ids look like {example!r}; are the ids written the "
                "same way in both files?"
            )
    for kind, groups, first, second in con.execute(
        read_sql("ingest_id_normalisation.sql")
    ).fetchall():
        warnings.append(
            f"{groups} {kind} id(s) differ from another only by Unicode normalisation, e.g. "
            f"{ascii(first)} and {ascii(second)} (NFC and NFD spellings): they stay two {kind}s; "
            "write ids in one normal form (NFC) at the source"
        )
    return warnings
