"""Ingest: contract validation, quarantine with reasons, idempotency, whole-file errors."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import polars as pl
import pytest

from tasks.sources.files import SourceError
from tasks.sources.ingest import load_source, read_source
from tasks.warehouse.connection import apply_schema, connect

EVENTS_CSV = """user_id,item_id,event_type,ts,value,colour
u1,i1,view,2024-01-01T00:00:00Z,1,red
u1,i2,like,2024-01-02 10:00:00,2.5,red
,i3,view,2024-01-02,1,red
u2,i1,purchase,notadate,1,red
u2,i2,view,2024-01-03,abc,red
u3,i3,click,2024-01-04T00:00:00+02:00,,red
u3,,click,2024-01-04,inf,red
"""


def _counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    return {
        t: con.execute(f"SELECT count(*) FROM raw.{t}").fetchall()[0][0]
        for t in ("events", "items", "users", "social", "quarantine")
    }


@pytest.fixture
def csv_source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "events.csv").write_text(EVENTS_CSV)
    return src


def test_bad_rows_are_quarantined_with_reasons_and_good_rows_land(csv_source: Path, tmp_path: Path):
    db = tmp_path / "w.duckdb"
    with connect(db) as con:
        apply_schema(con)
        report = load_source(con, read_source(csv_source), "run-1")
        events = con.execute(
            "SELECT user_id, item_id, event_type, value, "
            "epoch(ts)::BIGINT FROM raw.events ORDER BY ts"
        ).fetchall()
        quarantine = con.execute(
            "SELECT row_number, reason, row_data FROM raw.quarantine ORDER BY row_number"
        ).fetchall()
    assert report.added["events"] == 3 and report.quarantined["events"] == 4
    assert events == [
        ("u1", "i1", "view", 1.0, 1704067200),
        ("u1", "i2", "like", 2.5, 1704189600),
        ("u3", "i3", "click", 1.0, 1704319200),  # +02:00 offset converted to UTC; empty value -> 1
    ]
    assert [(r[0], r[1]) for r in quarantine] == [
        (3, "user_id: missing"),
        (4, "ts: unparseable 'notadate'"),
        (5, "value: not a number 'abc'"),
        (7, "item_id: missing; value: not finite 'inf'"),
    ]
    assert json.loads(quarantine[1][2])["user_id"] == "u2"  # the original row is kept whole
    assert any("colour" in w for w in report.warnings)  # unknown column ignored with a warning


def test_reingest_is_idempotent(csv_source: Path, tmp_path: Path):
    db = tmp_path / "w.duckdb"
    with connect(db) as con:
        apply_schema(con)
        load_source(con, read_source(csv_source), "run-1")
        before = _counts(con)
        report = load_source(con, read_source(csv_source), "run-2")
        after = _counts(con)
    assert report.added == {"events": 0} and report.updated == {"events": 0}
    assert after == before  # the quarantine too: a bad row is quarantined once


def test_event_id_is_the_dedup_key(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    frame = pl.DataFrame(
        {
            "event_id": ["e1", "e1", "e2"],
            "user_id": ["a", "a", "a"],
            "item_id": ["x", "x", "x"],
            "event_type": ["view"] * 3,
            "ts": ["2024-01-01", "2024-01-01", "2024-01-01"],
        }
    )
    frame.write_ndjson(src / "events.jsonl")
    with connect(tmp_path / "w.duckdb") as con:
        apply_schema(con)
        load_source(con, read_source(src), "r")
        assert con.execute("SELECT count(*) FROM raw.events").fetchall()[0][0] == 2


def test_missing_required_column_names_file_and_column(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    pl.DataFrame({"item_id": ["i"], "event_type": ["view"], "ts": ["2024-01-01"]}).write_parquet(
        src / "events.parquet"
    )
    with pytest.raises(SourceError) as err:
        read_source(src)
    assert "events.parquet" in str(err.value) and "'user_id'" in str(err.value)


def test_missing_events_file_and_unreadable_file(tmp_path: Path):
    with pytest.raises(SourceError, match="no events file"):
        read_source(tmp_path)
    (tmp_path / "events.parquet").write_text("this is not parquet")
    with pytest.raises(SourceError, match=r"events\.parquet: cannot be read as parquet"):
        read_source(tmp_path)


def test_side_tables_are_normalised_and_upserted(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "events.csv").write_text("user_id,item_id,event_type,ts\nu1,i1,view,2024-01-01\n")
    (src / "items.csv").write_text(
        "item_id,title,tags,embedding\n"
        'i1,One,rock| indie ,"[0.1, 0.2]"\n'
        'i2,Two,pop,"[0.3]"\n'
        'i3,Three,,"not json"\n'
        'i4,Four,jazz,"[0.5, 0.6]"\n'
    )
    (src / "social.csv").write_text("user_id,friend_id,weight\nu1,u2,0.5\nu2,u2,1\nu2,u1,x\n")
    with connect(tmp_path / "w.duckdb") as con:
        apply_schema(con)
        report = load_source(con, read_source(src), "r")
        items = con.execute(
            "SELECT item_id, tags, embedding FROM raw.items ORDER BY item_id"
        ).fetchall()
        reasons = con.execute(
            "SELECT table_name, reason FROM raw.quarantine ORDER BY table_name, row_number"
        ).fetchall()
        social = con.execute("SELECT user_id, friend_id, weight FROM raw.social").fetchall()
        (src / "items.csv").write_text("item_id,title\ni1,One again\n")
        load_source(con, read_source(src), "r2")
        titles = con.execute("SELECT item_id, title FROM raw.items ORDER BY item_id").fetchall()
    assert report.quarantined == {"events": 0, "items": 2, "social": 2}
    assert items[0][0] == "i1" and items[0][1] == ["rock", "indie"]
    assert items[0][2] == pytest.approx([0.1, 0.2])
    assert reasons == [
        ("items", "embedding: 1 dims, expected 2"),
        ("items", "embedding: not a list of numbers"),
        ("social", "friend_id: same as user_id"),
        ("social", "weight: not a number 'x'"),
    ]
    assert social == [("u1", "u2", 0.5)]
    assert titles == [
        ("i1", "One again"),
        ("i4", "Four"),
    ]  # upsert: the newer file wins, nothing duplicated


def test_validating_in_chunks_gives_the_same_outcome(tmp_path: Path, monkeypatch):
    from tasks.sources import contract

    src = tmp_path / "src"
    src.mkdir()
    rows = [f"e{i % 7},u{i % 5},i{i},view,2024-01-{1 + i % 28:02d},{i}" for i in range(30)]
    rows[3] = "e3,,i3,view,2024-01-04,1"  # bad rows in several slices
    rows[17] = "e17,u2,i17,view,never,1"
    rows[29] = "e29,u4,i29,view,2024-01-02,lots"
    (src / "events.csv").write_text(
        "event_id,user_id,item_id,event_type,ts,value\n" + "\n".join(rows)
    )
    (src / "social.csv").write_text(
        "user_id,friend_id,weight\n" + "\n".join(f"u{i},u{i + 1},{i - 3}" for i in range(10))
    )
    whole = read_source(src)
    monkeypatch.setattr(contract, "CHUNK_ROWS", 4)
    sliced = read_source(src)
    for table in ("events", "social"):
        assert sliced[table].good.equals(whole[table].good)
        assert sliced[table].quarantine.equals(whole[table].quarantine)
        assert sliced[table].warnings == whole[table].warnings
    assert whole["events"].quarantine["row_number"].to_list() == [4, 18, 30]
    assert whole["social"].quarantine["row_number"].to_list() == [1, 2, 3]


def test_an_empty_or_all_broken_jsonl_file_is_not_a_missing_column(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "events.jsonl").write_text("")
    (src / "items.jsonl").write_text('{"item_id": \n[1]\n')
    validated = read_source(src)
    assert validated["events"].good.height == 0 and validated["events"].quarantine.height == 0
    assert validated["items"].quarantine.select("row_number", "reason").rows() == [
        (1, "row: not valid JSON (a truncated or malformed line)"),
        (2, "row: a JSON list, not an object"),
    ]


def test_files_that_look_like_a_table_but_are_not_read_are_reported(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "events.csv").write_text("user_id,item_id,event_type,ts\nu1,i1,view,2024-01-01\n")
    (src / "Items.CSV").write_text("item_id\ni1\n")
    (src / "users.json").write_text('{"user_id": "u1"}\n')
    (src / "notes.txt").write_text("not a table\n")
    warnings = read_source(src)["events"].warnings
    assert [w.split(":")[0] for w in warnings] == [str(src / "Items.CSV"), str(src / "users.json")]


def test_a_stray_quote_or_an_overlong_csv_row_costs_that_row_only(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "events.csv").write_text(
        "user_id,item_id,event_type,ts\n"
        "u1,i1,view,2024-01-01\n"
        'u2,"i2"x,view,2024-01-01\n'
        f"u3,{'i' * 2_100_000},view,2024-01-01\n"
        "u4,i4,view,2024-01-01\n"
    )
    with connect(tmp_path / "w.duckdb") as con:
        apply_schema(con)
        report = load_source(con, read_source(src), "r")
        users = con.execute("SELECT user_id FROM raw.events ORDER BY 1").fetchall()
        quarantined = con.execute(
            "SELECT row_number, reason, length(row_data->>'_raw') FROM raw.quarantine ORDER BY 1"
        ).fetchall()
    assert report.added["events"] == 2 and users == [("u1",), ("u4",)]
    assert [(n, reason.split(" (")[0]) for n, reason, _ in quarantined] == [
        (2, "item_id: bad quoting"),
        (3, "row: longer than the 2,000,000-byte limit of a CSV row"),
    ]
    assert quarantined[1][2] > 2_000_000  # the whole row is kept
