"""Blocked top-N: the only place where dense user×item scores exist, one block at a time.

Peak memory is block_size × n_items floats regardless of how many users there are.

Selection is one compiled pass per block (`tasks.kernels.topn`). Chunks of rows run on a small
thread pool (numpy, scipy's BLAS and the Numba kernels release the GIL), offered to modalities
too (`parallel_chunks`), and block-sized score arrays are recycled across blocks
(`block_array`).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
import polars as pl
import scipy.linalg  # noqa: F401  (loads scipy's own OpenBLAS before the controller looks)
import scipy.sparse as sp
from threadpoolctl import ThreadpoolController

from tasks.kernels.sparse import csr32
from tasks.kernels.topn import select_columns, select_product_rows, select_rows

CANDIDATE_SCHEMA = {
    "user_idx": pl.Int32,
    "item_idx": pl.Int32,
    "score": pl.Float32,
    "rank": pl.Int32,
}

T = TypeVar("T")
U = TypeVar("U")

#: Users scored per block by default. Any multiple of `CHUNK_ROWS` gives the same bytes; 2,048
#: held 0.08 GB more per shard at 20k items than 1,024, for no time measured.
BLOCK_USERS = 1024
CHUNK_ROWS = 256  # rows per task: a chunk of a 20k-item block (20 MB) stays cache- and RSS-friendly
_TOP_ROWS = 64  # users per selection task
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_in_worker = threading.local()
_blas_users = 0
_blas_limit: Any = None  # threadpoolctl's limiter while `_blas_users` > 0
# Inspecting the loaded libraries costs ~1 ms: once. It sees only the BLAS libraries loaded by
# then: numpy and scipy each bring their own OpenBLAS, and scipy's came only with scipy.linalg
# (first imported by a Numba kernel, say), so it ran on every core while the pool was busy.
_blas: ThreadpoolController | None = None


#: Threads of this process's pool; default: its cores, at most 8. Dask workers sharing a machine
#: get their share of its cores (`flows/engine.py`), not every core each.
THREADS_ENV = "RECFUSION_THREADS"


def _threads() -> int:
    wanted = os.environ.get(THREADS_ENV, "").strip()
    if not wanted:
        return max(1, min(8, len(os.sched_getaffinity(0))))
    try:
        return max(1, int(wanted))
    except ValueError:
        raise ValueError(f"{THREADS_ENV}={wanted!r} is not a number of threads") from None


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
def single_threaded_blas() -> Iterator[None]:
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
    waiting on its own pool could deadlock). BLAS is single-threaded while chunks run, one chunk
    or many: OpenBLAS splits a product's rows among its threads, and a row's float32 sums depend
    on where it falls in that split, so a threaded product gave other bytes with another thread
    count. On one thread a user's scores depend only on its place in the chunk, which the user
    order fixes.
    """
    bounds = [(s, min(s + chunk, n)) for s in range(0, n, max(1, chunk))]
    with single_threaded_blas():  # many small BLAS calls: threading them only adds overhead
        if len(bounds) <= 1 or _threads() == 1 or getattr(_in_worker, "active", False):
            return [fn(a, b) for a, b in bounds]
        return list(_executor().map(lambda ab: fn(*ab), bounds))


def parallel_map(fn: Callable[[T], U], items: Sequence[T]) -> Iterator[U]:
    """fn(item) for each item, yielded in order, a pool's width of items at a time.

    For work whose results are large (a block of feature rows): at most one window of results
    exists at once, whatever the number of items, and the caller consumes them in item order, so
    the output is the sequential one. Inline where `parallel_chunks` would run inline.
    """
    width = _threads()
    for start in range(0, len(items), width):
        window = items[start:start + width]
        yield from parallel_chunks(functools.partial(_call_at, fn, window), len(window), chunk=1)


def side_by_side(fn: Callable[[T], U], items: Sequence[T]) -> Iterator[U]:
    """fn(item) for each item, a pool's width of them at once, results yielded in item order.

    For independent jobs that each chunk their own work (fitting one source): unlike
    `parallel_map`'s, these threads are not pool workers, so a job's `parallel_chunks` still
    use the shared pool, and the cores one job leaves idle (a one-threaded factorisation,
    Python between its chunks) go to the other. BLAS runs on one thread throughout: a job's
    products must not change bits with what else happens to be running.
    """
    width = min(_threads(), max(1, len(items)))
    if width == 1 or getattr(_in_worker, "active", False):
        yield from (fn(item) for item in items)
        return
    with single_threaded_blas(), ThreadPoolExecutor(width, thread_name_prefix="recfusion-jobs") \
            as jobs:
        yield from jobs.map(fn, items)


def _call_at(fn: Callable[[T], U], items: Sequence[T], at: int, _stop: int) -> U:
    return fn(items[at])


