"""The snapshot and the dataset of a warehouse, as a run loads them: wall and peak RSS of each.

    python benchmarks/bench_snapshot.py <db>.warehouse/warehouse.duckdb

(`bench_scale.py --keep` leaves such a warehouse in /tmp/recfusion-bench-scale.) The peak is
sampled every 50 ms from /proc/self/status, between the step's start and end, in this process.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path


def _rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1e6
    return 0.0


def main() -> int:
    import duckdb

    from tasks.config import RunParameters
    from tasks.data.snapshot import load_snapshot
    from tasks.recommend import dataset_from

    peak = [0.0]

    def poll() -> None:
        while True:
            peak[0] = max(peak[0], _rss_gb())
            time.sleep(0.05)

    threading.Thread(target=poll, daemon=True).start()
    print(f"libraries: {_rss_gb():.2f} GB")
    start, peak[0] = time.perf_counter(), 0.0
    con = duckdb.connect(sys.argv[1], read_only=True)
    try:
        snap = load_snapshot(con, None)
    finally:
        con.close()
    print(f"snapshot: {time.perf_counter() - start:.1f} s, {snap.events.height:,} events, "
          f"peak {peak[0]:.2f} GB, then {_rss_gb():.2f} GB")
    start, peak[0] = time.perf_counter(), 0.0
    data = dataset_from(snap, RunParameters())
    print(f"dataset: {time.perf_counter() - start:.1f} s, {data.n_users:,} users × "
          f"{data.n_items:,} items, peak {peak[0]:.2f} GB, then {_rss_gb():.2f} GB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
