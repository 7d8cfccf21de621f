"""Which days a backfill skips: only what it can read as published, never a guess."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from flows.backfill import published_as_of
from tasks.warehouse.connection import DatabaseUnusable, apply_schema


def test_no_database_or_no_runs_table_means_nothing_published(tmp_path: Path) -> None:
    assert published_as_of(str(tmp_path / "none.duckdb")) == set()
    duckdb.connect(str(tmp_path / "empty.duckdb")).close()
    assert published_as_of(str(tmp_path / "empty.duckdb")) == set()


def test_published_days_are_read_and_other_trouble_is_an_error(tmp_path: Path) -> None:
    db = tmp_path / "rf.duckdb"
    day = datetime(2024, 5, 1, 23, 59, tzinfo=UTC)
    with duckdb.connect(str(db)) as con:
        apply_schema(con)
        con.execute("INSERT INTO runs (run_id, status, as_of, started_at) VALUES "
                    "('a', 'published', ?, now()), ('b', 'failed', ?, now())",
                    [day, datetime(2024, 5, 2, tzinfo=UTC)])
    assert published_as_of(str(db)) == {day}
    garbage = tmp_path / "not-a-db.duckdb"
    garbage.write_text("not a database")
    with pytest.raises(DatabaseUnusable):  # not "nothing published": that reruns every day
        published_as_of(str(garbage))
