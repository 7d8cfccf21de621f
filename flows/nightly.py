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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
from prefect import flow, get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.states import Completed, Failed, State

from flows import engine, signals
from flows.artifacts import Progress, publish_artifacts
from flows.plumbing import REFUSALS, RunFailed, RunRefused, io_task, one_line
from flows.triggers import (
    Applied,
    DeploymentParametersInvalid,
    apply_deployment_parameters,
    current_trigger,
)
from tasks.config import RunParameters
from tasks.data.dataset import Dataset
from tasks.data.snapshot import Snapshot, load_snapshot
from tasks.evaluation.alarm import evaluation_checks
from tasks.evaluation.gate import regression_gate
from tasks.evaluation.protocol import protocol_key
from tasks.fault_injection import fault_point
from tasks.fusion.plan import DEFAULT_FUSER
from tasks.memory import release_freed_memory
from tasks.outputs import assemble, checks
from tasks.outputs.report import (
    DataDocs,
    ReportInput,
    comparability,
    read_run_records,
    write_report,
)
from tasks.progress import expected_finish
from tasks.recommend import (
    Evaluation,
    Recommendations,
    dataset_from,
    evaluate_holdout,
    gather_shards,
    prepare_shards,
    recommend,
)
from tasks.shards import (
    ShardProgress,
    ShardResult,
    ShardWork,
    forget_work,
    load_work,
    run_shard,
    save_work,
    user_shards,
)
from tasks.sources.demo import generate_demo_source
from tasks.sources.ingest import ChunkProgress, IngestReport, load_source, read_source
from tasks.tuning.search import apply_tuning
from tasks.tuning.store import latest_results
from tasks.warehouse import runs
from tasks.warehouse.analyst_copy import (
    check_room,
    database_to_read,
    open_warehouse,
    refresh_analyst_copy,
    warehouse_path,
)
from tasks.warehouse.connection import (
    apply_schema,
    connect,
    non_demo_contents,
    read_sql,
    run_lock,
)
from tasks.warehouse.errors import DatabaseDamaged
from tasks.warehouse.publish import (
    FinalStatus,
    RunOutputs,
    Verdict,
    last_published_ndcg,
    prune_candidate_files,
    publish_run,
)
from tasks.warehouse.source_log import note_source


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
    #: The run never started (another command held the database, a damaged warehouse, a
    #: source or disk found wrong before any work): no `runs` row names `run_id`.
    refused: bool = False


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


@contextmanager
def _staging_folder(run_id: str) -> Iterator[Path]:
    """The run's staging folder, removed on the way out even while a Dask worker still writes
    into it: Dask does not stop a cancelled shard that already runs. The folder is renamed
    first, so a shard's next file fails (no folder, no file) instead of racing the removal."""
    folder = Path(tempfile.mkdtemp(prefix=_staging_prefix(run_id)))
    try:
        yield folder
    finally:
        doomed = folder.with_name(folder.name + ".removing")
        try:
            folder.rename(doomed)
        except FileNotFoundError:
            doomed = folder
        for attempt in range(20):  # only a file whose open began before the rename lands late
            try:
                shutil.rmtree(doomed)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05 * (attempt + 1))
        else:  # the next run of this database removes it (_staging_of_finished_runs)
            get_run_logger().warning("could not remove the staging folder %s", doomed)


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
        prune_candidate_files(con, params.candidate_retention_runs)  # files of killed runs too
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
def ingest(
    db: str, source: Path, run_id: str, progress: Progress | None = None
) -> IngestReport:
    logger = get_run_logger()
    chunks = ChunkProgress()

    def on_chunk(table: str, done: int, total: int | None) -> None:
        line = chunks.line(table, done, total)
        logger.info(line)
        if progress is not None and total:  # validating is most of an ingest; loading the rest
            progress.within("ingest", 0.8 * done / total, line.removeprefix("ingest: "))

    # raises SourceError before anything is written
    validated = read_source(source, on_chunk=on_chunk)
    with connect(warehouse_path(db)) as con:
        report = load_source(con, validated, run_id)
    note_source(db, source)  # what `recfusion restore` re-ingests if every copy is damaged
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
    return checks.check_events(snap.events, params.event_weight_map().keys(), gx_run=gx_run)


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


