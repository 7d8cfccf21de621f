"""Hold-out protocols: how a run cuts its own data into "the past" and "what came next".

One rule serves the outer evaluation (train → test) and the inner validation (train → valid,
cut from the outer train only), so what is tuned on validation is judged on the same footing.

- `user_temporal`: each user with at least `min_history` items has their latest
  max(1, round(fraction·n)) items held out (ordered by the item's first event, then item_id):
  the protocol the well-known libraries in the yardstick READMEs were tuned with on timestamped
  data, and representative whatever the spread of timestamps (years or hours).
- `user_random`: the same per user, at random (data whose timestamps do not vary, e.g. Last.fm).
- `global_time`: the last `holdout_days` of the global timeline; only when that window holds at
  least `min_users` users (a live shop), since on a long history it holds a handful (3–22 users
  were seen), and a plan chosen on those is chosen on noise.

Users with fewer items than `min_history` but at least two form the *cold pool*: one item each
is held out, so cold-start rules are learned on users who really are cold. They are reported as
their own segment and never decide the plan for everyone else.

Truth never contains an item the user already had in the training part: lists exclude seen
items, so such pairs could never be hit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, Field

from tasks.parameter_rules import MIN_DAYS, PARAMETER_CONFIG

SplitKind = Literal["user_temporal", "user_random", "global_time"]
Protocol = Literal["auto", "user_temporal", "user_random", "global_time"]


class EvaluationParams(BaseModel):
    """How a run holds out data to evaluate itself and to choose its fusion plan."""

    model_config = PARAMETER_CONFIG

    protocol: Protocol = Field(
        "auto",
        description="Hold-out rule. 'auto': per-user random when timestamps do not vary; "
        "the last holdout_days when that window holds at least min_users users; else each "
        "user's latest items (user_temporal).",
    )
    holdout_fraction: float = Field(
        0.2, gt=0, lt=1, description="Share of each user's items held out (per-user protocols)."
    )
    min_history: int = Field(
        5, ge=2, le=1000,
        description="Users with at least this many items get a hold-out (per-user protocols); "
        "the yardstick splits use 5.",
    )
    cold_pool: bool = Field(
        True,
        description="Also hold out one item of users with 2..min_history-1 items, to learn and "
        "report cold-start rules on really cold users.",
    )
    holdout_days: float = Field(
        7.0, ge=MIN_DAYS, le=3650,
        description="Window of the global_time protocol (days), from 1/24 (one hour: less holds "
        "out almost nothing on daily data) to 3650 (ten years: more is a unit mistake).",
    )
    min_users: int = Field(
        1000, ge=1,
        description="'auto' uses the global_time window only when it holds this many users.",
    )
    max_users: int | None = Field(
        5_000,
        ge=100,
        description="Evaluate and tune on at most this many hold-out users (a seeded sample; "
        "NDCG@10 then has a standard error near 0.004); bounds time and memory. Empty = all.",
    )
    min_eval_users: int = Field(
        100, ge=1,
        description="An evaluation on fewer users than this raises the alarm (too few to decide).",
    )
    selection_z: float = Field(
        1.0, ge=0, le=10,
        description="A fused plan replaces the best single source only when its mean per-user "
        "gain on validation exceeds this many standard errors of the paired difference.",
    )


@dataclass(frozen=True)
class Holdout:
    """Training events, the (user_id, item_id) pairs users went on to have, and how."""

    train: pl.DataFrame
    truth: pl.DataFrame  # user_id, item_id
    kind: SplitKind
    cutoff: datetime | None = None  # global_time only
    cold_users: pl.Series | None = None  # user_ids of the cold pool (per-user protocols)

    def describe(self) -> dict[str, object]:
        """What a run records about its split (runs.evaluation / run_metrics)."""
        cold = 0 if self.cold_users is None else self.cold_users.len()
        return {
            "split": self.kind,
            "cutoff": self.cutoff.isoformat() if self.cutoff else None,
            "users": int(self.truth["user_id"].n_unique()),
            "cold_pool_users": int(cold),
            "held_out_pairs": int(self.truth.height),
            "train_events": int(self.train.height),
        }


def _truth(train: pl.DataFrame, held: pl.DataFrame) -> pl.DataFrame:
    pairs = held.select("user_id", "item_id").unique()
    return pairs.join(
        train.select("user_id", "item_id").unique(), on=["user_id", "item_id"], how="anti"
    ).sort("user_id", "item_id")


def global_time_split(events: pl.DataFrame, holdout_days: float) -> Holdout:
    """Events in the last `holdout_days` before the latest event become the truth."""
    end = events["ts"].max()
    assert isinstance(end, datetime)
    cutoff = end - timedelta(days=holdout_days)
    train = events.filter(pl.col("ts") <= cutoff)
    held = events.filter(pl.col("ts") > cutoff)
    return Holdout(train, _truth(train, held), "global_time", cutoff)


def per_user_split(
    events: pl.DataFrame,
    temporal: bool,
    fraction: float = 0.2,
    seed: int = 7,
    min_history: int = 5,
    cold_pool: bool = True,
) -> Holdout:
    """Per user with at least `min_history` items: max(1, round(fraction·n)) held out.

    Temporal: the latest items (by the item's first event for the user, ties by item_id as in
    the yardstick splits); else at random (seeded). With `cold_pool`, users with
    2..min_history-1 items have one item held out the same way.
    """
    pairs = events.group_by("user_id", "item_id").agg(pl.col("ts").min().alias("first_ts"))
    pairs = pairs.sort("user_id", "item_id")
    if temporal:
        order = pairs.sort(["user_id", "first_ts", "item_id"], descending=[False, True, True])
    else:
        rng = np.random.default_rng(seed)
        order = pairs.with_columns(pl.Series("r", rng.random(pairs.height))).sort("user_id", "r")
    ranked = order.with_columns(
        pl.int_range(1, pl.len() + 1).over("user_id").alias("pos"),
        pl.len().over("user_id").alias("n"),
    )
    n_out = pl.max_horizontal(pl.lit(1), (pl.col("n") * fraction).round(0).cast(pl.Int64))
    standard = (pl.col("n") >= min_history) & (pl.col("pos") <= n_out)
    cold = (pl.col("n") >= 2) & (pl.col("n") < min_history) & (pl.col("pos") == 1)
    held_pairs = ranked.filter(standard | cold if cold_pool else standard)
    train = events.join(held_pairs, on=["user_id", "item_id"], how="anti")
    held = events.join(held_pairs.select("user_id", "item_id"), on=["user_id", "item_id"],
                       how="semi")
    cold_users = (
        held_pairs.filter(pl.col("n") < min_history)["user_id"].unique().sort()
        if cold_pool else pl.Series("user_id", [], dtype=events.schema["user_id"])
    )
    return Holdout(train, _truth(train, held), "user_temporal" if temporal else "user_random",
                   None, cold_users)


def timestamps_vary(events: pl.DataFrame) -> bool:
    return events.height > 0 and events["ts"].n_unique() > 1


def choose_kind(events: pl.DataFrame, params: EvaluationParams) -> SplitKind:
    """The protocol `auto` resolves to for these events (see the module docstring)."""
    if params.protocol != "auto":
        return params.protocol
    if not timestamps_vary(events):
        return "user_random"
    end = events["ts"].max()
    assert isinstance(end, datetime)
    window = events.filter(pl.col("ts") > end - timedelta(days=params.holdout_days))
    if window["user_id"].n_unique() >= params.min_users and window.height < events.height:
        return "global_time"
    return "user_temporal"


def holdout_split(
    events: pl.DataFrame, params: EvaluationParams, seed: int = 7, kind: SplitKind | None = None
) -> Holdout:
    """Split with `kind` (default: what `auto` picks); pass the outer kind to the inner split."""
    if events.height == 0:
        return Holdout(events, events.select("user_id", "item_id"), "user_random")
    kind = kind or choose_kind(events, params)
    if kind == "global_time":
        if not timestamps_vary(events):
            kind = "user_random"
        else:
            split = global_time_split(events, params.holdout_days)
            if split.truth.height and split.train.height:
                return split
            kind = "user_temporal"
    return per_user_split(
        events, kind == "user_temporal", params.holdout_fraction, seed, params.min_history,
        params.cold_pool,
    )
