"""Score the published lists against anyone's held-out file, by the yardstick's definitions.

Definitions (as in the Last.fm split's README): every user of the test file who also appears in
the training events is evaluated; a user without recommendations counts as zero; relevance is
binary; coverage = distinct recommended items / distinct items in the training events.
Reads the analyst copy (`db`), so it can run beside a nightly run without blocking it.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from tasks.evaluation.metrics import catalog_coverage, ranking_metrics
from tasks.warehouse.connection import connect, read_sql

REPORTED = ("ndcg", "recall", "precision", "f1", "map", "mrr", "hit_rate")


def read_truth(path: Path) -> pl.DataFrame:
    """A held-out file of (user_id, item_id), Parquet or CSV; ids compared as strings."""
    if path.suffix.lower() == ".parquet":
        frame = pl.read_parquet(path)
    elif path.suffix.lower() == ".csv":
        frame = pl.read_csv(path, infer_schema=False)
    else:
        raise ValueError(f"{path}: use a .parquet or .csv file with user_id, item_id")
    missing = [c for c in ("user_id", "item_id") if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    return frame.select(
        pl.col("user_id").cast(pl.String), pl.col("item_id").cast(pl.String)
    ).unique()


def evaluate_published(
    db: str | Path, truth: pl.DataFrame, k: int = 10
) -> dict[str, dict[str, float]]:
    """Metrics@k for `fused` and each modality of the latest published run, keyed 'ndcg@10' etc."""
    with connect(db, read_only=True) as con:
        lists = con.sql(read_sql("published_lists.sql"), params={"k": k}).pl()
        train_users = con.sql(read_sql("train_users.sql")).pl()
        n_train_items = con.sql(read_sql("train_item_count.sql")).fetchall()[0][0]
    users = truth.join(train_users, on="user_id", how="semi")["user_id"].unique()
    out: dict[str, dict[str, float]] = {}
    for name in ["fused", *sorted(n for n in lists["list"].unique().to_list() if n != "fused")]:
        recs = lists.filter(pl.col("list") == name).select("user_id", "item_id", "rank")
        values = ranking_metrics(recs, truth, k, users=users)
        row = {f"{m}@{k}": values[m] for m in REPORTED}
        row[f"coverage@{k}"] = catalog_coverage(
            recs.filter(pl.col("user_id").is_in(users.implode())), max(1, int(n_train_items)), k
        )
        row["users"] = values["n_users"]
        out[name] = row
    return out
