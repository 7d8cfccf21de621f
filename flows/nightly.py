"""The nightly flow: ingest → snapshot → checks → evaluate → recommend → checks → publish.

This module only wires tasks; each task body calls plain functions from `tasks/`. Steps that touch
files or the database retry with backoff; anything else fails the run at once with a message,
and a failed run never changes what `recommendations_latest` returns.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast
from uuid import UUID

import polars as pl
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context
from prefect.states import Completed, Failed, State
from prefect.tasks import exponential_backoff

from flows.artifacts import publish_artifacts
from tasks import checks, runs
from tasks.candidates import CANDIDATE_SCHEMA
from tasks.dataset import Dataset
from tasks.demo_data import generate_demo_source
from tasks.fault_injection import fault_point
from tasks.ingest import IngestReport, load_source, read_source
from tasks.parameters import RunParameters
from tasks.publish import FinalStatus, RunOutputs, last_published_ndcg, publish_run
from tasks.reasons import explain
from tasks.recommend import Evaluation, Recommendations, dataset_from, evaluate_holdout, recommend
from tasks.report import DataDocs, ReportInput, comparability, read_run_records, write_report
from tasks.snapshot import Snapshot, load_snapshot
from tasks.source_files import SourceError
from tasks.warehouse import RunLockTimeout, apply_schema, connect, run_lock

IO_RETRIES = 2
IO_BACKOFF = exponential_backoff(backoff_factor=2)
NO_RETRY_ON = (SourceError,)


def _retry_condition(task: Any, task_run: Any, state: State) -> bool:
    """Retry transient I/O trouble, never a source that is wrong as a whole."""
    try:
        state.result()
    except NO_RETRY_ON:
        return False
    except Exception:
        return True
    return False


def io_task(name: str) -> Any:
    """A task that touches files or the database: retried with backoff on transient errors."""
    return task(
        name=name,
        cache_policy=NO_CACHE,
        retries=IO_RETRIES,
        retry_delay_seconds=IO_BACKOFF,
        retry_jitter_factor=0.2,
        retry_condition_fn=_retry_condition,
    )


class RunFailed(RuntimeError):
    """A run that cannot go on; the message is what the operator sees."""


@dataclass
class RunSummary:
    run_id: str
    status: str
    message: str = ""
    n_recommendations: int = 0
    fusion_strategy: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    db: str = ""


def demo_source_dir(db: str) -> Path:
    return Path(db).resolve().parent / "recfusion-demo-data"


@task(name="prepare-source", cache_policy=NO_CACHE)
def prepare_source(params: RunParameters) -> Path:
    if params.source:
        return Path(params.source)
    folder = demo_source_dir(params.db)
    if not (folder / "events.parquet").exists():
        get_run_logger().info("generating demo data in %s", folder)
        generate_demo_source(folder)
    return folder


def _staging_prefix(run_id: str) -> str:
    return f"recfusion-{run_id}-"


def staging_dirs(run_id: str) -> list[Path]:
    """The temporary folders where a run stages its candidates until they are published."""
    return sorted(Path(tempfile.gettempdir()).glob(_staging_prefix(run_id) + "*"))


@io_task("open-run")
def open_run(params: RunParameters, run_id: str, source: Path) -> None:
    ctx = get_run_context()
    flow_run = getattr(ctx, "flow_run", None) or getattr(
        getattr(ctx, "task_run", None), "flow_run_id", None
    )
    flow_run_id = str(getattr(flow_run, "id", flow_run) or "")
    with connect(params.db) as con:
        apply_schema(con)
        stale = runs.abandon_stale_runs(con)
        if stale:
            get_run_logger().warning(
                "marked %d abandoned run(s) as failed: %s", len(stale), ", ".join(stale)
            )
        runs.start_run(
            con,
            run_id,
            params.model_dump(mode="json"),
            str(source),
            "recfusion-nightly",
            flow_run_id or None,
            params.triggered_by,
        )
    for stale_run in stale:  # a killed run's staged candidates would otherwise stay in /tmp
        for folder in staging_dirs(stale_run):
            shutil.rmtree(folder, ignore_errors=True)


@io_task("ingest")
def ingest(db: str, source: Path, run_id: str) -> IngestReport:
    validated = read_source(source)  # raises SourceError before anything is written
    with connect(db) as con:
        report = load_source(con, validated, run_id)
    logger = get_run_logger()
    for table in report.read:
        logger.info(
            "%s: read %d, added %d, quarantined %d",
            table,
            report.read[table],
            report.added[table],
            report.quarantined[table],
        )
    return report


@io_task("load-snapshot")
def snapshot_task(params: RunParameters) -> Snapshot:
    with connect(params.db) as con:
        snap = load_snapshot(con, params.as_of)
    if snap.events.height == 0:
        raise RunFailed(f"no events in the warehouse as of {params.as_of or 'now'}")
    return snap


@task(name="check-events", cache_policy=NO_CACHE)
def check_events_task(
    snap: Snapshot, params: RunParameters, gx_run: checks.GxRun | None = None
) -> checks.CheckOutcome:
    return checks.check_events(snap.events, params.event_weights.keys(), gx_run=gx_run)


@task(name="build-dataset", cache_policy=NO_CACHE)
def dataset_task(snap: Snapshot, params: RunParameters, run_id: str) -> Dataset:
    data = dataset_from(snap, params)
    with connect(params.db) as con:
        start, end = snap.events["ts"].min(), snap.events["ts"].max()
        runs.record_data_window(
            con,
            run_id,
            params.as_of,
            start if isinstance(start, datetime) else None,
            end if isinstance(end, datetime) else None,
            data.n_users,
            data.n_items,
            snap.events.height,
            snap.fingerprint(),
        )
    return data


@task(name="evaluate-holdout", cache_policy=NO_CACHE)
def evaluate_task(snap: Snapshot, data: Dataset, params: RunParameters) -> Evaluation | None:
    return evaluate_holdout(snap, data, params)


@task(name="recommend", cache_policy=NO_CACHE)
def recommend_task(
    snap: Snapshot,
    data: Dataset,
    params: RunParameters,
    evaluation: Evaluation | None,
    staging: Path,
) -> Recommendations:
    return recommend(snap, data, params, evaluation.plan if evaluation else None, staging)


@task(name="assemble-outputs", cache_policy=NO_CACHE)
def assemble_outputs(
    recs: Recommendations, evaluation: Evaluation | None, check_outcomes: list[checks.CheckOutcome]
) -> RunOutputs:
    data = recs.data
    explained = explain(recs.fused, data).join(
        recs.segments.select("user_idx", "segment"), on="user_idx", how="left"
    )
    recommendations = data.with_ids(explained).select(
        "user_id", "rank", "item_id", "score", "contributions", "reason", "segment"
    )
    candidates = recs.candidates.candidates.cast(CANDIDATE_SCHEMA)  # type: ignore[arg-type]
    metrics = (
        evaluation.metrics
        if evaluation
        else pl.DataFrame(
            schema={
                "model": pl.String,
                "metric": pl.String,
                "k": pl.Int32,
                "segment": pl.String,
                "value": pl.Float64,
            }
        )
    )
    check_frame = pl.concat([c.results.drop("blocking") for c in check_outcomes])
    return RunOutputs(
        recommendations, candidates, metrics, check_frame, data.user_ids, data.item_ids,
        recs.candidate_files, recs.n_candidates,
    )


@task(name="check-recommendations", cache_policy=NO_CACHE)
def check_output_task(
    outputs: RunOutputs, data: Dataset, k: int, gx_run: checks.GxRun | None = None
) -> checks.CheckOutcome:
    seen = data.already_seen(outputs.recommendations)  # the only seen pairs the rule can meet
    return checks.check_recommendations(outputs.recommendations, seen, k, gx_run)


@io_task("publish")
def publish_task(
    params: RunParameters,
    run_id: str,
    outputs: RunOutputs,
    status: FinalStatus,
    strategy: str,
    timings: dict[str, float],
    message: str,
) -> None:
    with connect(params.db) as con:
        publish_run(
            con,
            run_id,
            outputs,
            status,
            strategy,
            timings,
            message,
            keep_recommendations=params.retention_runs,
            keep_candidates=params.retention_runs,
        )


@io_task("read-previous-run")
def previous_run_task(db: str) -> tuple[str | None, pl.DataFrame | None]:
    """The last published run's id and metrics, for the lift in reports (before we publish)."""
    with connect(db, read_only=True) as con:
        rows = con.execute("SELECT run_id FROM last_published_run").fetchall()
        if not rows:
            return None, None
        return str(rows[0][0]), con.sql(
            "SELECT model, metric, k, segment, value FROM metrics_latest"
        ).pl()


