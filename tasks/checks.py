"""Data checks with Great Expectations: on the events going in and the recommendations going out.

GX validates pandas DataFrames here (its SQL path over DuckDB is broken, and it cannot read Polars).
Rules GX has no expectation for (contiguous ranks, scores non-increasing with rank, nothing already
seen) are turned into derived columns in Polars first, then asserted with plain GX expectations,
so every rule still shows up as one named expectation in `check_results`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

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


@dataclass(frozen=True)
class CheckOutcome:
    """One suite's results; `passed` is False when any blocking expectation failed."""

    suite: str
    results: pl.DataFrame
    gx_result: Any = field(default=None, repr=False)  # GX's own result, for its HTML page

    def html(self) -> str | None:
        """Great Expectations' own rendering of this validation, as a standalone HTML page."""
        if self.gx_result is None:
            return None
        from great_expectations.render.renderer import ValidationResultsPageRenderer
        from great_expectations.render.view import DefaultJinjaPageView

        return str(
            DefaultJinjaPageView().render(ValidationResultsPageRenderer().render(self.gx_result))
        )

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


def _run_suite(
    suite_name: str, frame: pl.DataFrame, expectations: Iterable[tuple[Any, bool]]
) -> CheckOutcome:
    gx = _gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_definition = (
        context.data_sources.add_pandas("recfusion")
        .add_dataframe_asset(name=suite_name)
        .add_batch_definition_whole_dataframe("whole")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=suite_name))
    for expectation, blocking in expectations:
        # GX may reorder results, so whether a rule blocks travels with the expectation itself.
        expectation.meta = {**(expectation.meta or {}), "blocking": blocking}
        suite.add_expectation(expectation)
    batch = batch_definition.get_batch(batch_parameters={"dataframe": frame.to_pandas()})
    result = batch.validate(suite)
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
    outcome = CheckOutcome(suite_name, pl.DataFrame(rows, schema=CHECK_SCHEMA), result)
    for failure in outcome.failures():
        log.warning("check %s failed: %s", suite_name, failure)
    return outcome


def check_events(
    events: pl.DataFrame, known_event_types: Iterable[str], now: datetime | None = None
) -> CheckOutcome:
    """Input suite: keys present, timestamps not in the future, values finite, types known.

    An unknown event type is reported but does not block: it still counts with the default weight.
    """
    gxe = _gx().expectations
    now = now or datetime.now(UTC)
    frame = events.select(
        "user_id",
        "item_id",
        "event_type",
        (pl.col("ts").dt.epoch("ms") / 1000.0).alias("ts_epoch"),
        pl.col("value").is_finite().fill_null(False).alias("value_is_finite"),
    )
    expectations = [
        (gxe.ExpectColumnValuesToNotBeNull(column="user_id"), True),
        (gxe.ExpectColumnValuesToNotBeNull(column="item_id"), True),
        (gxe.ExpectColumnValuesToNotBeNull(column="event_type"), True),
        (gxe.ExpectColumnValuesToNotBeNull(column="ts_epoch"), True),
        (
            gxe.ExpectColumnValuesToBeBetween(column="ts_epoch", max_value=now.timestamp() + 86400),
            True,
        ),
        (gxe.ExpectColumnValuesToBeInSet(column="value_is_finite", value_set=[True]), True),
        (
            gxe.ExpectColumnValuesToBeInSet(
                column="event_type", value_set=sorted(known_event_types)
            ),
            False,
        ),
    ]
    return _run_suite("events_input", frame, expectations)


def recommendation_rule_columns(recs: pl.DataFrame, seen: pl.DataFrame) -> pl.DataFrame:
    """Derive one column per output rule from (user_id, item_id, rank, score) rows.

    `seen` holds the (user_id, item_id) pairs the lists were built from.
    """
    seen_pairs = (
        seen.select("user_id", "item_id").unique().with_columns(pl.lit(True).alias("already_seen"))
    )
    return (
        recs.select("user_id", "item_id", "rank", "score")
        .sort("user_id", "rank")
        .with_columns(
            pl.int_range(1, pl.len() + 1).over("user_id").alias("expected_rank"),
            pl.len().over("user_id").alias("list_length"),
            pl.col("score").is_finite().fill_null(False).alias("score_is_finite"),
            (pl.col("score").shift(1).over("user_id") - pl.col("score"))
            .fill_null(0.0)
            .alias("score_drop"),
        )
        .join(seen_pairs, on=["user_id", "item_id"], how="left")
        .with_columns(pl.col("already_seen").fill_null(False))
    )


def check_recommendations(recs: pl.DataFrame, seen: pl.DataFrame, k: int) -> CheckOutcome:
    """Output suite; a failure here means the run is not published."""
    gxe = _gx().expectations
    frame = recommendation_rule_columns(recs, seen)
    expectations = [
        (gxe.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "item_id"]), True),
        (gxe.ExpectColumnPairValuesToBeEqual(column_A="rank", column_B="expected_rank"), True),
        (gxe.ExpectColumnValuesToBeBetween(column="list_length", min_value=1, max_value=k), True),
        (gxe.ExpectColumnValuesToBeInSet(column="score_is_finite", value_set=[True]), True),
        (gxe.ExpectColumnValuesToBeBetween(column="score_drop", min_value=-1e-9), True),
        (gxe.ExpectColumnValuesToBeInSet(column="already_seen", value_set=[False]), True),
    ]
    return _run_suite("recommendations_output", frame, expectations)