def top_n_of_block(
    scores: np.ndarray, n: int, seen: sp.csr_matrix | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Top-n per row of a dense score block: (row, item, score, rank), non-finite entries dropped.

    Ranks follow score descending, then item ascending. `seen` (same rows as `scores`) masks
    items the user already has; it is applied in place. The block may be C- or F-ordered (a
    modality may compute items × users and return its `.T`).
    """
    n_rows, n_items = scores.shape
    if seen is not None and seen.nnz:
        rows = np.repeat(np.arange(n_rows), np.diff(seen.indptr))
        scores[rows, seen.indices] = -np.inf
    n = min(n, n_items)
    if n == 0 or n_rows == 0:
        empty = np.array([], dtype=np.int64)
        return empty, empty, np.array([], dtype=np.float32), empty
    vals = np.empty((n_rows, n), dtype=np.float32)
    items = np.empty((n_rows, n), dtype=np.int64)
    counts = np.empty(n_rows, dtype=np.int64)
    if scores.flags.f_contiguous and not scores.flags.c_contiguous:
        scores_t = scores.T  # items × users, C-ordered
        parallel_chunks(
            lambda a, b: select_columns(scores_t, n, vals, items, counts, a, b),
            n_rows, -(-n_rows // _threads()),
        )
    else:
        view = np.ascontiguousarray(scores, dtype=np.float32)
        parallel_chunks(lambda a, b: select_rows(view, n, vals, items, counts, a, b),
                        n_rows, _TOP_ROWS)
    keep = np.arange(n)[None, :] < counts[:, None]
    rows, ranks = np.nonzero(keep)
    return rows, items[keep], vals[keep], ranks + 1


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


class Scorer(Protocol):
    """Anything that scores a block of users against every item (every modality does)."""

    def score_block(self, users: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class SubsetScorer(Protocol):
    """A modality whose scores are finite on a fixed subset of items only (EASE's most-interacted
    items): it scores just those columns, and `top_n` selects among them. A block as wide as
    the catalogue was mostly -inf: written, masked and searched for nothing (at 100k items,
    16 columns of every 17 for a 6,000-item EASE)."""

    def scored_items(self) -> np.ndarray | None:
        """Sorted item indexes `score_items` scores; None: every item (use `score_block`)."""
        ...

    def score_items(self, users: np.ndarray) -> np.ndarray:
        """(len(users), len(scored_items())) float32: `score_block` on those columns only."""
        ...


@runtime_checkable
class ProductScorer(Protocol):
    """A modality whose scores are a sparse product, `product_rows(users) @ product_items()`,
    where an entry no product reaches (or that sums to exactly 0) is no evidence: social's ties
    times the others' items. `top_n` selects straight from each row's products, never writing
    a row as wide as the catalogue: a user's friends reach a few thousand of 100,000 items.
    `score_block` must give the same scores densely (-inf where there is no evidence)."""

    def product_items(self) -> sp.csr_matrix:
        """(users or features) × items, fitted once."""
        ...

    def product_rows(self, users: np.ndarray) -> sp.csr_matrix:
        """len(users) × product_items() rows: each user's weights."""
        ...


def top_n_of_product(
    model: ProductScorer, users: np.ndarray, n: int, seen: sp.csr_matrix | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`top_n_of_block(model.score_block(users), n, seen)` without the dense block: the same
    (row, item, score, rank), each row summed in the same order (a test holds the bits)."""
    right = csr32(model.product_items())
    n = min(n, right.shape[1])
    n_rows = len(users)
    if n == 0 or n_rows == 0:
        empty = np.array([], dtype=np.int64)
        return empty, empty, np.array([], dtype=np.float32), empty
    if seen is None:
        seen = sp.csr_matrix((n_rows, right.shape[1]), dtype=np.float32)
    vals = np.empty((n_rows, n), dtype=np.float32)
    items = np.empty((n_rows, n), dtype=np.int64)
    counts = np.empty(n_rows, dtype=np.int64)

    def chunk(a: int, b: int) -> None:
        left, mask = csr32(model.product_rows(users[a:b])), seen[a:b]
        select_product_rows(left.indptr, left.indices, left.data, right.indptr, right.indices,
                            right.data, mask.indptr, mask.indices, right.shape[1], n, vals[a:b],
                            items[a:b],
                            counts[a:b])

    parallel_chunks(chunk, n_rows)
    keep = np.arange(n)[None, :] < counts[:, None]
    rows, ranks = np.nonzero(keep)
    return rows, items[keep], vals[keep], ranks + 1


@runtime_checkable
class ShortlistScorer(Protocol):
    """A modality that can name, per block of users, a few items certain to hold their top-n
    (popularity: every user's ranking within a category is the items' popularity order), and a
    bound on what any other item scores. `top_n` scores the short list only; a user whose n-th
    candidate does not beat the bound is scored over the whole catalogue instead, so the lists
    are `score_block`'s whatever the short list."""

    def shortlist(
        self, users: np.ndarray, n: int, seen: sp.csr_matrix | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(sorted item indexes, per user an upper bound of every other item's score)."""
        ...

    def score_columns(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """`score_block(users)[:, items]`, bit for bit."""
        ...

    def score_block(self, users: np.ndarray) -> np.ndarray:
        """Every item's score: for the users the short list cannot settle."""
        ...


def top_n_of_shortlist(
    model: ShortlistScorer, users: np.ndarray, n: int, seen: sp.csr_matrix | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`top_n_of_block(model.score_block(users), n, seen)`, scoring the model's short list."""
    items, bound = model.shortlist(users, n, seen)
    scores = np.asarray(model.score_columns(users, items), dtype=np.float32)
    if seen is not None:
        position = np.full(seen.shape[1], -1, dtype=np.int64)
        position[items] = np.arange(len(items))
        _mask_seen_columns(scores, seen, position)
    rows, picked, top_scores, ranks = top_n_of_block(scores, n)
    picked = items[picked]
    # Exact for a user whose n-th candidate beats the bound, or who has fewer than n and
    # nothing outside can score: no other item can enter, nor tie and win on its index.
    count = np.bincount(rows, minlength=len(users))
    nth = np.full(len(users), -np.inf, dtype=np.float32)
    nth[rows[ranks == n]] = top_scores[ranks == n]
    exact = np.where(count >= n, nth > bound, np.isneginf(bound))
    if exact.all():
        return rows, picked, top_scores, ranks
    redo = np.flatnonzero(~exact)
    full = np.asarray(model.score_block(users[redo]), dtype=np.float32)
    r2, i2, s2, k2 = top_n_of_block(full, n, seen[redo] if seen is not None else None)
    _blocks.give_back(full)
    kept = exact[rows]
    rows = np.concatenate([rows[kept], redo[r2]])
    picked = np.concatenate([picked[kept], i2])
    top_scores = np.concatenate([top_scores[kept], s2])
    ranks = np.concatenate([ranks[kept], k2])
    order = np.lexsort((ranks, rows))
    return rows[order], picked[order], top_scores[order], ranks[order]


def _mask_seen_columns(
    scores: np.ndarray, seen: sp.csr_matrix, position: np.ndarray
) -> None:
    """`top_n_of_block`'s seen mask for a block of `columns` only (`position`: item -> column,
    -1 for items not among them)."""
    if not seen.nnz:
        return
    rows = np.repeat(np.arange(scores.shape[0]), np.diff(seen.indptr))
    columns = position[seen.indices]
    kept = columns >= 0
    scores[rows[kept], columns[kept]] = -np.inf


def top_n(
    model: Scorer,
    users: np.ndarray,
    n: int,
    seen: sp.csr_matrix | None = None,
    block_size: int = BLOCK_USERS,
) -> pl.DataFrame:
    """Score `users` in blocks and keep each user's top-n unseen items with finite scores.

    A `SubsetScorer` is scored on its items only, a `ProductScorer` selected from its sparse
    products, a `ShortlistScorer` on its short list; the lists are the same (a subset's columns
    are sorted, and the others' ties are broken by item: ties go to the lower item index)."""
    parts: list[pl.DataFrame] = []
    users = np.asarray(users, dtype=np.int64)
    subset = model.scored_items() if isinstance(model, SubsetScorer) else None
    position = None
    if subset is not None and seen is not None:
        position = np.full(seen.shape[1], -1, dtype=np.int64)
        position[subset] = np.arange(len(subset))
    with _blocks.run():
        for start in range(0, len(users), block_size):
            block = users[start : start + block_size]
            block_seen = seen[block] if seen is not None else None
            if isinstance(model, ProductScorer):
                rows, items, top_scores, ranks = top_n_of_product(model, block, n, block_seen)
            elif isinstance(model, ShortlistScorer):
                rows, items, top_scores, ranks = top_n_of_shortlist(model, block, n, block_seen)
            elif subset is None:
                scores = np.asarray(model.score_block(block), dtype=np.float32)
                rows, items, top_scores, ranks = top_n_of_block(scores, n, block_seen)
                _blocks.give_back(scores)
                del scores
            else:
                assert isinstance(model, SubsetScorer)
                scores = np.asarray(model.score_items(block), dtype=np.float32)
                if block_seen is not None and position is not None:
                    _mask_seen_columns(scores, block_seen, position)
                rows, items, top_scores, ranks = top_n_of_block(scores, n)
                items = subset[items]
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
