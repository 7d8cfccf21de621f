"""Peak memory: what a recfusion process frees goes back to the system, each probe in its own
process (`tasks/memory.py`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Prepended to every probe: the probe's resident memory in MB.
RSS_MB = """
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
"""


def _run(probe: str, *args: str, env: dict[str, str] | None = None) -> list[float]:
    """The numbers a probe prints, run by this Python in a fresh process."""
    out = subprocess.run([sys.executable, "-c", RSS_MB + probe, *args], cwd=ROOT, env=env,
                         check=True, capture_output=True, text=True).stdout.split()
    return [float(v) for v in out]

# Builds a ~0.8 GB Polars column and frees it; prints resident MB before, with it, and 3 s after.
PROBE = """
import time
import tasks  # what every recfusion process imports before Polars
import polars as pl

before = rss_mb()
frame = pl.select((pl.int_range(0, 100_000_000, dtype=pl.Int64) * 3).alias("x"))
held = rss_mb()
del frame
time.sleep(3)
print(before, held, rss_mb())
"""


def _probe(env: dict[str, str]) -> tuple[float, float, float]:
    before, held, after = _run(PROBE, env=env)
    return before, held, after


def test_memory_polars_frees_is_returned_within_seconds_not_ten_seconds_later() -> None:
    env = {k: v for k, v in os.environ.items() if k != "_RJEM_MALLOC_CONF"}
    before, held, after = _probe(env)
    assert held - before > 600  # the frame was resident
    assert after - before < 100  # and its pages went back as it was freed
    # jemalloc's own default keeps them: the setting is what makes the difference
    _, held, kept = _probe(env | {"_RJEM_MALLOC_CONF": "dirty_decay_ms:10000"})
    assert held - kept < 100


# Frees 30 NumPy arrays of 20 MB but the last; prints resident MB with them and after.
HEAP_PROBE = """
import sys
if sys.argv[1] == "recfusion":
    import tasks
import numpy as np

first = np.ones(2_500_000)
del first  # the C library's default raises its mmap threshold to this size when it is freed
arrays = [np.ones(2_500_000) for _ in range(30)]
held = rss_mb()
del arrays[:-1]
print(held, rss_mb())
"""


def _heap_probe(mode: str) -> tuple[float, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    held, after = _run(HEAP_PROBE, mode, env=env)
    return held, after


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_memory_numpy_frees_is_returned_even_below_the_last_array() -> None:
    held, after = _heap_probe("recfusion")
    assert held > 550 and held - after > 500  # 29 of 30 arrays given back
    held, after = _heap_probe("plain")  # without recfusion's setting: kept on the heap
    assert held > 550 and held - after < 100


CYCLE_PROBE = """
import gc
import tasks
import numpy as np
from tasks.memory import release_freed_memory

gc.disable()  # as between two collections of a long run: only a collection frees a cycle
class Holder:
    pass
holder = Holder()
holder.me, holder.rows = holder, np.ones(50_000_000)  # 400 MB kept alive by its own cycle
del holder
before = rss_mb()
release_freed_memory()
print(before, rss_mb())
"""


def test_memory_released_between_steps_includes_what_only_a_cycle_held() -> None:
    before, after = _run(CYCLE_PROBE)
    assert before - after > 350
