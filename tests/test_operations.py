"""Operations: deploy, serve, kill-safety, locking, regression gate, retention, queries, reports."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import query, run_nightly

from flows.cli import main as cli
from flows.nightly import staging_dirs
from tasks.config import RunParameters
from tasks.fault_injection import FAULT_ENV
from tasks.warehouse.analyst_copy import warehouse_path
from tasks.warehouse.connection import read_sql, run_lock, sql_query_names
from tasks.warehouse.queries import query_parameters, run_query

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("prefect_harness")


def latest(db: Path) -> list[tuple]:
    return query(
        db,
        "SELECT user_id, item_id, rank, score, run_id FROM recommendations_latest "
        "ORDER BY user_id, rank",
    )


def cli_subprocess(args: list[str], api_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=REPO,
        text=True,
        capture_output=True,
        timeout=600,
        env={**os.environ, "PREFECT_API_URL": api_url, **env},
    )


async def _deployments() -> dict[str, object]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return {d.name: d for d in await client.read_deployments()}


def test_prefect_yaml_is_accepted_by_prefect_deploy(api_url: str):
    spec = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    names = {d["name"]: d for d in spec["deployments"]}
    assert set(names) == {"nightly", "backfill", "evaluate", "tune"}
    assert names["nightly"]["schedules"][0]["cron"] == "0 2 * * *"
    assert names["nightly"]["schedules"][0]["timezone"] == "UTC"
    RunParameters(**names["nightly"]["parameters"]["params"])  # defaults are valid parameters

    env = {**os.environ, "PREFECT_API_URL": api_url, "RECFUSION_HOME": str(REPO)}
    pool = subprocess.run(
        [sys.executable, "-m", "prefect", "work-pool", "create", "recfusion", "--type", "process"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pool.returncode == 0 or "already exists" in pool.stdout + pool.stderr
    deploy = subprocess.run(
        [
            sys.executable,
            "-m",
            "prefect",
            "--no-prompt",
            "deploy",
            "--all",
            "--prefect-file",
            "deployments/prefect.yaml",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert deploy.returncode == 0, deploy.stdout[-2000:] + deploy.stderr[-2000:]
    deployed = asyncio.run(_deployments())
    nightly_dep = deployed["nightly"]
    assert [s.schedule.cron for s in nightly_dep.schedules] == ["0 2 * * *"]  # type: ignore[attr-defined]
    schema = nightly_dep.parameter_openapi_schema  # type: ignore[attr-defined]
    run_form = schema["definitions"]["RunParameters"]["properties"]
    assert run_form["top_k"]["default"] == 10 and "description" in run_form["top_k"]
    assert {"backfill", "evaluate", "tune"} <= set(deployed)
    # Before: the pull step kept `{{ $RECFUSION_HOME }}` for the worker to resolve (to None).
    for name in names:
        [step] = deployed[name].pull_steps  # type: ignore[attr-defined]
        assert step == {
            "prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}
        }, name


def test_serve_registers_the_nightly_schedule(api_url: str, tmp_path: Path):
    before = {
        name: dep for name, dep in asyncio.run(_deployments()).items()
        if not name.endswith("-serve")
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "serve",
            "--db",
            str(tmp_path / "served.duckdb"),
            "--cron",
            "30 3 * * *",
        ],
        cwd=REPO,
        env={**os.environ, "PREFECT_API_URL": api_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # Poll until all four are there and `nightly-serve` carries both the schedule and this
        # database: serve registers them one by one, and one read may see the new schedule with
        # the old parameters (CI once did); neither is a failure.
        names = {"nightly-serve", "backfill-serve", "evaluate-serve", "tune-serve"}
        deadline = time.monotonic() + 180
        seen: list[tuple[str, list[str], str]] = []
        served = False
        while time.monotonic() < deadline and not served:
            time.sleep(2)
            after = asyncio.run(_deployments())
            for name, dep in after.items():
                crons = [s.schedule.cron for s in dep.schedules]  # type: ignore[attr-defined]
                db = str(dep.parameters.get("params", {}).get("db", ""))  # type: ignore[attr-defined]
                seen.append((name, crons, db))
                served = served or (
                    names <= set(after)
                    and name == "nightly-serve"
                    and "30 3 * * *" in crons
                    and db.endswith("served.duckdb")
                )
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert served, f"serve did not register its deployments in time; saw {seen[-5:]}"
        # Before: serve reused the name `nightly` and overwrote `prefect deploy`'s in place.
        for name, dep in before.items():
            assert after[name].parameters == dep.parameters, name  # type: ignore[attr-defined]
            assert after[name].pull_steps == dep.pull_steps, name  # type: ignore[attr-defined]
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.mark.parametrize(
    "point",
    [
        "after_ingest",
        "publish:after_candidates",
        "publish:after_recommendations",
        "publish:before_commit",
    ],
)
def test_killed_run_leaves_latest_exactly_as_before(
    point: str, api_url: str, small_source: Path, tmp_path: Path
):
    db = tmp_path / "rf.duckdb"
    first = cli_subprocess(
        ["run", "--source", str(small_source), "--db", str(db), "--no-evaluate"], api_url
    )
    assert first.returncode == 0, first.stderr[-2000:]
    before = latest(db)
    assert len(before) > 0
    counts_before = query(
        db,
        "SELECT (SELECT count(*) FROM recommendations), "
        "(SELECT count(*) FROM candidates), (SELECT count(*) FROM run_metrics)",
    )

    killed = cli_subprocess(
        [
            "run",
            "--source",
            str(small_source),
            "--db",
            str(db),
            "--no-evaluate",
            "--allow-regression",
        ],
        api_url,
        **{FAULT_ENV: point},
    )
    assert killed.returncode == -9  # SIGKILL: no cleanup ran
    assert latest(db) == before
    assert (
        query(
            db,
            "SELECT (SELECT count(*) FROM recommendations), "
            "(SELECT count(*) FROM candidates), (SELECT count(*) FROM run_metrics)",
        )
        == counts_before
    )
    # The killed run's row is in the private warehouse only: the analyst copy never saw it.
    assert query(db, "SELECT count(*) FROM runs WHERE status = 'running'") == [(0,)]
    [(killed_run,)] = query(warehouse_path(db), "SELECT run_id FROM runs WHERE status = 'running'")
    left_behind = staging_dirs(killed_run)
    if point.startswith("publish:"):  # killed after staging its candidates
        assert len(left_behind) == 1 and any(left_behind[0].glob("*.parquet"))

    after = run_nightly(small_source, db, evaluate=False)  # the lock died with the process
    assert after.status == "published"
    statuses = sorted(s for (s,) in query(db, "SELECT status FROM runs"))
    assert statuses == ["failed", "published", "published"]  # the killed run is marked abandoned
    assert staging_dirs(killed_run) == []  # and what it staged is gone


def test_second_run_exits_clearly_while_another_holds_the_database(
    small_source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    db = tmp_path / "rf.duckdb"
    with run_lock(db, holder="run 20260101T020000-0123abcd"):
        code = cli(["run", "--source", str(small_source), "--db", str(db), "--lock-timeout", "1"])
    assert code == 1
    [line] = [x for x in capsys.readouterr().err.splitlines() if x.startswith("recfusion: ")]
    # It names the run that holds the database (one `runs` knows), never an id of its own that
    # appears nowhere afterwards.
    assert line == (
        f"recfusion: not started: another recfusion command (pid {os.getpid()}, run "
        f"20260101T020000-0123abcd) is using {db}; waited 1s — retry later or raise "
        "--lock-timeout"
    )


def test_concurrent_runs_never_interleave(api_url: str, small_source: Path, tmp_path: Path):
    db = tmp_path / "rf.duckdb"
    args = [
        "run",
        "--source",
        str(small_source),
        "--db",
        str(db),
        "--no-evaluate",
        "--lock-timeout",
        "300",
        "--allow-regression",
    ]
    env = {**os.environ, "PREFECT_API_URL": api_url}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "flows.cli", *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    codes = [p.wait(timeout=600) for p in procs]
    assert codes == [0, 0]
    spans = query(db, "SELECT started_at, finished_at FROM runs ORDER BY started_at")
    assert (
        len(spans) == 2 and spans[0][1] <= spans[1][0]
    )  # the second started after the first ended


def test_regressed_run_is_rejected_and_not_published(small_source: Path, tmp_path: Path):
    db = tmp_path / "rf.duckdb"
    good = run_nightly(small_source, db)
    assert good.status == "published"
    before = latest(db)
    weak = run_nightly(small_source, db, modalities=["popularity"], regression_tolerance=0.01)
    assert weak.status == "rejected" and "regression gate" in weak.message
    assert latest(db) == before
    assert query(db, "SELECT status FROM runs ORDER BY started_at") == [
        ("published",),
        ("rejected",),
    ]
    forced = run_nightly(small_source, db, modalities=["popularity"], allow_regression=True)
    assert forced.status == "published"
    assert latest(db) != before


def test_retention_prunes_old_recommendations_but_keeps_metrics(small_source: Path, tmp_path: Path):
    db = tmp_path / "rf.duckdb"
    runs = [run_nightly(small_source, db, evaluate=False, retention_runs=1) for _ in range(2)]
    kept = query(db, "SELECT DISTINCT run_id FROM recommendations")
    assert kept == [(runs[1].run_id,)]
    assert query(db, "SELECT count(*) FROM runs")[0][0] == 2
    run_nightly(small_source, db, retention_runs=1)
    assert query(db, "SELECT count(DISTINCT run_id) FROM run_metrics")[0][0] == 1  # evaluated run
    assert query(db, "SELECT count(DISTINCT run_id) FROM check_results")[0][0] == 3


@pytest.mark.parametrize("name", sql_query_names())
def test_every_analyst_query_runs_on_a_published_database(name: str, published_db: Path):
    values = {
        "user_id": query(published_db, "SELECT min(user_id) FROM recommendations_latest")[0][0],
        "item_id": query(published_db, "SELECT min(item_id) FROM recommendations_latest")[0][0],
        "k": "10",
    }
    params = {p: str(values[p]) for p in query_parameters(read_sql(f"queries/{name}.sql"))}
    frame = run_query(published_db, name, params)
    if name in (
        "recommendations_for_user",
        "why_item",
        "modality_lift_latest",
        "coverage_and_popularity_skew",
    ):
        assert frame.height > 0


def test_views_for_analysts(published_db: Path):
    assert query(published_db, "SELECT count(*) FROM run_history")[0][0] == 1
    models = {m for (m,) in query(published_db, "SELECT DISTINCT model FROM metrics_latest")}
    assert {"fused", "behavior", "weighted", "rrf"} <= models
    lift = query(
        published_db, "SELECT count(DISTINCT modality) FROM modality_lift WHERE metric='ndcg'"
    )
    assert lift[0][0] == 6


def test_report_and_gx_pages_are_written_next_to_the_database(published_db: Path):
    run_id = query(published_db, "SELECT run_id FROM runs")[0][0]
    folder = published_db.parent / "recfusion-reports" / run_id
    report = (folder / "report.html").read_text()
    assert "published" in report and "<svg" in report and "ndcg" in report
    site = published_db.parent / "recfusion-gx" / published_db.name / "uncommitted" / "data_docs"
    pages = (site / "local_site" / "validations" / "recommendations_output" / run_id).glob("*/*")
    assert "Great Expectations" in next(pages).read_text()


def test_run_artifacts_have_stable_keys(published_db: Path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def keys() -> set[str]:
        async with get_client() as client:
            arts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_="recfusion-"))
            )
            return {a.key for a in arts if a.key}

    assert {
        "recfusion-metrics",
        "recfusion-lift",
        "recfusion-checks",
        "recfusion-row-counts",
        "recfusion-report",
    } <= asyncio.run(keys())


def test_backfill_runs_each_day_and_skips_published_days(small_source: Path, tmp_path: Path):
    import polars as pl

    from flows.backfill import BackfillParameters, backfill

    last_day = pl.read_parquet(small_source / "events.parquet")["ts"].max().date()  # type: ignore[union-attr]
    start = last_day.fromordinal(last_day.toordinal() - 1)
    params = BackfillParameters(
        start=start,
        end=last_day,
        run=RunParameters(source=str(small_source), db=str(tmp_path / "b.duckdb"), evaluate=False),
    )
    first = backfill(params=params)
    assert [s.status for s in first] == ["published", "published"]
    as_of = query(tmp_path / "b.duckdb", "SELECT count(DISTINCT as_of) FROM runs")[0][0]
    assert as_of == 2
    what = query(tmp_path / "b.duckdb", "SELECT DISTINCT triggered_by, trigger_detail FROM runs")
    assert [w[0] for w in what] == ["backfill"]  # from Prefect: each day is the backfill's subflow
    assert str(what[0][1]).startswith("recfusion-backfill flow run ")
    assert backfill(params=params) == []  # both days already published
    assert len(backfill(params=params.model_copy(update={"force": True}))) == 2


def _progress_artifacts(flow_run_id: object) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterType,
    )

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(
                type=ArtifactFilterType(any_=["progress"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),  # type: ignore[list-item]
            )
        )


def test_run_history_shows_what_started_a_run_its_flow_run_and_key_parameters(
    small_source: Path, tmp_path: Path
):
    from flows.nightly import nightly

    db = tmp_path / "rf.duckdb"
    params = RunParameters.model_validate({
        "source": str(small_source), "db": str(db), "top_k": 4, "evaluate": False,
        "fusion": {"strategy": "rrf"}, "triggered_by": "checking the rrf lists",
    })
    state = nightly(params=params, return_state=True)
    assert state.is_completed(), state.message
    rows = query(
        db,
        "SELECT triggered_by, trigger_detail, trigger_note, deployment_name, flow_run_id, "
        "source, db, top_k, requested_strategy, evaluate, trigger_overrides "
        "FROM run_history",
    )
    assert rows == [(
        "cli", None, "checking the rrf lists", None, str(state.state_details.flow_run_id),
        str(small_source), str(db), 4, "rrf", False, None,
    )]


def test_progress_artifact_of_a_published_run_has_a_stable_key_and_ends_at_100(
    published_db: Path,
):
    [(run_id, flow_run_id)] = query(published_db, "SELECT run_id, flow_run_id FROM runs")
    (artifact,) = _progress_artifacts(flow_run_id)
    assert artifact.key == "recfusion-progress"
    assert float(artifact.data) == 100.0
    assert artifact.description.startswith(f"run {run_id} published: regression gate")


def test_progress_artifact_of_a_failed_run_ends_at_100_saying_it_failed(
    small_source: Path, tmp_path: Path
):
    from datetime import UTC, datetime

    from flows.nightly import nightly

    db = tmp_path / "rf.duckdb"
    before_any_event = datetime(2000, 1, 1, tzinfo=UTC)
    state = nightly(
        params=RunParameters(source=str(small_source), db=str(db), as_of=before_any_event),
        return_state=True,
    )
    assert state.is_failed()
    [(run_id, status)] = query(db, "SELECT run_id, status FROM runs")
    (artifact,) = _progress_artifacts(state.state_details.flow_run_id)
    assert (artifact.key, float(artifact.data), status) == ("recfusion-progress", 100.0, "failed")
    assert artifact.description.startswith(f"run {run_id} failed: no events in the warehouse")


def test_progress_moves_after_every_step():
    from prefect import flow

    from flows.artifacts import Progress

    def read(artifact_id: object) -> tuple[float, str]:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterId

        with get_client(sync_client=True) as client:
            (found,) = client.read_artifacts(
                artifact_filter=ArtifactFilter(id=ArtifactFilterId(any_=[artifact_id]))  # type: ignore[list-item]
            )
        return float(found.data), str(found.description)

    @flow
    def three_steps() -> list[tuple[float, str]]:
        progress = Progress("r1", ["ingest", "recommend", "publish"])
        seen = [read(progress.artifact)]
        for step in progress.steps:
            progress.step_done(step)
            seen.append(read(progress.artifact))
        progress.finish("rejected", "output checks failed: duplicates")
        return [*seen, read(progress.artifact)]

    seen = three_steps()
    assert [p for p, _ in seen] == [0.0, 33.3, 66.7, 100.0, 100.0]
    assert seen[1][1] == "run r1: 1/3 steps done; now recommend"
    assert seen[-1][1] == "run r1 rejected: output checks failed: duplicates"
