"""The nightly on Dask: run parameters and flags, the fit shipped once, the same lists as
in-process on a real LocalCluster, and a worker killed mid-run failing the run cleanly."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from pydantic import ValidationError
from support import flow_run_logs, query

from flows.cli import main
from tasks.config import FusionParams, RunParameters, parameter_errors
from tasks.data.snapshot import Snapshot
from tasks.recommend import dataset_from, prepare_shards
from tasks.shards import (
    KILL_SHARD_ENV,
    ShardProgress,
    load_work,
    run_shard,
    save_work,
    user_shards,
)

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- parameters, flags


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"workers": 2}, (2, None)),
        ({"dask_address": "tcp://10.0.0.5:8786"}, (None, "tcp://10.0.0.5:8786")),
        ({"dask_address": "scheduler.internal:8786"}, (None, "tcp://scheduler.internal:8786")),
        ({"dask_address": "tls://[::1]:8786"}, (None, "tls://[::1]:8786")),
        ({"dask_address": "  "}, (None, None)),  # a cleared box in the Prefect form
    ],
)
def test_engine_parameters_accept_a_worker_count_or_a_scheduler_address(
    given: dict[str, Any], expected: tuple[int | None, str | None]
) -> None:
    params = RunParameters.model_validate(given)
    assert (params.workers, params.dask_address) == expected


@pytest.mark.parametrize(
    ("given", "line"),
    [
        ({"workers": 0}, "invalid parameter workers: must be >= 1 (got 0)"),
        ({"dask_address": "http://10.0.0.5:8786"}, "invalid parameter dask_address: expected a "
         "Dask scheduler address such as tcp://10.0.0.5:8786"),
        ({"dask_address": "10.0.0.5:99999"}, "invalid parameter dask_address: expected"),
        ({"dask_address": "10.0.0.5"}, "invalid parameter dask_address: expected"),
        ({"workers": 2, "dask_address": "tcp://10.0.0.5:8786"},
         "invalid parameter dask_address: give workers (2) or dask_address, not both"),
    ],
)
def test_engine_parameters_reject_impossible_values_in_one_line(
    given: dict[str, Any], line: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        RunParameters.model_validate(given)
    (found,) = parameter_errors(caught.value)
    assert found.startswith(line)


def test_workers_and_dask_address_together_on_the_command_line_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main(["run", "--db", str(tmp_path / "rf.duckdb"), "--workers", "2",
                 "--dask-address", "tcp://10.0.0.5:8786"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == ["recfusion: argument --dask-address: not allowed with argument --workers "
                   "(see recfusion run --help)"]
    assert not (tmp_path / "rf.duckdb").exists()


def _without_dask(code: str) -> subprocess.CompletedProcess[str]:
    """Python with prefect_dask unimportable, as on a box without the extra installed."""
    prelude = "import sys; sys.modules['prefect_dask'] = None\n"
    return subprocess.run([sys.executable, "-c", prelude + code], cwd=REPO, text=True,
                          capture_output=True, timeout=120, check=False)


def test_workers_without_the_dask_extra_is_one_line_saying_how_to_install_it(
    tmp_path: Path, small_source: Path
) -> None:
    db = tmp_path / "rf.duckdb"
    done = _without_dask(
        "from flows.cli import main\n"
        f"sys.exit(main(['run', '--source', {str(small_source)!r}, '--db', {str(db)!r}, "
        "'--workers', '2']))"
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "recfusion: workers=2 needs Dask, which is not installed (prefect_dask is missing): "
        'pip install -e ".[dask]"'
    ]
    assert not db.exists()  # refused before anything started


def test_a_plain_run_needs_no_dask_and_keeps_the_default_task_runner() -> None:
    done = _without_dask(
        "from flows.engine import flow_on, task_runner\n"
        "from flows.nightly import nightly\n"
        "from tasks.config import RunParameters\n"
        "assert task_runner(RunParameters()) is None\n"
        "assert flow_on(nightly, RunParameters()) is nightly\n"
        "print('ok')"
    )
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr


def test_local_workers_share_the_machines_cores_and_an_explicit_setting_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two workers each with a pool as wide as the machine ran twice the threads there are
    cores (a 100k night's shards 7 s a pair instead of 6 s)."""
    from flows.engine import worker_threads
    from tasks.kernels.blocks import THREADS_ENV, _threads

    cores = len(os.sched_getaffinity(0))
    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert worker_threads(RunParameters(workers=2)) == str(max(1, cores // 2))
    assert worker_threads(RunParameters(workers=4 * cores)) == "1"
    assert _threads() == max(1, min(8, cores))
    monkeypatch.setenv(THREADS_ENV, "3")
    assert worker_threads(RunParameters(workers=2)) == "3"
    assert _threads() == 3
    monkeypatch.setenv(THREADS_ENV, "many")
    with pytest.raises(ValueError, match="RECFUSION_THREADS='many' is not a number of threads"):
        _threads()


# --------------------------------------------------------------------------- shards


def _snapshot(source: Path) -> Snapshot:
    def read(name: str) -> pl.DataFrame:
        return pl.read_parquet(source / f"{name}.parquet")

    return Snapshot(read("events"), read("items"), read("social"), None, None)


def test_a_shard_scored_from_the_pickled_fit_is_the_shard_scored_in_process(
    small_source: Path, tmp_path: Path
) -> None:
    snap = _snapshot(small_source)
    params = RunParameters(modalities=["behavior", "social", "content", "popularity"],
                           fusion=FusionParams(strategy="weighted"), fusion_block_users=70)
    full = dataset_from(snap, params)
    work, _ = prepare_shards(full, params, None)
    path, size = save_work(work, tmp_path)
    assert size == path.stat().st_size > 0
    shipped = load_work(str(path))
    path.unlink()
    assert load_work(str(path)) is shipped  # read once per process, then kept
    lo, hi = user_shards(full.n_users, params.fusion_block_users)[1]
    here, there = run_shard(work, 1, lo, hi), run_shard(shipped, 1, lo, hi)
    assert here.fused["reason"].null_count() == 0 and here.fused.height == (hi - lo) * 10
    assert_frame_equal(here.fused, there.fused)
    assert_frame_equal(here.candidates.candidates, there.candidates.candidates)


def test_shards_are_fusion_blocks_covering_every_user_once() -> None:
    assert user_shards(250, 100) == [(0, 100), (100, 200), (200, 250)]
    assert user_shards(0, 100) == []


def test_the_staging_folder_is_removed_while_a_cancelled_shard_still_writes_into_it() -> None:
    # Dask does not stop a cancelled shard that already runs: it keeps writing files into the
    # staging folder while the failed run removes it. The removal must win, not fail the run.
    import threading

    from flows.nightly import _staging_folder, staging_dirs

    run_id = f"20261207T000000-{os.urandom(4).hex()}"
    outcome: list[str] = []

    def writer(folder: Path) -> None:
        for n in range(1_000_000):
            try:
                (folder / f"candidates-{n:07d}.parquet").write_bytes(b"x" * 64)
            except FileNotFoundError:  # as polars' write_parquet: no folder, no file
                outcome.append("stopped: folder gone")
                return
        outcome.append("never stopped")

    with _staging_folder(run_id) as folder:
        thread = threading.Thread(target=writer, args=(folder,))
        thread.start()
        while not any(folder.iterdir()):
            pass
    thread.join(timeout=30)
    assert outcome == ["stopped: folder gone"]
    assert not folder.exists() and staging_dirs(run_id) == []


def test_shard_progress_says_users_done_rate_and_expected_finish(
    small_source: Path,
) -> None:
    snap = _snapshot(small_source)
    params = RunParameters(modalities=["popularity"], fusion=FusionParams(strategy="weighted"))
    full = dataset_from(snap, params)
    work, _ = prepare_shards(full, params, None)
    tracker = ShardProgress(total_users=300, n_shards=3)
    line = tracker.add(run_shard(work, 1, 100, 200))
    assert line.startswith("recommend: shard 2/3 (users 100-199 on ")
    assert "100/300 users done" in line and " users/s, expected finish " in line
    assert tracker.fraction == pytest.approx(1 / 3)


def test_progress_moves_within_the_recommend_step(prefect_harness: None) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterId

    from flows.artifacts import KEYS, Progress

    def read(artifact_id: object) -> tuple[float, str]:
        with get_client(sync_client=True) as client:
            (found,) = client.read_artifacts(
                artifact_filter=ArtifactFilter(id=ArtifactFilterId(any_=[artifact_id]))  # type: ignore[list-item]
            )
        return float(found.data), str(found.description)

    @flow
    def half_way() -> tuple[float, str]:
        progress = Progress("r1", ["ingest", "recommend", "publish"])
        progress.step_done("ingest")
        progress.within("recommend", 0.5, "shard 1/2 … 50/100 users done")
        return read(progress.artifact)

    assert KEYS["progress"] == "recfusion-progress"
    assert half_way() == (50.0, "run r1: 1/3 steps done; now recommend: shard 1/2 … "
                                "50/100 users done")


# --------------------------------------------------------------------------- real clusters


def _published(db: Path, run_id: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        recs = con.sql(
            "SELECT user_id, rank, item_id, score, contributions, reason, segment "
            "FROM recommendations WHERE run_id = $run ORDER BY user_id, rank",
            params={"run": run_id},
        ).pl()
        cands = con.sql(
            "SELECT modality, user_id, item_id, score, rank FROM candidates WHERE run_id = $run "
            "ORDER BY modality, user_id, rank",
            params={"run": run_id},
        ).pl()
    finally:
        con.close()
    return recs, cands


def _run(source: Path, db: Path, as_cli: bool = True, **extra: Any) -> Any:
    """One real nightly flow run: on the task runner its parameters ask for, as the CLI runs it,
    or (`as_cli=False`) on the decorated flow's, as a deployment does."""
    from flows.engine import flow_on
    from flows.nightly import nightly

    params = RunParameters(source=str(source), db=str(db), fusion_block_users=70, **extra)
    return (flow_on(nightly, params) if as_cli else nightly)(params=params, return_state=True)


def _task_runs(flow_run_id: Any, name: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        TaskRunFilter,
        TaskRunFilterName,
    )

    with get_client(sync_client=True) as client:
        found = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=name)),
        )
    return list(found)


