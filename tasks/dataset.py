"""The in-memory view of the warehouse that every modality is fitted on.

A `Dataset` freezes one snapshot: stable integer indexes for users and items, a weighted
user×item sparse matrix, and the optional side tables aligned to those indexes. Modalities only
ever see a `Dataset`, never DuckDB, so they are plain functions over arrays and easy to test.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import numpy as np
import polars as pl
import scipy.sparse as sp

ValueTransform = Literal["log1p", "raw", "binary"]

DEFAULT_EVENT_WEIGHTS: dict[str, float] = {
    "purchase": 4.0,
    "like": 2.0,
    "listen": 1.0,
    "rating": 1.0,
    "click": 0.5,
    "view": 0.25,
}


@dataclass(frozen=True)
class InteractionWeighting:
    """How raw events become one confidence value per (user, item)."""

    event_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))
    unknown_event_weight: float = 1.0
    value_transform: ValueTransform = "log1p"
    half_life_days: float | None = None


@dataclass(frozen=True)
class Dataset:
    """One snapshot: id maps, the weighted interaction matrix and aligned side data."""

    user_ids: np.ndarray  # index -> user_id (str)
    item_ids: np.ndarray  # index -> item_id (str)
    interactions: sp.csr_matrix  # users × items, float32 confidence
    events: pl.DataFrame  # user_idx, item_idx, event_type, value, ts (the rows behind the matrix)
    items: pl.DataFrame | None = None  # item_idx-ordered attributes (item_id, title, text, tags, …)
    social: sp.csr_matrix | None = None  # users × users tie strength (directed)
    as_of: datetime | None = None

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def seen(self) -> sp.csr_matrix:
        """Binary matrix of what each user already interacted with (excluded from lists)."""
        seen = self.interactions.copy()
        seen.data = np.ones_like(seen.data)
        return seen

    def history_lengths(self) -> np.ndarray:
        return np.diff(self.interactions.indptr)

    def with_ids(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Replace user_idx/item_idx columns by the warehouse's string ids (order preserved)."""
        out = frame
        if "user_idx" in frame.columns:
            out = out.with_columns(
                pl.Series("user_id", self.user_ids.astype(str))
                .gather(out["user_idx"].cast(pl.Int64))
                .alias("user_idx")
            ).rename({"user_idx": "user_id"})
        if "item_idx" in frame.columns:
            out = out.with_columns(
                pl.Series("item_id", self.item_ids.astype(str))
                .gather(out["item_idx"].cast(pl.Int64))
                .alias("item_idx")
            ).rename({"item_idx": "item_id"})
        return out

    def user_index(self, user_ids: pl.Series | list[str]) -> np.ndarray:
        """Indexes for ids, -1 for ids this snapshot does not know."""
        lookup = pl.DataFrame({"user_id": self.user_ids, "idx": np.arange(self.n_users)})
        frame = pl.DataFrame({"user_id": pl.Series(user_ids, dtype=pl.String)})
        return (
            frame.join(lookup, on="user_id", how="left", maintain_order="left")["idx"]
            .fill_null(-1)
            .to_numpy()
        )


def _id_space(*columns: pl.Series | None) -> np.ndarray:
    present = [c.cast(pl.String) for c in columns if c is not None and c.len() > 0]
    if not present:
        return np.array([], dtype=object)
    return pl.concat(present).drop_nulls().unique().sort().to_numpy().astype(object)


def _index(ids: np.ndarray, name: str) -> pl.DataFrame:
    return pl.DataFrame(
        {
            name: pl.Series(ids, dtype=pl.String),
            f"{name[:-3]}_idx": np.arange(len(ids), dtype=np.int32),
        }
    )


