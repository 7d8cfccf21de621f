"""Hold-out splits: temporal when time varies, per-user random otherwise; truth never seen."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl

from tasks.holdout import holdout_split

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def events(rows: list[tuple[str, str, int]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "event_type": ["view"] * len(rows),
            "value": [1.0] * len(rows),
            "ts": [T0 + timedelta(days=r[2]) for r in rows],
        }
    )


def test_temporal_split_holds_out_last_window_and_drops_repeats_from_truth():
    ev = events([("a", "x", 0), ("a", "y", 10), ("a", "x", 29), ("a", "z", 29), ("b", "q", 28)])
    split = holdout_split(ev, holdout_days=7)
    assert split.kind == "temporal"
    assert split.train.height == 2
    # a's repeat of x is not truth (x is excluded from a's list); b has no training history
    assert sorted(split.truth.rows()) == [("a", "z"), ("b", "q")]


def test_random_split_when_time_does_not_vary():
    rows = [(u, f"i{j}", 0) for u in ("a", "b") for j in range(10)] + [("c", "i0", 0)]
    split = holdout_split(events(rows), holdout_days=7, fraction=0.2, seed=1)
    assert split.kind == "random"
    per_user = split.truth.group_by("user_id").len().sort("user_id").rows()
    assert per_user == [("a", 2), ("b", 2)]  # c has fewer than 5 items: stays whole in train
    assert split.train.height + split.truth.height == len(rows)
    assert split.truth.join(split.train, on=["user_id", "item_id"]).height == 0