@pytest.fixture(scope="module")
def in_process_db(
    prefect_harness: None, small_source: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, str]]:
    """A database with one run published in-process (the default runner)."""
    db = tmp_path_factory.mktemp("dask") / "rf.duckdb"
    state = _run(small_source, db)
    assert state.is_completed(), state.message
    yield db, state.result().run_id


def test_dask_and_in_process_publish_identical_lists(
    in_process_db: tuple[Path, str], small_source: Path, tmp_path: Path
) -> None:
    db = tmp_path / "rf.duckdb"
    shutil.copy(in_process_db[0], db)
    state = _run(small_source, db, workers=2)
    assert state.is_completed(), state.message
    run_id = state.result().run_id
    recs, cands = _published(db, run_id)
    expected_recs, expected_cands = _published(in_process_db[0], in_process_db[1])
    assert recs.height == 300 * 10 and cands.height > recs.height
    assert_frame_equal(recs, expected_recs)
    assert_frame_equal(cands, expected_cands)
    # The per-user work really ran as mapped tasks on the cluster, one per shard, logged.
    flow_run = state.state_details.flow_run_id
    n_shards = len(user_shards(300, 70))
    assert len(_task_runs(flow_run, "recommend-shard")) == n_shards == 5
    lines = [m for m in flow_run_logs(flow_run) if m.startswith("recommend: shard ")]
    assert len(lines) == n_shards
    assert any("300/300 users done" in m for m in lines)
    logs = flow_run_logs(flow_run)
    assert any(m.startswith("fit for 300 users shipped to the workers as ") for m in logs)
    # Every long stage says done/total and when it expects to finish (issue 17's progress).
    fits = [m for m in logs if m.startswith("recommend: fitted ")]
    assert len(fits) == 6 and all("expected finish" in m for m in fits[:-1])
    assert fits[-1].startswith("recommend: fitted hybrid_samples on all users (6/6 sources")
    publish = [m for m in logs if m.startswith("publish: ")]
    assert [m.split(" (")[1][:9] for m in publish] == ["1/4 steps", "2/4 steps", "3/4 steps",
                                                       "4/4 steps"]
    assert publish[-1].startswith("publish: committed (4/4 steps")


