"""Every way a command ends says one line: signals, an unreachable Prefect API, a damaged
warehouse met by a whole run. Real processes, real signals, a real closed port.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from process_support import REPO

from tasks.warehouse.analyst_copy import warehouse_path


def recfusion(*args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", *args], cwd=REPO, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **env},
    )


def our_lines(stderr: str) -> list[str]:
    return [x for x in stderr.splitlines() if x.startswith("recfusion: ")]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_prefect_api_is_named_with_the_way_to_run_without_it(
    small_source: Path, tmp_path: Path
):
    url = f"http://127.0.0.1:{closed_port()}/api"
    started = time.monotonic()
    proc = recfusion("run", "--source", str(small_source), "--db", str(tmp_path / "rf.duckdb"),
                     PREFECT_API_URL=url)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    [line] = our_lines(err)
    assert line.startswith(f"recfusion: the Prefect API at PREFECT_API_URL={url} does not answer")
    assert "prefect config unset PREFECT_API_URL" in line
    assert time.monotonic() - started < 60  # at once, not after Prefect's own retries
    assert not (tmp_path / "rf.duckdb").exists()  # nothing started


@pytest.mark.parametrize(("sig", "code", "name"), [(signal.SIGTERM, 143, "SIGTERM"),
                                                    (signal.SIGINT, 130, "SIGINT")])
def test_a_signal_records_the_run_as_failed_and_ends_with_one_line(
    api_url: str, small_source: Path, tmp_path: Path, sig: int, code: int, name: str
):
    db = tmp_path / "rf.duckdb"
    proc = recfusion("run", "--source", str(small_source), "--db", str(db),
                     PREFECT_API_URL=api_url)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # stop it once it is past ingest, in the middle of its work
        seen.append(line)
        if "Task run 'build-dataset" in line:
            break
    proc.send_signal(sig)
    _, rest = proc.communicate(timeout=120)
    err = "".join(seen) + rest
    assert proc.returncode == code, err[-3000:]
    lines = our_lines(err)
    assert len(lines) == 1 and lines[0].startswith(f"recfusion: stopped by {name}"), lines
    run_id = lines[0].split("; run ")[1].split(" ")[0]
    with duckdb.connect(str(warehouse_path(db)), read_only=True) as con:
        row = con.execute("SELECT status, message FROM runs WHERE run_id = ?", [run_id]).fetchone()
    assert row is not None and row[0] == "failed" and row[1].startswith(f"stopped by {name}")

    after = recfusion("run", "--source", str(small_source), "--db", str(db), "--no-evaluate",
                      PREFECT_API_URL=api_url)
    out, err = after.communicate(timeout=600)
    assert after.returncode == 0, err[-3000:]  # the lock went with the stopped run


def test_a_whole_run_on_a_truncated_warehouse_says_one_line_and_no_traceback(
    api_url: str, small_source: Path, tmp_path: Path
):
    db = tmp_path / "rf.duckdb"
    ingest = recfusion("ingest", "--source", str(small_source), "--db", str(db))
    assert ingest.wait(timeout=300) == 0
    before = db.read_bytes()
    warehouse = warehouse_path(db)
    os.truncate(warehouse, warehouse.stat().st_size // 2)
    proc = recfusion("run", "--source", str(small_source), "--db", str(db),
                     PREFECT_API_URL=api_url)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 1
    assert "Traceback" not in err
    [line] = our_lines(err)
    assert line.startswith(f"recfusion: not started: the warehouse {warehouse} is damaged")
    assert line.endswith(f"Recover with: recfusion restore --db {db}")
    assert db.read_bytes() == before
