"""Speed and memory of every modality, side by side with the `implicit` library.

Prints, per modality: fit seconds, seconds to recommend top-K for every user, users scored per
second, and the peak RSS of the process that did it; then the ratios the product targets:
users/s against implicit's ALS recommend-all (≥ 1.0) and fit time against implicit's ALS fit
(≤ 2.0). Each model runs in its own subprocess, so one model's memory never hides another's;
the row "all" fits the four side by side in one process and recommends with each, for the peak
RSS of a whole run.

    pip install -e ".[bench]"
    python benchmarks/bench_modalities.py                    # 100k users × 20k items × 5M events
    python benchmarks/bench_modalities.py --users 20000 --items 5000 --events 1000000   # quicker
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

OURS = ("behavior", "content", "social", "popularity")
# "all": the four fitted side by side in one process, each recommending for every user: the
# memory of a whole run, not of one model.
MODELS = (*OURS, "all", "implicit-als", "implicit-itemknn")


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # ru_maxrss is KiB on Linux


def _gemm_gflops() -> float:
    """This machine's float32 matrix-product speed (4096² × 4096²), the ceiling for scoring."""
    import numpy as np

    a = np.random.default_rng(0).random((4096, 4096), dtype=np.float32)
    a @ a
    start = time.perf_counter()
    for _ in range(3):
        a @ a
    return 3 * 2 * 4096**3 / (time.perf_counter() - start) / 1e9


def _load(source: Path) -> Any:
    import polars as pl

    from tasks.data.dataset import build_dataset

    return build_dataset(
        pl.read_parquet(
            source / "events.parquet", columns=["user_id", "item_id", "event_type", "value", "ts"]
        ),
        items=pl.read_parquet(source / "items.parquet"),
        social=pl.read_parquet(source / "social.parquet"),
    )


def _run_ours(names: Sequence[str], source: Path, k: int, block: int) -> dict[str, float]:
    """Fit `names` side by side, then let each recommend for every user (times are totals)."""
    import numpy as np

    from tasks.candidates import build_modality
    from tasks.config import RunParameters
    from tasks.kernels.blocks import top_n

    data = _load(source)
    after_load = _peak_rss_gb()
    start = time.perf_counter()
    models = [build_modality(name, RunParameters()).fit(data) for name in names]
    fit = time.perf_counter() - start
    seen, users = data.seen(), np.arange(data.n_users)
    start = time.perf_counter()
    served = min(
        top_n(m, users, k, seen=seen, block_size=block)["user_idx"].n_unique() for m in models
    )
    score = time.perf_counter() - start
    return {
        "fit_s": fit,
        "recommend_s": score,
        "users": data.n_users,
        "served": served,
        "items": data.n_items,
        "rss_gb": _peak_rss_gb(),
        "rss_after_load_gb": after_load,
    }


def _run_implicit(name: str, source: Path, k: int) -> dict[str, float]:
    import numpy as np
    from implicit.als import AlternatingLeastSquares
    from implicit.nearest_neighbours import CosineRecommender
    from threadpoolctl import threadpool_limits

    data = _load(source)
    after_load = _peak_rss_gb()
    user_items = data.interactions.tocsr().astype(np.float32)
    model = (
        AlternatingLeastSquares(factors=64, iterations=15, random_state=7)
        if name == "implicit-als"
        else CosineRecommender(K=100)
    )
    # implicit's own advice (it warns otherwise): single-threaded BLAS, its threads do the work
    with threadpool_limits(1, "blas"):
        start = time.perf_counter()
        model.fit(user_items, show_progress=False)
        fit = time.perf_counter() - start
        users = np.arange(data.n_users)
        start = time.perf_counter()
        ids, _ = model.recommend(users, user_items, N=k, filter_already_liked_items=True)
        score = time.perf_counter() - start
    return {
        "fit_s": fit,
        "recommend_s": score,
        "users": data.n_users,
        "served": int(len(ids)),
        "rss_gb": _peak_rss_gb(),
        "rss_after_load_gb": after_load,
    }


def _child(name: str, source: str, k: int, block: int, queue: Any) -> None:
    try:
        if name.startswith("implicit"):
            queue.put(_run_implicit(name, Path(source), k))
        else:
            queue.put(_run_ours(OURS if name == "all" else [name], Path(source), k, block))
    except Exception as exc:  # report, don't hang the parent
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--block", type=int, default=2048, help="users per scoring block")
    parser.add_argument("--data", default="/tmp/recfusion-bench", help="where the demo source goes")
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()

    from tasks.sources.demo import generate_demo_source

    source = Path(args.data) / f"u{args.users}-i{args.items}-e{args.events}"
    if not (source / "events.parquet").exists():
        start = time.perf_counter()
        generate_demo_source(
            source, users=args.users, items=args.items, events=args.events, seed=42
        )
        print(f"generated demo data in {time.perf_counter() - start:.1f}s -> {source}")

    ctx = mp.get_context("spawn")
    results: dict[str, dict[str, float]] = {}
    for name in args.models.split(","):
        queue = ctx.Queue()
        proc = ctx.Process(target=_child, args=(name, str(source), args.k, args.block, queue))
        proc.start()
        results[name] = queue.get()
        proc.join()
        r = results[name]
        if "error" in r:
            print(f"{name:18s} ERROR {r['error']}")
            continue
        lists = len(OURS) if name == "all" else 1  # "all": every user scored by each model
        print(
            f"{name:18s} fit {r['fit_s']:7.2f}s  recommend {r['recommend_s']:7.2f}s  "
            f"{lists * r['users'] / r['recommend_s']:9.0f} users/s  peak RSS {r['rss_gb']:.2f} GB "
            f"(data loaded: {r['rss_after_load_gb']:.2f} GB)  served {r['served']}/{r['users']}",
            flush=True,
        )

    als = results.get("implicit-als", {})
    if als and "error" not in als:
        print("\nratios against implicit ALS (targets: speed >= 1.0, fit <= 2.0, RSS <= 2 GB)")
        for name in OURS:
            r = results.get(name, {})
            if not r or "error" in r:
                continue
            speed = (r["users"] / r["recommend_s"]) / (als["users"] / als["recommend_s"])
            fit = r["fit_s"] / als["fit_s"]
            ok = speed >= 1.0 and fit <= 2.0 and r["rss_gb"] <= 2.0
            print(
                f"{name:12s} users/s ratio {speed:6.2f}   fit ratio {fit:5.2f}   "
                f"RSS {r['rss_gb']:.2f} GB   {'OK' if ok else 'MISS'}"
            )
    behavior = results.get("behavior", {})
    if behavior and "error" not in behavior:
        # ALS scores a user as one row of a (users × factors) @ (factors × items) product.
        from tasks.config import RunParameters

        factors = RunParameters().behavior.factors
        flops = 2.0 * behavior["served"] * behavior["items"] * factors  # conservative: served only
        gflops, peak = flops / behavior["recommend_s"] / 1e9, _gemm_gflops()
        print(
            f"behavior scoring end to end (product, seen filter, top-{args.k}): "
            f"{gflops:.0f} GFLOP/s = {gflops / peak:.0%} of this machine's float32 matrix product "
            f"({peak:.0f} GFLOP/s)"
        )
    whole = results.get("all")
    if whole and "error" not in whole:
        print(
            f"whole run: {len(OURS)} modalities fitted in one process, each recommending for "
            f"every user: peak RSS {whole['rss_gb']:.2f} GB  "
            f"{'OK' if whole['rss_gb'] <= 2.0 else 'MISS'} (target <= 2 GB)"
        )
    Path(args.data, "last_results.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
