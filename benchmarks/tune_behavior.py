"""Tune the behavior modality on an inner split of Last.fm train, then score test once.

Protocol (see /work/shared/data/lastfm-2k-split/README.md): every train user with ≥ 5 items has
max(1, round(0.2·n)) of them moved to validation at random (seed 7). Every grid point is fitted
on the inner train and scored on validation; the best config per family (and overall) is refit on
all of train and evaluated once on test, as are the shipped `BehaviorParams()` defaults and
`algorithm="auto"`. Top-10 lists for every train user, seen items excluded, scored with
`tasks.evaluation.metrics.ranking_metrics`
(README definitions). PureSVD is measured only to choose the
large-catalog model (it lost to ALS) and is not part of the product; `implicit` is not used.

    /work/.venv/bin/python benchmarks/tune_behavior.py [--data DIR] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.data.dataset import Dataset, build_dataset  # noqa: E402
from tasks.evaluation.metrics import ranking_metrics  # noqa: E402
from tasks.kernels.blocks import top_n  # noqa: E402
from tasks.modalities.base import Modality  # noqa: E402
from tasks.modalities.behavior import (  # noqa: E402
    BehaviorParams,
    choose_algorithm,
    make_behavior,
)

DATA = Path("/work/shared/data/lastfm-2k-split")
K = 10


def inner_split(events: pl.DataFrame, seed: int = 7) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Move max(1, round(0.2·n)) random items of each user with n ≥ 5 items to validation."""
    pairs = events.select("user_id", "item_id").unique().sort("user_id", "item_id")
    rng = np.random.default_rng(seed)
    ranked = (
        pairs.with_columns(key=pl.Series(rng.random(pairs.height)))
        .with_columns(
            n=pl.len().over("user_id"),
            pos=pl.col("key").rank("ordinal").over("user_id"),
        )
        .with_columns(
            n_val=pl.when(pl.col("n") >= 5)
            .then(pl.max_horizontal(pl.lit(1), (pl.col("n") * 0.2).round().cast(pl.Int64)))
            .otherwise(0)
        )
    )
    val = ranked.filter(pl.col("pos") <= pl.col("n_val")).select("user_id", "item_id")
    train = events.join(val, on=["user_id", "item_id"], how="anti")
    return train, val


def recommend(model: Modality, data: Dataset, k: int = K) -> pl.DataFrame:
    """Top-k unseen items for every user of the snapshot, as user_id, item_id, rank."""
    users = np.arange(data.n_users)
    cands = top_n(model, users, k, seen=data.seen())
    return pl.DataFrame(
        {
            "user_id": pl.Series(data.user_ids[cands["user_idx"].to_numpy()], dtype=pl.String),
            "item_id": pl.Series(data.item_ids[cands["item_idx"].to_numpy()], dtype=pl.String),
            "rank": cands["rank"],
        }
    )


def evaluate(config: BehaviorParams | Modality, data: Dataset,
             truth: pl.DataFrame) -> dict[str, float]:
    """Fit, recommend top-10 for all users, score against truth; with timings and coverage."""
    t0 = time.perf_counter()
    model = make_behavior(config) if isinstance(config, BehaviorParams) else config
    model.fit(data)
    t1 = time.perf_counter()
    recs = recommend(model, data)
    t2 = time.perf_counter()
    truth = truth.join(pl.DataFrame({"user_id": data.user_ids.astype(str)}), on="user_id")
    out = ranking_metrics(recs, truth, K)
    n_train_items = int((np.diff(data.interactions.tocsc().indptr) > 0).sum())
    out["coverage"] = recs["item_id"].n_unique() / n_train_items
    out["fit_s"], out["rec_s"] = t1 - t0, t2 - t1
    return out


class PureSvd:
    """Benchmark-only PureSVD (Cremonesi et al. 2010): scores X[u] V Vᵀ from a truncated SVD.

    Measured here to choose the product's large-catalog model (ALS vs SVD); not shipped.
    """

    name = "behavior"

    def __init__(self, factors: int, confidence: bool = False) -> None:
        self.factors = factors
        self.confidence = confidence
        self.x = sp.csr_matrix((0, 0), dtype=np.float32)
        self.v = np.zeros((0, 0), dtype=np.float32)

    def fit(self, data: Dataset) -> PureSvd:
        from sklearn.decomposition import TruncatedSVD

        x = sp.csr_matrix(data.interactions, dtype=np.float32, copy=True)
        if not self.confidence:
            x.data = np.ones_like(x.data)
        svd = TruncatedSVD(self.factors, algorithm="randomized", n_iter=7, random_state=7)
        svd.fit(x)
        self.x, self.v = x, svd.components_.T.astype(np.float32)
        return self

    def score_block(self, users: np.ndarray) -> np.ndarray:
        hist = self.x[users]
        out = np.asarray((hist @ self.v) @ self.v.T, dtype=np.float32)
        out[np.diff(hist.indptr) == 0] = -np.inf
        return out


Config = BehaviorParams | PureSvd


