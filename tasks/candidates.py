"""Blocked top-N: the only place where dense user×item scores exist, one block at a time.

Peak memory is block_size × n_items floats regardless of how many users there are.

Selection avoids a full `argpartition` (an int64 index array as large as the block, on a negated
copy): the maximum of each small group of items gives, per user, a lower bound on the n-th best
score; only the few entries at or above it are gathered and sorted. Chunks of rows run on a small
thread pool (numpy/scipy kernels release the GIL), offered to modalities too
(`parallel_chunks`), and block-sized score arrays are recycled across blocks (`block_array`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np
import polars as pl
import scipy.sparse as sp
from threadpoolctl import ThreadpoolController

from tasks.modalities.base import Modality

CANDIDATE_SCHEMA = {
    "user_idx": pl.Int32,
    "item_idx": pl.Int32,
    "score": pl.Float32,
    "rank": pl.Int32,
}

T = TypeVar("T")

CHUNK_ROWS = 256  # rows per task: a chunk of a 20k-item block (20 MB) stays cache- and RSS-friendly
_MAX_GROUPS = 2048  # more groups: a tighter bound and longer vectorised slabs
_TOP_ROWS = 64  # users per selection task: their scores stay in cache between passes
_ITEM_CHUNK = 1024  # items per comparison task when a block is items × users
_LOWEST = np.float32(np.finfo(np.float32).min)  # threshold floor, so -inf is never a candidate
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_in_worker = threading.local()
_blas_users = 0
_blas_limit: Any = None  # threadpoolctl's limiter while `_blas_users` > 0
_blas: ThreadpoolController | None = None  # inspecting the loaded libraries costs ~1 ms: once


def _threads() -> int:
    return max(1, min(8, len(os.sched_getaffinity(0))))


def _executor() -> ThreadPoolExecutor:
    """Process-wide pool, created on first use."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                _threads(), thread_name_prefix="recfusion-chunks",
                initializer=setattr, initargs=(_in_worker, "active", True),
            )
        return _pool


def _after_fork_in_child() -> None:
    """A forked child inherits no live threads, and maybe a lock some thread held: start over."""
    global _pool, _pool_lock, _blas_users, _blas_limit
    _pool, _pool_lock, _blas_users, _blas_limit = None, threading.Lock(), 0, None
    _blocks.reset()


os.register_at_fork(after_in_child=_after_fork_in_child)


@contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """BLAS on one thread while pool tasks run: the pool already uses every core.

    Otherwise each task's BLAS call fans out to its own threads (oversubscription), and
    OpenBLAS's idle threads spin after every call, taking cycles from the pool. Counted, so
    overlapping users in several threads restore the caller's limit only once, at the end.
    """
    global _blas_users, _blas_limit, _blas
    with _pool_lock:
        if _blas_users == 0:
            _blas = _blas or ThreadpoolController()
            _blas_limit = _blas.limit(limits=1, user_api="blas")
        _blas_users += 1
    try:
        yield
    finally:
        with _pool_lock:
            _blas_users -= 1
            if _blas_users == 0 and _blas_limit is not None:
                _blas_limit.restore_original_limits()
                _blas_limit = None


def parallel_chunks(fn: Callable[[int, int], T], n: int, chunk: int = CHUNK_ROWS) -> list[T]:
    """[fn(start, stop) for consecutive chunks of range(n)], in order, on the shared pool.

    Runs inline when there is one chunk, one core, or when already inside a pool worker (a worker
    waiting on its own pool could deadlock). With several chunks BLAS is single-threaded while
    they run, inline or not.
    """
    bounds = [(s, min(s + chunk, n)) for s in range(0, n, max(1, chunk))]
    if len(bounds) <= 1:
        return [fn(a, b) for a, b in bounds]
    with _single_threaded_blas():  # many small BLAS calls: threading them only adds overhead
        if _threads() == 1 or getattr(_in_worker, "active", False):
            return [fn(a, b) for a, b in bounds]
        return list(_executor().map(lambda ab: fn(*ab), bounds))


