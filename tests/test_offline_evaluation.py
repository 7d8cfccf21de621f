"""`recfusion evaluate`: the published lists scored by the yardstick's exact definitions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import duckdb
import polars as pl
import pytest

from flows.cli import main as cli
from tasks.evaluation.published import evaluate_published


def latest(db: Path) -> pl.DataFrame:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.sql("SELECT user_id, item_id, rank FROM recommendations_latest").pl()
    finally:
        con.close()


def test_metrics_match_hand_computed_values(
    published_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    recs = latest(published_db)
    a, b = recs["user_id"].unique().sort()[:2].to_list()
    a_list = recs.filter(pl.col("user_id") == a).sort("rank")["item_id"].to_list()
    b_list = recs.filter(pl.col("user_id") == b)["item_id"].to_list()
    unrecommended = "no-such-item"
    truth = pl.DataFrame(
        {
            "user_id": [a, a, a, b, "nobody-in-train"],
            "item_id": [a_list[0], a_list[2], unrecommended, unrecommended, a_list[0]],
        }
    )
    assert b_list  # b has a list, none of it relevant
    path = tmp_path / "test.csv"
    truth.write_csv(path)

    # a: hits at ranks 1 and 3 of 3 relevant; b: no hit; the unknown user is not evaluated
    ndcg_a = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3) + 1 / math.log2(4))
    got = evaluate_published(published_db, truth, k=10)["fused"]
    assert got["users"] == 2
    assert got["ndcg@10"] == pytest.approx(ndcg_a / 2)
    assert got["recall@10"] == pytest.approx((2 / 3) / 2)
    assert got["precision@10"] == pytest.approx((2 / 10) / 2)
    assert got["mrr@10"] == pytest.approx(0.5)
    assert got["hit_rate@10"] == pytest.approx(0.5)

    assert cli(["evaluate", "--db", str(published_db), "--test", str(path), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["fused"]["ndcg@10"] == pytest.approx(ndcg_a / 2)
    assert {"behavior", "content", "social", "popularity"} <= set(printed)
    assert all("ndcg@10" in v and "coverage@10" in v for v in printed.values())


def test_evaluate_rejects_a_file_without_the_columns(
    published_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    path = tmp_path / "bad.csv"
    path.write_text("user,item\n1,2\n")
    assert cli(["evaluate", "--db", str(published_db), "--test", str(path)]) == 2
    assert "missing column(s) user_id, item_id" in capsys.readouterr().err
