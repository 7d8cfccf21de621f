"""The tester's ingest findings ("Nothing lost, ever": 3, 4 and part of 8), one test each.

Real files in every format, real DuckDB files; the folder test runs a real nightly flow in a
subprocess against the session's Prefect test server.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest

from tasks.sources.files import SourceError
from tasks.sources.ingest import IngestReport, load_source, read_source
from tasks.warehouse.connection import apply_schema, connect

REPO = Path(__file__).resolve().parents[1]
EVENTS_CSV = "user_id,item_id,event_type,ts\nu1,i1,view,2024-01-01\n"


def _source(tmp_path: Path, files: dict[str, str | bytes]) -> Path:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    for name, content in {"events.csv": EVENTS_CSV, **files}.items():
        if isinstance(content, bytes):
            (src / name).write_bytes(content)
        else:
            (src / name).write_text(content, encoding="utf-8")
    return src


def _ingest(src: Path, db: Path, run_id: str = "r1") -> IngestReport:
    with connect(db) as con:
        apply_schema(con)
        return load_source(con, read_source(src), run_id)


def _rows(db: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql).fetchall()


def _quarantine(db: Path) -> list[tuple]:
    return _rows(db, "SELECT table_name, row_number, reason FROM raw.quarantine ORDER BY ALL")


# --- finding 3: one bad row blocks a whole source ----------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_list_columns_and_one_bad_row_quarantine_that_row_only(
    small_source: Path, tmp_path: Path, fmt: str
):
    items = pl.read_parquet(small_source / "items.parquet").head(20)
    assert isinstance(items.schema["tags"], pl.List)  # the demo's own list columns
    bad = items.with_columns(
        pl.when(pl.int_range(pl.len()) == 2)
        .then(None)
        .otherwise(pl.col("item_id"))
        .alias("item_id")
    )
    src = _source(tmp_path, {})
    if fmt == "parquet":
        bad.write_parquet(src / "items.parquet")
    else:
        bad.write_ndjson(src / "items.jsonl")
    report = _ingest(src, tmp_path / "w.duckdb")
    assert report.added["items"] == 19 and report.quarantined["items"] == 1
    assert _quarantine(tmp_path / "w.duckdb") == [("items", 3, "item_id: missing")]
    (row_data,) = _rows(tmp_path / "w.duckdb", "SELECT row_data FROM raw.quarantine")[0]
    assert json.loads(row_data)["title"] == items["title"][2]  # the original row, as JSON
    stored = dict(_rows(tmp_path / "w.duckdb", "SELECT item_id, tags FROM raw.items"))
    expected = items.filter(pl.int_range(pl.len()) != 2)
    assert stored == dict(zip(expected["item_id"], expected["tags"].to_list(), strict=True))


def test_users_with_list_and_struct_attributes_all_land(tmp_path: Path):
    src = _source(tmp_path, {})
    pl.DataFrame(
        {
            "user_id": ["u1", "u2"],
            "hobbies": [["chess", "go"], []],
            "address": [{"city": "Köln", "zip": 50667}, None],
            "score": [1.5, float("nan")],
        }
    ).write_parquet(src / "users.parquet")
    report = _ingest(src, tmp_path / "w.duckdb")
    assert report.added["users"] == 2 and report.quarantined["users"] == 0
    attributes = dict(_rows(tmp_path / "w.duckdb", "SELECT user_id, attributes FROM raw.users"))
    assert json.loads(attributes["u1"]) == {
        "hobbies": ["chess", "go"],
        "address": {"city": "Köln", "zip": 50667},
        "score": 1.5,
    }
    assert json.loads(attributes["u2"]) == {"hobbies": [], "address": None, "score": "NaN"}


def test_non_finite_csv_embeddings_are_quarantined_naming_the_column(tmp_path: Path):
    src = _source(
        tmp_path,
        {
            "items.csv": "item_id,embedding\n"
            'a,"[0.1, 0.2]"\n'
            'b,"[NaN, 0.2]"\n'
            'c,"[Infinity, 1]"\n'
            'd,"[1e999, 1]"\n'
            'e,"[0.5, -0.5]"\n'
        },
    )
    report = _ingest(src, tmp_path / "w.duckdb")
    assert report.added["items"] == 2
    assert _quarantine(tmp_path / "w.duckdb") == [
        ("items", n, "embedding: non-finite values") for n in (2, 3, 4)
    ]
    stored = _rows(tmp_path / "w.duckdb", "SELECT item_id, embedding FROM raw.items ORDER BY 1")
    assert [r[0] for r in stored] == ["a", "e"]
    assert stored[1][1] == pytest.approx([0.5, -0.5])


def test_one_ragged_csv_row_is_quarantined_and_the_rest_land(tmp_path: Path):
    src = _source(
        tmp_path,
        {
            "events.csv": "user_id,item_id,event_type,ts\n"
            "u1,i1,view,2024-01-01\n"
            "u2,i1,view,2024-01-01,extra\n"
            "u3,i2,view\n"
            "u4,i2,view,2024-01-02\n"
        },
    )
    report = _ingest(src, tmp_path / "w.duckdb")
    assert report.read["events"] == 4 and report.added["events"] == 2
    assert _quarantine(tmp_path / "w.duckdb") == [
        ("events", 2, "row: 5 fields, the header has 4"),
        ("events", 3, "ts: no field (the row has 3 of 4 fields)"),
    ]
    raw_lines = _rows(
        tmp_path / "w.duckdb", "SELECT row_data->>'_raw' FROM raw.quarantine ORDER BY row_number"
    )
    assert raw_lines == [("u2,i1,view,2024-01-01,extra",), ("u3,i2,view",)]
    assert _rows(tmp_path / "w.duckdb", "SELECT user_id FROM raw.events ORDER BY 1") == [
        ("u1",),
        ("u4",),
    ]


def test_one_truncated_jsonl_line_is_quarantined_and_the_rest_land(tmp_path: Path):
    src = _source(tmp_path, {})
    (src / "events.csv").unlink()
    (src / "events.jsonl").write_text(
        '{"user_id": "u1", "item_id": "i1", "event_type": "view", "ts": "2024-01-01"}\n'
        '{"user_id": "u2", "item_id": "i1", "ev\n'
        '{"user_id": "u3", "item_id": "i2", "event_type": "view", "ts": 1704067200}\n'
    )
    report = _ingest(src, tmp_path / "w.duckdb")
    assert report.added["events"] == 2
    assert _quarantine(tmp_path / "w.duckdb") == [
        ("events", 2, "row: not valid JSON (a truncated or malformed line)")
    ]
    assert _rows(tmp_path / "w.duckdb", "SELECT user_id FROM raw.events ORDER BY 1") == [
        ("u1",),
        ("u3",),
    ]


def test_a_huge_finite_value_under_raw_weighting_keeps_the_event_and_the_run_publishes(
    prefect_harness: None, small_source: Path, tmp_path: Path
):
    from support import run_nightly

    from tasks.config import RunParameters
    from tasks.data.snapshot import load_snapshot
    from tasks.recommend import dataset_from

    src = tmp_path / "huge"
    shutil.copytree(small_source, src)
    events = pl.read_parquet(src / "events.parquet")
    events.with_columns(
        pl.when(pl.int_range(pl.len()) == 5).then(1e308).otherwise(pl.col("value")).alias("value")
    ).write_parquet(src / "events.parquet")
    social = pl.read_parquet(src / "social.parquet")
    social.with_columns(
        pl.when(pl.int_range(pl.len()) == 0).then(1e308).otherwise(pl.col("weight")).alias("weight")
    ).write_parquet(src / "social.parquet")
    db = tmp_path / "rf.duckdb"
    summary = run_nightly(src, db, evaluate=False, value_transform="raw")
    assert summary.status == "published", summary.message
    assert _rows(db, "SELECT count(*) FROM raw.events WHERE value = 1e308") == [(1,)]
    with connect(db, read_only=True) as con:
        snap = load_snapshot(con, None)
    data = dataset_from(snap, RunParameters(source=str(src), db=str(db), value_transform="raw"))
    assert data.interactions.nnz > 0 and np.isfinite(data.interactions.data).all()
    assert data.social is not None and np.isfinite(data.social.data).all()


# --- finding 4: silent corruption ---------------------------------------------------------------


def test_latin1_csv_is_decoded_so_distinct_ids_never_merge(tmp_path: Path):
    csv_text = "user_id,item_id,event_type,ts\ncafé,i1,view,2024-01-01\ncafè,i1,view,2024-01-01\n"
    src = _source(tmp_path, {"events.csv": csv_text.encode("latin-1")})
    report = _ingest(src, tmp_path / "w.duckdb")
    assert report.added["events"] == 2 and report.quarantined["events"] == 0
    assert _rows(tmp_path / "w.duckdb", "SELECT user_id FROM raw.events ORDER BY 1") == [
        ("cafè",),
        ("café",),
    ]
    assert any("events.csv" in w and "Latin-1" in w for w in report.warnings)


def test_a_changed_event_with_a_known_event_id_replaces_the_old_row_and_is_counted(
    tmp_path: Path,
):
    header = "event_id,user_id,item_id,event_type,ts,value\n"
    src = _source(tmp_path, {"events.csv": header + "e1,u1,i1,view,2024-01-01,1\n"})
    db = tmp_path / "w.duckdb"
    _ingest(src, db, "r1")
    (src / "events.csv").write_text(header + "e1,u1,i1,purchase,2024-01-01,5\n")
    report = _ingest(src, db, "r2")
    assert _rows(db, "SELECT event_key, event_type, value, ingest_run_id FROM raw.events") == [
        ("e1", "purchase", 5.0, "r2")
    ]
    assert report.added["events"] == 0 and report.updated["events"] == 1
    assert any("e1" in w and "newest" in w for w in report.warnings)
    again = _ingest(src, db, "r3")  # the same content again: nothing
    assert again.added["events"] == 0 and again.updated["events"] == 0
    assert _rows(db, "SELECT ingest_run_id FROM raw.events") == [("r2",)]


def test_reingesting_the_same_bad_file_adds_no_quarantine_rows(tmp_path: Path):
    src = _source(tmp_path, {"events.csv": EVENTS_CSV + ",i2,view,2024-01-01\nu3,i3,view,never\n"})
    db = tmp_path / "w.duckdb"
    first = _ingest(src, db, "r1")
    second = _ingest(src, db, "r2")
    assert first.quarantined["events"] == second.quarantined["events"] == 2
    assert _rows(db, "SELECT run_id, row_number, reason FROM raw.quarantine ORDER BY 2") == [
        ("r1", 2, "user_id: missing"),
        ("r1", 3, "ts: unparseable 'never'"),
    ]


# --- finding 8 (part): a folder or table file that cannot be used is an error, not a skip ---------


def _without_privileges(cmd: list[str]) -> list[str]:
    """Run `cmd` so that file permissions apply to it (as root: with every capability dropped)."""
    if os.geteuid() != 0:
        return cmd
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot make a file unreadable")
    return ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--", *cmd]


def test_an_unreadable_source_folder_fails_the_run_once_naming_it(
    small_source: Path, tmp_path: Path, api_url: str
):
    src = tmp_path / "locked"
    shutil.copytree(small_source, src)
    src.chmod(0)
    try:
        cmd = [sys.executable, "-m", "flows.cli", "run", "--source", str(src), "--db"]
        proc = subprocess.run(
            _without_privileges([*cmd, str(tmp_path / "rf.duckdb"), "--no-evaluate"]),
            cwd=REPO,
            text=True,
            capture_output=True,
            timeout=600,
            env={**os.environ, "PREFECT_API_URL": api_url},
        )
    finally:
        src.chmod(0o755)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert str(src) in last and "permission denied" in last, last
    assert "Retry" not in proc.stdout + proc.stderr  # a SourceError is never retried


@pytest.mark.parametrize("kind", ["dangling symlink", "symlink loop", "folder"])
def test_a_table_file_that_is_not_a_file_is_a_source_error(tmp_path: Path, kind: str):
    src = _source(tmp_path, {})
    items = src / "items.csv"
    if kind == "dangling symlink":
        items.symlink_to(tmp_path / "gone.csv")
        problem = "does not exist"
    elif kind == "symlink loop":
        items.symlink_to(items)
        problem = "symlink loop"
    else:
        items.mkdir()
        problem = "is a folder"
    with pytest.raises(SourceError) as err:
        read_source(src)
    assert str(items) in str(err.value) and problem in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_an_unreadable_table_file_is_a_source_error(tmp_path: Path):
    src = _source(tmp_path, {"items.csv": "item_id\ni1\n"})
    (src / "items.csv").chmod(0)
    cmd = [sys.executable, "-m", "flows.cli", "ingest", "--source", str(src), "--db"]
    proc = subprocess.run(
        _without_privileges([*cmd, str(tmp_path / "w.duckdb")]),
        cwd=REPO,
        text=True,
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"recfusion: {src / 'items.csv'}: cannot be read: permission denied"
    ]