@pytest.mark.slow
def test_a_worker_killed_mid_run_fails_the_run_cleanly_and_the_next_run_publishes(
    in_process_db: tuple[Path, str], small_source: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # distributed first: dask.config.set on a section not loaded yet removes the whole
    # "distributed" section on exit, and the next cluster could not start.
    import dask
    import distributed  # noqa: F401

    from flows.nightly import staging_dirs

    db = tmp_path / "rf.duckdb"
    shutil.copy(in_process_db[0], db)
    latest = "SELECT run_id, count(*) FROM recommendations_latest GROUP BY run_id"
    before = query(db, latest)
    monkeypatch.setenv(KILL_SHARD_ENV, "2")  # inherited by the workers the cluster spawns
    # Dask retries a lost worker's task (allowed-failures, 3 by default) and then gives up:
    # 0 gives up at once, so the test does not wait for three more deaths.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        state = _run(small_source, db, workers=2)
    assert state.is_failed()
    killed = state.result(raise_on_failure=False)
    [(status, message)] = query(db, f"SELECT status, message FROM runs WHERE run_id = "
                                    f"'{killed.run_id}'")
    assert status == "failed"
    # The killed worker's other shards die with it, and whichever the flow meets first names
    # the failure: any of the five, each as "shard i/5 (users lo-hi)".
    assert re.match(r"recommend: shard [1-5]/5 \(users \d+-\d+\) failed on the Dask cluster: ",
                    message), message
    assert "KilledWorker" in message
    assert query(db, f"SELECT count(*) FROM recommendations WHERE run_id = '{killed.run_id}'"
                     f" UNION ALL SELECT count(*) FROM candidates WHERE run_id = "
                     f"'{killed.run_id}'") == [(0,), (0,)]
    assert query(db, latest) == before  # what analysts see did not move
    assert staging_dirs(killed.run_id) == []  # the pickled fit and staged shards are gone

    monkeypatch.delenv(KILL_SHARD_ENV)
    assert KILL_SHARD_ENV not in os.environ
    # As a deployment runs it (the flow as decorated): the shards start a cluster of their own.
    state = _run(small_source, db, as_cli=False, workers=2)
    assert state.is_completed(), state.message
    assert query(db, latest)[0][0] == state.result().run_id
    assert len(_task_runs(state.state_details.flow_run_id, "recommend-shard")) == 5


def _wait_for(path: Path, seconds: float) -> None:
    import time

    deadline = time.monotonic() + seconds
    while not (path.exists() and path.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert path.exists(), f"{path} not written within {seconds:.0f} s"


@pytest.mark.slow
def test_a_cluster_started_by_its_own_commands_gets_the_in_process_lists(
    in_process_db: tuple[Path, str], small_source: Path, tmp_path: Path, api_url: str
) -> None:
    """`dask scheduler` and two `dask worker` processes started as on separate machines (each
    in its own working folder; only the staging folder and the Prefect API in common), and
    `recfusion run --dask-address` from a third folder: the in-process run's lists, even though
    the worker that takes shard 3 is SIGKILLed under it (its nanny starts a new one, Dask runs
    the shard again; the README's "a lost worker")."""
    import json

    from distributed import Client

    bin_dir = Path(sys.executable).parent
    shared = tmp_path / "shared"  # the staging folder every machine mounts
    folders = {name: tmp_path / name for name in ("scheduler", "worker-1", "worker-2", "driver")}
    for folder in (shared, *folders.values()):
        folder.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    env |= {"PREFECT_API_URL": api_url, "TMPDIR": str(shared)}
    killed = tmp_path / "killed-once"
    worker_env = env | {KILL_SHARD_ENV: f"2:{killed}"}  # the driver's does not kill anything
    contact = shared / "scheduler.json"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen(
            [str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
             "--no-dashboard", "--scheduler-file", str(contact)],
            cwd=folders["scheduler"], env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ))
        _wait_for(contact, 60)
        address = json.loads(contact.read_text())["address"]
        for name in ("worker-1", "worker-2"):
            procs.append(subprocess.Popen(
                [str(bin_dir / "dask"), "worker", address, "--name", name, "--nthreads", "1",
                 "--nworkers", "1", "--no-dashboard", "--local-directory", str(folders[name])],
                cwd=folders[name], env=worker_env, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ))
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        db = folders["driver"] / "rf.duckdb"
        shutil.copy(in_process_db[0], db)
        params = folders["driver"] / "params.json"
        params.write_text(json.dumps({"fusion_block_users": 70}))
        done = subprocess.run(
            [str(bin_dir / "recfusion"), "run", "--source", str(small_source), "--db", str(db),
             "--params", str(params), "--dask-address", address],
            cwd=folders["driver"], env=env, capture_output=True, text=True, timeout=600,
        )
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        assert killed.exists()  # a worker really died under shard 3
        with Client(address, timeout=60) as client:  # two workers again: the nanny's new one
            client.wait_for_workers(2, timeout=120)
            executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
        assert len(executed) == 2 and sum(executed.values()) >= 1
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    [(run_id, flow_run)] = query(db, "SELECT run_id, flow_run_id FROM runs ORDER BY started_at "
                                     "DESC LIMIT 1")
    shard_runs = _task_runs(flow_run, "recommend-shard")
    assert len(shard_runs) == 5 and all(t.state.is_completed() for t in shard_runs)
    recs, cands = _published(db, run_id)
    expected_recs, expected_cands = _published(in_process_db[0], in_process_db[1])
    assert recs.height == 300 * 10
    assert_frame_equal(recs, expected_recs)
    assert_frame_equal(cands, expected_cands)
    assert not list(shared.glob("recfusion-*")), "the run's staging folder was left behind"