@task(name="report", cache_policy=NO_CACHE)
def report_task(
    params: RunParameters,
    run_id: str,
    status: str,
    message: str,
    strategy: str,
    outputs: RunOutputs,
    previous: tuple[str | None, pl.DataFrame | None],
    check_outcomes: list[checks.CheckOutcome],
    ingest_report: IngestReport,
    timings: dict[str, float],
) -> Path | None:
    """HTML report next to the database, and the run's Prefect artifacts (the report as markdown).

    The previous run's metrics are compared only if it measured the same thing (same data and
    evaluation protocol). Nothing here may fail a run that has already published: trouble is
    logged, and the rest of the report still goes out.
    """
    logger = get_run_logger()
    row_counts = {f"{t}_read": n for t, n in ingest_report.read.items()}
    row_counts |= {f"{t}_added": n for t, n in ingest_report.added.items()}
    row_counts |= {f"{t}_quarantined": n for t, n in ingest_report.quarantined.items()}
    row_counts |= {
        "recommendations": outputs.recommendations.height,
        "candidates": outputs.n_candidates,
    }
    previous_run_id, previous_metrics = previous
    try:
        records = read_run_records(params.db, [run_id, previous_run_id or ""])
        not_comparable = comparability(
            records.get(run_id),
            records.get(previous_run_id) if previous_run_id else None,
            outputs.metrics,
            previous_metrics,
        )
    except Exception as exc:
        logger.warning("could not read the runs to compare: %s", exc)
        not_comparable = "not comparable: the runs could not be read"
    index = next((c.docs_index for c in check_outcomes if c.docs_index), None)
    data = ReportInput(
        run_id,
        status,
        message,
        strategy,
        outputs.metrics,
        previous_metrics,
        previous_run_id,
        outputs.recommendations["score"].to_numpy(),
        outputs.checks,
        row_counts,
        timings,
        not_comparable=not_comparable,
        data_docs=DataDocs(
            index,
            {c.suite: c.docs_page for c in check_outcomes if c.docs_page},
            {c.suite: c.docs_problem for c in check_outcomes if c.docs_problem},
        )
        if index
        else None,
    )
    path: Path | None = None
    try:
        path = write_report(report_dir(params.db) / run_id, data)
        logger.info("report: %s", path)
    except Exception as exc:
        logger.warning("could not write the HTML report: %s", exc)
    try:
        publish_artifacts(data, path)
    except Exception as exc:
        logger.warning("could not create the run's Prefect artifacts: %s", exc)
    return path