def _groups(n_items: int, n: int, most: int) -> int:
    """Number of interleaved item groups for the lower bound; 0 = use an exact partition."""
    groups = min(most, n_items // 4)
    return groups if groups >= 4 * n else 0  # small catalogue or long lists: partition instead


def _rank(
    rows: np.ndarray, items: np.ndarray, vals: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Keep the n best candidates per row: score descending, then item ascending (deterministic)."""
    order = np.lexsort((items, -vals, rows))
    rows, items, vals = rows[order], items[order], vals[order]
    ranks = np.arange(len(rows)) - np.searchsorted(rows, rows)
    keep = ranks < n
    return rows[keep], items[keep], vals[keep].astype(np.float32), ranks[keep] + 1


def _group_members(
    gmax: np.ndarray, cut: np.ndarray, groups: int, n_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """(row, item) of every item whose group maximum reaches its row's cut.

    Any item at or above the cut lies in such a group, so only these few groups (about n per
    row) are read again, instead of the whole block. A NaN maximum hides the other members'
    values, so that group is read too.
    """
    hit_rows, hit_groups = np.nonzero((gmax >= cut[:, None]) | np.isnan(gmax))
    members = hit_groups[:, None] + groups * np.arange(-(-n_items // groups))[None, :]
    inside = members < n_items  # only the first `tail` groups have a last, partial slab
    return np.broadcast_to(hit_rows[:, None], members.shape)[inside], members[inside]


def _top_n_rows(
    scores: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Top-n of each row of a C-ordered users × items chunk.

    Items are dealt into G ≥ 4n interleaved groups (item j → group j mod G); the n-th largest of
    the G group maxima is a lower bound on the row's n-th best score (those n maxima are n
    distinct entries at least that large). Interleaving turns the group maximum into an
    element-wise max of contiguous slabs, which numpy vectorises; it is the only full pass.
    """
    m = scores.shape[1]
    groups = _groups(m, n, _MAX_GROUPS)
    if n >= m or not groups:
        if n >= m:
            cut = np.full(len(scores), _LOWEST, dtype=np.float32)
        else:
            cut = np.fmax(np.partition(scores, m - n, axis=1)[:, m - n], _LOWEST)
        rows, items = np.divmod(np.flatnonzero(scores >= cut[:, None]), m)
        return _rank(rows, items, scores[rows, items], n)
    length, tail = divmod(m, groups)
    gmax = scores[:, : groups * length].reshape(-1, length, groups).max(axis=1)
    if tail:
        np.maximum(gmax[:, :tail], scores[:, groups * length :], out=gmax[:, :tail])
    # -inf is never a candidate; a NaN bound means no cut.
    cut = np.fmax(np.partition(gmax, groups - n, axis=1)[:, groups - n], _LOWEST)
    rows, items = _group_members(gmax, cut, groups, m)
    vals = scores[rows, items]
    keep = vals >= cut[rows]
    return _rank(rows[keep], items[keep], vals[keep], n)


def _top_n_items_major(
    scores_t: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Top-n per user of a C-ordered items × users block (the transpose of an F-ordered block).

    Same bound as `_top_n_rows`; the group maxima are element-wise maxima of contiguous
    groups × users slabs, split over the pool. Fewer groups (8n): the partition then runs
    across rows, which is strided in this layout.
    """
    m, n_users = scores_t.shape
    groups = _groups(m, n, 8 * n)
    if n >= m or not groups:
        if n >= m:
            cut = np.full(n_users, _LOWEST, dtype=np.float32)
        else:
            cut = np.fmax(np.partition(scores_t, m - n, axis=0)[m - n], _LOWEST)
        items, rows = np.divmod(np.flatnonzero(scores_t >= cut[None, :]), n_users)
        return _rank(rows, items, scores_t[items, rows], n)
    length, tail = divmod(m, groups)
    slabs = scores_t[: groups * length].reshape(length, groups, n_users)
    per_worker = -(-length // _threads())
    maxima = parallel_chunks(lambda a, b: slabs[a:b].max(axis=0), length, per_worker)
    gmax = maxima[0]
    for other in maxima[1:]:
        np.maximum(gmax, other, out=gmax)
    if tail:
        np.maximum(gmax[:tail], scores_t[groups * length :], out=gmax[:tail])
    cut = np.fmax(np.partition(gmax, groups - n, axis=0)[groups - n], _LOWEST)

    # Groups here are long (m / 8n items), so re-reading whole groups would be a scattered gather;
    # one comparison pass over contiguous item chunks is cheaper.
    def candidates(a: int, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        part = scores_t[a:b]
        items, users = np.divmod(np.flatnonzero(part >= cut[None, :]), n_users)
        return users, items + a, part[items, users]

    found = parallel_chunks(candidates, m, _ITEM_CHUNK)
    rows, items, vals = (np.concatenate([f[j] for f in found]) for j in range(3))
    return _rank(rows, items, vals, n)


def top_n_of_block(
    scores: np.ndarray, n: int, seen: sp.csr_matrix | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Top-n per row of a dense score block: (row, item, score, rank), -inf entries dropped.

    `seen` (same rows as `scores`) masks items the user already has; it is applied in place.
    The block may be C- or F-ordered (a modality may compute items × users and return its `.T`).
    """
    n_rows, n_items = scores.shape
    if seen is not None and seen.nnz:
        rows = np.repeat(np.arange(n_rows), np.diff(seen.indptr))
        scores[rows, seen.indices] = -np.inf
    n = min(n, n_items)
    if n == 0 or n_rows == 0:
        empty = np.array([], dtype=np.int64)
        return empty, empty, np.array([], dtype=np.float32), empty
    if scores.flags.f_contiguous and not scores.flags.c_contiguous:
        return _top_n_items_major(scores.T, n)
    view = np.ascontiguousarray(scores)

    def chunk(a: int, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        r, i, s, k = _top_n_rows(view[a:b], n)
        return r + a, i, s, k

    parts = parallel_chunks(chunk, n_rows, _TOP_ROWS)
    out = tuple(np.concatenate([p[j] for p in parts]) for j in range(4))
    return out[0], out[1], out[2], out[3]


class _BlockPool:
    """Block-sized score buffers recycled across the blocks of a `top_n` run.

    A fresh 100+ MB array per block costs a page fault per page on first touch, which measured
    as much as the scoring itself on the shared VM. Ownership is explicit: a modality takes a
    buffer with `block_array`, returns it (or a view) from `score_block`, and only `top_n`, once
    done with that block, hands it back. Outside a `top_n` run `block_array` is plain
    `np.empty`, and the buffers are dropped when the last run ends.
    """

    _KEEP = 2  # one block in flight plus one for a concurrent run

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._lock = threading.Lock()
        self._runs = 0
        self._buffers: list[np.ndarray] = []
        self._busy: list[bool] = []

    @contextmanager
    def run(self) -> Iterator[None]:
        with self._lock:
            self._runs += 1
        try:
            yield
        finally:
            with self._lock:
                self._runs -= 1
                if self._runs == 0:
                    self._buffers, self._busy = [], []

    def take(self, shape: tuple[int, int]) -> np.ndarray:
        size = shape[0] * shape[1]
        with self._lock:
            if self._runs:
                for i, buf in enumerate(self._buffers):
                    if not self._busy[i] and buf.size >= size:
                        self._busy[i] = True
                        return buf[:size].reshape(shape)
                if len(self._buffers) < self._KEEP:
                    self._buffers.append(np.empty(size, dtype=np.float32))
                    self._busy.append(True)
                    return self._buffers[-1].reshape(shape)
        return np.empty(shape, dtype=np.float32)

    def give_back(self, scores: np.ndarray) -> None:
        base: np.ndarray | None = scores
        with self._lock:
            while base is not None:
                for i, buf in enumerate(self._buffers):
                    if buf is base:
                        self._busy[i] = False
                        return
                base = base.base if isinstance(base.base, np.ndarray) else None


_blocks = _BlockPool()


def block_array(shape: tuple[int, int]) -> np.ndarray:
    """Uninitialised C-ordered float32 array for a modality's `score_block` result.

    Inside `top_n` it is a recycled buffer (see `_BlockPool`): the modality must return it (or a
    view of it) and keep no reference, because `top_n` reuses it for the next block.
    """
    return _blocks.take(shape)


def top_n(
    model: Modality,
    users: np.ndarray,
    n: int,
    seen: sp.csr_matrix | None = None,
    block_size: int = 2048,
) -> pl.DataFrame:
    """Score `users` in blocks and keep each user's top-n unseen items with finite scores."""
    parts: list[pl.DataFrame] = []
    users = np.asarray(users, dtype=np.int64)
    with _blocks.run():
        for start in range(0, len(users), block_size):
            block = users[start : start + block_size]
            scores = np.asarray(model.score_block(block), dtype=np.float32)
            block_seen = seen[block] if seen is not None else None
            rows, items, top_scores, ranks = top_n_of_block(scores, n, block_seen)
            _blocks.give_back(scores)
            del scores
            parts.append(
                pl.DataFrame(
                    {"user_idx": block[rows], "item_idx": items, "score": top_scores,
                     "rank": ranks},
                    schema=CANDIDATE_SCHEMA,
                )
            )
    if not parts:
        return pl.DataFrame(schema=CANDIDATE_SCHEMA)
    return pl.concat(parts)
