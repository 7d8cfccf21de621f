"""The nightly flow: ingest → snapshot → checks → evaluate → recommend → checks → publish.

This module only wires tasks; each task body calls plain functions from `tasks/`, and retries and
error messages are `flows/plumbing.py`'s. A failed run never changes what
`recommendations_latest` returns.

`params.db` is the analyst copy: the run reads and writes the private warehouse beside it
(`tasks.warehouse.connection.warehouse_path`) and replaces the analyst copy once it has
published, been rejected or failed, so an analyst's open session never meets the run's writes.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, Failed, State

from flows.artifacts import Progress, publish_artifacts
from flows.plumbing import REFUSALS, RunFailed, RunRefused, io_task, one_line
from flows.triggers import Applied, apply_deployment_parameters, current_trigger
from tasks.config import RunParameters
from tasks.data.dataset import Dataset
from tasks.data.snapshot import Snapshot, load_snapshot
from tasks.evaluation.alarm import evaluation_checks
from tasks.evaluation.gate import regression_gate
from tasks.evaluation.protocol import protocol_key
from tasks.fault_injection import fault_point
from tasks.fusion.plan import DEFAULT_FUSER
from tasks.outputs import assemble, checks
from tasks.outputs.report import (
    DataDocs,
    ReportInput,
    comparability,
    read_run_records,
    write_report,
)
from tasks.recommend import Evaluation, Recommendations, dataset_from, evaluate_holdout, recommend
from tasks.sources.demo import generate_demo_source
from tasks.sources.ingest import IngestReport, load_source, read_source
from tasks.tuning.search import apply_tuning
from tasks.tuning.store import latest_results
from tasks.warehouse import runs
from tasks.warehouse.connection import (
    apply_schema,
    connect,
    database_to_read,
    non_demo_contents,
    open_warehouse,
    read_sql,
    refresh_analyst_copy,
    run_lock,
    warehouse_path,
)
from tasks.warehouse.publish import (
    FinalStatus,
    RunOutputs,
    Verdict,
    last_published_ndcg,
    publish_run,
)


@dataclass
class RunSummary:
    run_id: str
    status: str
    message: str = ""
    n_recommendations: int = 0
    fusion_strategy: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    db: str = ""
    #: Why the analyst copy does not show this run although it finished ("" when it does).
    analyst_copy_problem: str = ""


def demo_source_dir(db: str) -> Path:
    return Path(db).resolve().parent / "recfusion-demo-data"


@task(name="prepare-source", cache_policy=NO_CACHE)
def prepare_source(params: RunParameters) -> Path:
    """The source folder; without one, the demo's, but only into a database holding nothing else.

    A real database run without `source` (a deployment left at its default, a forgotten flag)
    must not get thousands of fake users ingested and published into it.
    """
    if params.source:
        return Path(params.source)
    folder = demo_source_dir(params.db)
    current = database_to_read(params.db)
    if current.exists():
        with connect(current, read_only=True) as con:
            found = non_demo_contents(con, folder)
        if found:
            raise RunRefused(
                f"database {params.db} already holds data that is not the demo's ({found}); "
                "pass --source (parameter `source`) to run on it: demo data only goes into a "
                "database that holds nothing else"
            )
    if not (folder / "events.parquet").exists():
        get_run_logger().info("generating demo data in %s", folder)
        generate_demo_source(folder)
    return folder


def _staging_prefix(run_id: str) -> str:
    return f"recfusion-{run_id}-"


def staging_dirs(run_id: str) -> list[Path]:
    """The temporary folders where a run stages its candidates until they are published."""
    return sorted(Path(tempfile.gettempdir()).glob(_staging_prefix(run_id) + "*"))


_STAGED_RUN = re.compile(r"^recfusion-(\d{8}T\d{6}-[0-9a-f]{8})-")


def _staging_of_finished_runs(con: Any) -> list[Path]:
    """Staging folders left by this database's runs that are over (killed before their own
    cleanup: mid-run, or after COMMIT during the report). Other databases' runs are not ours."""
    folders: dict[str, list[Path]] = {}
    for folder in Path(tempfile.gettempdir()).glob("recfusion-*"):
        if (found := _STAGED_RUN.match(folder.name)) and folder.is_dir():
            folders.setdefault(found.group(1), []).append(folder)
    if not folders:
        return []
    finished = con.execute(read_sql("finished_runs.sql"), {"run_ids": sorted(folders)}).fetchall()
    return [folder for (run,) in finished for folder in folders[run]]


