"""Run metrics: shares that cannot exceed 1, standard errors, the headline on main users."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest

from tasks.data.dataset import build_dataset
from tasks.evaluation.lists import evaluate_lists, user_segments


def _data():
    events = pl.DataFrame({
        "user_id": ["a", "a", "b", "b", "c"], "item_id": ["i1", "i2", "i1", "i3", "i2"],
        "event_type": "view", "value": 1.0, "ts": datetime(2024, 1, 1, tzinfo=UTC),
    })
    # i4..i9 have no events yet (a content modality can still recommend them)
    items = pl.DataFrame({"item_id": [f"i{j}" for j in range(1, 10)]})
    return build_dataset(events, items=items)


def test_coverage_counts_the_whole_catalogue_so_cold_items_never_push_it_above_one() -> None:
    data = _data()
    cold = [int(np.flatnonzero(data.item_ids == f"i{j}")[0]) for j in range(4, 10)]
    lists = {"content": pl.DataFrame({
        "user_idx": np.repeat(np.arange(3), 3).astype(np.int32),
        "item_idx": np.array(cold * 2)[:9].astype(np.int32),
        "rank": np.tile([1, 2, 3], 3).astype(np.int32),
    })}
    truth = pl.DataFrame({"user_idx": [0, 1, 2], "item_idx": [cold[0]] * 3},
                         schema={"user_idx": pl.Int32, "item_idx": pl.Int32})
    m = evaluate_lists(lists, truth, data, 3, user_segments(data, 2))
    coverage = m.filter(pl.col("metric") == "coverage")["value"][0]
    assert coverage == pytest.approx(6 / 9)  # 6 distinct items of a 9-item catalogue (was 6/3)


def test_ranking_metrics_carry_standard_errors_and_the_cold_pool_is_its_own_segment() -> None:
    data = _data()
    lists = {"x": pl.DataFrame({"user_idx": [0, 1, 2], "item_idx": [3, 3, 3], "rank": [1, 1, 1]},
                               schema={"user_idx": pl.Int32, "item_idx": pl.Int32,
                                       "rank": pl.Int32})}
    truth = pl.DataFrame({"user_idx": [0, 1, 2], "item_idx": [3, 4, 3]},
                         schema={"user_idx": pl.Int32, "item_idx": pl.Int32})
    m = evaluate_lists(lists, truth, data, 3, user_segments(data, 2),
                       cold_pool=np.array([2], dtype=np.int32))
    ndcg = m.filter((pl.col("metric") == "ndcg") & (pl.col("segment") == "all"))
    assert ndcg["value"][0] == pytest.approx(0.5)  # users 0 and 1 only: hit, miss
    assert ndcg["std_error"][0] == pytest.approx(np.std([1.0, 0.0], ddof=1) / np.sqrt(2))
    n = m.filter((pl.col("metric") == "n_users") & (pl.col("segment") == "cold_pool"))
    assert n["value"][0] == 1
