"""A night's cost does not grow with history: candidates (a run's bulkiest output) are one file
per run beside the database, never copied into the analyst copy, and bounded by retention."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
from support import query, run_nightly

from tasks.warehouse.connection import apply_schema, runs_folder
from tasks.warehouse.runs import start_run

LATEST_COUNTS = """
SELECT (SELECT count(*) FROM candidates WHERE run_id = l.run_id),
       (SELECT count(*) FROM recommendations_latest),
       l.run_id
FROM (SELECT DISTINCT run_id FROM recommendations_latest) l
"""


def test_four_nights_leave_the_analyst_copy_the_size_of_one(
    prefect_harness: None, small_source: Path, tmp_path: Path
):
    db = tmp_path / "rf.duckdb"
    sizes, runs = [], []
    for _ in range(4):
        run = run_nightly(small_source, db, evaluate=False, allow_regression=True)
        assert run.status == "published", run.message
        sizes.append(db.stat().st_size)
        runs.append(run)
    assert sizes[3] <= 1.3 * sizes[0], sizes

    # A read-only session in another process reads the latest run's candidates and list.
    reader = subprocess.run(
        [sys.executable, "-c", "import duckdb, json, sys\n"
         "con = duckdb.connect(sys.argv[1], read_only=True)\n"
         f"print(json.dumps(con.execute({LATEST_COUNTS!r}).fetchall()))", str(db)],
        capture_output=True, text=True, check=True,
    )
    [[n_candidates, n_listed, run_id]] = json.loads(reader.stdout)
    assert run_id == runs[-1].run_id and n_listed == runs[-1].n_recommendations
    assert n_candidates > n_listed
    # Candidates of the latest published run only (candidate_retention_runs = 1), lists of all
    # four (retention_runs = 7); the files of the others are gone from the disk too.
    assert query(db, "SELECT DISTINCT run_id FROM candidates") == [(run_id,)]
    assert len(query(db, "SELECT DISTINCT run_id FROM recommendations")) == 4
    assert {p.name for p in runs_folder(db).iterdir()} == {"run_id=_none", f"run_id={run_id}"}


def test_a_database_with_a_candidates_table_moves_it_to_files_and_loses_nothing(
    tmp_path: Path,
):
    db = tmp_path / "old.duckdb"
    rows = [(run, m, f"u{u}", f"i{i}", float(i), i + 1)
            for run in ("r1", "r2") for m in ("behavior", "content")
            for u in range(3) for i in range(4)]
    with duckdb.connect(str(db)) as con:
        apply_schema(con)
        for run in ("r1", "r2"):
            start_run(con, run, {}, "test", "nightly", None, "test")
            con.execute("UPDATE runs SET status = 'published' WHERE run_id = ?", [run])
        # what a database from before run files holds: the candidates in a table
        con.execute("DROP VIEW candidates")
        con.execute("CREATE TABLE candidates (run_id VARCHAR, modality VARCHAR, user_id VARCHAR, "
                    "item_id VARCHAR, score FLOAT, rank INTEGER)")
        con.executemany("INSERT INTO candidates VALUES (?, ?, ?, ?, ?, ?)", rows)

        apply_schema(con)  # what the next command does first

        assert con.execute(
            "SELECT table_type FROM information_schema.tables WHERE table_name = 'candidates'"
        ).fetchall() == [("VIEW",)]
        moved = con.execute("SELECT * FROM candidates ORDER BY ALL").fetchall()
    assert moved == sorted(rows)
    assert {p.name for p in runs_folder(db).iterdir()} == {"run_id=_none", "run_id=r1",
                                                           "run_id=r2"}
