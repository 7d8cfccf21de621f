"""Publishing into a real DuckDB file: staged candidate files; a failure keeps its cause."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest

from tasks.candidates import write_published
from tasks.warehouse.connection import apply_schema
from tasks.warehouse.publish import RunOutputs, publish_run
from tasks.warehouse.runs import fail_run, start_run

USERS = np.array(["ann", "bob", "cy"], dtype=object)
ITEMS = np.array(["i0", "i1", "i2", "i3"], dtype=object)
CANDIDATE_SCHEMA = {
    "modality": pl.String,
    "user_idx": pl.Int32,
    "item_idx": pl.Int32,
    "score": pl.Float32,
    "rank": pl.Int32,
}


def candidates(rows: list[tuple[str, int, int, float | None, int]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=CANDIDATE_SCHEMA, orient="row")


BLOCKS = [
    candidates([("behavior", 0, 1, 0.9, 1), ("behavior", 0, 2, 0.5, 2), ("content", 1, 3, 0.7, 1)]),
    candidates([("behavior", 2, 0, 0.4, 1), ("popularity", 2, 3, 12.0, 1)]),
]


def outputs(staged: list[Path] | None = None, in_memory: pl.DataFrame | None = None) -> RunOutputs:
    recs = pl.DataFrame(
        {
            "user_id": ["ann", "bob", "cy"],
            "rank": [1, 1, 1],
            "item_id": ["i1", "i3", "i0"],
            "score": [0.9, 0.7, 0.4],
            "contributions": ['{"behavior": 1.0}', '{"content": 1.0}', '{"behavior": 1.0}'],
            "reason": ["because", "because", "because"],
            "segment": ["warm", "cold", "warm"],
        }
    )
    cands = pl.DataFrame(schema=CANDIDATE_SCHEMA) if in_memory is None else in_memory
    n = sum(pl.read_parquet(f).height for f in staged) if staged else cands.height
    empty_metrics = pl.DataFrame(
        schema={"model": pl.String, "metric": pl.String, "k": pl.Int32, "segment": pl.String,
                "value": pl.Float64}
    )
    empty_checks = pl.DataFrame(
        schema={"suite": pl.String, "expectation": pl.String, "column_name": pl.String,
                "success": pl.Boolean, "observed_value": pl.String}
    )
    return RunOutputs(recs, cands, empty_metrics, empty_checks, USERS, ITEMS, staged or [], n)


def fresh_db(path: Path, run_id: str) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(path))
    apply_schema(con)
    start_run(con, run_id, {}, "test", "nightly", None, "test")
    return con


def stage(blocks: list[pl.DataFrame], folder: Path) -> list[Path]:
    """Candidates staged as shards stage them: as published, one file per block."""
    files = []
    for n, block in enumerate(blocks):
        files.append(folder / f"candidates-{n:05d}.parquet")
        write_published(block, USERS, ITEMS, files[-1])
    return files


def published_candidates(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    return con.execute(
        "SELECT run_id, modality, user_id, item_id, score, rank FROM candidates ORDER BY ALL"
    ).fetchall()


def test_staged_candidate_files_publish_the_rows_in_memory_candidates_do(tmp_path: Path):
    with fresh_db(tmp_path / "files.duckdb", "r1") as con:
        publish_run(con, "r1", outputs(staged=stage(BLOCKS, tmp_path)), "published", "w", {})
        from_files = published_candidates(con)
    with fresh_db(tmp_path / "memory.duckdb", "r1") as con:
        publish_run(con, "r1", outputs(in_memory=pl.concat(BLOCKS)), "published", "w", {})
        from_memory = published_candidates(con)
    assert from_files == from_memory
    assert from_files[0] == ("r1", "behavior", "ann", "i1", pytest.approx(0.9), 1)  # ids joined
    assert ("r1", "popularity", "cy", "i3", 12.0, 1) in from_files
    assert len(from_files) == 5


def test_staged_files_are_linked_in_whole_and_a_file_not_as_published_is_refused(
    tmp_path: Path,
):
    files = stage(BLOCKS, tmp_path)
    with fresh_db(tmp_path / "links.duckdb", "r1") as con:
        publish_run(con, "r1", outputs(staged=files), "published", "w", {})
        published = sorted((tmp_path / "links.duckdb.runs" / "run_id=r1").iterdir())
        assert [p.name for p in published] == ["candidates-00000.parquet",
                                               "candidates-00001.parquet"]
        assert [p.read_bytes() for p in published] == [f.read_bytes() for f in files]
        assert all(p.stat().st_ino == f.stat().st_ino  # linked, not copied: one file system
                   for p, f in zip(published, files, strict=True))
    coded = tmp_path / "coded.parquet"
    BLOCKS[0].write_parquet(coded)  # integer-coded, as shards staged them before
    with fresh_db(tmp_path / "coded.duckdb", "r1") as con:
        with pytest.raises(ValueError, match=r"coded.parquet have columns .*user_idx.* not the "
                                             r"published"):
            publish_run(con, "r1", outputs(staged=[files[0], coded]), "published", "w", {})
        assert published_candidates(con) == []
        assert [p.name for p in (tmp_path / "coded.duckdb.runs").iterdir()] == ["run_id=_none"]


def test_staged_files_on_another_file_system_are_copied_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A staging folder on tmpfs cannot be hard-linked from the database's disk: copied."""
    import os

    def cross_device(src: object, dst: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    files = stage(BLOCKS, tmp_path)
    monkeypatch.setattr(os, "link", cross_device)
    with fresh_db(tmp_path / "copies.duckdb", "r1") as con:
        publish_run(con, "r1", outputs(staged=files), "published", "w", {})
        assert len(published_candidates(con)) == 5
    published = sorted((tmp_path / "copies.duckdb.runs" / "run_id=r1").iterdir())
    assert [p.read_bytes() for p in published] == [f.read_bytes() for f in files]
    assert all(p.stat().st_ino != f.stat().st_ino for p, f in zip(published, files, strict=True))


def test_a_failed_insert_raises_its_own_error_and_publishes_nothing(tmp_path: Path):
    broken = [BLOCKS[0], candidates([("behavior", 2, 0, None, 1)])]  # score is NOT NULL
    with fresh_db(tmp_path / "rf.duckdb", "r1") as con:
        with pytest.raises(ValueError, match="without a score"):
            publish_run(con, "r1", outputs(staged=stage(broken, tmp_path)), "published", "w", {})
        assert published_candidates(con) == []
        assert [p.name for p in (tmp_path / "rf.duckdb.runs").iterdir()] == ["run_id=_none"]
        assert con.execute("SELECT count(*) FROM recommendations").fetchone() == (0,)
        assert con.execute("SELECT status FROM runs WHERE run_id = 'r1'").fetchone() == ("running",)
        # the connection is usable again: the same run publishes once its input is sound
        publish_run(con, "r1", outputs(staged=stage(BLOCKS, tmp_path)), "published", "w", {})
        assert len(published_candidates(con)) == 5


def test_publishing_reports_each_step_in_order_and_none_it_did_not_reach(
    tmp_path: Path,
):
    told: list[tuple[int, int, str]] = []

    def on_step(done: int, total: int, what: str) -> None:
        told.append((done, total, what))

    broken = [BLOCKS[0], candidates([("behavior", 2, 0, None, 1)])]
    with fresh_db(tmp_path / "rf.duckdb", "r1") as con:
        with pytest.raises(ValueError):
            publish_run(con, "r1", outputs(staged=stage(broken, tmp_path)), "published", "w", {},
                        on_step=on_step)
        assert told == []  # the candidates failed: no step is reported done
        publish_run(con, "r1", outputs(staged=stage(BLOCKS, tmp_path)), "published", "w", {},
                    on_step=on_step)
        assert con.execute("SELECT status FROM runs").fetchall() == [("published",)]
    assert told == [(1, 4, "wrote the candidates"), (2, 4, "inserted the lists"),
                    (3, 4, "recorded metrics and status"), (4, 4, "committed")]


def test_only_an_open_run_is_published(tmp_path: Path):
    with fresh_db(tmp_path / "rf.duckdb", "r1") as con:
        with pytest.raises(RuntimeError, match="r2 is not an open run"):
            publish_run(con, "r2", outputs(in_memory=pl.concat(BLOCKS)), "published", "w", {})
        assert published_candidates(con) == []  # rolled back with the rest
        publish_run(con, "r1", outputs(in_memory=pl.concat(BLOCKS)), "published", "w", {})
        with pytest.raises(RuntimeError, match="r1 is not an open run"):  # not twice either
            publish_run(con, "r1", outputs(in_memory=pl.concat(BLOCKS)), "published", "w", {})
        assert len(published_candidates(con)) == 5


def publish_as(con: duckdb.DuckDBPyConnection, run_id: str, status: str, keep: int) -> None:
    if run_id != "r1":
        start_run(con, run_id, {}, "test", "nightly", None, "test")
    publish_run(
        con,
        run_id,
        outputs(in_memory=pl.concat(BLOCKS)),
        status,  # type: ignore[arg-type]
        "w",
        {},
        keep_recommendations=keep,
        keep_candidates=keep,
    )


def kept(con: duckdb.DuckDBPyConnection) -> tuple[list[str], list[str]]:
    def runs_in(table: str) -> list[str]:
        rows = con.execute(f"SELECT DISTINCT run_id FROM {table} ORDER BY 1").fetchall()
        return [r[0] for r in rows]

    return runs_in("recommendations"), runs_in("candidates")


def test_retention_slots_count_published_runs_and_never_the_live_list(tmp_path: Path):
    with fresh_db(tmp_path / "rf.duckdb", "r1") as con:
        publish_as(con, "r1", "published", keep=1)
        publish_as(con, "r2", "rejected", keep=1)  # takes no slot: r1 is still the live list
        assert kept(con) == (["r1", "r2"], ["r1", "r2"])
        start_run(con, "r3", {}, "test", "nightly", None, "test")
        fail_run(con, "r3", "it broke")
        publish_as(con, "r4", "rejected", keep=1)
        assert kept(con)[0] == ["r1", "r2", "r4"]  # newer than the oldest kept published run
        publish_as(con, "r5", "published", keep=2)
        assert kept(con)[0] == ["r1", "r2", "r4", "r5"]  # two published slots: r1 and r5
        publish_as(con, "r6", "published", keep=2)
        # r1 leaves its slot; r2 and r4 are now older than the oldest kept published run (r5)
        assert kept(con) == (["r5", "r6"], ["r5", "r6"])
        live = con.execute("SELECT DISTINCT run_id FROM recommendations_latest").fetchall()
        assert live == [("r6",)]