@io_task("open-run")
def open_run(
    params: RunParameters, run_id: str, source: Path, applied: Applied | None = None
) -> None:
    """The run's `runs` row, with what started it (from Prefect's runtime, not a hand-set note)."""
    trigger = current_trigger(applied)
    logger = get_run_logger()
    with connect(open_warehouse(params.db)) as con:
        apply_schema(con)
        recorded = runs.apply_failures_beside(con, params.db)  # before: they are not abandoned
        if recorded:
            logger.warning(
                "recorded %d failure(s) kept beside the database: %s",
                len(recorded),
                ", ".join(recorded),
            )
        stale = runs.abandon_stale_runs(con)
        if stale:
            logger.warning(
                "marked %d abandoned run(s) as failed: %s", len(stale), ", ".join(stale)
            )
        leftovers = _staging_of_finished_runs(con)  # a killed run's candidates, GBs at scale
        runs.start_run(
            con,
            run_id,
            params.model_dump(mode="json"),
            str(source),
            "recfusion-nightly",
            trigger.flow_run_id,
            trigger.kind,
            deployment_name=trigger.deployment,
            trigger_detail=trigger.detail,
            trigger_note=(params.triggered_by or "").strip() or None,
            trigger_overrides=applied.changed if applied and applied.deployment else None,
        )
    for folder in leftovers:
        shutil.rmtree(folder, ignore_errors=True)


@io_task("ingest")
def ingest(db: str, source: Path, run_id: str) -> IngestReport:
    validated = read_source(source)  # raises SourceError before anything is written
    with connect(warehouse_path(db)) as con:
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
    with connect(warehouse_path(params.db)) as con:
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
    with connect(warehouse_path(params.db)) as con:
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


@io_task("apply-tuning")
def tuning_task(params: RunParameters) -> tuple[RunParameters, dict[str, str]]:
    """The run's parameters with the latest useful `recfusion tune` result for its source."""
    if not params.use_tuned:
        return params, {}
    with connect(warehouse_path(params.db), read_only=True) as con:
        found = latest_results(con, params.source)
    if not found:
        return params, {}
    tuned = apply_tuning(params, {m: r["update"] for m, r in found.items()})
    for modality, r in found.items():
        get_run_logger().info(
            "using tuning %s for %s: %s (validation ndcg %.4f, defaults %.4f)", r["tuning_id"],
            modality, r["update"], r["validation_ndcg"], r["default_ndcg"],
        )
    return tuned, {m: str(r["tuning_id"]) for m, r in found.items()}


@task(name="evaluate-holdout", cache_policy=NO_CACHE)
def evaluate_task(snap: Snapshot, data: Dataset, params: RunParameters) -> Evaluation | None:
    return evaluate_holdout(snap, data, params)


@task(name="evaluation-alarm", cache_policy=NO_CACHE)
def alarm_task(evaluation: Evaluation | None, params: RunParameters) -> checks.CheckOutcome:
    """The run's honest alarm (tasks/evaluation/alarm.py), as one more check suite."""
    if evaluation is None:
        return evaluation_checks(None, 0, None, None, params.evaluation.min_eval_users)
    return evaluation_checks(evaluation.per_user, evaluation.n_test_users,
                             evaluation.eval_plan, evaluation.plan,
                             params.evaluation.min_eval_users)


@io_task("record-evaluation")
def record_evaluation_task(
    params: RunParameters, run_id: str, evaluation: Evaluation | None, tuning: dict[str, str]
) -> None:
    described: dict[str, Any] = {"tuning": tuning}
    if evaluation is not None:
        described |= {"protocol": evaluation.protocol, "plan": evaluation.eval_plan.to_dict(),
                      "published_plan": evaluation.plan.to_dict()}
    with connect(warehouse_path(params.db)) as con:
        runs.record_evaluation(con, run_id, described)


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
    return assemble.assemble_outputs(recs, evaluation, check_outcomes)


@task(name="check-recommendations", cache_policy=NO_CACHE)
def check_output_task(
    outputs: RunOutputs, data: Dataset, k: int, gx_run: checks.GxRun | None = None
) -> checks.CheckOutcome:
    seen = data.already_seen(outputs.recommendations)  # the only seen pairs the rule can meet
    return checks.check_recommendations(outputs.recommendations, seen, k, gx_run)