def event_confidence(
    events: pl.DataFrame, weighting: InteractionWeighting, as_of: datetime | None
) -> pl.DataFrame:
    """Per-event weight = type weight × value × optional recency decay (vectorised)."""
    weights = pl.DataFrame(
        {
            "event_type": list(weighting.event_weights),
            "type_weight": list(weighting.event_weights.values()),
        },
        schema={"event_type": pl.String, "type_weight": pl.Float64},
    )
    out = events.join(weights, on="event_type", how="left").with_columns(
        pl.col("type_weight").fill_null(weighting.unknown_event_weight)
    )
    value = pl.col("value").fill_null(1.0).clip(lower_bound=0.0)
    if weighting.value_transform == "binary":
        value = pl.lit(1.0)
    elif weighting.value_transform == "log1p":
        value = value.log1p()
    conf = pl.col("type_weight") * value
    if weighting.half_life_days and as_of is not None:
        age_days = (
            pl.lit(as_of).dt.replace_time_zone("UTC") - pl.col("ts")
        ).dt.total_seconds() / 86400.0
        conf = conf * (0.5 ** (age_days.clip(lower_bound=0.0) / weighting.half_life_days))
    return out.with_columns(confidence=conf)


def build_dataset(
    events: pl.DataFrame,
    items: pl.DataFrame | None = None,
    social: pl.DataFrame | None = None,
    users: pl.DataFrame | None = None,
    weighting: InteractionWeighting | None = None,
    as_of: datetime | None = None,
    user_ids: np.ndarray | None = None,
    item_ids: np.ndarray | None = None,
) -> Dataset:
    """Build a snapshot from contract-shaped frames (events: user, item, event_type, value, ts).

    `user_ids`/`item_ids` pin the id space, so a training split and the full data share indexes.
    """
    weighting = weighting or InteractionWeighting()
    if user_ids is None:
        user_ids = _id_space(
            events["user_id"],
            users["user_id"] if users is not None else None,
            social["user_id"] if social is not None else None,
            social["friend_id"] if social is not None else None,
        )
    if item_ids is None:
        item_ids = _id_space(events["item_id"], items["item_id"] if items is not None else None)
    user_index, item_index = _index(user_ids, "user_id"), _index(item_ids, "item_id")

    indexed = events.join(user_index, on="user_id", how="inner").join(
        item_index, on="item_id", how="inner"
    )
    weighted = event_confidence(indexed, weighting, as_of)
    pairs = weighted.group_by("user_idx", "item_idx").agg(pl.col("confidence").sum())
    matrix = sp.csr_matrix(
        (
            pairs["confidence"].to_numpy().astype(np.float32),
            (pairs["user_idx"].to_numpy(), pairs["item_idx"].to_numpy()),
        ),
        shape=(len(user_ids), len(item_ids)),
        dtype=np.float32,
    )
    matrix.sort_indices()
    # An all-zero confidence (e.g. value 0) is still an interaction: keep it visible as "seen".
    matrix.data = np.maximum(matrix.data, np.float32(1e-6))

    item_frame = None
    if items is not None:
        item_frame = item_index.join(items, on="item_id", how="left").sort("item_idx")

    social_matrix = None
    if social is not None and social.height > 0:
        s = (
            social.with_columns(
                pl.col("weight").fill_null(1.0)
                if "weight" in social.columns
                else pl.lit(1.0).alias("weight")
            )
            .join(user_index, on="user_id", how="inner")
            .join(
                user_index.rename({"user_id": "friend_id", "user_idx": "friend_idx"}),
                on="friend_id",
                how="inner",
            )
            .filter(pl.col("user_idx") != pl.col("friend_idx"))
            .group_by("user_idx", "friend_idx")
            .agg(pl.col("weight").max())
        )
        social_matrix = sp.csr_matrix(
            (
                s["weight"].to_numpy().astype(np.float32),
                (s["user_idx"].to_numpy(), s["friend_idx"].to_numpy()),
            ),
            shape=(len(user_ids), len(user_ids)),
            dtype=np.float32,
        )

    return Dataset(
        user_ids=user_ids,
        item_ids=item_ids,
        interactions=matrix,
        events=indexed.select("user_idx", "item_idx", "event_type", "value", "ts"),
        items=item_frame,
        social=social_matrix,
        as_of=as_of,
    )
