"""Tune the feature- and sample-level fusion models on an inner split of Last.fm train only.

python benchmarks/tune_hybrid.py            # validation grid, then the chosen configs on test
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

from tasks.data.dataset import build_dataset
from tasks.data.splits import per_user_split
from tasks.evaluation.metrics import ranking_metrics
from tasks.kernels.blocks import top_n
from tasks.modalities.hybrid import FeatureFusionModel, HybridParams, SampleFusionModel

SPLIT = Path(__file__).resolve().parents[2] / "shared" / "data" / "lastfm-2k-split"


def score(
    model_cls: type,
    params: HybridParams,
    events: pl.DataFrame,
    truth: pl.DataFrame,
    items: pl.DataFrame,
    social: pl.DataFrame,
) -> tuple[float, float]:
    full = build_dataset(events, items, social)
    start = time.perf_counter()
    model = model_cls(params).fit(full)
    recs = top_n(model, np.arange(full.n_users), 10, seen=full.seen())
    seconds = time.perf_counter() - start
    recs = full.with_ids(recs).select("user_id", "item_id", "rank")
    return ranking_metrics(recs, truth, 10)["ndcg"], seconds


def main() -> int:
    events = pl.read_parquet(SPLIT / "train" / "events.parquet")
    items = pl.read_parquet(SPLIT / "train" / "items.parquet")
    social = pl.read_parquet(SPLIT / "train" / "social.parquet")
    inner = per_user_split(events, temporal=False, fraction=0.2, seed=7, cold_pool=False)
    print("validation (inner split of train, seed 7): NDCG@10")
    best: dict[str, tuple[float, HybridParams]] = {}
    grid = {
        "hybrid_features": (
            FeatureFusionModel,
            [
                HybridParams(feature_weight=b, features_l2=l2)
                for b in (0, 5, 20, 50, 100)
                for l2 in (100, 200)
            ],
        ),
        "hybrid_samples": (
            SampleFusionModel,
            [
                HybridParams(social_weight=g, samples_l2=l2)
                for g in (0, 0.1, 0.3, 0.6)
                for l2 in (100, 200)
            ],
        ),
    }
    for name, (cls, configs) in grid.items():
        for params in configs:
            ndcg, seconds = score(cls, params, inner.train, inner.truth, items, social)
            l2 = params.features_l2 if name == "hybrid_features" else params.samples_l2
            print(
                f"  {name:16s} beta={params.feature_weight:<5} gamma={params.social_weight:<4} "
                f"l2={l2:<5} ndcg={ndcg:.4f} ({seconds:.1f}s)",
                flush=True,
            )
            if ndcg > best.get(name, (-1.0, params))[0]:
                best[name] = (ndcg, params)
    test = pl.read_parquet(SPLIT / "test.parquet")
    print("test (refit on all of train):")
    for name, (_, params) in best.items():
        ndcg, seconds = score(grid[name][0], params, events, test, items, social)
        print(f"  {name:16s} {params.model_dump()} ndcg={ndcg:.4f} ({seconds:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