def _evaluation_reporter(progress: Progress | None) -> Callable[[int, int, str], None]:
    """After each part of the hold-out evaluation (a fit, a scoring, the plan's choice): a log
    line with done/total and an expected finish, and the progress artifact moved within it."""
    started = time.perf_counter()
    logger = get_run_logger()

    def report(done: int, total: int, label: str) -> None:
        elapsed = time.perf_counter() - started
        note = f"{label} ({done}/{total} parts, {elapsed:.0f}s), " + expected_finish(
            done, total, elapsed)
        logger.info("evaluate: %s", note)
        if progress is not None:
            progress.within("evaluate", done / total, note)

    return report


@task(name="evaluate-holdout", cache_policy=NO_CACHE)
def evaluate_task(
    data: Dataset, params: RunParameters, progress: Progress | None = None
) -> Evaluation | None:
    return evaluate_holdout(data, params, _evaluation_reporter(progress))


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


def _shard_reporter(
    n_users: int, params: RunParameters, progress: Progress | None
) -> tuple[ShardProgress, Callable[[ShardResult], None]]:
    """After each shard: a log line (users done, rate, expected finish) and the progress bar."""
    tracker = ShardProgress(n_users, len(user_shards(n_users, params.fusion_block_users)))
    logger = get_run_logger()

    def report(result: ShardResult) -> None:
        line = tracker.add(result)
        logger.info(line)
        if progress is not None:
            progress.within("recommend", tracker.fraction, line.removeprefix("recommend: "))

    return tracker, report


def _fit_reporter(params: RunParameters, progress: Progress | None) -> Callable[[str], None]:
    """After each source's fit on all the data (before any shard): a log line with done/total
    and the time it took, and the progress artifact told what is being fitted."""
    started, done, total = time.perf_counter(), 0, len(params.modalities)
    logger = get_run_logger()

    def report(label: str) -> None:
        nonlocal done
        done = min(done + 1, total)
        elapsed = time.perf_counter() - started
        note = (f"{label} on all users ({done}/{total} sources, {elapsed:.0f}s), "
                f"{expected_finish(done, total, elapsed)}")
        logger.info("recommend: %s", note)
        if progress is not None:
            progress.within("recommend", 0.0, note)

    return report


@task(name="recommend", cache_policy=NO_CACHE)
def recommend_task(
    data: Dataset,
    params: RunParameters,
    evaluation: Evaluation | None,
    staging: Path,
    progress: Progress | None = None,
) -> Recommendations:
    """In this process: fit once, then today's loop over user shards (nothing pickled)."""
    tracker, report = _shard_reporter(data.n_users, params, progress)
    return recommend(data, params, evaluation.plan if evaluation else None, staging,
                     on_shard=report, on_fitted=tracker.begin,
                     on_step=_fit_reporter(params, progress))


@task(name="fit-for-shards", cache_policy=NO_CACHE)
def fit_for_shards_task(
    data: Dataset, params: RunParameters, evaluation: Evaluation | None, staging: Path
) -> tuple[ShardWork, pl.DataFrame, Path]:
    """Fit once on the driver and pickle the fit once for every worker to read."""
    work, segments = prepare_shards(data, params, evaluation.plan if evaluation else None,
                                    _fit_reporter(params, None))
    path, size = save_work(work, staging)
    get_run_logger().info("fit for %d users shipped to the workers as %s (%.1f MB)",
                          data.n_users, path, size / 1e6)
    return work, segments, path


@task(name="recommend-shard", cache_policy=NO_CACHE)
def shard_task(work_file: str, index: int, lo: int, hi: int, staging: str) -> ShardResult:
    """One shard on a Dask worker; the fit is read from `work_file` once per worker process."""
    try:
        work = load_work(work_file)
    except FileNotFoundError:
        raise RunFailed(
            f"this Dask worker cannot read the run's fit {work_file}: the staging folder must be "
            "on storage every worker reads (set TMPDIR to a shared folder)"
        ) from None
    return run_shard(work, index, lo, hi, Path(staging))


