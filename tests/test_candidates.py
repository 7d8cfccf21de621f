"""Blocked top-N: selection against a brute-force sort, both block layouts, pooling, threads."""

from __future__ import annotations

import multiprocessing as mp
import os
import threading

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
from threadpoolctl import threadpool_info

from tasks.kernels import blocks as candidates
from tasks.kernels.blocks import (
    block_array,
    parallel_chunks,
    parallel_map,
    side_by_side,
    top_n,
    top_n_of_block,
    top_n_of_product,
)
from tasks.kernels.sparse import product_to_scores


def reference(scores: np.ndarray, n: int) -> list[list[tuple[int, float]]]:
    """Per row: (item, score) of the n best finite entries, score desc then item asc."""
    out = []
    for row in scores:
        finite = np.flatnonzero(np.isfinite(row))
        order = sorted(finite, key=lambda i: (-row[i], i))[:n]
        out.append([(int(i), float(row[i])) for i in order])
    return out


def as_lists(result: tuple[np.ndarray, ...], n_rows: int) -> list[list[tuple[int, float]]]:
    rows, items, scores, ranks = result
    out: list[list[tuple[int, float]]] = [[] for _ in range(n_rows)]
    for r, i, s, k in zip(rows, items, scores, ranks, strict=True):
        assert k == len(out[r]) + 1  # ranks are 1, 2, ... in order
        out[r].append((int(i), float(s)))
    return out


def random_block(rows: int, items: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scores = rng.random((rows, items), dtype=np.float32)
    scores[scores < 0.3] = -np.inf
    scores[0] = -np.inf  # cannot serve
    scores[1, 5:] = -np.inf  # fewer finite entries than n
    scores[2] = np.round(scores[2] * 4) / 4  # heavy ties
    scores[3, ::2] = 1.0  # ties at the top
    return scores


@pytest.mark.parametrize("n_items", [7, 60, 3000])  # n ≥ items, exact partition, group bound
@pytest.mark.parametrize("order", ["C", "F"])
def test_top_n_of_block_matches_a_full_sort(n_items: int, order: str) -> None:
    scores = random_block(40, n_items)
    expected = reference(scores, 10)
    block = np.asarray(scores.copy(), order=order)  # type: ignore[call-overload]
    assert as_lists(top_n_of_block(block, 10), 40) == expected


def test_seen_items_are_masked_in_either_layout() -> None:
    scores = random_block(8, 500, seed=1)
    seen = sp.random(8, 500, density=0.2, format="csr", random_state=2)
    masked = scores.copy()
    masked[seen.toarray() > 0] = -np.inf
    expected = reference(masked, 5)
    for block in (scores.copy(), np.asfortranarray(scores)):
        assert as_lists(top_n_of_block(block, 5, seen), 8) == expected


def test_nan_scores_never_hide_finite_ones() -> None:
    scores = random_block(4, 2000, seed=3)
    scores[1:, 17] = np.nan
    got = as_lists(top_n_of_block(scores.copy(), 10), 4)
    assert got == reference(np.where(np.isnan(scores), -np.inf, scores), 10)


class Product:
    """A `ProductScorer` over fixed matrices, and its dense scores the way a modality gives them."""

    def __init__(self, left: sp.csr_matrix, right: sp.csr_matrix) -> None:
        self.left, self.right = left, right

    def product_items(self) -> sp.csr_matrix:
        return self.right

    def product_rows(self, users: np.ndarray) -> sp.csr_matrix:
        return self.left[users]

    def score_block(self, users: np.ndarray) -> np.ndarray:
        return product_to_scores(self.left[users], self.right)


def tied_product(seed: int) -> Product:
    """Small integer weights: many equal sums; a negative weight: sums of exactly 0 and below;
    an empty row; a duplicate entry."""
    rng = np.random.default_rng(seed)
    left = sp.random(60, 30, density=0.15, format="csr", random_state=seed,
                     data_rvs=lambda k: rng.integers(-1, 3, k).astype(np.float32))
    right = sp.random(30, 400, density=0.05, format="csr", random_state=seed + 1,
                      data_rvs=lambda k: rng.integers(1, 4, k).astype(np.float32))
    left = sp.csr_matrix(left, dtype=np.float32)
    left.data[left.data == 0] = 1.0
    left = sp.csr_matrix(sp.diags(np.r_[0.0, np.ones(59)]) @ left, dtype=np.float32)
    left.eliminate_zeros()
    coo = left.tocoo()
    doubled = sp.csr_matrix((np.r_[coo.data, coo.data[:1]], (np.r_[coo.row, coo.row[:1]],
                                                           np.r_[coo.col, coo.col[:1]])),
                            shape=left.shape)
    doubled.has_canonical_format = False
    return Product(doubled, sp.csr_matrix(right, dtype=np.float32))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [1, 10, 400])
def test_a_products_top_n_is_its_dense_blocks_bits(seed: int, n: int) -> None:
    """Selected from the sparse products: the dense block's items, scores and ranks, ties to the
    smaller item, zero sums and seen items left out, whatever the chunking."""
    model = tied_product(seed)
    users = np.arange(60)
    seen = sp.random(60, 400, density=0.1, format="csr", random_state=seed + 7)
    dense = top_n_of_block(model.score_block(users), n, seen)
    sparse = top_n_of_product(model, users, n, seen)
    for a, b in zip(dense, sparse, strict=True):
        np.testing.assert_array_equal(a, b)
    assert as_lists(sparse, 60) == reference(
        np.where(seen.toarray() > 0, -np.inf, model.score_block(users)), n)
    assert len(sparse[0]) > 0 and not (sparse[0] == 0).any()  # row 0 has no evidence
    assert top_n(model, users, n, seen=seen, block_size=7).equals(
        top_n(Dense(model), users, n, seen=seen, block_size=60))


