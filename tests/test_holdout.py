"""Hold-out protocols: representative whatever the spread of timestamps; truth never seen."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

from tasks.data.splits import EvaluationParams, choose_kind, holdout_split

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def events(rows: list[tuple[str, str, float]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "event_type": ["view"] * len(rows),
            "value": [1.0] * len(rows),
            "ts": [T0 + timedelta(days=r[2]) for r in rows],
        }
    )


def test_global_window_when_it_holds_enough_users_and_repeats_are_not_truth():
    ev = events([("a", "x", 0), ("a", "y", 10), ("a", "x", 29), ("a", "z", 29), ("b", "q", 28)])
    params = EvaluationParams(protocol="global_time", holdout_days=7)
    split = holdout_split(ev, params)
    assert split.kind == "global_time"
    assert split.train.height == 2
    # a's repeat of x is not truth (x is excluded from a's list); b has no training history
    assert sorted(split.truth.rows()) == [("a", "z"), ("b", "q")]
    # 'auto' does not trust a window of two users
    assert choose_kind(ev, EvaluationParams(min_users=3)) == "user_temporal"
    assert choose_kind(ev, EvaluationParams(min_users=2)) == "global_time"


def test_random_per_user_split_when_time_does_not_vary():
    rows = [(u, f"i{j}", 0) for u in ("a", "b") for j in range(10)] + [("c", "i0", 0)]
    split = holdout_split(events(rows), EvaluationParams(holdout_fraction=0.2), seed=1)
    assert split.kind == "user_random"
    per_user = split.truth.group_by("user_id").len().sort("user_id").rows()
    assert per_user == [("a", 2), ("b", 2)]  # c has one item: nothing to hold out
    assert split.train.height + split.truth.height == len(rows)
    assert split.truth.join(split.train, on=["user_id", "item_id"]).height == 0


def test_per_user_temporal_holds_out_each_users_latest_items_ties_by_item_id():
    rows = [("a", f"i{j}", j) for j in range(10)] + [("b", f"i{j}", 3) for j in range(5)]
    split = holdout_split(events(rows), EvaluationParams(protocol="user_temporal"))
    truth = sorted(split.truth.rows())
    # a: 2 latest of 10; b: all at one time, so the largest item_id (as text) is "latest"
    assert truth == [("a", "i8"), ("a", "i9"), ("b", "i4")]
    assert split.cold_users is not None and split.cold_users.len() == 0


def test_cold_pool_holds_out_one_item_of_short_histories_and_is_flagged():
    rows = [("a", f"i{j}", j) for j in range(10)] + [("c", "x", 1), ("c", "y", 2), ("d", "x", 1)]
    split = holdout_split(events(rows), EvaluationParams(protocol="user_temporal"))
    assert ("c", "y") in split.truth.rows() and ("c", "x") not in split.truth.rows()
    assert split.cold_users is not None and split.cold_users.to_list() == ["c"]
    no_pool = holdout_split(events(rows), EvaluationParams(protocol="user_temporal",
                                                           cold_pool=False))
    assert "c" not in no_pool.truth["user_id"].to_list()


def test_long_history_whose_last_week_holds_one_percent_of_users_still_gets_enough_users():
    """Years of events where the last 7 days hold 1% of users: a global cut would decide on
    ~20 users; `auto` holds out each user's latest items instead, so every user with enough
    history is evaluated."""
    rng = np.random.default_rng(0)
    n_users, per_user, span = 2000, 8, 5 * 365
    rows = []
    for u in range(n_users):
        # 1% of users are active in the last week; the others stopped long before
        end = span - rng.uniform(0, 3) if u < n_users // 100 else rng.uniform(30, span - 30)
        days = np.sort(end - rng.uniform(0, 400, per_user))
        rows += [(f"u{u}", f"i{rng.integers(300)}", float(d)) for d in days]
    ev = events(rows)
    last_week = ev.filter(pl.col("ts") > ev["ts"].max() - timedelta(days=7))
    assert last_week["user_id"].n_unique() <= 0.015 * n_users
    params = EvaluationParams()
    split = holdout_split(ev, params)
    assert split.kind == "user_temporal"
    assert split.truth["user_id"].n_unique() >= 0.9 * n_users
    assert split.describe()["users"] == split.truth["user_id"].n_unique()
    # the inner (validation) split of the training part follows the same rule
    inner = holdout_split(split.train, params, seed=8, kind=split.kind)
    assert inner.kind == "user_temporal" and inner.truth["user_id"].n_unique() >= 0.9 * n_users
