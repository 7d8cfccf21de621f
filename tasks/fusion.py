"""Model-level fusion: combine each modality's candidate lists into one ranked list per user.

Input is the long candidate frame (modality, user_idx, item_idx, score, rank) that every modality
produces. Every strategy here is a vectorised group-by over that frame; a user's blend can depend
on their segment (cold-start switching), so weights are given per segment.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import polars as pl

Normalisation = Literal["minmax", "zscore", "rank"]
RankStrategy = Literal["rrf", "combsum", "combmnz", "borda"]
SegmentWeights = Mapping[str, Mapping[str, float]]  # segment -> modality -> weight

DEFAULT_SEGMENT = "warm"
FUSED_SCHEMA = {"user_idx": pl.Int32, "item_idx": pl.Int32, "score": pl.Float64, "rank": pl.Int32}
RRF_K = 60.0


def normalise(candidates: pl.DataFrame, method: Normalisation = "minmax") -> pl.DataFrame:
    """Add `norm`: each modality's scores made comparable within one user's list.

    Scores of different modalities live on unrelated scales (cosines, counts, regression outputs),
    so they are only summed after this step. A list of identical scores normalises to 1.
    """
    by = ["modality", "user_idx"]
    score = pl.col("score").cast(pl.Float64)
    if method == "minmax":
        lo, hi = score.min().over(by), score.max().over(by)
        norm = pl.when(hi > lo).then((score - lo) / (hi - lo)).otherwise(1.0)
    elif method == "zscore":
        mean, std = score.mean().over(by), score.std(ddof=0).over(by)
        norm = pl.when(std > 0).then((score - mean) / std).otherwise(0.0)
    elif method == "rank":
        n = pl.len().over(by).cast(pl.Float64)
        norm = (n - pl.col("rank").cast(pl.Float64) + 1.0) / n
    else:
        raise ValueError(f"unknown normalisation {method!r}")
    return candidates.with_columns(norm.alias("norm"))


def _segment_weights_frame(weights: SegmentWeights) -> pl.DataFrame:
    rows = [(seg, mod, float(w)) for seg, per in weights.items() for mod, w in per.items()]
    return pl.DataFrame(rows, schema={"segment": pl.String, "modality": pl.String, "weight": pl.Float64},
                        orient="row")


def _with_weights(candidates: pl.DataFrame, weights: SegmentWeights,
                  segments: pl.DataFrame | None) -> pl.DataFrame:
    """Attach each candidate's modality weight for its user's segment (default segment: warm)."""
    if segments is None:
        framed = candidates.with_columns(pl.lit(DEFAULT_SEGMENT).alias("segment"))
    else:
        framed = candidates.join(segments.select("user_idx", "segment"), on="user_idx", how="left") \
            .with_columns(pl.col("segment").fill_null(DEFAULT_SEGMENT))
    table = _segment_weights_frame(weights)
    # Segments without their own weights use the default segment's.
    default = table.filter(pl.col("segment") == DEFAULT_SEGMENT).drop("segment")
    return (
        framed.join(table, on=["segment", "modality"], how="left")
        .join(default.rename({"weight": "default_weight"}), on="modality", how="left")
        .with_columns(pl.coalesce("weight", "default_weight", pl.lit(0.0)).alias("weight"))
        .drop("default_weight")
    )


def top_k(scored: pl.DataFrame, k: int) -> pl.DataFrame:
    """Keep each user's k best (score desc, item index asc for deterministic ties) and rank them."""
    return (
        scored.sort(["user_idx", "score", "item_idx"], descending=[False, True, False])
        .with_columns(pl.int_range(1, pl.len() + 1).over("user_idx").cast(pl.Int32).alias("rank"))
        .filter(pl.col("rank") <= k)
    )


def contributions_wide(parts: pl.DataFrame) -> pl.DataFrame:
    """(user, item, modality, contribution) -> one row per (user, item) with contrib_<modality> columns."""
    wide = parts.pivot(on="modality", index=["user_idx", "item_idx"], values="contribution",
                       aggregate_function="sum")
    modalities = [c for c in wide.columns if c not in ("user_idx", "item_idx")]
    return wide.rename({m: f"contrib_{m}" for m in modalities}).fill_null(0.0)


def fuse_weighted(candidates: pl.DataFrame, weights: SegmentWeights, k: int,
                  normalisation: Normalisation = "minmax",
                  segments: pl.DataFrame | None = None) -> pl.DataFrame:
    """Weighted sum of normalised scores; returns user_idx, item_idx, score, rank, contrib_*."""
    parts = _with_weights(normalise(candidates, normalisation), weights, segments).with_columns(
        (pl.col("weight") * pl.col("norm")).alias("contribution")
    )
    return _finish(parts, k)


def fuse_rank(candidates: pl.DataFrame, strategy: RankStrategy, k: int,
              weights: SegmentWeights | None = None,
              segments: pl.DataFrame | None = None) -> pl.DataFrame:
    """Rank fusion: RRF, CombSUM, CombMNZ or Borda, optionally weighted per modality."""
    if weights is None:
        names = candidates["modality"].unique().to_list()
        weights = {DEFAULT_SEGMENT: dict.fromkeys(names, 1.0)}
    parts = _with_weights(normalise(candidates, "minmax"), weights, segments)
    rank = pl.col("rank").cast(pl.Float64)
    if strategy == "rrf":
        base = 1.0 / (RRF_K + rank)
    elif strategy in ("combsum", "combmnz"):
        base = pl.col("norm")
    elif strategy == "borda":
        n = pl.len().over(["modality", "user_idx"]).cast(pl.Float64)
        base = (n - rank + 1.0) / n
    else:
        raise ValueError(f"unknown rank fusion strategy {strategy!r}")
    parts = parts.with_columns((pl.col("weight") * base).alias("contribution"))
    if strategy == "combmnz":
        # CombMNZ multiplies the sum by how many lists (with weight > 0) contain the item.
        hits = (pl.col("weight") > 0).cast(pl.Float64).sum().over(["user_idx", "item_idx"])
        parts = parts.with_columns((pl.col("contribution") * hits).alias("contribution"))
    return _finish(parts, k)


def _finish(parts: pl.DataFrame, k: int) -> pl.DataFrame:
    wide = contributions_wide(parts.select("user_idx", "item_idx", "modality", "contribution"))
    contrib_cols = [c for c in wide.columns if c.startswith("contrib_")]
    scored = wide.with_columns(pl.sum_horizontal(contrib_cols).alias("score"))
    return top_k(scored, k).select(
        pl.col("user_idx").cast(pl.Int32), pl.col("item_idx").cast(pl.Int32),
        pl.col("score").cast(pl.Float64), "rank", *contrib_cols,
    )
