"""Tune content / social / popularity on an inner split of Last.fm train, then score test once.

Protocol (the split's README): every train user with >= 5 items has max(1, round(0.2 n)) of them
moved to validation at random (seed 7, `tasks.data.splits.per_user_split`). Each modality's grid is
scored on validation; the best config by NDCG@10 is refit on all of train and scored once on
`test.parquet`. Lists are top-10, train items excluded; users with no list count as zero
(`tasks.evaluation.metrics.ranking_metrics`).
Extra columns: coverage = distinct recommended items / items
with train interactions; cold recs = share of recommended items nobody interacted with in the
fitted data; users served = share of evaluated users with a non-empty list.

    /work/.venv/bin/python benchmarks/tune_content_social.py [--data DIR] [--only content,social]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.data.dataset import Dataset, build_dataset  # noqa: E402
from tasks.data.splits import per_user_split  # noqa: E402
from tasks.evaluation.metrics import ranking_metrics  # noqa: E402
from tasks.kernels.blocks import top_n  # noqa: E402
from tasks.modalities.base import Modality  # noqa: E402
from tasks.modalities.content import ContentParams, make_content  # noqa: E402
from tasks.modalities.popularity import PopularityParams, make_popularity  # noqa: E402
from tasks.modalities.social import SocialParams, make_social  # noqa: E402

K = 10
DEFAULT_DATA = Path("/work/shared/data/lastfm-2k-split")


def evaluate(model: Modality, data: Dataset, truth: pl.DataFrame) -> tuple[dict[str, float], float]:
    """Fit + top-10 for every truth user; returns (metrics incl. coverage, seconds)."""
    t0 = time.perf_counter()
    model.fit(data)
    users = data.user_index(truth["user_id"].unique().sort())
    users = users[users >= 0]
    cands = top_n(model, users, K, seen=data.seen(), block_size=512)
    seconds = time.perf_counter() - t0
    recs = cands.with_columns(
        user_id=pl.Series(data.user_ids[cands["user_idx"].to_numpy()], dtype=pl.String),
        item_id=pl.Series(data.item_ids[cands["item_idx"].to_numpy()], dtype=pl.String),
    )
    out = ranking_metrics(recs, truth, K, users=pl.Series(data.user_ids, dtype=pl.String))
    train_items = max(int((data.interactions.getnnz(axis=0) > 0).sum()), 1)
    out["coverage"] = cands["item_idx"].n_unique() / train_items
    out["users_served"] = cands["user_idx"].n_unique() / max(len(users), 1)
    cold = data.interactions.getnnz(axis=0)[cands["item_idx"].to_numpy()] == 0
    out["cold_share"] = float(cold.mean()) if len(cold) else 0.0
    return out, seconds


Factory = Callable[[Any], Modality]

C = ContentParams
S = SocialParams
GRIDS: dict[str, tuple[Factory, list[BaseModel]]] = {
    "popularity": (make_popularity, [
        PopularityParams(category_blend=0.0),
        *(PopularityParams(category_from_first_tag=True, category_blend=b)
          for b in (0.3, 0.5, 0.7, 0.9, 1.0)),
    ]),
    # Pure content: no interaction counts enter the item side.
    "content": (make_content, [
        *(C(min_df_share=m, tag_position_decay=d)
          for m in (0.0, 0.001, 0.003, 0.006) for d in (0.0, 0.25, 0.5)),
        C(tag_words=True),
        C(title_weight=0.0),
        C(history_weighting="binary"),
        C(metric="euclidean"),
        C(variant="item_knn", neighbours=200),
        C(variant="item_knn", neighbours=1000),
    ]),
    # Content × item popularity prior: better lists, far fewer cold items (reported apart).
    "content+prior": (make_content, [C(popularity_prior=w) for w in (0.05, 0.1, 0.15, 0.25)]),
    "social": (make_social, [
        S(propagation="direct", taste_weight=0.0),
        S(propagation="direct", taste_weight=0.5),
        S(propagation="direct", taste_weight=0.8),
        *(S(propagation="two_hop", hop_decay=h, taste_weight=t)
          for h in (0.3, 1.0) for t in (0.5, 0.8)),
        *(S(propagation="ppr", restart=r, taste_weight=t)
          for r in (0.3, 0.5) for t in (0.5, 0.8, 0.9)),
        S(propagation="ppr", taste_weight=0.8, friend_normalisation="none"),
        S(propagation="ppr", taste_weight=0.8, history_weighting="binary"),
    ]),
}


def describe(params: BaseModel) -> str:
    """Only the fields that differ from the defaults, so table rows stay short."""
    default = type(params)()
    diff = {k: v for k, v in params.model_dump().items() if getattr(default, k) != v}
    return ", ".join(f"{k}={v}" for k, v in diff.items()) or "defaults"


def table(rows: list[dict[str, Any]], title: str) -> None:
    print(f"\n## {title}\n")
    print("| modality | config | NDCG@10 | Recall@10 | Precision@10 | coverage | cold recs "
          "| users served | fit+score s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['modality']} | {r['config']} | {r['ndcg']:.4f} | {r['recall']:.4f} | "
              f"{r['precision']:.4f} | {r['coverage']:.4f} | {r['cold_share']:.3f} | "
              f"{r['users_served']:.3f} | "
              f"{r['seconds']:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--only", default=",".join(GRIDS), help="comma-separated modalities")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]

    train_dir = args.data / "train"
    events = pl.read_parquet(train_dir / "events.parquet")
    items = pl.read_parquet(train_dir / "items.parquet")
    social = pl.read_parquet(train_dir / "social.parquet")
    test = pl.read_parquet(args.data / "test.parquet")
    full = build_dataset(events, items=items, social=social)

    split = per_user_split(events, temporal=False, fraction=0.2, seed=7, cold_pool=False)
    inner_events, valid = split.train, split.truth
    inner = build_dataset(inner_events, items=items, social=social,
                          user_ids=full.user_ids, item_ids=full.item_ids)
    print(f"inner split: {inner_events.height} train events, {valid.height} validation pairs "
          f"of {valid['user_id'].n_unique()} users")

    chosen: dict[str, BaseModel] = {}
    for name in names:
        factory, grid = GRIDS[name]
        rows = []
        for params in grid:
            result, seconds = evaluate(factory(params), inner, valid)
            rows.append({"modality": name, "config": describe(params), "params": params,
                         "seconds": seconds, **result})
        table(rows, f"validation — {name}")
        chosen[name] = max(rows, key=lambda r: r["ndcg"])["params"]

    test_rows = []
    # Yardstick, not tuned: plain distinct-user popularity (README: NDCG@10 0.079).
    reference = PopularityParams(category_blend=0.0)
    result, seconds = evaluate(make_popularity(reference), full, test)
    test_rows.append({"modality": "popularity (plain, reference)", "config": describe(reference),
                      "seconds": seconds, **result})
    for name in names:
        result, seconds = evaluate(GRIDS[name][0](chosen[name]), full, test)
        test_rows.append({"modality": name, "config": describe(chosen[name]), "seconds": seconds,
                          **result})
    table(test_rows, "test (chosen configs, refit on all train, scored once)")


if __name__ == "__main__":
    main()
