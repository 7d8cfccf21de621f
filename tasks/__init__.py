"""recfusion's computing core: plain functions over data; Prefect and the CLI live in `flows/`.

Same input, same output: Polars' streaming engine (its default for lazy queries) adds floats in
an order that depends on how it cut the rows into morsels, so one query on the same rows can
differ in the last bits from run to run, enough to flip a tie between two candidates. Every lazy
query of recfusion runs on the in-memory engine, whose sums follow the rows' order.

Peak memory: Polars allocates through its own jemalloc, which by default keeps freed pages for
ten seconds. NumPy and SciPy allocate through the C library and cannot reuse them, so a frame
freed just before a large array is built still counted in the peak. Set before Polars loads,
jemalloc returns freed pages within a second (at once cost a 100k-user evaluation 14 % more
time for 0.2 GB less peak; one second costs nothing measurable); a value already in the
environment wins.
"""

import contextlib
import ctypes
import os
import sys

os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:1000,muzzy_decay_ms:0")

# NumPy's large arrays come from the C library's malloc, which by default raises its mmap
# threshold to the size of each large block freed (up to 32 MB): later arrays of that size are
# then carved from the heap, whose freed middle is never given back. A fixed threshold keeps
# every array above 16 MB its own mapping, returned when freed (0.07 GB less peak in a 100k-user
# evaluation). 1 MB saved a little more but cost the scoring 10 % in page faults.
M_MMAP_THRESHOLD = -3  # <malloc.h>
if sys.platform.startswith("linux") and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to tune
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 16 << 20)

import polars as pl  # noqa: E402  (after the allocator's setting, which it reads when it loads)

pl.Config.set_engine_affinity("in-memory")
