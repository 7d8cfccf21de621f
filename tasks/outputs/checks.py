"""Data checks with Great Expectations: on the events going in and the recommendations going out.

GX validates pandas DataFrames here (its SQL path over DuckDB is broken, and it cannot read Polars).
Rules GX has no expectation for (contiguous ranks, scores non-increasing with rank, nothing already
seen) are turned into derived columns in Polars first, then asserted with plain GX expectations,
so every rule still shows up as one named expectation in `check_results`.

A run's checks go to a GX *file* context beside its database (`gx_dir`): one pandas datasource,
one data asset, expectation suite, validation definition and checkpoint per suite, all created on
first use and kept in step with this code on every run; each checkpoint run is named after the run
id and updates the context's persistent Data Docs site, which `report.html` links to. What changes
from run to run (now, the known event types, K) is passed as expectation parameters, so the
stored suites stay the same. Without a `GxRun` the same checkpoint runs in an ephemeral context
(nothing written), for callers that have no database.
"""

from __future__ import annotations

import fcntl
import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import polars as pl

log = logging.getLogger(__name__)

CHECK_SCHEMA = {
    "suite": pl.String,
    "expectation": pl.String,
    "column_name": pl.String,
    "success": pl.Boolean,
    "observed_value": pl.String,
    "blocking": pl.Boolean,
}

GX_FOLDER = "recfusion-gx"  # beside the database; one context per database inside it
DATASOURCE = "recfusion"
BATCH = "whole"
SITE = "local_site"
#: Validations listed on the Data Docs index (GX reads each listed result to draw it); older
#: pages stay on disk and each run's report links its own.
INDEX_LIMIT = 100
LOCK_TIMEOUT_SECONDS = 600.0
_SITE_CONFIG: dict[str, Any] = {
    "class_name": "SiteBuilder",
    "show_how_to_buttons": False,
    "store_backend": {
        "class_name": "TupleFilesystemStoreBackend",
        "base_directory": f"uncommitted/data_docs/{SITE}/",
    },
    "site_index_builder": {
        "class_name": "DefaultSiteIndexBuilder",
        "validation_results_limit": INDEX_LIMIT,
    },
    "site_section_builders": {
        "validations": {
            "renderer": {
                "module_name": "tasks.outputs.gx_docs",
                "class_name": "AssetNamedValidationResultsPageRenderer",
            }
        }
    },
}
# GX keeps one "current" context per process; one suite at a time per process keeps it ours.
_PROCESS_LOCK = threading.Lock()


class GxContextBusy(RuntimeError):
    """Another process held a database's GX context for longer than `LOCK_TIMEOUT_SECONDS`."""


def gx_dir(db: str | Path) -> Path:
    """The GX file context of one database: `<db dir>/recfusion-gx/<db file name>/`.

    Named after the database file, so databases that share a folder keep their own context.
    """
    path = Path(db).resolve()
    return path.parent / GX_FOLDER / path.name


@dataclass(frozen=True)
class GxRun:
    """Where a run's validations are kept: a GX file context, under the run's id."""

    root: Path
    run_id: str

    @classmethod
    def for_db(cls, db: str | Path, run_id: str) -> GxRun:
        return cls(gx_dir(db), run_id)

    @property
    def docs_index(self) -> Path:
        """The Data Docs site's index page (every run's validations, newest first)."""
        return self.root / "uncommitted" / "data_docs" / SITE / "index.html"


@dataclass(frozen=True)
class CheckOutcome:
    """One suite's results; `passed` is False when any blocking expectation failed."""

    suite: str
    results: pl.DataFrame
    gx_result: Any = field(default=None, repr=False)  # GX's own result, for its HTML page
    docs_page: Path | None = None  # this validation's page in the Data Docs site, if kept
    docs_index: Path | None = None  # that site's index page
    docs_problem: str | None = None  # why the file context could not be used, if it could not

    def html(self) -> str | None:
        """Great Expectations' own rendering of this validation, as a standalone HTML page."""
        if self.gx_result is None:
            return None
        from great_expectations.render.view import DefaultJinjaPageView

        from tasks.outputs.gx_docs import AssetNamedValidationResultsPageRenderer

        page = AssetNamedValidationResultsPageRenderer().render(self.gx_result)
        return str(DefaultJinjaPageView().render(page))

    @property
    def passed(self) -> bool:
        blocking = self.results.filter(pl.col("blocking"))
        return bool(blocking["success"].all()) if blocking.height else True

    def failures(self) -> list[str]:
        failed = self.results.filter(~pl.col("success"))
        return [
            f"{r['expectation']}({r['column_name'] or ''}): {r['observed_value']}"
            for r in failed.iter_rows(named=True)
        ]