def _on_cluster(
    runner: Any, work_file: Path, params: RunParameters, data: Dataset, staging: Path,
    progress: Progress,
) -> list[ShardResult]:
    """Map the shards over the cluster; the first shard that fails fails the run, and the
    rest are cancelled (a lost worker's shard is retried by Dask, as far as it allows)."""
    import distributed

    shards = user_shards(data.n_users, params.fusion_block_users)
    futures = runner.map(shard_task, {
        "work_file": unmapped(str(work_file)), "index": range(len(shards)),
        "lo": [lo for lo, _ in shards], "hi": [hi for _, hi in shards],
        "staging": unmapped(str(staging)),
    })
    by_key = {f.wrapped_future.key: (i, f) for i, f in enumerate(futures)}
    _, report = _shard_reporter(data.n_users, params, progress)  # the rate counts from here
    results: list[ShardResult] = []
    try:
        pending = [f.wrapped_future for f in futures]
        for done in distributed.as_completed(pending, loop=runner.client.loop):  # no default client
            index, future = by_key[done.key]
            try:
                results.append(future.result())
            except Exception as exc:
                lo, hi = shards[index]
                raise RunFailed(
                    f"recommend: shard {index + 1}/{len(shards)} (users {lo}-{hi - 1}) failed on "
                    f"the Dask cluster: {one_line(exc)}"
                ) from exc
            report(results[-1])
    finally:
        if len(results) < len(shards):
            for f in futures:
                f.wrapped_future.cancel()
        try:
            runner.client.run(forget_work)  # the workers' copies of the fit, freed now
        except Exception as exc:  # a worker gone already has nothing to free
            get_run_logger().warning("could not free the fit on every Dask worker: %s", exc)
    return results


def _recommend(
    data: Dataset, params: RunParameters, evaluation: Evaluation | None, staging: Path,
    progress: Progress,
) -> Recommendations:
    """The recommend step: in this process, or sharded by users on Dask (`flows/engine.py`)."""
    if not engine.on_dask(params):
        return recommend_task(data, params, evaluation, staging, progress)
    started = time.perf_counter()
    work, segments, work_file = fit_for_shards_task(data, params, evaluation, staging)
    runner = FlowRunContext.get().task_runner  # type: ignore[union-attr]
    if engine.is_dask(runner):  # the CLI's nightly.with_options(task_runner=…)
        results = _on_cluster(runner, work_file, params, data, staging, progress)
    else:  # a deployment or backfill run asking for Dask: a runner for the shards alone
        with engine.dask_task_runner(params) as own:
            results = _on_cluster(own, work_file, params, data, staging, progress)
    return gather_shards(work, segments, results, started)


@task(name="assemble-outputs", cache_policy=NO_CACHE)
def assemble_outputs(
    recs: Recommendations, evaluation: Evaluation | None, check_outcomes: list[checks.CheckOutcome]
) -> RunOutputs:
    return assemble.assemble_outputs(recs, evaluation, check_outcomes)


@task(name="check-recommendations", cache_policy=NO_CACHE)
def check_output_task(
    recs: Recommendations, k: int, gx_run: checks.GxRun | None = None
) -> checks.CheckOutcome:
    """The lists' rules on their integer codes, before the ids are put on (`checks`)."""
    seen = recs.data.already_seen(recs.fused)  # the only seen pairs the rule can meet
    return checks.check_recommendations(recs.fused, seen, k, gx_run)


