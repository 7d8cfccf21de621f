"""Same data, same lists: byte-identical `recommendations` and `candidates` from the same source
and parameters, whatever the database file, the ingest chunking, the number of threads, in this
process or on 2 or 3 Dask workers (three runs: each differs from the first in everything at once).

On a million events, so DuckDB scans the raw tables in parallel and returns their rows in no
fixed order (found: 1.6 % of pairs and 15 % of ranks differed between two fresh databases).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from process_support import REPO

from flows.cli import main
from tasks.sources import contract
from tasks.sources.demo import generate_demo_source

#: Small enough for CI, big enough for everything that varies: 1M events (8 DuckDB row groups),
#: several user shards for the workers, the hold-out evaluation choosing the plan.
USERS, ITEMS, EVENTS = 2000, 1500, 1_000_000
PARAMS = {"fusion_block_users": 700, "evaluation": {"max_users": 800}}
#: One core for the whole process (recfusion sizes its pools by the CPUs it may use), and one
#: thread for each library that keeps its own pool.
ONE_CORE = ["taskset", "--cpu-list", "0"] if shutil.which("taskset") else []
ONE_THREAD = {"NUMBA_NUM_THREADS": "1", "POLARS_MAX_THREADS": "1", "OMP_NUM_THREADS": "1",
              "OPENBLAS_NUM_THREADS": "1"}

RECOMMENDATIONS = """SELECT user_id, rank, item_id, score, reason, contributions, segment
                     FROM recommendations ORDER BY user_id, rank"""
CANDIDATES = """SELECT modality, user_id, item_id, score, rank FROM candidates
                ORDER BY modality, user_id, rank, item_id"""


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("million")
    generate_demo_source(folder, users=USERS, items=ITEMS, events=EVENTS, seed=11)
    return folder


def run(api_url: str, source: Path, db: Path, *flags: str, one_thread: bool = False) -> None:
    params = db.parent / "params.json"
    params.write_text(json.dumps(PARAMS))
    env = ONE_THREAD if one_thread else {}
    proc = subprocess.run(
        [*(ONE_CORE if one_thread else []), sys.executable, "-m", "flows.cli", "run",
         "--source", str(source), "--db", str(db), "--params", str(params), *flags],
        cwd=REPO, text=True, capture_output=True, timeout=1800,
        env={**os.environ, "PREFECT_API_URL": api_url, **env},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def digest(db: Path, sql: str) -> tuple[int, str]:
    """Row count and a digest of every value of every row, in the query's order."""
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute(sql).fetchall()
    return len(rows), hashlib.sha256(repr(rows).encode()).hexdigest()


def test_the_same_source_gives_byte_identical_lists_however_it_runs(
    api_url: str, source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    ways = {  # in this process (one worker); the rest differ from it in everything at once
        "in-process": [],
        "chunked ingest, one thread, 2 workers": ["--workers", "2"],
        "3 workers": ["--workers", "3"],
    }
    dbs = {way: tmp_path / f"way{n}" / "rf.duckdb" for n, way in enumerate(ways)}
    for db in dbs.values():
        db.parent.mkdir()
    # Another database file, filled a 150k-row chunk at a time (another physical row order).
    monkeypatch.setattr(contract, "CHUNK_ROWS", 150_000)
    assert main(["ingest", "--source", str(source), "--db",
                 str(dbs["chunked ingest, one thread, 2 workers"])]) == 0
    capsys.readouterr()
    for way, flags in ways.items():
        run(api_url, source, dbs[way], *flags, one_thread="one thread" in way)

    recommendations = {way: digest(db, RECOMMENDATIONS) for way, db in dbs.items()}
    candidates = {way: digest(db, CANDIDATES) for way, db in dbs.items()}
    assert recommendations["in-process"][0] == USERS * 10
    assert candidates["in-process"][0] > USERS * 10
    assert len(set(recommendations.values())) == 1, recommendations
    assert len(set(candidates.values())) == 1, candidates
