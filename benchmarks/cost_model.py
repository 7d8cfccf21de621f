"""What N workers would buy: per-shard cost measured on a run's own data, and Amdahl's law.

`bench_scale.py --cost-model` calls `measure` after `recfusion run` on the database that run left:
the fit of every source once (the serial fit the driver does), the pickled fit a worker reads
(bytes shipped per worker), and a few user shards scored in this process (seconds and bytes per
1,000 users per source). `predict` turns those and the run's serial stages into walls for N
workers, each a machine like this one. The per-user cost holds for the measured catalogue only:
every source scores dense blocks over all items, so a catalogue 5× bigger costs several times
more per user (the 1M × 100k night measured it; README Scale).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

#: Shards scored in-process to measure the per-user cost (after one warm-up shard).
MEASURED_SHARDS = 2


@dataclass
class Costs:
    users: int
    fit_seconds: dict[str, float]  # per source, once, on the driver
    score_seconds_per_1k: dict[str, float]  # per source, per 1,000 users of a shard
    shard_seconds_per_1k: float  # a whole shard (scoring, fusion, reasons, staging) per 1k users
    candidate_bytes_per_1k: int  # the staged Parquet a shard writes, per 1k users
    lists_bytes_per_1k: int  # the fused lists a shard returns to the driver, per 1k users
    shipped_bytes: int  # the pickled fit every worker reads once


def measure(warehouse: Path, shard_users: int) -> Costs:
    import duckdb

    from tasks.config import RunParameters
    from tasks.data.snapshot import load_snapshot
    from tasks.recommend import dataset_from, prepare_shards
    from tasks.shards import run_shard, save_work, user_shards

    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        snap = load_snapshot(con, None)
    finally:
        con.close()
    params = RunParameters(fusion_block_users=shard_users)
    data = dataset_from(snap, params)
    del snap
    work, _ = prepare_shards(data, params, None)
    shards = user_shards(data.n_users, shard_users)[: MEASURED_SHARDS + 1]
    with tempfile.TemporaryDirectory(prefix="recfusion-cost-") as folder:
        _, shipped = save_work(work, Path(folder))
        run_shard(work, 0, *shards[0], Path(folder))  # warm-up: compiled kernels, caches
        score: dict[str, float] = {}
        users = seconds = 0.0
        cand_bytes = list_bytes = 0
        for index, (lo, hi) in enumerate(shards[1:], start=1):
            start = time.perf_counter()
            result = run_shard(work, index, lo, hi, Path(folder))
            seconds += time.perf_counter() - start
            users += hi - lo
            for source, s in result.candidates.seconds.items():
                score[source] = score.get(source, 0.0) + s
            cand_bytes += result.candidate_file.stat().st_size if result.candidate_file else 0
            list_bytes += int(result.lists().estimated_size())
    per_1k = 1000 / max(users, 1)
    return Costs(
        users=data.n_users,
        fit_seconds=dict(work.fitted.seconds),
        score_seconds_per_1k={m: s * per_1k for m, s in score.items()},
        shard_seconds_per_1k=seconds * per_1k,
        candidate_bytes_per_1k=int(cand_bytes * per_1k),
        lists_bytes_per_1k=int(list_bytes * per_1k),
        shipped_bytes=shipped,
    )


def predict(serial_s: float, parallel_s: float, workers: int, shipped_bytes: int = 0,
            bandwidth: float = 100e6) -> float:
    """Amdahl: the serial part, the parallel part split N ways, and each worker reading the fit
    once (at `bandwidth` bytes/s, in parallel)."""
    return serial_s + parallel_s / workers + shipped_bytes / bandwidth


def report(costs: Costs, serial: dict[str, float], measured_users: int, shard_note: str,
           at_users: tuple[int, ...] = (1_000_000, 10_000_000),
           workers: tuple[int, ...] = (1, 4, 16, 64)) -> list[str]:
    """The lines bench_scale prints: costs, then predicted walls (`scaled_serial`)."""
    lines = ["", f"cost model ({costs.users:,} users; shards scored in this process)"]
    for source, fit in costs.fit_seconds.items():
        lines.append(f"  {source:<18} fit {fit:6.1f}s once   score "
                     f"{costs.score_seconds_per_1k.get(source, 0.0):6.3f}s per 1k users")
    lines += [
        f"  a shard, all included   {costs.shard_seconds_per_1k:6.3f}s per 1k users ({shard_note})",
        f"  staged candidates       {costs.candidate_bytes_per_1k / 1e6:6.2f} MB per 1k users",
        f"  lists sent to driver    {costs.lists_bytes_per_1k / 1e6:6.2f} MB per 1k users",
        f"  shipped per worker      {costs.shipped_bytes / 1e6:6.1f} MB (the pickled fit, once)",
    ]
    serial_s = sum(serial.values())
    parallel_s = costs.shard_seconds_per_1k * measured_users / 1000
    share = serial_s / (serial_s + parallel_s) if serial_s + parallel_s else 0.0
    lines.append(f"  serial part {serial_s:.1f}s ("
                 + ", ".join(f"{k} {v:.1f}s" for k, v in serial.items())
                 + f"); parallel {parallel_s:.1f}s; serial share {share:.0%}")
    lines.append("  predicted wall in minutes (fit shipped at 100 MB/s):")
    lines.append("  users       " + "".join(f"{n:>9} w" for n in workers))
    for users in at_users:
        scale = users / measured_users
        walls = [predict(scaled_serial(serial, scale), parallel_s * scale, n,
                         costs.shipped_bytes) for n in workers]
        lines.append(f"  {users:>10,}  " + "".join(f"{w / 60:9.1f}m" for w in walls)
                     + f"   driver holds {costs.lists_bytes_per_1k * users / 1000 / 1e9:.1f} GB"
                     " of lists")
    return lines


def scaled_serial(serial: dict[str, float], scale: float) -> float:
    """The serial stages at `scale` × the users (events per user fixed): ingest, snapshot, the
    fit, checks and publishing grow with the data; the evaluation is two more fits (train
    before the test window, before the validation window) plus the plan search on at most
    `evaluation.max_users` sampled users, which does not grow."""
    fit = serial.get("fit", 0.0)
    search = max(serial.get("evaluation", 0.0) - 2 * fit, 0.0)
    grows = sum(v for k, v in serial.items() if k != "evaluation")
    return (grows + 2 * fit) * scale + search
