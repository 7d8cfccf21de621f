"""Ingest at scale: a big Parquet file is read, validated and staged a chunk at a time, with the
same outcome (rows, quarantine, keys, re-ingest) as in one go."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from unittest import mock

import duckdb
import polars as pl
import pytest
import test_ingest_properties as props
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.sources import contract, ingest
from tasks.sources.ingest import load_source, read_source
from tasks.warehouse.connection import apply_schema, connect


def _source(tmp_path: Path) -> Path:
    """Events and social in Parquet, bad rows and repeated keys spread over several chunks."""
    src = tmp_path / "src"
    src.mkdir()
    n = 23
    ts = [datetime(2024, 1, 1 + i % 28, tzinfo=UTC) for i in range(n)]
    events = pl.DataFrame(
        {
            "event_id": [f"e{i % 19}" for i in range(n)],  # e0..e3 twice: the later row wins
            "user_id": [None if i in (2, 13) else f"u{i % 5}" for i in range(n)],
            "item_id": [f"i{i % 7}" for i in range(n)],
            "event_type": ["view"] * n,
            "ts": [None if i == 21 else t for i, t in enumerate(ts)],
            "value": [float("inf") if i == 8 else float(i) for i in range(n)],
        }
    )
    events.write_parquet(src / "events.parquet")
    social = pl.DataFrame(
        {"user_id": [f"u{i}" for i in range(9)], "friend_id": [f"u{(i * 2) % 9}" for i in range(9)]}
    )
    social.write_parquet(src / "social.parquet")
    return src


def _ingest(src: Path, db: Path) -> tuple[dict[str, list[tuple[object, ...]]], dict[str, int]]:
    with connect(db) as con:
        apply_schema(con)
        report = load_source(con, read_source(src), "run-1")
        again = load_source(con, read_source(src), "run-2")
        tables = {
            "events": con.execute(
                "SELECT event_key, user_id, item_id, value, ts FROM raw.events ORDER BY event_key"
            ).fetchall(),
            "social": con.execute(
                "SELECT user_id, friend_id, weight FROM raw.social ORDER BY ALL"
            ).fetchall(),
            "quarantine": con.execute(
                "SELECT table_name, row_number, reason, CAST(row_data AS VARCHAR) "
                "FROM raw.quarantine ORDER BY ALL"
            ).fetchall(),
        }
    assert sum(again.added.values()) == 0 and sum(again.updated.values()) == 0
    counts = {f"{t}_{k}": n for k, d in (("read", report.read), ("added", report.added),
                                        ("quarantined", report.quarantined))
              for t, n in d.items()}
    return tables, counts


def test_a_big_parquet_file_is_validated_in_chunks_and_spilled_not_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _source(tmp_path)
    whole, whole_counts = _ingest(src, tmp_path / "whole.duckdb")
    whole_validated = read_source(src)

    monkeypatch.setattr(contract, "CHUNK_ROWS", 5)
    validated = read_source(src)
    events = validated["events"]
    # The good rows are on disk, not in memory, and are exactly those of one go.
    assert events.spill is not None and events.good.height == 0
    assert events.good_rows == whole_validated["events"].good.height == 19
    assert events.good_frame().equals(whole_validated["events"].good)
    assert events.quarantine.equals(whole_validated["events"].quarantine)
    assert events.quarantine["row_number"].to_list() == [3, 9, 14, 22]
    assert validated["social"].good_frame().equals(whole_validated["social"].good)

    chunked, chunked_counts = _ingest(src, tmp_path / "chunked.duckdb")
    assert chunked == whole
    assert chunked_counts == whole_counts
    assert whole_counts["events_added"] == 16  # 19 good rows, 3 keys repeated: the later wins


def test_spilled_rows_are_removed_with_their_validation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(contract, "CHUNK_ROWS", 5)
    validated = read_source(_source(tmp_path))
    spill = validated["events"].spill
    assert spill is not None and spill.exists()
    del validated
    assert not spill.exists()


def test_a_file_that_breaks_mid_way_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunked file unusable as a whole (here: a list column) stops before any write."""
    src = _source(tmp_path)
    pl.DataFrame({"user_id": ["u1"] * 12, "friend_id": [["u2"]] * 12}).write_parquet(
        src / "social.parquet"
    )
    monkeypatch.setattr(contract, "CHUNK_ROWS", 5)
    db = tmp_path / "w.duckdb"
    with connect(db) as con:
        apply_schema(con)
    with pytest.raises(contract.SourceError, match="social.parquet: column 'friend_id' holds"):
        read_source(src)
    con2 = duckdb.connect(str(db), read_only=True)
    assert con2.execute("SELECT count(*) FROM raw.events").fetchone() == (0,)
    con2.close()


def test_a_killed_ingests_spill_is_removed_by_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL skips the temporary folder's cleanup; the next chunked ingest removes it."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = tmp_path / f"{contract.SPILL_PREFIX}{dead.stdout.strip()}-abc"
    stale.mkdir()
    (stale / "good.parquet").write_bytes(b"x")
    live = tmp_path / f"{contract.SPILL_PREFIX}{os.getpid()}-def"
    live.mkdir()
    monkeypatch.setattr(contract, "CHUNK_ROWS", 5)
    validated = read_source(_source(tmp_path))
    assert not stale.exists() and live.exists()
    assert validated["events"].spill is not None
    assert validated["events"].spill.parent.parent == tmp_path