@io_task("publish")
def publish_task(
    params: RunParameters, run_id: str, outputs: RunOutputs, verdict: Verdict,
    timings: dict[str, float],
) -> None:
    with connect(warehouse_path(params.db)) as con:
        publish_run(
            con,
            run_id,
            outputs,
            verdict.status,
            verdict.strategy,
            timings,
            verdict.message,
            keep_recommendations=params.retention_runs,
            keep_candidates=params.retention_runs,
            evaluation_protocol=verdict.protocol,
        )


@io_task("refresh-analyst-copy")
def refresh_task(params: RunParameters) -> None:
    """The analyst copy becomes the warehouse as it is now (the run just committed its status)."""
    done = refresh_analyst_copy(params.db)
    get_run_logger().info(
        "analyst copy %s refreshed: %.1f MB by %s in %.2f s%s",
        done.path, done.size / 1e6, done.method, done.seconds,
        f"; the changed copy it replaced is kept as {done.kept}" if done.kept else "",
    )


@io_task("read-previous-run")
def previous_run_task(db: str) -> tuple[str | None, pl.DataFrame | None]:
    """The last published run's id and metrics, for the lift in reports (before we publish)."""
    with connect(warehouse_path(db), read_only=True) as con:
        rows = con.execute(read_sql("previous_run.sql")).fetchall()
        if not rows:
            return None, None
        return str(rows[0][0]), con.sql(read_sql("previous_metrics.sql")).pl()