class Dense:
    """Any modality's view of a model: a full block per block of users."""

    def __init__(self, model: Product) -> None:
        self.model = model

    def score_block(self, users: np.ndarray) -> np.ndarray:
        return self.model.score_block(users)


def test_parallel_chunks_keeps_order_and_covers_the_range() -> None:
    spans = parallel_chunks(lambda a, b: (a, b), 1000, 64)
    assert spans[0] == (0, 64) and spans[-1] == (960, 1000)
    assert all(x[1] == y[0] for x, y in zip(spans, spans[1:], strict=False))
    # Nested use (a task that chunks again) runs inline instead of deadlocking.
    def outer(a: int, b: int) -> int:
        return sum(parallel_chunks(lambda c, d: d - c, b - a, 7))

    nested = parallel_chunks(outer, 100, 10)
    assert sum(nested) == 100


def test_parallel_map_yields_in_order_a_window_at_a_time() -> None:
    """Results come in item order, and no more than a pool's width run ahead of the consumer
    (each result may be a large block of feature rows)."""
    started: list[int] = []

    def work(i: int) -> int:
        started.append(i)
        return i * i

    items = list(range(23))
    results = parallel_map(work, items)
    first = next(results)
    assert first == 0
    assert 1 <= len(started) <= len(os.sched_getaffinity(0))  # one window, not every item
    assert [first, *results] == [i * i for i in items]
    assert sorted(started) == items


def test_jobs_side_by_side_keep_order_use_the_pool_and_one_blas_thread() -> None:
    """A job may chunk its own work on the shared pool (it is not a pool worker, so it is not
    run inline), BLAS is on one thread while jobs run, and the caller's limit comes back."""
    def blas_threads() -> list[int]:
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    before = blas_threads()

    def job(i: int) -> tuple[int, int, list[int]]:
        spans = parallel_chunks(lambda a, b: (a, b, threading.current_thread().name), 600, 64)
        on_pool = sum(name.startswith("recfusion-chunks") for _, _, name in spans)
        return i, on_pool, blas_threads()

    results = list(side_by_side(job, list(range(5))))
    assert [i for i, _, _ in results] == list(range(5))
    if len(os.sched_getaffinity(0)) > 1:
        assert all(on_pool == 10 for _, on_pool, _ in results)  # every chunk on the pool
    assert all(set(threads) <= {1} for _, _, threads in results)
    assert blas_threads() == before


def _covered(n: int) -> int:
    return sum(b - a for a, b in parallel_chunks(lambda a, b: (a, b), n, 3))


def test_pool_still_works_in_a_forked_child() -> None:
    assert _covered(20) == 20  # the parent's pool exists before the fork
    with mp.get_context("fork").Pool(1) as child:
        assert child.apply(_covered, (30,)) == 30


def test_blas_thread_limit_is_restored_after_parallel_chunks() -> None:
    before = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    parallel_chunks(lambda a, b: np.ones((4, 4)) @ np.ones((4, 4)), 10, 1)
    after = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    assert before == after


class PooledModel:
    """Deterministic scores written into `block_array` buffers, like the real modalities."""

    name = "pooled"

    def __init__(self, n_items: int, transpose: bool) -> None:
        self.n_items, self.transpose = n_items, transpose
        self.bases: list[int] = []

    def fit(self, data: object) -> PooledModel:
        return self

    def score_block(self, users: np.ndarray) -> np.ndarray:
        shape = (self.n_items, len(users)) if self.transpose else (len(users), self.n_items)
        out = block_array(shape)
        self.bases.append(id(out.base if out.base is not None else out))
        items = np.arange(self.n_items)
        scores = ((users[:, None] * 7919 + items[None, :] * 104729) % 1009).astype(np.float32)
        scores[users % 5 == 0] = -np.inf
        out[...] = scores.T if self.transpose else scores
        return out.T if self.transpose else out


@pytest.mark.parametrize("transpose", [False, True])
def test_top_n_reuses_block_buffers_without_changing_results(transpose: bool) -> None:
    model = PooledModel(300, transpose)
    users = np.arange(50)
    got = top_n(model, users, 4, block_size=16)
    assert len(set(model.bases)) == 1  # one buffer served every block
    direct = np.vstack([
        np.asarray(model.score_block(users[s : s + 16])) for s in range(0, 50, 16)
    ])
    expected = reference(direct, 4)
    rows = got.sort("user_idx", "rank").group_by("user_idx", maintain_order=True).agg("item_idx")
    by_user = dict(zip(rows["user_idx"].to_list(), rows["item_idx"].to_list(), strict=True))
    assert all(by_user.get(u, []) == [i for i, _ in expected[u]] for u in range(50))
    assert got.schema == pl.Schema(candidates.CANDIDATE_SCHEMA)


def test_block_array_outside_top_n_is_a_fresh_array() -> None:
    a, b = block_array((3, 4)), block_array((3, 4))
    assert a.dtype == np.float32 and a.shape == (3, 4) and not np.shares_memory(a, b)