# --- the ingest invariant, streamed -----------------------------------------------------------
# The property tests' invariant (every good row lands once, every bad row is quarantined once at
# its file and row with its reason, re-ingest changes nothing), with every CSV and Parquet file of
# events, users and social read in chunks of 2 rows: the chunked path keeps the same guarantees.

STREAMED_EXAMPLES = max(4, props.TOTAL_EXAMPLES // 4)


@pytest.fixture(scope="module")
def seeded_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """As the property tests': a warehouse already holding another source's rows."""
    folder = tmp_path_factory.mktemp("seed")
    for name, text in props.SEED.items():
        (folder / name).write_text(text)
    db = folder / "seed.duckdb"
    with connect(db) as con:
        apply_schema(con)
        load_source(con, read_source(folder), "seed")
    return db


@contextmanager
def _streamed() -> Iterator[None]:
    with (
        mock.patch.object(contract, "CHUNK_ROWS", 2),
        mock.patch.object(ingest, "STREAM_CSV_BYTES", 0),
    ):
        yield


def _streamed_settings() -> settings:
    return settings(
        max_examples=STREAMED_EXAMPLES,
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@_streamed_settings()
@given(case=props.events_case(), newline=st.sampled_from(["\n", "\r\n"]))
def test_streamed_events_keep_the_ingest_invariant(
    seeded_db: Path, case: props.Case, newline: str
) -> None:
    case.newline = newline
    with _streamed():
        props.check_invariant(case, seeded_db, props._events_stored)


@_streamed_settings()
@given(case=props.social_case(), newline=st.sampled_from(["\n", "\r\n"]))
def test_streamed_social_keeps_the_ingest_invariant(
    seeded_db: Path, case: props.Case, newline: str
) -> None:
    case.newline = newline
    with _streamed():
        props.check_invariant(case, seeded_db, props._social_stored)


@_streamed_settings()
@given(case=props.users_case())
def test_streamed_users_keep_the_ingest_invariant(seeded_db: Path, case: props.Case) -> None:
    with _streamed():
        props.check_invariant(case, seeded_db, props._users_stored)


def test_a_big_csv_is_split_by_duckdb_and_read_in_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ragged rows, a quoted value over two lines and Latin-1 text, over several chunks."""
    src = tmp_path / "src"
    src.mkdir()
    rows = [f"e{i},u{i % 3},i{i},view,2024-01-{1 + i % 28:02d},{i}" for i in range(12)]
    rows[2] = "e2,u2,i2,view"  # too few fields
    rows[5] = 'e5,u5,"i5\nsecond line",view,2024-01-06,5'  # one row over two lines
    rows[7] = "e7,u7,i7,view,2024-01-08,7,extra"  # too many fields
    rows[9] = "e9,ü9,i9,view,2024-01-10,9"
    text = "event_id,user_id,item_id,event_type,ts,value\n" + "\n".join(rows) + "\n"
    (src / "events.csv").write_bytes(text.encode("latin-1"))
    whole = read_source(src)
    monkeypatch.setattr(contract, "CHUNK_ROWS", 3)
    monkeypatch.setattr(ingest, "STREAM_CSV_BYTES", 0)
    streamed = read_source(src)
    events = streamed["events"]
    assert events.spill is not None and events.good.height == 0
    assert events.good_frame().equals(whole["events"].good)
    assert events.quarantine.equals(whole["events"].quarantine)
    assert events.warnings == whole["events"].warnings
    assert events.quarantine["row_number"].to_list() == [3, 8]
    assert events.good_frame()["source_row"].to_list() == [1, 2, 4, 5, 6, 7, 9, 10, 11, 12]
    assert "ü9" in events.good_frame()["user_id"].to_list()


def test_a_big_file_reports_each_chunk_with_rows_done_of_all_and_an_expected_finish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Progress for a long ingest: 50M events validate for minutes, in 1M-row chunks."""
    from tasks.sources.ingest import ChunkProgress

    src = _source(tmp_path)
    monkeypatch.setattr(contract, "CHUNK_ROWS", 5)
    told: list[tuple[str, int, int | None]] = []
    read_source(src, on_chunk=lambda table, done, total: told.append((table, done, total)))
    events = [(done, total) for table, done, total in told if table == "events"]
    assert events == [(5, 23), (10, 23), (15, 23), (20, 23), (23, 23)]  # bad rows count too
    assert all(total is not None for _, _, total in told)

    progress = ChunkProgress()
    line = progress.line("events", 3_000_000, 5_000_000)
    assert line.startswith("ingest: events 3,000,000/5,000,000 rows validated, ")
    assert re.search(r"rows/s, expected finish \d\d:\d\d:\d\d UTC \(in \d+s\)$", line), line
    assert "expected finish" not in progress.line("events", 7, None)  # a CSV: no total