@task(name="report", cache_policy=NO_CACHE)
def report_task(
    params: RunParameters,
    run_id: str,
    verdict: Verdict,
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
    row_counts = ingest_report.row_counts() | {
        "recommendations": outputs.recommendations.height,
        "candidates": outputs.n_candidates,
    }
    previous_run_id, previous_metrics = previous
    try:
        records = read_run_records(warehouse_path(params.db), [run_id, previous_run_id or ""])
        not_comparable = comparability(
            records.get(run_id),
            records.get(previous_run_id) if previous_run_id else None,
            outputs.metrics,
            previous_metrics,
        )
    except Exception as exc:
        logger.warning("could not read the runs to compare: %s", exc)
        not_comparable = "not comparable: the runs could not be read"
    data = ReportInput(
        run_id,
        verdict.status,
        verdict.message,
        verdict.strategy,
        outputs.metrics,
        previous_metrics,
        previous_run_id,
        outputs.recommendations["score"].to_numpy(),
        outputs.checks,
        row_counts,
        timings,
        not_comparable=not_comparable,
        data_docs=DataDocs.of(check_outcomes),
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


@io_task("read-gate-baseline")
def gate_baseline_task(
    params: RunParameters, fingerprint: str, protocol: str
) -> tuple[float, str] | None:
    """The last comparable published run's fused NDCG@K (same data, same protocol), if any."""
    with connect(warehouse_path(params.db), read_only=True) as con:
        return last_published_ndcg(con, fingerprint, params.top_k, protocol)


def _regression_gate(
    params: RunParameters, fingerprint: str, evaluation: Evaluation | None, protocol: str | None
) -> tuple[bool, str]:
    evaluated = evaluation is not None and protocol is not None
    baseline = gate_baseline_task(params, fingerprint, protocol) if evaluated and protocol else None
    return regression_gate(
        evaluation.metrics if evaluated and evaluation else None, params.top_k, baseline,
        allow_regression=params.allow_regression, tolerance=params.regression_tolerance,
    )


def _fail(params: RunParameters, run_id: str, message: str) -> None:
    """Mark the run failed and show it in the analyst copy; where either cannot be done, keep
    the failure beside the analyst copy, for the next run to record."""
    logger = get_run_logger()
    warehouse = warehouse_path(params.db)
    try:
        with connect(warehouse) as con:
            runs.fail_run(con, run_id, message)
    except Exception as exc:  # the database itself may be the problem
        logger.error("could not record failure of run %s in %s: %s", run_id, warehouse, exc)
    else:
        try:
            refresh_analyst_copy(params.db)
            return
        except Exception as exc:
            logger.error("could not show the failure of run %s in %s: %s", run_id, params.db, exc)
    try:
        path = runs.record_failure_beside(params.db, run_id, message)
        logger.warning("failure of run %s kept in %s; the next run records it", run_id, path)
    except OSError as exc:
        logger.error("could not keep the failure of run %s beside the database: %s", run_id, exc)


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
        params, applied = apply_deployment_parameters(params)  # a partial trigger keeps the rest
        summary.db = params.db
        with run_lock(params.db, params.lock_timeout_seconds):
            source = prepare_source(params)
            open_run(params, run_id, source, applied)
            try:
                summary = _run(params, run_id, source, timings, clock)
            except Exception as exc:
                summary.message = one_line(exc)
                _fail(params, run_id, summary.message)
    except REFUSALS as exc:
        summary.message = one_line(exc)
    if summary.status == "published" and not summary.analyst_copy_problem:
        return Completed(data=summary, message=f"published run {run_id}")
    if summary.analyst_copy_problem:
        return Failed(data=summary, message=f"run {run_id} {summary.status}, but "
                      f"{summary.analyst_copy_problem}")
    logger.error("run %s %s: %s", run_id, summary.status, summary.message)
    return Failed(data=summary, message=summary.message or summary.status)


#: The steps of a run, as timed in `runs.timings` and shown by the progress artifact.
STEPS = ("ingest", "snapshot_and_checks", "evaluate", "recommend", "explain_and_check", "publish")


def _run(
    params: RunParameters, run_id: str, source: Path, timings: dict[str, float], clock: float
) -> RunSummary:
    """The run's steps, with its progress artifact ending at 100% however they end."""
    progress = Progress(run_id, STEPS)
    try:
        summary = _steps(params, run_id, source, timings, clock, progress)
    except BaseException as exc:
        progress.finish("failed", one_line(exc))
        raise
    progress.finish(summary.status, summary.message)
    return summary


def _steps(
    params: RunParameters,
    run_id: str,
    source: Path,
    timings: dict[str, float],
    clock: float,
    progress: Progress,
) -> RunSummary:
    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        clock = now
        progress.step_done(name)

    ingest_report = ingest(params.db, source, run_id)
    lap("ingest")
    fault_point("after_ingest")
    snap = snapshot_task(params)
    params, tuning = tuning_task(params)
    input_check = check_events_task(snap, params, checks.GxRun.for_db(params.db, run_id))
    if not input_check.passed:
        raise RunFailed("input checks failed: " + "; ".join(input_check.failures()))
    data = dataset_task(snap, params, run_id)
    lap("snapshot_and_checks")
    evaluation = evaluate_task(snap, data, params) if params.evaluate else None
    alarm = alarm_task(evaluation, params) if params.evaluate else None
    record_evaluation_task(params, run_id, evaluation, tuning)
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
        if alarm is not None:
            outputs.checks = pl.concat([outputs.checks, alarm.results.drop("blocking")])
        lap("explain_and_check")

        strategy = evaluation.plan.strategy if evaluation else DEFAULT_FUSER
        protocol = protocol_key(params, evaluation.split_kind) if evaluation else None
        status: FinalStatus
        if not output_check.passed:
            failures = "; ".join(output_check.failures())
            status, message = "rejected", f"output checks failed: {failures}"
        elif alarm is not None and not alarm.passed and not params.publish_on_alarm:
            status, message = "rejected", (
                "evaluation alarm: " + "; ".join(alarm.failures())
                + " (publish_on_alarm publishes anyway)"
            )
        else:
            passed, message = _regression_gate(params, snap.fingerprint(), evaluation, protocol)
            status = "published" if passed else "rejected"
            get_run_logger().info(message)
        verdict = Verdict(status, message, strategy, protocol)
        publish_task(params, run_id, outputs, verdict, timings)
        copy_problem = ""
        try:  # the run is over in the warehouse whatever happens here: never fail it now
            refresh_task(params)
        except Exception as exc:
            copy_problem = (
                f"the analyst copy {params.db} still shows the previous state ({one_line(exc)}); "
                "the next run refreshes it"
            )
            get_run_logger().error("run %s %s, but %s", run_id, status, copy_problem)
        lap("publish")
        fault_point("after_publish")
        report_task(
            params, run_id, verdict, outputs, previous,
            [input_check, output_check, *([alarm] if alarm is not None else [])],
            ingest_report, timings,
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
        copy_problem,
    )
