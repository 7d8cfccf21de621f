"""Read the warehouse's raw tables as of a point in time into Polars frames."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

import duckdb
import polars as pl

from tasks.warehouse.connection import read_sql


@dataclass
class Snapshot:
    """Raw frames a run is built from; items/social/users are None when the source had none."""

    events: pl.DataFrame
    items: pl.DataFrame | None
    social: pl.DataFrame | None
    users: pl.DataFrame | None
    as_of: datetime | None

    def fingerprint(self) -> str:
        """Identifies 'the same data' for the regression gate: same events and side tables."""
        parts = [
            self.events.height,
            self.events["ts"].max(),
            self.events["user_id"].n_unique(),
            self.events["item_id"].n_unique(),
            self.items.height if self.items is not None else 0,
            self.social.height if self.social is not None else 0,
        ]
        return hashlib.md5("|".join(map(str, parts)).encode()).hexdigest()


def _optional(frame: pl.DataFrame) -> pl.DataFrame | None:
    return frame if frame.height else None


def load_snapshot(con: duckdb.DuckDBPyConnection, as_of: datetime | None) -> Snapshot:
    events = con.sql(read_sql("snapshot_events.sql"), params={"as_of": as_of}).pl()
    items = con.sql("SELECT item_id, title, text, tags, category, embedding FROM raw.items").pl()
    social = con.sql(read_sql("snapshot_social.sql"), params={"as_of": as_of}).pl()
    users = con.sql("SELECT user_id FROM raw.users").pl()
    if not events.is_empty():
        events = events.with_columns(pl.col("ts").dt.convert_time_zone("UTC"))
    if items.height and items["embedding"].null_count() == items.height:
        items = items.drop("embedding")
    return Snapshot(events, _optional(items), _optional(social), _optional(users), as_of)
