"""Runs that never lose published data: retention, demo data, the regression gate's baseline, the
run lock's file, errors that must not be retried, a full disk, an analyst's session, and the
temporary Prefect server of a killed run. Real flow runs, real DuckDB files, real processes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from process_support import (
    REPO,
    no_server_env,
    start_run,
    survivors,
    tagged_processes,
    warm_prefect_home,
)
from support import query, run_nightly

from flows.nightly import RunSummary, demo_source_dir, nightly, staging_dirs
from tasks.config import RunParameters
from tasks.evaluation.protocol import protocol_key
from tasks.fault_injection import FAULT_ENV
from tasks.sources.ingest import load_source, read_source
from tasks.warehouse import analyst_copy
from tasks.warehouse.analyst_copy import warehouse_path
from tasks.warehouse.connection import (
    BUSY_WAIT_ENV,
    RunLockTimeout,
    apply_schema,
    connect,
    run_lock,
)
from tasks.warehouse.runs import failure_sidecar

pytestmark = pytest.mark.usefixtures("prefect_harness")

LATEST = (
    "SELECT user_id, rank, item_id, score, reason, segment, CAST(contributions AS VARCHAR), run_id "
    "FROM recommendations_latest ORDER BY user_id, rank"
)


def run_flow(db: Path, **params: Any) -> tuple[RunSummary, Any]:
    """One real flow run; its summary and the Prefect flow run id (to count task attempts)."""
    state = nightly(params=RunParameters(db=str(db), **params), return_state=True)
    summary = state.result(raise_on_failure=False)
    assert isinstance(summary, RunSummary), summary
    return summary, state.state_details.flow_run_id


def task_attempts(flow_run_id: Any) -> dict[str, int]:
    """Task name -> how many times it ran (1 = never retried), from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read() -> dict[str, int]:
        async with get_client() as client:
            task_runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
        return {t.name.rsplit("-", 1)[0]: t.run_count for t in task_runs}

    return asyncio.run(read())


# --- finding 1: retention ------------------------------------------------------------------------


def test_retention_never_prunes_the_live_list_when_a_run_is_rejected(
    small_source: Path, tmp_path: Path
):
    """The tester's repro: retention 1 and a popularity-only fusion, rejected by the gate."""
    db = tmp_path / "base.duckdb"
    base = run_nightly(small_source, db)
    assert base.status == "published", base.message
    before = query(db, LATEST)
    candidates = f"SELECT * FROM candidates WHERE run_id = '{base.run_id}' ORDER BY ALL"
    candidates_before = query(db, candidates)
    assert len(before) > 0 and len(candidates_before) > 0

    repro = json.loads(
        '{"retention_runs":1,"fusion":{"strategy":"weighted","weights":{"popularity":1}}}'
    )
    weak = run_nightly(small_source, db, **repro)
    # Rejected by its own evaluation (popularity alone is far below the best source) before
    # the regression gate is even asked.
    assert weak.status == "rejected" and "evaluation alarm" in weak.message
    assert query(db, LATEST) == before  # the live list, every row
    assert query(db, candidates) == candidates_before
    # The rejected run is newer than the oldest kept published run: its rows stay for debugging
    # (tests/test_publish.py follows the slots over more runs).
    assert query(db, f"SELECT count(*) FROM recommendations WHERE run_id = '{weak.run_id}'")[0][0]


# --- finding 2: demo data only into a database holding nothing else ------------------------------


def test_a_run_without_source_refuses_a_database_with_real_data(small_source: Path, tmp_path: Path):
    db = tmp_path / "prod.duckdb"
    with connect(db) as con:  # real data, ingested as `recfusion ingest --source` does
        apply_schema(con)
        load_source(con, read_source(small_source), "ingest-1")
    before = query(db, "SELECT count(*), count(DISTINCT user_id) FROM raw.events")

    summary, _ = run_flow(db)  # no source
    assert summary.status == "failed"
    assert str(db) in summary.message and "--source" in summary.message
    assert "\n" not in summary.message
    assert str(small_source / "events.parquet") in summary.message  # says what it found
    assert query(db, "SELECT count(*), count(DISTINCT user_id) FROM raw.events") == before
    assert query(db, "SELECT count(*) FROM runs") == [(0,)]  # refused before opening a run
    assert not demo_source_dir(str(db)).exists()  # no demo data generated either