def report_dir(db: str) -> Path:
    return Path(db).resolve().parent / "recfusion-reports"


def _regression_gate(params: RunParameters, fingerprint: str, evaluation: Evaluation | None) -> str:
    """'' when the run may publish; otherwise why it is rejected."""
    if evaluation is None or params.allow_regression:
        return ""
    fused = evaluation.metrics.filter(
        (pl.col("model") == "fused") & (pl.col("metric") == "ndcg") & (pl.col("segment") == "all")
    )
    if fused.height == 0:
        return ""
    with connect(params.db, read_only=True) as con:
        previous = last_published_ndcg(con, fingerprint, params.top_k)
    if previous is None:
        return ""
    now_value, (before, before_run) = float(fused["value"][0]), previous
    if now_value < before * (1 - params.regression_tolerance):
        return (
            f"regression gate: fused ndcg@{params.top_k} {now_value:.4f} is more than "
            f"{params.regression_tolerance:.0%} below {before:.4f} of published run {before_run}"
        )
    return ""


def _fail(params: RunParameters, run_id: str, message: str) -> None:
    try:
        with connect(params.db) as con:
            runs.fail_run(con, run_id, message)
    except Exception as exc:  # the database itself may be the problem
        get_run_logger().error("could not record failure of run %s: %s", run_id, exc)