@io_task("publish")
def publish_task(
    params: RunParameters, run_id: str, outputs: RunOutputs, verdict: Verdict,
    timings: dict[str, float], progress: Progress | None = None,
) -> None:
    started, logger = time.perf_counter(), get_run_logger()

    def step(done: int, total: int, what: str) -> None:
        elapsed = time.perf_counter() - started
        note = f"{what} ({done}/{total} steps, {elapsed:.0f}s)"
        if done < total:
            note += f", {expected_finish(done, total, elapsed)}"
        logger.info("publish: %s", note)
        if progress is not None:
            progress.within("publish", done / total, note)

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
            keep_candidates=params.candidate_retention_runs,
            evaluation_protocol=verdict.protocol,
            on_step=step,
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
    plan: dict[str, Any] | None = None,
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
    quarantine: pl.DataFrame | None = None
    try:
        with connect(warehouse_path(params.db), read_only=True) as con:
            quarantine = con.sql(read_sql("quarantine_examples.sql"),
                                 params={"run_id": run_id}).pl()
    except Exception as exc:
        logger.warning("could not read the rows this run quarantined: %s", exc)
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
        plan=plan,
        quarantine=quarantine,
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


def _plan_shown(evaluation: Evaluation | None) -> dict[str, Any] | None:
    """The published plan, with the recipes compared on validation when it chose among them."""
    if evaluation is None:
        return None
    shown = evaluation.plan.to_dict()
    shown["selection"] = shown["selection"] or evaluation.eval_plan.selection
    return shown


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


def _reject(given: dict[str, Any], run_id: str, summary: RunSummary) -> None:
    """A run refused for its parameters: a `runs` row marked rejected with the reason, in the
    database they name (when they name one that is a valid path), and nothing else."""
    db = given.get("db")
    if not isinstance(db, str) or not db.strip():
        return
    summary.db = db
    logger = get_run_logger()
    try:
        with run_lock(db, 0.0, holder=f"run {run_id}"):
            with connect(open_warehouse(db)) as con:
                apply_schema(con)
                trigger = current_trigger()
                runs.start_run(con, run_id, given, str(given.get("source") or ""),
                               "recfusion-nightly", trigger.flow_run_id, trigger.kind,
                               deployment_name=trigger.deployment,
                               trigger_detail=trigger.detail)
                runs.reject_run(con, run_id, summary.message)
            refresh_analyst_copy(db)
    except Exception as exc:  # the refusal stands; only its record is missing
        logger.warning("could not record rejected run %s in %s: %s", run_id, db, one_line(exc))


def _fail(params: RunParameters, run_id: str, message: str, refresh: bool = True) -> None:
    """Mark the run failed and show it in the analyst copy; where either cannot be done, keep
    the failure beside the analyst copy, for the next run to record. A run stopped by a signal
    skips the refresh (`refresh=False`): a stop must be quick, the next command shows it."""
    logger = get_run_logger()
    warehouse = warehouse_path(params.db)
    try:
        with connect(warehouse) as con:
            runs.fail_run(con, run_id, message)
    except Exception as exc:  # the database itself may be the problem
        logger.error("could not record failure of run %s in %s: %s", run_id, warehouse, exc)
    else:
        if not refresh:
            return
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


#: The nightly's default parameters. A default (rather than `None`) keeps the form's schema a
#: plain object, so a bad value typed in its JSON mode is named by its field, not shown as the
#: whole object "not valid under any of the given schemas".
DEFAULT_PARAMETERS = RunParameters()