def _gx() -> Any:
    """Import GX lazily and quietly: it is slow to import and chatty on stderr."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import great_expectations as gx
    return gx


@contextmanager
def _context_lock(root: Path | None) -> Iterator[None]:
    """One suite at a time in this process and, for a file context, across processes.

    Each run rewrites the context's suite and checkpoint files and its Data Docs index; runs on
    one database are serialised by the run lock already, this also covers anything else.
    """
    with _PROCESS_LOCK:
        if root is None:
            yield
            return
        root.mkdir(parents=True, exist_ok=True)
        with (root / ".recfusion.lock").open("a") as handle:
            deadline = time.monotonic() + LOCK_TIMEOUT_SECONDS
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise GxContextBusy(
                            f"Great Expectations context {root} is held by another process "
                            f"for more than {LOCK_TIMEOUT_SECONDS:.0f} s"
                        ) from None
                    time.sleep(0.2)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _file_context(gx: Any, root: Path) -> Any:
    """The database's GX file context, created on first use; its settings kept as they must be."""
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="file", context_root_dir=str(root))
    variables = context.variables
    bars = variables.progress_bars  # a dict once read back from the file
    bars_on = bars is None or (
        bars.get("globally", True) if isinstance(bars, dict) else getattr(bars, "globally", True)
    )
    if (
        bars_on
        or variables.data_docs_sites != {SITE: _SITE_CONFIG}
        or context.config.analytics_enabled is not False
    ):
        variables.progress_bars = ProgressBarsConfig(globally=False)
        variables.data_docs_sites = {SITE: _SITE_CONFIG}
        context.config.analytics_enabled = False
        variables.save()
        context = gx.get_context(mode="file", context_root_dir=str(root))
    return context


def _ephemeral_context(gx: Any) -> Any:
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def _checkpoint(
    gx: Any,
    context: Any,
    suite_name: str,
    asset_name: str,
    expectations: Iterable[tuple[Any, bool]],
    update_docs: bool,
) -> Any:
    """The suite's checkpoint, added or brought in step with this code (ids stay stable)."""
    try:
        source = context.data_sources.get(DATASOURCE)
    except KeyError:
        source = context.data_sources.add_pandas(DATASOURCE)
    try:
        asset = source.get_asset(asset_name)
    except LookupError:
        asset = source.add_dataframe_asset(name=asset_name)
    try:
        batch_definition = asset.get_batch_definition(BATCH)
    except KeyError:
        batch_definition = asset.add_batch_definition_whole_dataframe(BATCH)
    suite = gx.ExpectationSuite(name=suite_name)
    for expectation, blocking in expectations:
        # GX may reorder results, so whether a rule blocks travels with the expectation itself.
        expectation.meta = {**(expectation.meta or {}), "blocking": blocking}
        suite.expectations.append(expectation)
    validation = gx.ValidationDefinition(name=suite_name, data=batch_definition, suite=suite)
    actions = [gx.checkpoint.UpdateDataDocsAction(name="update_data_docs", site_names=[SITE])]
    return context.checkpoints.add_or_update(
        gx.Checkpoint(
            name=suite_name,
            validation_definitions=[validation],
            actions=actions if update_docs else [],
        )
    )


def _release_batch(context: Any) -> None:
    """Drop the validated frame from GX's caches: the context is kept for the process, and its
    execution engine held the last frame it checked (at 5M events, the pandas copy of the
    events) and every metric computed on it (a column of 5M per expectation: 0.14 GB at 100k
    users) through the rest of the run. Both are keyed by the batch, which no later validation
    reads again. Only memory is at stake: a failure here is logged, never the check's."""
    try:
        engine = context.data_sources.get(DATASOURCE).get_execution_engine()
        engine.batch_manager.reset_batch_cache()
        engine.batch_manager.batch_data_cache.clear()
        engine._metric_cache.clear()
    except Exception as exc:  # an internal of GX that moved: keep the result, lose the memory
        log.warning("Great Expectations kept the checked frame in memory: %s", exc)


def _local_path(url: str | None) -> Path | None:
    if not url:
        return None
    parsed = urlparse(url)
    return Path(unquote(parsed.path)) if parsed.scheme == "file" else None