@flow(name="recfusion-nightly", log_prints=True, validate_parameters=True)
def nightly(params: RunParameters | None = None) -> RunSummary | State:
    """One nightly run: returns a summary; the flow run fails unless the run was published."""
    params = params or RunParameters()
    logger = get_run_logger()
    run_id = runs.new_run_id()
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    summary = RunSummary(run_id, "failed", db=params.db)
    try:
        with run_lock(params.db, params.lock_timeout_seconds):
            source = prepare_source(params)
            open_run(params, run_id, source)
            try:
                summary = _run(params, run_id, source, timings, clock)
            except Exception as exc:
                message = (
                    str(exc)
                    if isinstance(exc, RunFailed | SourceError)
                    else f"{type(exc).__name__}: {exc}"
                )
                _fail(params, run_id, message)
                summary.message = message
    except (RunLockTimeout, SourceError) as exc:
        summary.message = str(exc)
    if summary.status == "published":
        return Completed(data=summary, message=f"published run {run_id}")
    logger.error("run %s %s: %s", run_id, summary.status, summary.message)
    return Failed(data=summary, message=summary.message or summary.status)


def _run(
    params: RunParameters, run_id: str, source: Path, timings: dict[str, float], clock: float
) -> RunSummary:
    progress = create_progress_artifact(progress=0.0, description=f"run {run_id}")
    steps = (
        "ingest",
        "snapshot_and_checks",
        "evaluate",
        "recommend",
        "explain_and_check",
        "publish",
    )

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        clock = now
        if progress is not None:
            update_progress_artifact(
                cast(UUID, progress), 100.0 * (steps.index(name) + 1) / len(steps)
            )

    ingest_report = ingest(params.db, source, run_id)
    lap("ingest")
    fault_point("after_ingest")
    snap = snapshot_task(params)
    input_check = check_events_task(snap, params, checks.GxRun.for_db(params.db, run_id))
    if not input_check.passed:
        raise RunFailed("input checks failed: " + "; ".join(input_check.failures()))
    data = dataset_task(snap, params, run_id)
    lap("snapshot_and_checks")
    evaluation = evaluate_task(snap, data, params) if params.evaluate else None
    lap("evaluate")
    fault_point("after_evaluate")
    # The run's candidates are staged as Parquet here until published, then removed.
    with tempfile.TemporaryDirectory(prefix=_staging_prefix(run_id)) as staging:
        recs = recommend_task(snap, data, params, evaluation, Path(staging))
        lap("recommend")
        outputs = assemble_outputs(recs, evaluation, [input_check])
        output_check = check_output_task(
            outputs, data, params.top_k, checks.GxRun.for_db(params.db, run_id)
        )
        previous = previous_run_task(params.db)
        outputs.checks = pl.concat([outputs.checks, output_check.results.drop("blocking")])
        lap("explain_and_check")

        strategy = evaluation.plan.strategy if evaluation else "weighted"
        status: FinalStatus
        if not output_check.passed:
            failures = "; ".join(output_check.failures())
            status, message = "rejected", f"output checks failed: {failures}"
        else:
            message = _regression_gate(params, snap.fingerprint(), evaluation)
            status = "rejected" if message else "published"
        publish_task(params, run_id, outputs, status, strategy, timings, message)
        lap("publish")
        report_task(
            params,
            run_id,
            status,
            message,
            strategy,
            outputs,
            previous,
            [input_check, output_check],
            ingest_report,
            timings,
        )
    fused = outputs.metrics.filter((pl.col("model") == "fused") & (pl.col("segment") == "all"))
    return RunSummary(
        run_id,
        status,
        message,
        outputs.recommendations.height,
        strategy,
        dict(zip(fused["metric"].to_list(), fused["value"].to_list(), strict=True)),
        params.db,
    )
