"""A run's outputs as they are published: lists with reasons and segments, candidates, metrics
and check results, with string ids."""

from __future__ import annotations

import polars as pl

from tasks.kernels.blocks import CANDIDATE_SCHEMA
from tasks.outputs.checks import CheckOutcome
from tasks.recommend import Evaluation, Recommendations
from tasks.warehouse.publish import RunOutputs

#: The metrics frame of a run that was not evaluated (no rows, the published columns).
METRIC_SCHEMA = {"model": pl.String, "metric": pl.String, "k": pl.Int32, "segment": pl.String,
                 "value": pl.Float64}


def assemble_outputs(
    recs: Recommendations, evaluation: Evaluation | None, check_outcomes: list[CheckOutcome]
) -> RunOutputs:
    data = recs.data
    explained = recs.fused.join(  # explained shard by shard (tasks/shards.py)
        recs.segments.select("user_idx", "segment"), on="user_idx", how="left"
    )
    recommendations = data.with_ids(explained).select(
        "user_id", "rank", "item_id", "score", "contributions", "reason", "segment"
    )
    candidates = recs.candidates.candidates.cast(CANDIDATE_SCHEMA)  # type: ignore[arg-type]
    metrics = evaluation.metrics if evaluation else pl.DataFrame(schema=METRIC_SCHEMA)
    check_frame = pl.concat([c.results.drop("blocking") for c in check_outcomes])
    return RunOutputs(
        recommendations, candidates, metrics, check_frame, data.user_ids, data.item_ids,
        recs.candidate_files, recs.n_candidates,
    )