def _validate(
    gx: Any,
    suite_name: str,
    asset_name: str,
    data: Any,
    expectations: list[tuple[Any, bool]],
    parameters: dict[str, Any],
    gx_run: GxRun | None,
) -> tuple[Any, Path | None]:
    """Run the suite's checkpoint; GX's result and, in a file context, its Data Docs page."""
    from great_expectations.core.run_identifier import RunIdentifier

    root = gx_run.root if gx_run else None
    with _context_lock(root):
        context = _file_context(gx, root) if root else _ephemeral_context(gx)
        checkpoint = _checkpoint(
            gx, context, suite_name, asset_name, expectations, update_docs=root is not None
        )
        run = RunIdentifier(run_name=gx_run.run_id if gx_run else None, run_time=datetime.now(UTC))
        checkpoint_result = checkpoint.run(
            batch_parameters={"dataframe": data},
            expectation_parameters=parameters,
            run_id=run,
        )
        _release_batch(context)
        ((key, result),) = checkpoint_result.run_results.items()
        if root is None:
            return result, None
        urls = context.get_docs_sites_urls(resource_identifier=key, site_name=SITE)
        return result, _local_path(urls[0].get("site_url") if urls else None)


def _run_suite(
    suite_name: str,
    asset_name: str,
    frame: pl.DataFrame,
    expectations: Callable[[], list[tuple[Any, bool]]],
    parameters: dict[str, Any],
    gx_run: GxRun | None,
) -> CheckOutcome:
    """Validate and turn GX's result into `check_results` rows.

    A file context that cannot be used (a damaged file, a full disk, held too long) costs the
    run its Data Docs page, not its checks: the suite is then validated in memory, and why is
    logged and kept in the outcome for the report.
    """
    gx = _gx()
    data = frame.to_pandas()
    problem: str | None = None
    try:
        result, page = _validate(
            gx, suite_name, asset_name, data, expectations(), parameters, gx_run
        )
    except Exception as exc:
        if gx_run is None:
            raise
        problem = f"{type(exc).__name__}: {exc}"
        log.warning(
            "Great Expectations context %s could not be used (%s); %s is checked in memory, "
            "without a Data Docs page",
            gx_run.root,
            problem,
            suite_name,
        )
        result, page = _validate(gx, suite_name, asset_name, data, expectations(), parameters, None)
    rows = []
    for r in result.results:
        blocking = bool((r.expectation_config.meta or {}).get("blocking", True))
        kwargs = r.expectation_config.kwargs
        column = kwargs.get("column") or ",".join(
            kwargs.get("column_list")
            or [c for c in (kwargs.get("column_A"), kwargs.get("column_B")) if c]
        )
        observed = r.result.get("observed_value")
        if observed is None and "unexpected_count" in r.result:
            observed = f"{r.result['unexpected_count']} unexpected"
            sample = r.result.get("partial_unexpected_list") or []
            if sample:
                observed += f", e.g. {sample[:3]}"
        rows.append(
            {
                "suite": suite_name,
                "expectation": r.expectation_config.type,
                "column_name": column or None,
                "success": bool(r.success),
                "observed_value": None if observed is None else str(observed),
                "blocking": blocking,
            }
        )
    outcome = CheckOutcome(
        suite_name,
        pl.DataFrame(rows, schema=CHECK_SCHEMA),
        result,
        page,
        gx_run.docs_index if gx_run else None,
        problem,
    )
    for failure in outcome.failures():
        log.warning("check %s failed: %s", suite_name, failure)
    return outcome


def check_events(
    events: pl.DataFrame,
    known_event_types: Iterable[str],
    now: datetime | None = None,
    gx_run: GxRun | None = None,
) -> CheckOutcome:
    """Input suite: keys present, timestamps not in the future, values finite, types known.

    An unknown event type is reported but does not block: it still counts with the default weight.
    """
    now = now or datetime.now(UTC)

    def present(column: str) -> pl.Expr:
        # What the suite asks of an id is that it is there: True, or null where it is not. A
        # pandas column of millions of id strings held ~0.9 GB more at 5M events. A coded
        # snapshot's events carry the id's code (`user_idx`) instead: the same question.
        source = column if column in events.columns else column.replace("_id", "_idx")
        return pl.when(pl.col(source).is_null()).then(None).otherwise(True).alias(column)

    frame = events.select(
        present("user_id"),
        present("item_id"),
        pl.col("event_type").cast(pl.Categorical),
        (pl.col("ts").dt.epoch("ms") / 1000.0).alias("ts_epoch"),
        pl.col("value").is_finite().fill_null(False).alias("value_is_finite"),
    )
    return _run_suite(
        "events_input",
        "events",
        frame,
        _events_expectations,
        {
            "latest_ts_epoch": now.timestamp() + 86400,  # a day of clock skew is not "the future"
            "known_event_types": sorted(known_event_types),
        },
        gx_run,
    )