def grid(quick: bool) -> list[tuple[str, str, Config]]:
    """(family, label, config) tried on validation; staged to stay modest on 2 shared cores."""
    g: list[tuple[str, str, Config]] = []

    def add(label: str, **kw: Any) -> None:
        params = BehaviorParams(**kw)
        g.append((params.algorithm, label, params))

    lams = [100] if quick else [50, 75, 100, 150, 200, 300]
    for inp in ("binary", "confidence"):
        for lam in lams:
            add(f"ease {inp} l2={lam}", algorithm="ease", l2=lam, ease_input=inp)
    if not quick:
        for cap in (3000, 10000):
            add(f"ease confidence l2=100 max_items={cap}", algorithm="ease", l2=100,
                ease_input="confidence", max_items_for_ease=cap)

    # ALS: quality rides on reg/alpha (best near 5), so reg is gridded jointly with alpha.
    for inp in ("binary", "confidence"):
        for f in (32,) if quick else (32, 64, 128):
            for alpha in (20.0,) if quick else (5.0, 10.0, 15.0, 20.0, 40.0):
                for reg in (10.0, 100.0) if quick else (1.0, 10.0, 50.0, 75.0, 100.0, 150.0):
                    add(f"als {inp} f={f} alpha={alpha:g} reg={reg:g}", algorithm="als",
                        factors=f, als_alpha=alpha, als_regularization=reg, als_input=inp)
    for reg in () if quick else (50.0, 75.0, 100.0):
        add(f"als confidence f=256 alpha=15 reg={reg:g}", algorithm="als", factors=256,
            als_alpha=15.0, als_regularization=reg, als_input="confidence")
    for f in () if quick else (64, 128, 256):
        g.append(("svd (bench only)", f"pure-svd binary f={f}", PureSvd(f)))

    for inp in ("binary", "confidence"):
        for k in (200, 800) if quick else (100, 200, 400, 800, 1600):
            for shrink in (0.0, 2.0) if quick else (0.0, 2.0, 10.0, 50.0):
                add(f"itemknn cosine {inp} k={k} shrink={shrink:g}", algorithm="itemknn",
                    similarity="cosine", neighbors=k, shrink=shrink, knn_input=inp)
    if not quick:
        for a in (0.35, 0.65, 0.8):
            add(f"itemknn asym-cosine confidence a={a} k=800 shrink=2", algorithm="itemknn",
                similarity="asymmetric_cosine", asymmetric_alpha=a, neighbors=800, shrink=2.0,
                knn_input="confidence")
    for sim in ("euclidean", "manhattan"):
        add(f"itemknn {sim} raw binary k=200", algorithm="itemknn", similarity=sim,
            neighbors=200, knn_input="binary")
        for inp in ("binary", "confidence"):
            for k in (200,) if quick else (100, 200, 400):
                add(f"itemknn {sim} normalized {inp} k={k}", algorithm="itemknn",
                    similarity=sim, knn_normalize=True, neighbors=k, knn_input=inp)
    return g


def _row(label: str, m: dict[str, float]) -> str:
    return (f"| {label} | {m['ndcg']:.4f} | {m['recall']:.4f} | {m['precision']:.4f} | "
            f"{m['coverage']:.3f} | {m['fit_s']:.1f} | {m['rec_s']:.1f} |")


HEADER = ("| model / config | NDCG@10 | Recall@10 | Precision@10 | coverage | fit s | rec s |\n"
          "|---|---|---|---|---|---|---|")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--quick", action="store_true", help="small grid (smoke run)")
    args = parser.parse_args()

    events = pl.read_parquet(args.data / "train" / "events.parquet")
    items = pl.read_parquet(args.data / "train" / "items.parquet")
    social = pl.read_parquet(args.data / "train" / "social.parquet")
    test = pl.read_parquet(args.data / "test.parquet").select(
        pl.col("user_id").cast(pl.String), pl.col("item_id").cast(pl.String)
    )
    full = build_dataset(events, items, social)
    inner_events, val = inner_split(events, seed=7)
    inner = build_dataset(inner_events, items, social,
                          user_ids=full.user_ids, item_ids=full.item_ids)
    print(f"users {full.n_users}, items {full.n_items}, "
          f"train pairs {full.interactions.nnz}, inner {inner.interactions.nnz}, "
          f"validation {val.height}, test {test.height}\n")

    print("## Validation (inner split of train, seed 7)\n")
    print(HEADER, flush=True)
    results: list[tuple[str, str, Config, dict[str, float]]] = []
    for family, label, config in grid(args.quick):
        m = evaluate(config, inner, val)
        results.append((family, label, config, m))
        print(_row(label, m), flush=True)

    chosen: dict[str, tuple[str, Config, dict[str, float]]] = {}
    for family, label, config, m in results:
        if family not in chosen or m["ndcg"] > chosen[family][2]["ndcg"]:
            chosen[family] = (label, config, m)
    best_label = max(results, key=lambda r: r[3]["ndcg"])[1]
    auto = BehaviorParams(algorithm="auto")

    print("\n## Test (best config per family on validation, refit on all of train, scored once)\n")
    print(HEADER)
    for _family, (label, config, _m) in sorted(chosen.items()):
        if isinstance(config, PureSvd):
            config = PureSvd(config.factors, config.confidence)
        m = evaluate(config, full, test)
        mark = " — best on validation" if label == best_label else ""
        print(_row(label + mark, m), flush=True)
    m = evaluate(BehaviorParams(), full, test)
    print(_row(f"BehaviorParams() defaults (algorithm={BehaviorParams().algorithm})", m))
    m = evaluate(auto, full, test)
    print(_row(f"BehaviorParams(algorithm='auto') → {choose_algorithm(full, auto)}", m))

if __name__ == "__main__":
    main()
