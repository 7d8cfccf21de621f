"""Ingest at scale: a big Parquet file is read, validated and staged a chunk at a time, with the
same outcome (rows, quarantine, keys, re-ingest) as in one go."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl
import pytest

from tasks.sources import contract
from tasks.sources.ingest import load_source, read_source
from tasks.warehouse import apply_schema, connect


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
