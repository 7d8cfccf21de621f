"""Read the warehouse's raw tables as of a point in time into Polars frames.

The events come with integer codes, ranked by DuckDB, not id strings: at 50M events the strings
were ~130 B an event in Polars (6.7 GB); the codes and the sorted id lists are what the dataset
is built from, and the strings are joined back only when lists are published.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

import duckdb
import numpy as np
import polars as pl

from tasks.data.dataset import id_index
from tasks.warehouse.connection import read_sql


@dataclass
class Snapshot:
    """Raw frames a run is built from; items/social/users are None when the source had none.

    With `user_ids`/`item_ids` (sorted id spaces), `events` holds `user_idx`/`item_idx` codes
    into them instead of `user_id`/`item_id` strings, and `social` `user_idx`/`friend_idx`
    (`load_snapshot`); frames built by hand (tests, adapters) may hold the strings."""

    events: pl.DataFrame
    items: pl.DataFrame | None
    social: pl.DataFrame | None
    users: pl.DataFrame | None
    as_of: datetime | None
    user_ids: np.ndarray | None = None
    item_ids: np.ndarray | None = None

    @property
    def coded(self) -> bool:
        return self.user_ids is not None and "user_idx" in self.events.columns

    def fingerprint(self) -> str:
        """Identifies 'the same data' for the regression gate: same events and side tables."""
        user, item = ("user_idx", "item_idx") if self.coded else ("user_id", "item_id")
        parts = [
            self.events.height,
            self.events["ts"].max(),
            self.events[user].n_unique(),
            self.events[item].n_unique(),
            self.items.height if self.items is not None else 0,
            self.social.height if self.social is not None else 0,
        ]
        return hashlib.md5("|".join(map(str, parts)).encode()).hexdigest()


def _optional(frame: pl.DataFrame) -> pl.DataFrame | None:
    return frame if frame.height else None


def load_snapshot(
    con: duckdb.DuckDBPyConnection, as_of: datetime | None, coded: bool = True
) -> Snapshot:
    """The warehouse as of `as_of`; `coded=False` keeps id strings in the events (tuning)."""
    at = {"as_of": as_of}
    user_ids = item_ids = None
    if coded:
        user_ids = _ids(con, "snapshot_user_ids.sql", "user_id", at)
        item_ids = _ids(con, "snapshot_item_ids.sql", "item_id", at)
        con.register("user_codes", id_index(user_ids, "user_id"))
        con.register("item_codes", id_index(item_ids, "item_id"))
        try:
            events = con.sql(_with_enum_types(con, read_sql("snapshot_events_coded.sql"), at),
                             params=at).pl()
            social = con.sql(read_sql("snapshot_social_coded.sql"), params=at).pl()
        finally:
            con.unregister("user_codes")
            con.unregister("item_codes")
    else:
        events = con.sql(read_sql("snapshot_events.sql"), params=at).pl()
        social = con.sql(read_sql("snapshot_social.sql"), params=at).pl()
    items = con.sql("SELECT item_id, title, text, tags, category, embedding FROM raw.items").pl()
    users = con.sql("SELECT user_id FROM raw.users").pl()
    if not events.is_empty():
        events = events.with_columns(pl.col("ts").dt.convert_time_zone("UTC"))
    if items.height and items["embedding"].null_count() == items.height:
        items = items.drop("embedding")
    return Snapshot(events, _optional(items), _optional(social), _optional(users), as_of,
                    user_ids, item_ids)


def _with_enum_types(con: duckdb.DuckDBPyConnection, events_sql: str,
                     at: dict[str, datetime | None]) -> str:
    """`events_sql` with its `event_type` read as an ENUM of the types present (DuckDB has no
    parameter for a type): each type is quoted as an SQL string literal ('' for ')."""
    types = [t for (t,) in con.sql(read_sql("snapshot_event_types.sql"), params=at).fetchall()]
    if not types:
        return events_sql
    literal = ", ".join("'" + str(t).replace("'", "''") + "'" for t in types)
    body = events_sql.strip().rstrip(";")
    return (f"SELECT user_idx, item_idx, CAST(event_type AS ENUM({literal})) AS event_type, "
            f"value, ts FROM ({body})")


def _ids(con: duckdb.DuckDBPyConnection, sql: str, column: str,
         at: dict[str, datetime | None]) -> np.ndarray:
    ids = con.sql(read_sql(sql), params=at).pl()[column]
    return ids.cast(pl.String).to_numpy().astype(object)