# recfusion validates the parameters itself (`apply_deployment_parameters`): Prefect's own check
# fails the run before it starts, with a traceback and no trace in `runs`. The type hint still
# gives the Prefect UI its typed form.
@flow(name="recfusion-nightly", log_prints=True, validate_parameters=False)
def nightly(params: RunParameters = DEFAULT_PARAMETERS) -> RunSummary | State:
    """One nightly run: returns a summary; the flow run fails unless the run was published."""
    logger = get_run_logger()
    run_id = runs.new_run_id()
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    summary = RunSummary(run_id, "failed")
    try:
        # whatever reached the flow (a form, JSON, the API, Python), merged over a deployment's
        # saved values and validated; a partial trigger keeps the rest
        params, applied = apply_deployment_parameters(params, RunParameters)
    except DeploymentParametersInvalid as exc:
        summary.message, summary.status = one_line(exc), "rejected"
        _reject(exc.parameters, run_id, summary)
        logger.error("run %s rejected: %s", run_id, summary.message)
        return Failed(data=summary, message=summary.message)
    summary.db = params.db
    try:
        with run_lock(params.db, params.lock_timeout_seconds, holder=f"run {run_id}"):
            check_room(params.db)  # found now, not after the whole run
            source = prepare_source(params)
            open_run(params, run_id, source, applied)
            try:
                summary = _run(params, run_id, source, timings, clock)
            except Exception as exc:
                summary.message = one_line(exc)
                _fail(params, run_id, summary.message)
            except BaseException as exc:  # SIGTERM (Prefect's TerminationSignal), Ctrl-C
                reason = signals.stop_reason(exc)
                if reason is not None:
                    logger.error("run %s %s: recorded as failed", run_id, reason)
                    _fail(params, run_id, reason, refresh=False)
                    signals.note_stopped(run_id)
                raise
    except REFUSALS as exc:
        summary.message, summary.refused = one_line(exc), True
    if summary.status == "published" and not summary.analyst_copy_problem:
        return Completed(data=summary, message=f"published run {run_id}")
    if summary.analyst_copy_problem:
        return Failed(data=summary, message=f"run {run_id} {summary.status}, but "
                      f"{summary.analyst_copy_problem}")
    if summary.refused:
        logger.error("not started: %s", summary.message)
        return Failed(data=summary, message=f"not started: {summary.message}")
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

    ingest_report = ingest(params.db, source, run_id, progress)
    lap("ingest")
    fault_point("after_ingest")
    snap = snapshot_task(params)
    params, tuning = tuning_task(params)
    input_check = check_events_task(snap, params, checks.GxRun.for_db(params.db, run_id))
    if not input_check.passed:
        raise RunFailed("input checks failed: " + "; ".join(input_check.failures()))
    data = dataset_task(snap, params, run_id)
    fingerprint = snap.fingerprint()
    del snap  # every later step works on the dataset's integer codes: the id strings can go
    release_freed_memory()  # what only a reference cycle still held, and the C heap's free pages
    lap("snapshot_and_checks")
    evaluation = evaluate_task(data, params, progress) if params.evaluate else None
    alarm = alarm_task(evaluation, params) if params.evaluate else None
    record_evaluation_task(params, run_id, evaluation, tuning)
    release_freed_memory()
    lap("evaluate")
    fault_point("after_evaluate")
    # The run's candidates are staged as Parquet here until published, then removed.
    with _staging_folder(run_id) as staging:
        recs = _recommend(data, params, evaluation, staging, progress)
        release_freed_memory()
        lap("recommend")
        output_check = check_output_task(
            recs, params.top_k, checks.GxRun.for_db(params.db, run_id)
        )
        outputs = assemble_outputs(recs, evaluation, [input_check])
        del recs  # the lists now live, with their ids, in `outputs` only
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
            passed, message = _regression_gate(params, fingerprint, evaluation, protocol)
            status = "published" if passed else "rejected"
            get_run_logger().info(message)
        verdict = Verdict(status, message, strategy, protocol)
        publish_task(params, run_id, outputs, verdict, timings, progress)
        copy_problem = ""
        try:  # the run is over in the warehouse whatever happens here: never fail it now
            refresh_task(params)
        except DatabaseDamaged:
            raise  # the warehouse is damaged: not a copy problem, the run fails naming it
        except Exception as exc:
            copy_problem = (
                f"the analyst copy {params.db} still shows the previous state ({one_line(exc)}); "
                "the next command that changes the warehouse refreshes it"
            )
            get_run_logger().error("run %s %s, but %s", run_id, status, copy_problem)
        lap("publish")
        fault_point("after_publish")
        report_task(
            params, run_id, verdict, outputs, previous,
            [input_check, output_check, *([alarm] if alarm is not None else [])],
            ingest_report, timings, _plan_shown(evaluation),
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