def test_a_run_without_source_refuses_a_database_made_by_something_else(tmp_path: Path):
    db = tmp_path / "analytics.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE sales AS SELECT range AS id FROM range(10)")
    summary, _ = run_flow(db)
    assert summary.status == "failed"
    assert "main.sales" in summary.message and "--source" in summary.message
    tables = query(db, "SELECT table_name FROM information_schema.tables ORDER BY ALL")
    assert tables == [("sales",)]  # nothing of ours was created in it


def test_the_demo_reruns_on_its_own_database(small_source: Path, tmp_path: Path):
    db = tmp_path / "recfusion.duckdb"
    shutil.copytree(small_source, demo_source_dir(str(db)))  # a small demo, already generated
    first, _ = run_flow(db, evaluate=False)
    second, _ = run_flow(db, evaluate=False)
    assert (first.status, second.status) == ("published", "published"), second.message
    assert query(db, "SELECT count(*) FROM runs WHERE status = 'published'") == [(2,)]


# --- finding 6: the regression gate compares only runs evaluated the same way --------------------


def test_protocol_key_is_canonical_and_names_what_defines_the_metrics():
    base = RunParameters()
    ev = base.evaluation
    key = protocol_key(base, "global_time")
    assert key == json.dumps(json.loads(key), sort_keys=True, separators=(",", ":"))
    protocol = json.loads(key)
    assert protocol["split"] == {"kind": "global_time", "holdout_days": ev.holdout_days}
    assert protocol["k"] == base.top_k
    assert protocol["sample"] == {"max_users": ev.max_users, "seed": base.seed}

    def with_eval(**changes: object) -> RunParameters:
        return base.model_copy(update={"evaluation": ev.model_copy(update=changes)})

    assert protocol_key(with_eval(holdout_days=0.05), "global_time") != key
    assert protocol_key(with_eval(max_users=100), "global_time") != key
    for name, value in {"top_k": 5, "seed": 8}.items():
        assert protocol_key(base.model_copy(update={name: value}), "global_time") != key, name
    # Model settings are what the gate judges, not part of how it measures.
    assert protocol_key(base.model_copy(update={"modalities": ["popularity"]}),
                        "global_time") == key
    # A per-user split does not use the hold-out window, but its share, history and seed.
    per_user = protocol_key(base, "user_random")
    assert per_user != key and per_user != protocol_key(base, "user_temporal")
    assert protocol_key(with_eval(holdout_days=3.0), "user_random") == per_user
    assert protocol_key(with_eval(holdout_fraction=0.3), "user_random") != per_user
    assert protocol_key(with_eval(min_history=3), "user_random") != per_user


def test_a_run_evaluated_another_way_is_never_the_baseline(small_source: Path, tmp_path: Path):
    """The tester's poisoning repro: a manual run on a tiny hold-out publishes a meaningless
    score; the next default run must not be judged against it."""
    db = tmp_path / "rf.duckdb"
    # A one-day global window: a score of a handful of users, published by hand over the alarm.
    manual = run_nightly(small_source, db, publish_on_alarm=True, evaluation={
        "protocol": "global_time", "holdout_days": 1.0, "min_eval_users": 1})
    assert manual.status == "published", manual.message
    nightly_run = run_nightly(small_source, db)
    assert nightly_run.status == "published", nightly_run.message
    assert "no comparable published run" in nightly_run.message

    protocols = dict(query(db, "SELECT run_id, evaluation_protocol FROM runs"))
    assert json.loads(protocols[manual.run_id])["split"] == {"kind": "global_time",
                                                             "holdout_days": 1.0}
    assert json.loads(protocols[nightly_run.run_id])["split"]["kind"] == "user_temporal"

    # The gate still works between runs evaluated alike: the baseline is the default run.
    weak = run_nightly(small_source, db, modalities=["popularity"], regression_tolerance=0.01)
    assert weak.status == "rejected"
    assert f"published run {nightly_run.run_id}" in weak.message


