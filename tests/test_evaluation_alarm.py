"""The honest alarm: too few users, or lists below popularity, stop a run from publishing."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
from support import query, run_nightly

from tasks.evaluation.alarm import evaluation_checks


def _failed(outcome) -> set[str]:  # type: ignore[no-untyped-def]
    return set(outcome.results.filter(~pl.col("success"))["expectation"].to_list())


def test_too_few_users_and_a_list_below_popularity_raise_it_noise_does_not() -> None:
    rng = np.random.default_rng(0)
    pop = rng.binomial(1, 0.2, 400).astype(float)
    ok = evaluation_checks({"fused": pop + 0.001, "popularity": pop}, 400, None, None, 100)
    assert ok.passed and not _failed(ok)
    # 30 users: not enough to decide anything
    few = evaluation_checks({"fused": pop[:30], "popularity": pop[:30]}, 30, None, None, 100)
    assert not few.passed and _failed(few) == {"expect_evaluation_users_at_least"}
    # a list worse than popularity by many standard errors
    useless = evaluation_checks({"fused": np.zeros(400), "popularity": pop}, 400, None, None, 100)
    assert not useless.passed and "expect_fused_not_below_popularity" in _failed(useless)
    # slightly below by noise only: no alarm
    noisy = pop.copy()
    noisy[np.flatnonzero(pop)[:2]] = 0.0
    assert evaluation_checks({"fused": noisy, "popularity": pop}, 400, None, None, 100).passed


def _useless_content_source(small_source: Path, out: Path) -> Path:
    """The small source with every item's attributes moved to another item: content then
    recommends at random."""
    shutil.copytree(small_source, out)
    items = pl.read_parquet(out / "items.parquet")
    perm = np.random.default_rng(1).permutation(items.height)
    shuffled = items.select("item_id").hstack(items.drop("item_id")[perm])
    shuffled.write_parquet(out / "items.parquet")
    return out


def test_the_alarm_stops_a_run_whose_only_source_is_useless(
    prefect_harness: None, small_source: Path, tmp_path: Path
) -> None:
    source = _useless_content_source(small_source, tmp_path / "src")
    db = tmp_path / "rf.duckdb"
    summary = run_nightly(source, db, modalities=["content"])
    assert summary.status == "rejected"
    assert "evaluation alarm" in summary.message and "popularity" in summary.message
    rows = query(db, "SELECT expectation, success FROM check_results "
                     "WHERE suite = 'evaluation' AND NOT success")
    assert ("expect_fused_not_below_popularity", False) in rows
    assert query(db, "SELECT count(*) FROM recommendations_latest") == [(0,)]
    # the operator may still publish it, knowingly
    forced = run_nightly(source, db, modalities=["content"], publish_on_alarm=True)
    assert forced.status == "published", forced.message
