"""End to end: real Prefect flow runs against a real DuckDB file on small real-shaped data."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from support import flow_run_logs, query, run_nightly

from flows.cli import main as cli

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_nightly_publishes_lists_for_every_user_and_reruns_idempotently(
    small_source: Path, tmp_path: Path
):
    db = tmp_path / "rf.duckdb"
    first = run_nightly(small_source, db, top_k=5)
    assert first.status == "published", first.message

    users_known = query(
        db,
        "SELECT count(*) FROM (SELECT user_id FROM raw.events UNION "
        "SELECT user_id FROM raw.users UNION SELECT user_id FROM raw.social "
        "UNION SELECT friend_id FROM raw.social)",
    )[0][0]
    per_user = query(
        db,
        "SELECT user_id, count(*), min(rank), max(rank) FROM recommendations_latest "
        "GROUP BY user_id",
    )
    assert len(per_user) == users_known
    assert all(n == 5 and lo == 1 and hi == 5 for _, n, lo, hi in per_user)
    assert (
        query(
            db,
            "SELECT count(*) FROM recommendations_latest r JOIN raw.events e "
            "USING (user_id, item_id)",
        )[0][0]
        == 0
    )  # nothing already seen

    models = {m for (m,) in query(db, "SELECT DISTINCT model FROM run_metrics WHERE metric='ndcg'")}
    assert {"behavior", "content", "social", "popularity", "fused"} <= models
    metric_names = {m for (m,) in query(db, "SELECT DISTINCT metric FROM run_metrics")}
    assert {"precision", "recall", "f1", "ndcg"} <= metric_names
    assert query(
        db,
        "SELECT count(*), bool_and(success) FROM check_results "
        "WHERE suite = 'recommendations_output'",
    )[0] == (6, True)
    assert query(db, "SELECT count(DISTINCT modality) FROM candidates")[0][0] == 6

    raw_before = query(
        db,
        "SELECT (SELECT count(*) FROM raw.events), (SELECT count(*) FROM raw.items),"
        " (SELECT count(*) FROM raw.social), (SELECT count(*) FROM raw.users)",
    )
    second = run_nightly(small_source, db, top_k=5, evaluate=False)
    assert second.status == "published", second.message
    assert (
        query(
            db,
            "SELECT (SELECT count(*) FROM raw.events), (SELECT count(*) FROM raw.items),"
            " (SELECT count(*) FROM raw.social), (SELECT count(*) FROM raw.users)",
        )
        == raw_before
    )
    assert query(db, "SELECT count(*) FROM runs WHERE status = 'published'")[0][0] == 2
    assert query(db, "SELECT DISTINCT run_id FROM recommendations_latest") == [(second.run_id,)]


def test_bad_rows_are_quarantined_and_the_run_still_publishes(small_source: Path, tmp_path: Path):
    source = tmp_path / "with_bad_rows"
    source.mkdir()
    events = pl.read_parquet(small_source / "events.parquet").head(3000)
    good = events.select(
        "user_id",
        "item_id",
        "event_type",
        pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
        pl.col("value").cast(pl.String),
    )
    bad = pl.DataFrame(
        {
            "user_id": [None, "u0001", "u0002"],
            "item_id": ["i0001", "i0002", "i0003"],
            "event_type": ["view"] * 3,
            "ts": ["2024-01-01", "yesterday", "2024-01-01"],
            "value": ["1", "1", "lots"],
        }
    )
    pl.concat([good, bad]).write_csv(source / "events.csv")
    db = tmp_path / "rf.duckdb"
    summary = run_nightly(source, db, evaluate=False)
    assert summary.status == "published", summary.message
    rows = query(db, "SELECT row_number, reason FROM raw.quarantine ORDER BY row_number")
    assert rows == [
        (3001, "user_id: missing"),
        (3002, "ts: unparseable 'yesterday'"),
        (3003, "value: not a number 'lots'"),
    ]
    assert query(db, "SELECT count(*) FROM raw.events")[0][0] == good.unique().height


def test_source_missing_user_id_fails_cleanly_and_changes_nothing(
    small_source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    db = tmp_path / "rf.duckdb"
    assert cli(["run", "--source", str(small_source), "--db", str(db), "--no-evaluate"]) == 0
    before = query(db, "SELECT * FROM recommendations_latest ORDER BY user_id, rank")
    raw_before = query(db, "SELECT count(*) FROM raw.events")

    broken = tmp_path / "broken"
    broken.mkdir()
    pl.read_parquet(small_source / "events.parquet").drop("user_id").write_parquet(
        broken / "events.parquet"
    )
    capsys.readouterr()
    code = cli(["run", "--source", str(broken), "--db", str(db)])
    err = capsys.readouterr().err
    assert code != 0
    last_line = err.strip().splitlines()[-1]
    assert "events.parquet" in last_line and "'user_id'" in last_line
    assert query(db, "SELECT * FROM recommendations_latest ORDER BY user_id, rank") == before
    assert query(db, "SELECT count(*) FROM raw.events") == raw_before
    assert query(db, "SELECT status FROM runs ORDER BY started_at DESC LIMIT 1") == [("failed",)]


def test_modalities_without_their_inputs_are_skipped_not_fatal(small_source: Path, tmp_path: Path):
    source = tmp_path / "events_only"
    source.mkdir()
    pl.read_parquet(small_source / "events.parquet").write_parquet(source / "events.parquet")
    db = tmp_path / "rf.duckdb"
    summary = run_nightly(source, db, evaluate=False)
    assert summary.status == "published", summary.message
    modalities = {m for (m,) in query(db, "SELECT DISTINCT modality FROM candidates")}
    assert "content" not in modalities and "social" not in modalities
    assert {"behavior", "popularity"} <= modalities


def test_a_long_ingest_logs_each_chunk_with_rows_done_of_all_and_an_expected_finish(
    small_source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.sources import contract

    monkeypatch.setattr(contract, "CHUNK_ROWS", 2_000)  # 8,000 events: four chunks
    summary = run_nightly(small_source, tmp_path / "rf.duckdb", evaluate=False)
    assert summary.status == "published"
    [(flow_run_id,)] = query(tmp_path / "rf.duckdb", "SELECT flow_run_id FROM runs")
    lines = [m for m in flow_run_logs(flow_run_id) if m.startswith("ingest: events ")]
    assert [line.split(" rows validated")[0] for line in lines] == [
        f"ingest: events {done:,}/8,000" for done in (2_000, 4_000, 6_000, 8_000)
    ]
    assert all("expected finish" in line for line in lines)