def _events_expectations() -> list[tuple[Any, bool]]:
    """The input suite's rules, each with whether it blocks the run; fresh objects per call."""
    gxe = _gx().expectations
    return [
        (gxe.ExpectColumnValuesToNotBeNull(column="user_id"), True),
        (gxe.ExpectColumnValuesToNotBeNull(column="item_id"), True),
        (gxe.ExpectColumnValuesToNotBeNull(column="event_type"), True),
        (gxe.ExpectColumnValuesToNotBeNull(column="ts_epoch"), True),
        (
            gxe.ExpectColumnValuesToBeBetween(
                column="ts_epoch", max_value={"$PARAMETER": "latest_ts_epoch"}
            ),
            True,
        ),
        (gxe.ExpectColumnValuesToBeInSet(column="value_is_finite", value_set=[True]), True),
        (
            gxe.ExpectColumnValuesToBeInSet(
                column="event_type", value_set={"$PARAMETER": "known_event_types"}
            ),
            False,
        ),
    ]


def _keys(frame: pl.DataFrame) -> tuple[str, str]:
    """The (user, item) key columns: integer codes when the frame has them, else string ids."""
    if {"user_idx", "item_idx"} <= set(frame.columns):
        return "user_idx", "item_idx"
    return "user_id", "item_id"


def recommendation_rule_columns(recs: pl.DataFrame, seen: pl.DataFrame) -> pl.DataFrame:
    """One row per list and one column per output rule, from (user, item, rank, score) rows.

    The rules are about lists, so Great Expectations checks one row per user; a failure counts
    the lists that break a rule. A run checks its lists on integer codes (user_idx, item_idx),
    before the ids are put on: a code maps to exactly one id, so every rule holds for the
    published rows exactly when it holds here. Handing GX every row with its two string ids (a
    pandas frame of 10M rows, hashed for its batch id) was the largest memory peak of a 1M-user
    night. `seen` holds the pairs the lists were built from, keyed like `recs`.
    """
    user, item = _keys(recs)
    seen_users = recs.join(seen, on=[user, item], how="semi").get_column(user).unique()
    # Row by row on the sorted rows, then one plain aggregate per list: a window per list (the
    # previous rank or score `over` the user) took 5 s and 0.5 GB more for 1M lists.
    same_list = pl.col(user) == pl.col(user).shift(1)
    score = pl.col("score").cast(pl.Float64)
    rows = (
        recs.select(user, item, "rank", "score")
        .sort(user, "rank", maintain_order=True)
        .with_columns(
            (pl.col("rank") == pl.when(same_list).then(pl.col("rank").shift(1) + 1).otherwise(1))
            .alias("in_order"),
            # A rise from the previous rank (NaN is not one: `scores_finite` fails for it).
            pl.when(same_list).then(score - score.shift(1)).fill_nan(None).alias("rise"),
        )
    )
    return rows.group_by(user, maintain_order=True).agg(
        pl.len().alias("list_length"),
        pl.col("in_order").all().alias("ranks_in_order"),
        (pl.col(item).n_unique() == pl.len()).alias("items_unique"),
        pl.col("score").is_finite().fill_null(False).all().alias("scores_finite"),
        pl.col("rise").max().fill_null(0.0).alias("score_rise"),  # 0: a list of one
    ).with_columns(pl.col(user).is_in(seen_users.implode()).alias("already_seen"))


def check_recommendations(
    recs: pl.DataFrame, seen: pl.DataFrame, k: int, gx_run: GxRun | None = None
) -> CheckOutcome:
    """Output suite; a failure here means the run is not published. `recs` and `seen` are keyed
    by codes (user_idx, item_idx) or by ids (user_id, item_id), both the same way."""
    return _run_suite(
        "recommendations_output",
        "recommendations",
        recommendation_rule_columns(recs, seen),
        _recommendations_expectations,
        {"top_k": k},
        gx_run,
    )


def _recommendations_expectations() -> list[tuple[Any, bool]]:
    """The output suite's rules (all blocking, one row per list); fresh objects per call."""
    gxe = _gx().expectations
    return [
        (gxe.ExpectColumnValuesToBeInSet(column="items_unique", value_set=[True]), True),
        (gxe.ExpectColumnValuesToBeInSet(column="ranks_in_order", value_set=[True]), True),
        (
            gxe.ExpectColumnValuesToBeBetween(
                column="list_length", min_value=1, max_value={"$PARAMETER": "top_k"}
            ),
            True,
        ),
        (gxe.ExpectColumnValuesToBeInSet(column="scores_finite", value_set=[True]), True),
        (gxe.ExpectColumnValuesToBeBetween(column="score_rise", max_value=1e-9), True),
        (gxe.ExpectColumnValuesToBeInSet(column="already_seen", value_set=[False]), True),
    ]
