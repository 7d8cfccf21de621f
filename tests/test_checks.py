"""Great Expectations suites on real (small) frames: each rule can fail on its own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from tasks.checks import check_events, check_recommendations

GOOD = pl.DataFrame(
    {
        "user_id": ["a", "a", "a", "b"],
        "item_id": ["x", "y", "z", "x"],
        "rank": [1, 2, 3, 1],
        "score": [3.0, 2.0, 2.0, 1.0],
    }
)
SEEN = pl.DataFrame({"user_id": ["a", "b"], "item_id": ["w", "y"]})


def failed(outcome) -> set[str]:
    return set(outcome.results.filter(~pl.col("success"))["expectation"].to_list())


def test_good_recommendations_pass():
    outcome = check_recommendations(GOOD, SEEN, k=3)
    assert outcome.passed, outcome.failures()
    assert outcome.results.height == 6


@pytest.mark.parametrize(
    ("broken", "k", "expectation"),
    [
        (
            GOOD.with_columns(pl.Series("item_id", ["x", "x", "z", "x"])),
            3,
            "expect_compound_columns_to_be_unique",
        ),
        (
            GOOD.with_columns(pl.Series("rank", [1, 2, 4, 1])),
            3,
            "expect_column_pair_values_to_be_equal",
        ),
        (GOOD, 2, "expect_column_values_to_be_between"),  # list of 3 > K
        (
            GOOD.with_columns(pl.Series("score", [3.0, float("nan"), 1.0, 1.0])),
            3,
            "expect_column_values_to_be_in_set",
        ),
        (
            GOOD.with_columns(pl.Series("score", [1.0, 2.0, 3.0, 1.0])),
            3,
            "expect_column_values_to_be_between",
        ),  # score rises with rank
        (
            GOOD.with_columns(pl.Series("item_id", ["x", "y", "w", "x"])),
            3,
            "expect_column_values_to_be_in_set",
        ),  # 'w' already seen by a
    ],
)
def test_each_output_rule_fails_on_its_own(broken: pl.DataFrame, k: int, expectation: str):
    outcome = check_recommendations(broken, SEEN, k=k)
    assert not outcome.passed
    assert expectation in failed(outcome)


def test_events_suite_blocks_future_and_non_finite_but_only_warns_on_unknown_types():
    now = datetime(2024, 6, 1, tzinfo=UTC)
    events = pl.DataFrame(
        {
            "user_id": ["a", "b"],
            "item_id": ["x", "y"],
            "event_type": ["view", "share"],
            "value": [1.0, 2.0],
            "ts": [now - timedelta(days=1), now - timedelta(days=2)],
        }
    )
    ok = check_events(events, ["view", "like"], now=now)
    assert ok.passed and failed(ok) == {"expect_column_values_to_be_in_set"}
    bad = events.with_columns(
        pl.Series("ts", [now + timedelta(days=30), now]), pl.Series("value", [1.0, float("inf")])
    )
    outcome = check_events(bad, ["view", "share"], now=now)
    assert not outcome.passed
    assert {
        r["column_name"] for r in outcome.results.filter(~pl.col("success")).iter_rows(named=True)
    } == {"ts_epoch", "value_is_finite"}
