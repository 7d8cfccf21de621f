"""Hold-out splits for evaluation without leakage.

Temporal when timestamps vary (the last window is the future the model has not seen), per-user
random otherwise (e.g. Last.fm, whose listens carry no time). Truth never contains an item the
user already had in the training part: lists exclude seen items, so such pairs could never be hit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import numpy as np
import polars as pl

SplitKind = Literal["temporal", "random"]


@dataclass(frozen=True)
class Holdout:
    """Training events, and the (user_id, item_id) pairs each user went on to interact with."""

    train: pl.DataFrame
    truth: pl.DataFrame
    kind: SplitKind
    cutoff: datetime | None


def _truth(train: pl.DataFrame, held: pl.DataFrame) -> pl.DataFrame:
    pairs = held.select("user_id", "item_id").unique()
    return pairs.join(
        train.select("user_id", "item_id").unique(), on=["user_id", "item_id"], how="anti"
    ).sort("user_id", "item_id")


def temporal_split(events: pl.DataFrame, holdout_days: float) -> Holdout:
    """Events in the last `holdout_days` before the latest event become the truth."""
    end = events["ts"].max()
    assert isinstance(end, datetime)
    cutoff = end - timedelta(days=holdout_days)
    train = events.filter(pl.col("ts") <= cutoff)
    held = events.filter(pl.col("ts") > cutoff)
    return Holdout(train, _truth(train, held), "temporal", cutoff)


def random_split(events: pl.DataFrame, fraction: float, seed: int, min_items: int = 5) -> Holdout:
    """Per user with at least `min_items` items: max(1, round(fraction·n)) of them held out.

    The same rule as the Last.fm yardstick split, so numbers are comparable.
    """
    pairs = events.select("user_id", "item_id").unique().sort("user_id", "item_id")
    rng = np.random.default_rng(seed)
    ranked = pairs.with_columns(pl.Series("r", rng.random(pairs.height))).with_columns(
        pl.col("r").rank("ordinal").over("user_id").alias("pos"),
        pl.len().over("user_id").alias("n"),
    )
    n_out = pl.max_horizontal(pl.lit(1), (pl.col("n") * fraction).round(0).cast(pl.Int64))
    held_pairs = ranked.filter((pl.col("n") >= min_items) & (pl.col("pos") <= n_out)).select(
        "user_id", "item_id"
    )
    train = events.join(held_pairs, on=["user_id", "item_id"], how="anti")
    held = events.join(held_pairs, on=["user_id", "item_id"], how="semi")
    return Holdout(train, _truth(train, held), "random", None)


def holdout_split(
    events: pl.DataFrame, holdout_days: float = 7.0, fraction: float = 0.2, seed: int = 7
) -> Holdout:
    """Temporal when the data spans more than two hold-out windows, per-user random otherwise."""
    if events.height == 0:
        return Holdout(events, events.select("user_id", "item_id"), "random", None)
    start, end = events["ts"].min(), events["ts"].max()
    assert isinstance(start, datetime) and isinstance(end, datetime)
    if end - start > timedelta(days=2 * holdout_days):
        split = temporal_split(events, holdout_days)
        if split.truth.height > 0 and split.train.height > 0:
            return split
    return random_split(events, fraction, seed)