# --- finding 7a: the lock belongs to the real file -----------------------------------------------


def hold_lock(path: Path) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom tasks.warehouse.connection import run_lock\n"
            "with run_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)",
            str(path),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_two_names_for_one_database_share_one_run_lock(tmp_path: Path):
    real = tmp_path / "c.duckdb"
    alias = tmp_path / "alias.duckdb"
    alias.symlink_to(real)  # dangling until the first run creates c.duckdb, as in the repro
    holder = hold_lock(real)  # another process holds the real file's lock
    try:
        for name in (alias, Path(os.path.relpath(real)), tmp_path / "." / "c.duckdb"):
            busy = pytest.raises(RunLockTimeout, match="another recfusion command .* is using")
            with busy, run_lock(name, timeout=0.3):
                pass
    finally:
        holder.kill()
        holder.wait()
    with run_lock(alias, timeout=5):  # the kernel released it with the process
        pass


# --- finding 8: no retry for what waiting cannot fix; the real error -----------------------------


@pytest.mark.parametrize("kind", ["text file", "truncated database", "directory"])
def test_a_db_that_is_not_a_database_fails_at_once_naming_the_file(
    kind: str, small_source: Path, published_db: Path, tmp_path: Path
):
    db = tmp_path / "rf.duckdb"
    if kind == "text file":
        db.write_text("user_id,item_id\nu1,i1\n")
    elif kind == "truncated database":
        db.write_bytes(published_db.read_bytes()[:20_000])
    else:
        db.mkdir()
    started = time.monotonic()
    summary, flow_run_id = run_flow(db, source=str(small_source), evaluate=False)
    assert summary.status == "failed" and summary.refused
    if kind == "truncated database":  # a database, damaged: named so, with the way back
        assert summary.message.startswith(f"database {db} is damaged (")
        assert summary.message.endswith(f"recover with: recfusion restore --db {db}")
    else:
        assert summary.message.startswith(f"cannot open database {db}: ")
    assert "\n" not in summary.message
    assert task_attempts(flow_run_id)["open-run"] == 1  # not retried as if it were a lock
    assert time.monotonic() - started < 20  # was 45 s of retries
    if kind == "text file":
        assert db.read_text() == "user_id,item_id\nu1,i1\n"  # untouched


NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to drop the capability that ignores file permissions",
)
@pytest.mark.parametrize("unreadable", ["source folder", "database"])
def test_permission_denied_is_not_retried_and_names_the_path(
    unreadable: str, api_url: str, small_source: Path, tmp_path: Path
):
    """Root ignores permissions; the run goes without CAP_DAC_OVERRIDE, like any other user."""
    source, db = tmp_path / "source", tmp_path / "rf.duckdb"
    shutil.copytree(small_source, source)
    if unreadable == "database":
        with connect(db) as con:
            apply_schema(con)
        path = db
    else:
        path = source
    path.chmod(0)
    try:
        run = subprocess.run(
            [*NO_DAC, sys.executable, "-m", "flows.cli", "run", "--source", str(source),
             "--db", str(db), "--no-evaluate"],
            cwd=REPO,
            env={**os.environ, "PREFECT_API_URL": api_url},
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        path.chmod(0o755 if path.is_dir() else 0o644)
    assert run.returncode == 1
    [line] = [x for x in run.stderr.splitlines() if x.startswith("recfusion: ")]
    assert line.startswith("recfusion: ") and str(path) in line, run.stderr[-2000:]
    assert "permission denied" in line.lower()
    assert "Retry 1/" not in run.stderr + run.stdout  # failed once, at once


# --- finding 8: a full disk during publish -------------------------------------------------------


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A real 48 MB filesystem (tmpfs) that can fill up; skipped where mounting is not allowed.

    Room for the warehouse, the analyst copy and the copy that replaces it (about 7 MB each).
    """
    mount = tmp_path / "small-fs"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path, leave_bytes: int, name: str = "filler.bin") -> Path:
    """Fill the filesystem of `folder` up to `leave_bytes` of free space."""
    filler = folder / name
    free = shutil.disk_usage(folder).free - leave_bytes
    with filler.open("wb") as fh:
        while free > 0:
            chunk = min(free, 1 << 20)
            fh.write(b"\0" * chunk)
            free -= chunk
    return filler


def test_a_full_disk_during_publish_reports_no_space_and_keeps_the_live_list(
    small_source: Path, small_filesystem: Path, monkeypatch: pytest.MonkeyPatch
):
    db = small_filesystem / "rf.duckdb"
    first = run_nightly(small_source, db, evaluate=False)
    assert first.status == "published", first.message
    before = query(db, LATEST)
    filler = fill(small_filesystem, leave_bytes=1 << 20)  # room for the run row, not its lists

    early = run_nightly(small_source, db, evaluate=False)  # found before the run, not after
    assert early.status == "failed" and early.message.startswith(
        f"not enough disk for the analyst copy in {small_filesystem}: 1 MB free"
    ), early.message
    assert early.run_id not in {r for (r,) in query(warehouse_path(db), "SELECT run_id FROM runs")}
    # A disk that fills up after that check (another process writing): the run fails, named.
    monkeypatch.setattr(analyst_copy, "ROOM_MINIMUM", 0)
    monkeypatch.setattr(analyst_copy, "ROOM_FACTOR", 0.0)
    more = fill(small_filesystem, leave_bytes=64 << 10, name="more.bin")  # not even its lists
    full = run_nightly(small_source, db, evaluate=False)
    assert full.status == "failed"
    assert "No space left on device" in full.message
    assert "cannot rollback" not in full.message
    filler.unlink()
    more.unlink()
    assert query(db, LATEST) == before  # nothing half-published
    after = run_nightly(small_source, db, evaluate=False)
    assert after.status == "published" and not after.analyst_copy_problem, after
    assert query(db, f"SELECT status FROM runs WHERE run_id = '{full.run_id}'") == [("failed",)]


# --- finding 8: a session held on the private warehouse through publish -------------------------
# Analysts query the analyst copy, which never blocks a run (tests/test_analyst_copy.py). A
# process that opens the private warehouse itself still makes the run wait, then fail with the
# reason, which is kept beside the analyst copy until the next run records it.

WAREHOUSE_HOLDER = """
import sys, time, duckdb
db, hold = sys.argv[1], float(sys.argv[2])
while True:  # query between the run's steps until it has its data
    try:
        con = duckdb.connect(db, read_only=True)
    except duckdb.Error:
        time.sleep(0.05)
        continue
    try:
        ready = con.execute(
            "SELECT count(*) FROM runs WHERE status = 'running' AND n_events IS NOT NULL"
        ).fetchone()[0]
    except duckdb.CatalogException:  # opened between the file's creation and its schema
        ready = 0
    if ready:
        break
    con.close()
    time.sleep(0.05)
print('holding', flush=True)
time.sleep(hold)  # ... and keep the session open through the publish
"""


def test_a_session_on_the_private_warehouse_through_publish_fails_the_run_with_the_reason(
    small_source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    db = tmp_path / "rf.duckdb"
    monkeypatch.setenv(BUSY_WAIT_ENV, "2")
    holder = subprocess.Popen(
        [sys.executable, "-c", WAREHOUSE_HOLDER, str(warehouse_path(db)), "120"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        blocked = run_nightly(small_source, db)  # evaluation gives the holder time to come in
    finally:
        holder.kill()
        holder.wait()
    assert blocked.status == "failed"
    assert re.search(rf"held by another process \(PID {holder.pid}\) for \d+ s", blocked.message)
    # The warehouse could not take the failure: it waits beside the analyst copy, and survives
    # the process. The analyst copy was never made (the run could not get that far).
    status = f"SELECT status FROM runs WHERE run_id = '{blocked.run_id}'"
    assert query(warehouse_path(db), status) == [("running",)]
    assert not db.exists()
    assert blocked.run_id in failure_sidecar(db).read_text()

    monkeypatch.delenv(BUSY_WAIT_ENV)
    after = run_nightly(small_source, db, evaluate=False)
    assert after.status == "published", after.message
    [(status, message)] = query(
        db, f"SELECT status, message FROM runs WHERE run_id = '{blocked.run_id}'"
    )
    assert status == "failed" and message == blocked.message  # the reason, not "abandoned"
    assert not failure_sidecar(db).exists()


# --- found by the chaos test: a run killed after COMMIT left its staged candidates in /tmp ------


def test_a_run_killed_after_publishing_is_published_whole_and_its_staging_is_removed(
    api_url: str, small_source: Path, tmp_path: Path
):
    db = tmp_path / "rf.duckdb"
    args = ["run", "--source", str(small_source), "--db", str(db), "--no-evaluate"]
    env = {**os.environ, "PREFECT_API_URL": api_url, FAULT_ENV: "after_publish"}
    killed = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    [(run_id, status, n)] = query(db, "SELECT run_id, status, n_recommendations FROM runs")
    assert status == "published"  # the COMMIT happened: the new list is live, all of it
    assert query(db, f"SELECT count(*) FROM recommendations_latest WHERE run_id = '{run_id}'") == [
        (n,)
    ]
    assert len(staging_dirs(run_id)) == 1  # killed before its own cleanup

    after = run_nightly(small_source, db, evaluate=False)
    assert after.status == "published", after.message
    assert staging_dirs(run_id) == []


# --- finding 8: the temporary Prefect server dies with a killed run ------------------------------


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("prefect-home")
    warm_prefect_home(home)
    return home


def test_the_temporary_server_runs_without_prefects_server_module(prefect_home: Path) -> None:
    """The run process starts the server's command itself and reports to it by PREFECT_API_URL
    (its settings and its children's); it never loads Prefect's server module (80 MB), and the
    server goes when the process exits."""
    tag = uuid.uuid4().hex
    code = (
        "import os, sys, httpx\n"
        "from flows.prefect_server import start_temporary_server\n"
        "url = start_temporary_server()\n"
        "from prefect.settings import PREFECT_API_URL\n"
        "print(url.startswith('http://127.0.0.1:'), os.environ['PREFECT_API_URL'] == url,\n"
        "      PREFECT_API_URL.value() == url, 'prefect.server.api.server' in sys.modules,\n"
        "      httpx.get(url + '/health').status_code)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env=no_server_env(prefect_home, tag), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "True", "True", "False", "200"]
    assert survivors(tag, within=10) == []


def test_a_killed_run_leaves_no_prefect_server_behind(
    prefect_home: Path, small_source: Path, tmp_path: Path
):
    tag = uuid.uuid4().hex
    run = start_run(
        ["--source", str(small_source), "--db", str(tmp_path / "rf.duckdb"), "--no-evaluate"],
        no_server_env(prefect_home, tag),
    )
    try:
        assert run.stdout is not None
        for line in run.stdout:  # the run's log as it happens: kill it once its flow is going
            if "Beginning flow run" in line:
                break
        servers = [p for p in tagged_processes(tag) if "uvicorn" in p.cmdline]
        assert servers, "the run has no temporary Prefect server"
        assert servers[0].ppid == run.pid
        run.send_signal(signal.SIGKILL)  # like the OOM killer: no handler runs
        assert run.wait(timeout=30) == -signal.SIGKILL
        left = survivors(tag, within=10)
        assert left == [], f"processes outlived the killed run: {left}"
    finally:
        for proc in tagged_processes(tag):
            os.kill(proc.pid, signal.SIGKILL)
        if run.poll() is None:
            run.kill()
        run.wait()
