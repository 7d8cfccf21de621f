"""Score ranked lists against held-out truth and return metrics in the `run_metrics` shape.

Every list (each modality, each fusion strategy, the published `fused` list) goes through the same
function, per segment, so lifts are comparisons of like with like.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import polars as pl
import scipy.sparse as sp

from tasks.data.dataset import Dataset
from tasks.data.segments import EXACT_AUDIENCE_USERS, projected_audiences
from tasks.evaluation.metrics import (
    RANKING_METRICS,
    LabelledPool,
    UnitItemVectors,
    catalog_coverage,
    intra_list_diversity,
    novelty,
    per_user_metrics,
)

DIVERSITY_DIMENSIONS = 1024  # a mean over lists that share few items errs by < 0.005 (tested)


def diversity_item_vectors(
    data: Dataset, items: np.ndarray | None = None
) -> sp.csr_matrix | np.ndarray:
    """Item vectors for intra-list diversity: exact 0/1 audiences, projected on many users;
    with `items` (sorted), the rows of those items only."""
    if data.n_users <= EXACT_AUDIENCE_USERS:
        audiences = sp.csr_matrix(data.seen().T, dtype=np.float32)
        return audiences if items is None else audiences[items]
    return projected_audiences(data, DIVERSITY_DIMENSIONS, items=items)


METRIC_SCHEMA = {
    "model": pl.String,
    "metric": pl.String,
    "k": pl.Int32,
    "segment": pl.String,
    "value": pl.Float64,
    "std_error": pl.Float64,  # of a per-user mean (sd / sqrt(n)); null for whole-list metrics
}


def user_segments(data: Dataset, cold_history_max: int) -> pl.DataFrame:
    """Segment labels per user index: cold/warm by history length, and whether they have friends.

    `segment` is the blend a user gets (cold or warm); `with_friends` is an extra reporting slice.
    """
    history = data.history_lengths()
    friends = (
        np.diff(data.social.indptr)
        if data.social is not None
        else np.zeros(data.n_users, dtype=np.int64)
    )
    return pl.DataFrame(
        {
            "user_idx": np.arange(data.n_users, dtype=np.int32),
            "segment": np.where(history <= cold_history_max, "cold", "warm"),
            "with_friends": friends > 0,
            "history_length": history.astype(np.int64),
            "n_friends": friends.astype(np.int64),
        }
    )


def _long(
    model: str,
    k: int,
    segment: str,
    values: Mapping[str, float],
    errors: Mapping[str, float] | None = None,
) -> list[dict[str, object]]:
    errors = errors or {}
    return [
        {"model": model, "metric": m, "k": k, "segment": segment, "value": float(v),
         "std_error": errors.get(m)}
        for m, v in values.items()
    ]


def evaluate_lists(
    lists: Mapping[str, pl.DataFrame],
    truth: pl.DataFrame,
    data: Dataset,
    k: int,
    segments: pl.DataFrame,
    pool: pl.DataFrame | None = None,
    cold_pool: np.ndarray | None = None,
) -> pl.DataFrame:
    """Metrics at k of each named list (user_idx, item_idx, rank) against truth pairs.

    Ranking metrics (means with their standard errors and `n_users`) per segment: `all` (the
    evaluated users outside the cold pool: the headline, comparable with the yardstick splits),
    `cold_pool`, `cold`, `warm`, `with_friends`; beyond-accuracy metrics (coverage, novelty,
    intra-list diversity) and pool accuracy on the users of `all`.
    """
    truth = truth.rename({"user_idx": "user_id", "item_idx": "item_id"})
    evaluated = truth.select("user_id").unique().sort("user_id")
    pooled = pl.Series("user_id", [] if cold_pool is None else cold_pool, dtype=pl.Int32)
    main = evaluated.filter(~pl.col("user_id").is_in(pooled.implode()))
    if main.height == 0:
        main = evaluated
    seg = segments.rename({"user_idx": "user_id"})
    slices = {
        "all": main["user_id"],
        "cold_pool": evaluated.filter(pl.col("user_id").is_in(pooled.implode()))["user_id"],
        "cold": seg.filter(pl.col("segment") == "cold")["user_id"],
        "warm": seg.filter(pl.col("segment") == "warm")["user_id"],
        "with_friends": seg.filter(pl.col("with_friends"))["user_id"],
    }
    seen = data.seen()
    item_users = np.asarray(seen.sum(axis=0)).ravel()
    popularity = pl.DataFrame(
        {"item_id": np.arange(data.n_items, dtype=np.int32), "n_users": item_users}
    )
    # Vectors of the listed items only, made once for every list: a row per catalogue item
    # in float64, twice over, was 1.6 GB at 100k items, the 1M-user evaluation's peak.
    listed = np.unique(np.concatenate(
        [frame["item_idx"].to_numpy() for frame in lists.values()] or [np.zeros(0, np.int64)]
    ).astype(np.int64))
    row_of = pl.Series(np.full(data.n_items, -1, dtype=np.int64))
    row_of[listed] = np.arange(len(listed))
    item_vectors = UnitItemVectors.of(diversity_item_vectors(data, listed))
    labelled_pool = None if pool is None else LabelledPool.of(  # once for every list
        truth.filter(pl.col("user_id").is_in(main["user_id"].implode())),
        pool.rename({"user_idx": "user_id", "item_idx": "item_id"}))
    # Every item the snapshot knows can be recommended (content serves items nobody has had
    # yet), so coverage is a share of all of them and never exceeds 1.
    catalog = max(1, data.n_items)
    rows: list[dict[str, object]] = []
    for model, frame in lists.items():
        recs = frame.select(
            pl.col("user_idx").alias("user_id"), pl.col("item_idx").alias("item_id"), "rank"
        ).filter(pl.col("user_id").is_in(evaluated["user_id"].implode()))
        main_recs = recs.filter(pl.col("user_id").is_in(main["user_id"].implode()))
        per_user = per_user_metrics(recs, truth, k)
        for name, members in slices.items():
            part = per_user.filter(pl.col("user_id").is_in(members.implode()))
            if part.height == 0:
                continue
            means = part.select([pl.col(m).mean() for m in RANKING_METRICS]).row(0, named=True)
            errors = part.select(
                [(pl.col(m).std(ddof=1) / math.sqrt(part.height)) for m in RANKING_METRICS]
            ).row(0, named=True) if part.height > 1 else {}
            rows += _long(model, k, name, {**means, "n_users": part.height}, errors)
        extra = {
            "coverage": catalog_coverage(main_recs, catalog, k),
            "novelty": novelty(main_recs, popularity, max(1, data.n_users), k),
            "diversity": intra_list_diversity(
                main_recs.select("user_id", "rank", item_idx=row_of.gather(main_recs["item_id"])),
                item_vectors, k,
            ),
        }
        if labelled_pool is not None:
            extra["accuracy"] = labelled_pool.accuracy(main_recs, k)
        rows += _long(model, k, "all", extra)
    return pl.DataFrame(rows, schema=METRIC_SCHEMA)


def metric_value(
    metrics: pl.DataFrame, model: str, metric: str = "ndcg", segment: str = "all"
) -> float | None:
    hit = metrics.filter(
        (pl.col("model") == model) & (pl.col("metric") == metric) & (pl.col("segment") == segment)
    )
    return float(hit["value"][0]) if hit.height else None
