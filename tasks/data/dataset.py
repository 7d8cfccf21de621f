"""The in-memory view of the warehouse that every modality is fitted on.

A `Dataset` freezes one snapshot: stable integer indexes for users and items, a weighted
user×item sparse matrix, and the optional side tables aligned to those indexes. Modalities only
ever see a `Dataset`, never DuckDB, so they are plain functions over arrays and easy to test.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, TypeVar

import numpy as np
import polars as pl
import scipy.sparse as sp

log = logging.getLogger(__name__)

ValueTransform = Literal["log1p", "raw", "binary"]
#: Cap on one event's confidence and one tie's weight. Ingest keeps any finite value (1e308
#: included); the float32 matrices, their squares and sums over many events stay finite below it.
MAX_CONFIDENCE = 1e9
FrameT = TypeVar("FrameT", pl.DataFrame, pl.LazyFrame)

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
    #: user_idx, item_idx, ts, confidence (float32): the events behind the matrix, sorted by
    #: (user_idx, item_idx, ts, confidence); for recency, and for the hold-out splits
    events: pl.DataFrame
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
        """Binary matrix of what each user already interacted with (excluded from lists).

        It shares the interaction matrix's index arrays (read them, never change them in
        place): copying them cost 0.4 GB and 0.6 s per call at 50M events, and a shard of users
        called it three times.
        """
        m = self.interactions
        return sp.csr_matrix((np.ones(m.nnz, dtype=m.dtype), m.indices, m.indptr), shape=m.shape,
                             copy=False)

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

    def with_codes(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Add user_idx/item_idx to rows keyed by user_id/item_id (the inverse of `with_ids`);
        rows whose ids this snapshot does not know are dropped."""
        return frame.join(self._codes("user"), on="user_id").join(
            self._codes("item"), on="item_id"
        )

    def already_seen(self, pairs: pl.DataFrame) -> pl.DataFrame:
        """The distinct pairs of `pairs` that have events in this snapshot, keyed as `pairs` is:
        by integer codes (user_idx, item_idx) or by ids (user_id, item_id).

        Matched on integer codes: giving every event its string ids instead held ~0.3 GB more
        at 5M events, for a result that is normally empty.
        """
        codes = ["user_idx", "item_idx"]
        if set(codes) <= set(pairs.columns):
            keys, coded = codes, pairs.select(pl.col(c).cast(pl.Int32) for c in codes)
        else:
            keys = ["user_id", "item_id"]
            coded = self.with_codes(pairs.select(keys))
        return (
            coded.join(self.events.select(pl.col(c).cast(pl.Int32) for c in codes), on=codes,
                       how="semi")
            .select(keys)
            .unique()
        )

    def _codes(self, kind: str) -> pl.DataFrame:
        ids = self.user_ids if kind == "user" else self.item_ids
        return pl.DataFrame(
            {f"{kind}_id": pl.Series(ids.astype(str), dtype=pl.String),
             f"{kind}_idx": np.arange(len(ids), dtype=np.int32)}
        )

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


def id_index(ids: np.ndarray, name: str) -> pl.DataFrame:
    """(`name`, its `_idx` code) for a sorted id space: the place of each id is its code."""
    return pl.DataFrame(
        {
            name: pl.Series(ids, dtype=pl.String),
            f"{name[:-3]}_idx": np.arange(len(ids), dtype=np.int32),
        }
    )


def event_confidence(
    events: FrameT, weighting: InteractionWeighting, as_of: datetime | None
) -> FrameT:
    """Per-event weight = type weight × value × optional recency decay (vectorised)."""
    type_weight = (
        pl.col("event_type")
        .cast(pl.String)
        .replace_strict(
            dict(weighting.event_weights),
            default=weighting.unknown_event_weight,
            return_dtype=pl.Float64,
        )
    )
    value = pl.col("value").fill_null(1.0).clip(lower_bound=0.0)
    if weighting.value_transform == "binary":
        value = pl.lit(1.0)
    elif weighting.value_transform == "log1p":
        value = value.log1p()
    conf = type_weight * value
    if weighting.half_life_days and as_of is not None:
        age_days = (
            pl.lit(as_of).dt.replace_time_zone("UTC") - pl.col("ts")
        ).dt.total_seconds() / 86400.0
        conf = conf * (0.5 ** (age_days.clip(lower_bound=0.0) / weighting.half_life_days))
    return events.with_columns(confidence=conf.clip(upper_bound=MAX_CONFIDENCE))


#: Events per block when a coded snapshot's events are weighed and sorted a block of users at a
#: time: the sort's working memory is a block's, not every event's (50M events: ~4 GB less).
BLOCK_EVENTS = 4_000_000


