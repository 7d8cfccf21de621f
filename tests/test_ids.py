"""Ids match across files: a whole-number float id is that integer's id; anything else stays
byte-exact, and ingest says in one line when ids look written differently across files."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import duckdb
import polars as pl
import pytest

from flows.cli import main
from tasks.sources.ingest import MATCH_SHARE_WARNING
from tasks.warehouse.analyst_copy import warehouse_path

T0 = datetime(2026, 1, 1)


def events(users: list[object], items: list[object]) -> pl.DataFrame:
    return pl.DataFrame({"user_id": users, "item_id": items, "event_type": ["view"] * len(users),
                         "ts": [T0] * len(users)})


def ingest(folder: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, list[str]]:
    db = folder.parent / f"{folder.name}.duckdb"
    assert main(["ingest", "--source", str(folder), "--db", str(db)]) == 0
    warnings = [x for x in capsys.readouterr().err.splitlines() if x.startswith("recfusion: ")]
    return db, warnings


def rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    with duckdb.connect(str(warehouse_path(db)), read_only=True) as con:
        return con.execute(sql).fetchall()


def test_float_ids_that_are_whole_numbers_match_integer_ids_in_other_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """The finding: events with integer ids (Parquet) and items whose ids are floats (2.0)
    ingested with exit 0 and 0 of 2,000 events matched an item."""
    folder = tmp_path / "typed"
    folder.mkdir()
    events([i % 100 for i in range(2000)], [i % 50 for i in range(2000)]).write_parquet(
        folder / "events.parquet")
    pl.DataFrame({"item_id": [float(i) for i in range(50)] + [2.5, float("nan")],
                  "title": [f"t{i}" for i in range(52)]}).write_parquet(folder / "items.parquet")
    (folder / "users.jsonl").write_text("\n".join(json.dumps({"user_id": float(u)})
                                                  for u in range(100)))
    db, warnings = ingest(folder, capsys)
    assert rows(db, "SELECT count(*) FROM raw.events WHERE item_id IN "
                    "(SELECT item_id FROM raw.items)") == [(100,)]  # every distinct event
    assert rows(db, "SELECT count(*) FROM raw.events WHERE user_id IN "
                    "(SELECT user_id FROM raw.users)") == [(100,)]
    ids = {r[0] for r in rows(db, "SELECT item_id FROM raw.items")}
    assert {"0", "2", "49", "2.5"} <= ids and "2.0" not in ids  # whole floats as integers only
    assert rows(db, "SELECT reason FROM raw.quarantine") == [("item_id: missing",)]  # NaN
    assert not [w for w in warnings if "name an item" in w or "name a user" in w]


def test_ids_that_do_not_match_across_files_are_told_naming_both_files_share_and_example(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    folder = tmp_path / "mismatch"
    folder.mkdir()
    events([f"u{i % 10}" for i in range(40)], [f"{i % 8:03d}" for i in range(40)]).write_csv(
        folder / "events.csv")
    pl.DataFrame({"item_id": [str(i) for i in range(8)]}).write_csv(folder / "items.csv")
    _, warnings = ingest(folder, capsys)
    [line] = [w for w in warnings if "name an item" in w]
    assert line.startswith(
        f"recfusion: warning: only 0.0% of the events ({folder / 'events.csv'}) name an item "
        f"that {folder / 'items.csv'} knows (below {MATCH_SHARE_WARNING:.0%}): e.g. item_id "
        "'000' is not there, whose item ids look like '0'"
    )
    assert rows(tmp_path / "mismatch.duckdb", "SELECT count(*) FROM raw.items") == [(8,)]  # kept


def test_ids_that_differ_only_by_unicode_normalisation_stay_apart_and_are_told(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    folder = tmp_path / "unicode"
    folder.mkdir()
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    events(["u1", "u2", "u3"], [nfc, nfd, "plain"]).write_parquet(folder / "events.parquet")
    db, warnings = ingest(folder, capsys)
    assert sorted(r[0] for r in rows(db, "SELECT DISTINCT item_id FROM raw.events")) == sorted(
        [nfc, nfd, "plain"])  # byte-exact: keys of other systems
    [line] = [w for w in warnings if "Unicode normalisation" in w]
    assert "1 item id(s)" in line and ascii(nfc) in line and ascii(nfd) in line
