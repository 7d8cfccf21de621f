"""Publishing: every output of a run lands in one transaction, together with its status flip.

`recommendations_latest` is a view over the last run whose status is 'published', so until the
COMMIT below succeeds, analysts keep seeing the previous run — also if this process is killed.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import duckdb
import numpy as np
import polars as pl

from tasks.candidates import PUBLISHED_SCHEMA
from tasks.fault_injection import fault_point
from tasks.warehouse.connection import (
    CANDIDATES_FILE,
    database_file,
    read_sql,
    run_candidates_folder,
    runs_folder,
)
from tasks.warehouse.integrity import fsync_dir, fsync_file

FinalStatus = Literal["published", "rejected"]
KEEP_ALL = 1_000_000_000
#: What `publish_run` reports as done, in order (the last is the commit that makes it visible).
PUBLISH_STEPS = ("wrote the candidates", "inserted the lists", "recorded metrics and status",
                 "committed")
PUBLISH_MEMORY_LIMIT = "1GB"  # DuckDB's working memory while publishing; the rest spills to disk


@dataclass
class RunOutputs:
    """Everything a run writes besides its `runs` row."""

    recommendations: pl.DataFrame  # user_id, rank, item_id, score, contributions, reason, segment
    candidates: pl.DataFrame  # modality, user_idx, item_idx, score, rank (integer-coded)
    metrics: pl.DataFrame  # model, metric, k, segment, value
    checks: pl.DataFrame  # suite, expectation, column_name, success, observed_value
    user_ids: np.ndarray  # user_idx -> user_id, for the candidates
    item_ids: np.ndarray  # item_idx -> item_id
    candidate_files: list[Path] = field(default_factory=list)  # staged as published, if any
    n_candidates: int = 0  # rows in `candidates` or in the staged files


@dataclass(frozen=True)
class Verdict:
    """How a finished run ends: its status and message, the fusion it used, how it evaluated."""

    status: FinalStatus
    message: str
    strategy: str
    protocol: str | None = None


def _insert(con: duckdb.DuckDBPyConnection, frame: pl.DataFrame, sql_file: str) -> None:
    if frame.height == 0:
        return
    with _staged(con, {"staged_output": frame.to_arrow()}):
        con.execute(read_sql(sql_file))


@contextmanager
def _staged(con: duckdb.DuckDBPyConnection, frames: Mapping[str, Any]) -> Iterator[None]:
    """Register frames under names for the statements inside.

    A failed statement aborts the transaction, which then refuses even `unregister`; ROLLBACK
    drops the names anyway, so that refusal must not replace the statement's own error.
    """
    try:
        for name, frame in frames.items():
            con.register(name, frame)
        yield
    finally:
        with suppress(duckdb.TransactionException):
            for name in frames:
                con.unregister(name)


def _with_std_error(metrics: pl.DataFrame) -> pl.DataFrame:
    if "std_error" in metrics.columns:
        return metrics
    return metrics.with_columns(pl.lit(None, pl.Float64).alias("std_error"))


def _id_table(kind: str, ids: np.ndarray) -> Any:
    """Arrow table index -> string id, for joining ids onto integer-coded rows in SQL."""
    return pl.DataFrame(
        {f"{kind}_idx": np.arange(len(ids), dtype=np.int32),
         f"{kind}_id": pl.Series(ids, dtype=pl.String)}
    ).to_arrow()


def _write_candidates(
    con: duckdb.DuckDBPyConnection, run_id: str, outputs: RunOutputs
) -> Path | None:
    """The run's candidates, its largest output (users × modalities × N rows), as Parquet files
    beside the database: gathered in a folder under a temporary name, flushed, then renamed
    into place; the `candidates` view shows them once the run's status commits.

    Staged files are already as published (each shard wrote its own with string ids), so they
    are linked in, not rewritten; a file that is not as published is refused. Candidates held in
    memory (integer-coded) have their ids joined on inside DuckDB, which streams."""
    if outputs.n_candidates == 0:
        return None
    file = database_file(con)
    if file is None:
        raise RuntimeError("a run's candidates are kept beside its database file: none here")
    final = run_candidates_folder(file, run_id)
    partial = final.with_name(f".partial-{run_id}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    # For the rest of publishing too. Row order in a file or table does not matter (readers
    # sort); without it DuckDB streams writes and spills past its memory limit instead of
    # buffering every row.
    con.execute("SET preserve_insertion_order = false")
    con.execute(f"SET memory_limit = '{PUBLISH_MEMORY_LIMIT}'")
    try:
        if outputs.candidate_files:
            _link_staged(con, run_id, outputs.candidate_files, partial)
        else:
            _copy_in_memory(con, run_id, outputs, partial / CANDIDATES_FILE)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if final.exists():  # an earlier attempt of this run that did not commit
        shutil.rmtree(final)
    os.replace(partial, final)
    fsync_dir(final.parent)
    return final


def _refuse_incomplete(con: duckdb.DuckDBPyConnection, run_id: str, relation: str) -> None:
    [(missing,)] = con.execute(read_sql("candidates_incomplete.sql").format(relation=relation)
                               ).fetchall()
    if missing:
        raise ValueError(f"run {run_id}: {missing} candidate(s) without a score, rank, "
                         "modality or id: not published")


def _link_staged(
    con: duckdb.DuckDBPyConnection, run_id: str, files: list[Path], folder: Path
) -> None:
    """Staged files into `folder`: hard links where the file system allows (no bytes copied),
    copies elsewhere; each flushed to disk before the folder is renamed into place."""
    for f in files:
        schema = dict(pl.read_parquet_schema(f))
        if schema != dict(PUBLISHED_SCHEMA):
            raise ValueError(f"run {run_id}: staged candidates {f} have columns {schema}, not "
                             f"the published {dict(PUBLISHED_SCHEMA)}: not published")
    _refuse_incomplete(con, run_id, f"read_parquet({_sql_list(files)})")
    for n, f in enumerate(files):
        target = folder / f"candidates-{n:05d}.parquet"
        try:
            os.link(f, target)
        except OSError:  # another file system (a temporary folder on tmpfs), or no links
            shutil.copyfile(f, target)
        fsync_file(target)


def _copy_in_memory(
    con: duckdb.DuckDBPyConnection, run_id: str, outputs: RunOutputs, target: Path
) -> None:
    staged: dict[str, Any] = {
        "staged_users": _id_table("user", outputs.user_ids),
        "staged_items": _id_table("item", outputs.item_ids),
        "staged_candidates": outputs.candidates.to_arrow(),
    }
    with _staged(con, staged):
        published = read_sql("publish_candidates.sql")
        _refuse_incomplete(con, run_id, f"({published}\n)")
        con.execute(f"COPY ({published}\n) TO {_sql_string(target)} "
                    "(FORMAT parquet, COMPRESSION zstd)")
    fsync_file(target)


def _sql_string(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _sql_list(paths: list[Path]) -> str:
    return "[" + ", ".join(_sql_string(p) for p in paths) + "]"


def prune_candidate_files(con: duckdb.DuckDBPyConnection, keep: int | None) -> list[str]:
    """Remove the files of runs the retention rule drops, and of runs that never finished (a
    run killed after writing its file, before its COMMIT); returns the run ids removed."""
    file = database_file(con)
    if file is None or not runs_folder(file).is_dir():
        return []
    dropped = {r for (r,) in con.execute(read_sql("runs_beyond_retention.sql"),
                                          {"keep": keep or KEEP_ALL}).fetchall()}
    allowed = {r for (r,) in con.execute(read_sql("candidates_finished_runs.sql")).fetchall()}
    removed = []
    for folder in sorted(runs_folder(file).iterdir()):
        run = folder.name.removeprefix("run_id=")
        if folder.name.startswith(".partial-") or (
            folder.name.startswith("run_id=") and run != "_none"
            and (run in dropped or run not in allowed)
        ):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(run)
    return removed


def publish_run(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    outputs: RunOutputs,
    status: FinalStatus,
    fusion_strategy: str,
    timings: dict[str, float],
    message: str = "",
    keep_recommendations: int | None = None,
    keep_candidates: int | None = None,
    evaluation_protocol: str | None = None,
    on_step: Callable[[int, int, str], None] | None = None,
) -> None:
    """Write a finished run atomically (rows + status), then apply retention in the same commit.

    `on_step(done, total, what)` is told after each of the PUBLISH_STEPS (progress at scale).

    Whatever fails (an insert, the disk filling up at COMMIT), the error raised is that failure:
    a ROLLBACK that cannot run (DuckDB ends a failed COMMIT's transaction itself) never hides it.
    """
    run = pl.lit(run_id).alias("run_id")
    written: Path | None = None
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if on_step is not None:
            on_step(done, len(PUBLISH_STEPS), PUBLISH_STEPS[done - 1])

    con.execute("BEGIN TRANSACTION")
    try:
        if con.execute(read_sql("run_is_open.sql"), {"run_id": run_id}).fetchall() == [(0,)]:
            raise RuntimeError(f"run {run_id} is not an open run in this database: not published")
        written = _write_candidates(con, run_id, outputs)
        step()
        fault_point("publish:after_candidates")
        _insert(con, outputs.recommendations.with_columns(run), "publish_recommendations.sql")
        step()
        fault_point("publish:after_recommendations")
        _insert(con, _with_std_error(outputs.metrics).with_columns(run), "publish_metrics.sql")
        _insert(
            con,
            outputs.checks.with_columns(run, pl.lit(datetime.now(UTC)).alias("checked_at")),
            "publish_checks.sql",
        )
        flipped = con.execute(
            read_sql("publish_run.sql"),
            {
                "run_id": run_id,
                "status": status,
                "finished_at": datetime.now(UTC),
                "n_recommendations": outputs.recommendations.height,
                "fusion_strategy": fusion_strategy,
                "evaluation_protocol": evaluation_protocol,
                "timings": json.dumps(timings),
                "message": message or None,
            },
        ).fetchall()
        if not flipped:
            raise RuntimeError(f"run {run_id} is not an open run in this database: not published")
        if keep_recommendations:
            con.execute(
                "DELETE FROM recommendations WHERE run_id IN "
                f"({read_sql('runs_beyond_retention.sql')})",  # our own SQL, one rule for both
                {"keep": keep_recommendations},
            )
        step()
        fault_point("publish:before_commit")
        con.execute("COMMIT")
        step()
    except BaseException as exc:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error as rollback_error:
            exc.add_note(f"(the rollback that followed failed too: {rollback_error})")
        if written is not None:  # the run did not commit: its file must not stay
            shutil.rmtree(written, ignore_errors=True)
        raise
    prune_candidate_files(con, keep_candidates)


def last_published_ndcg(
    con: duckdb.DuckDBPyConnection, fingerprint: str, k: int, protocol: str
) -> tuple[float, str] | None:
    """The regression gate's baseline: fused NDCG@K and run id of the last comparable published
    run (same data fingerprint, same evaluation protocol); None when there is none."""
    rows = con.execute(
        read_sql("last_published_ndcg.sql"),
        {"fingerprint": fingerprint, "k": k, "protocol": protocol},
    ).fetchall()
    return (float(rows[0][0]), str(rows[0][1])) if rows else None