def _user_blocks(user_idx: pl.Series, n_users: int) -> list[tuple[int, int]]:
    """[lo, hi) user ranges holding about BLOCK_EVENTS events each, covering every user."""
    counts = np.bincount(user_idx.to_numpy(), minlength=n_users)
    ends = np.searchsorted(np.cumsum(counts), np.arange(BLOCK_EVENTS, counts.sum(), BLOCK_EVENTS))
    bounds = np.unique(np.r_[0, ends + 1, n_users].clip(0, n_users))
    return [(int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]


def _weighted_events(events: pl.DataFrame, keys: list[pl.Expr],
                     weighting: InteractionWeighting, as_of: datetime | None) -> pl.DataFrame:
    """(user_idx, item_idx, ts, confidence) in one order whatever order the rows came
    in (DuckDB's parallel scans, a shuffled file): the float32 sums of a pair's events, and
    everything downstream that walks the events, then give the same bits every time. Sorted by
    user first, so blocks of users concatenated in user order are the whole sort."""
    return event_confidence(
        events.lazy().select(*keys, "event_type", "value", "ts")
        .drop_nulls(["user_idx", "item_idx"]),
        weighting,
        as_of,
    ).select("user_idx", "item_idx", "ts", "confidence").sort(
        "user_idx", "item_idx", "ts", "confidence", nulls_last=True
    ).collect()


def _codes(column: str, ids: np.ndarray) -> pl.Expr:
    """Index of each id in the sorted id space (null if absent), without a join.

    Casting to an Enum over the id space is a hash lookup per row that keeps no string copy,
    which is what keeps a 5M-event snapshot well under a gigabyte.
    """
    space = pl.Enum(pl.Series(ids, dtype=pl.String))
    return pl.col(column).cast(pl.String).cast(space, strict=False).to_physical().cast(pl.Int32)


def _interactions(events: pl.DataFrame, n_users: int, n_items: int) -> sp.csr_matrix:
    """users × items float32: the sum of each pair's event confidences, in the events' order."""
    # COO → CSR sums the events of a (user, item) pair: no hash group-by over millions of rows.
    matrix = sp.coo_matrix(
        (
            events["confidence"].to_numpy().astype(np.float32),
            (events["user_idx"].to_numpy(), events["item_idx"].to_numpy()),
        ),
        shape=(n_users, n_items),
    ).tocsr()
    matrix.sort_indices()
    # An all-zero confidence (e.g. value 0) is still an interaction: keep it visible as "seen".
    matrix.data = np.maximum(matrix.data, np.float32(1e-6))
    return matrix


def coded_events(data: Dataset) -> pl.DataFrame:
    """The dataset's events with integer codes under the contract's key names (`user_id`,
    `item_id`: indexes into `user_ids`/`item_ids`, which are sorted, so codes sort as the ids
    do): what the hold-out splits cut, without a string per event (~0.4 GB at 5M events)."""
    return data.events.rename({"user_idx": "user_id", "item_idx": "item_id"})


def subset(data: Dataset, events: pl.DataFrame) -> Dataset:
    """A dataset of some of `data`'s events (`coded_events` rows, e.g. a split's past): the
    same ids, items and ties, and the same matrix that building it from those events' rows
    would give (the events keep their order, so the pair sums add in the same order)."""
    coded = events.rename({"user_id": "user_idx", "item_id": "item_idx"})
    return Dataset(
        user_ids=data.user_ids,
        item_ids=data.item_ids,
        interactions=_interactions(coded, data.n_users, data.n_items),
        events=coded,
        items=data.items,
        social=data.social,
        as_of=data.as_of,
    )


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
    Events whose user or item is outside a pinned space are dropped. Events that already hold
    `user_idx`/`item_idx` codes into the pinned spaces (a coded snapshot) are taken as they are.
    """
    weighting = weighting or InteractionWeighting()
    coded = "user_idx" in events.columns and user_ids is not None and item_ids is not None
    if user_ids is None:
        user_ids = _id_space(
            events["user_id"],
            users["user_id"] if users is not None else None,
            social["user_id"] if social is not None else None,
            social["friend_id"] if social is not None else None,
        )
    if item_ids is None:
        item_ids = _id_space(events["item_id"], items["item_id"] if items is not None else None)
    item_index = id_index(item_ids, "item_id")

    if coded:  # users in blocks of ~BLOCK_EVENTS events: one block's copy and sort at a time
        keys = [pl.col("user_idx").cast(pl.Int32), pl.col("item_idx").cast(pl.Int32)]
        bounds = _user_blocks(events["user_idx"], len(user_ids))
        blocks: Iterator[pl.DataFrame] = (
            events.filter(pl.col("user_idx").is_between(lo, hi - 1)) for lo, hi in bounds
        ) if bounds else iter([events])
    else:
        keys = [_codes("user_id", user_ids).alias("user_idx"),
                _codes("item_id", item_ids).alias("item_idx")]
        blocks = iter([events])
    parts, capped = [], 0
    for block in blocks:
        part = _weighted_events(block, keys, weighting, as_of)
        capped += int((part["confidence"] >= MAX_CONFIDENCE).sum())
        parts.append(part.with_columns(pl.col("confidence").cast(pl.Float32)))
        del block, part
    indexed = pl.concat(parts) if len(parts) > 1 else parts[0]
    if capped:
        log.warning(
            "%d event(s) weigh more than %g (huge values?); their confidence is capped there",
            capped,
            MAX_CONFIDENCE,
        )
    matrix = _interactions(indexed, len(user_ids), len(item_ids))

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
            .select(
                *([pl.col("user_idx").cast(pl.Int32), pl.col("friend_idx").cast(pl.Int32)]
                  if "user_idx" in social.columns else  # a coded snapshot's ties
                  [_codes("user_id", user_ids).alias("user_idx"),
                   _codes("friend_id", user_ids).alias("friend_idx")]),
                pl.col("weight").clip(upper_bound=MAX_CONFIDENCE),
            )
            .drop_nulls(["user_idx", "friend_idx"])
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
        events=indexed,
        items=item_frame,
        social=social_matrix,
        as_of=as_of,
    )
