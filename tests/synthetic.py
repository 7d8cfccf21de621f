"""Synthetic events for tests that need many users: views of skewed (Zipf) item popularity."""

from __future__ import annotations

import numpy as np
import polars as pl


def skewed_views(
    rng: np.random.Generator, n_users: int, n_items: int, n_events: int, zipf: float
) -> pl.DataFrame:
    """`n_events` views by uniform random users of Zipf-popular items (some audiences overlap
    a lot), in the data contract's columns, without timestamps."""
    return pl.DataFrame(
        {
            "user_id": rng.integers(0, n_users, n_events).astype(str),
            "item_id": (rng.zipf(zipf, n_events) % n_items).astype(str),
            "event_type": "view",
            "value": 1.0,
            "ts": None,
        },
        schema_overrides={"ts": pl.Datetime("us", "UTC")},
    )
