"""How this process gives memory back: allocator settings made at start, and a release between
the run's large steps. Peak RSS is a target of the nightly, and three allocators share it:
Polars' jemalloc, the C library's malloc (NumPy, SciPy) and Python's cyclic garbage collector.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import sys

M_MMAP_THRESHOLD = -3  # <malloc.h>
MMAP_THRESHOLD_BYTES = 16 << 20


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def tune_allocators() -> None:
    """Before Polars loads (`tasks/__init__.py`); a setting already in the environment wins.

    Polars allocates through its own jemalloc, which by default keeps freed pages for ten
    seconds; NumPy cannot reuse them, so a frame freed just before a large array is built still
    counted in the peak. jemalloc now returns them within a second (at once cost a 100k-user
    evaluation 14 % more time for 0.2 GB less peak; one second costs nothing measurable).

    The C library's malloc by default raises its mmap threshold to the size of each large block
    freed (up to 32 MB): later arrays of that size are then carved from the heap, whose freed
    middle is never given back. A fixed threshold keeps every array above 16 MB its own mapping,
    returned when freed. 1 MB saved a little more but cost the scoring 10 % in page faults.

    Arrow (a frame turned into pandas for Great Expectations) keeps its own mimalloc pool, which
    held 0.06 GB of a 100k-user check's buffers for the rest of the run; on the C library's
    malloc they are given back as the rule above says.
    """
    os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:1000,muzzy_decay_ms:0")
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    libc = _libc()
    if libc is not None and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        with contextlib.suppress(AttributeError):  # not glibc (musl has no mallopt)
            libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def release_freed_memory() -> None:
    """Between large steps: collect reference cycles (one kept 0.22 GB of frames alive after
    the snapshot step of a 100k-user run, until Python's next full collection) and give the C
    heap's free pages back (0.16 GB more). Costs a fraction of a second."""
    gc.collect()
    libc = _libc()
    if libc is not None:
        with contextlib.suppress(AttributeError):
            libc.malloc_trim(0)
