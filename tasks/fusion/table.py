"""Model-level fusion: combine each modality's candidate lists into one ranked list per user.

Input is the long candidate frame (modality, user_idx, item_idx, score, rank) that every modality
produces. It is laid out once as a wide `CandidateTable` (one row per user × item, one column per
modality and signal); every strategy is then column arithmetic plus a per-user top-k, so trying
many strategies or weight vectors costs little. A user's blend can depend on their segment
(cold-start switching), so weights are given per segment.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import polars as pl

Normalisation = Literal["minmax", "zscore", "rank"]
RankStrategy = Literal["rrf", "combsum", "combmnz", "borda"]
SegmentWeights = Mapping[str, Mapping[str, float]]  # segment -> modality -> weight

DEFAULT_SEGMENT = "warm"
RRF_K = 60.0


def ordered_sum(terms: Sequence[pl.Expr | str]) -> pl.Expr:
    """((a + b) + c) + …: the sum of columns in the order given. `pl.sum_horizontal` adds in an
    order that depends on Polars' threads, which moved fused scores in the last bits (and
    flipped ties) between a run on one core and a run on two."""
    exprs = [pl.col(t) if isinstance(t, str) else t for t in terms]
    return functools.reduce(operator.add, exprs) if exprs else pl.lit(0.0)


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
        mean = score.mean().over(by)
        # Two passes, not `std()`: Polars' grouped std is not bit-stable across thread counts.
        std = ((score - mean) ** 2).mean().over(by).sqrt()
        norm = pl.when(std > 0).then((score - mean) / std).otherwise(0.0)
    elif method == "rank":
        n = pl.len().over(by).cast(pl.Float64)
        norm = (n - pl.col("rank").cast(pl.Float64) + 1.0) / n
    else:
        raise ValueError(f"unknown normalisation {method!r}")
    return candidates.with_columns(norm.alias("norm"))


@dataclass(frozen=True)
class CandidateTable:
    """Union of all candidates, wide: norm_<m>, rank_<m> (null if m did not propose), len_<m>."""

    frame: pl.DataFrame
    modalities: tuple[str, ...]
    normalisation: Normalisation


def candidate_table(
    candidates: pl.DataFrame, normalisation: Normalisation = "minmax"
) -> CandidateTable:
    modalities = tuple(sorted(candidates["modality"].unique().to_list()))
    long = normalise(candidates, normalisation).with_columns(
        pl.len().over(["modality", "user_idx"]).cast(pl.Int32).alias("len")  # a count: 4 bytes
    )
    wide = long.pivot(
        on="modality",
        index=["user_idx", "item_idx"],
        values=["norm", "rank", "len"],
        aggregate_function="first",
    )
    if len(modalities) == 1:  # pivot names columns by value only when there is one modality
        m = modalities[0]
        wide = wide.rename({c: f"{c}_{m}" for c in ("norm", "rank", "len") if c in wide.columns})
    return CandidateTable(
        wide.with_columns(pl.col("user_idx").cast(pl.Int32), pl.col("item_idx").cast(pl.Int32)),
        modalities,
        normalisation,
    )


def _weight_columns(
    table: CandidateTable, weights: SegmentWeights, segments: pl.DataFrame | None
) -> pl.DataFrame:
    """Attach w_<m>: the weight of modality m for the row's user segment (default: warm's)."""
    frame = table.frame
    if segments is not None:
        frame = frame.join(
            segments.select(pl.col("user_idx").cast(pl.Int32), "segment"), on="user_idx", how="left"
        )
    else:
        frame = frame.with_columns(pl.lit(DEFAULT_SEGMENT).alias("segment"))
    frame = frame.with_columns(pl.col("segment").fill_null(DEFAULT_SEGMENT))
    default = weights.get(DEFAULT_SEGMENT, {})
    exprs = []
    for m in table.modalities:
        expr: pl.Expr = pl.lit(float(default.get(m, 0.0)))
        for segment, per in weights.items():
            if segment != DEFAULT_SEGMENT:
                expr = (
                    pl.when(pl.col("segment") == segment)
                    .then(pl.lit(float(per.get(m, default.get(m, 0.0)))))
                    .otherwise(expr)
                )
        exprs.append(expr.alias(f"w_{m}"))
    return frame.with_columns(exprs)


def fusion_terms(strategy: str, m: str) -> pl.Expr:
    """Per-modality evidence before weighting; 0 where the modality did not propose the item."""
    rank, norm = pl.col(f"rank_{m}").cast(pl.Float64), pl.col(f"norm_{m}")
    n = pl.col(f"len_{m}").cast(pl.Float64)
    if strategy in ("weighted", "combsum", "combmnz"):
        base = norm
    elif strategy == "rrf":
        base = 1.0 / (RRF_K + rank)
    elif strategy == "borda":
        base = (n - rank + 1.0) / n
    else:
        raise ValueError(f"unknown fusion strategy {strategy!r}")
    return base.fill_null(0.0)


def fuse_table(
    table: CandidateTable,
    strategy: str,
    k: int,
    weights: SegmentWeights | None = None,
    segments: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Fuse a candidate table: returns user_idx, item_idx, score, rank, contrib_<m> per modality."""
    if weights is None:
        weights = {DEFAULT_SEGMENT: dict.fromkeys(table.modalities, 1.0)}
    frame = _weight_columns(table, weights, segments)
    contrib = [
        (pl.col(f"w_{m}") * fusion_terms(strategy, m)).alias(f"contrib_{m}")
        for m in table.modalities
    ]
    frame = frame.with_columns(contrib)
    if strategy == "combmnz":
        # CombMNZ multiplies the sum by how many lists (with weight > 0) contain the item.
        hits = ordered_sum(
            [
                (pl.col(f"rank_{m}").is_not_null() & (pl.col(f"w_{m}") > 0)).cast(pl.Float64)
                for m in table.modalities
            ]
        )
        frame = frame.with_columns(
            [(pl.col(f"contrib_{m}") * hits).alias(f"contrib_{m}") for m in table.modalities]
        )
    contrib_cols = [f"contrib_{m}" for m in table.modalities]
    scored = frame.select("user_idx", "item_idx", *contrib_cols).with_columns(
        ordered_sum(contrib_cols).alias("score")
    )
    return top_k(scored, k).select(
        "user_idx", "item_idx", pl.col("score").cast(pl.Float64), "rank", *contrib_cols
    )


def top_k(scored: pl.DataFrame, k: int) -> pl.DataFrame:
    """Keep each user's k best (score desc, item index asc for deterministic ties) and rank them."""
    return (
        scored.sort(["user_idx", "score", "item_idx"], descending=[False, True, False])
        .with_columns(pl.int_range(1, pl.len() + 1).over("user_idx").cast(pl.Int32).alias("rank"))
        .filter(pl.col("rank") <= k)
    )


def fuse_weighted(
    candidates: pl.DataFrame,
    weights: SegmentWeights,
    k: int,
    normalisation: Normalisation = "minmax",
    segments: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Weighted sum of normalised scores."""
    return fuse_table(candidate_table(candidates, normalisation), "weighted", k, weights, segments)


def fuse_rank(
    candidates: pl.DataFrame,
    strategy: RankStrategy,
    k: int,
    weights: SegmentWeights | None = None,
    segments: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Rank fusion: RRF, CombSUM, CombMNZ or Borda, optionally weighted per modality."""
    return fuse_table(candidate_table(candidates, "minmax"), strategy, k, weights, segments)
