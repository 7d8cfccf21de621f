"""Behavior modality: EASE / ALS / item-kNN on tiny synthetic matrices (fast, no I/O)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from tasks.data.dataset import Dataset
from tasks.kernels.als import cg_half_sweep
from tasks.kernels.blocks import top_n
from tasks.modalities.base import Modality
from tasks.modalities.behavior import (
    AlsModel,
    BehaviorParams,
    EaseModel,
    ItemKnnModel,
    choose_algorithm,
    ease_weights,
    knn_similarity,
    make_behavior,
    similarity_block,
)


def make_data(matrix: np.ndarray) -> Dataset:
    """A Dataset around a dense users × items confidence matrix."""
    n_users, n_items = matrix.shape
    return Dataset(
        user_ids=np.array([f"u{i}" for i in range(n_users)], dtype=object),
        item_ids=np.array([f"i{j}" for j in range(n_items)], dtype=object),
        interactions=sp.csr_matrix(matrix.astype(np.float32)),
        events=pl.DataFrame(),
    )


def planted_blocks(
    n_blocks: int = 3, users_per_block: int = 20, items_per_block: int = 12, per_user: int = 6,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each user touches `per_user` random items of its own block only; the last user is empty."""
    rng = np.random.default_rng(seed)
    n_users, n_items = n_blocks * users_per_block + 1, n_blocks * items_per_block
    user_block = np.append(np.repeat(np.arange(n_blocks), users_per_block), -1)
    item_block = np.repeat(np.arange(n_blocks), items_per_block)
    picks = np.argsort(rng.random((n_users - 1, items_per_block)), axis=1)[:, :per_user]
    cols = user_block[:-1, None] * items_per_block + picks
    x = np.zeros((n_users, n_items), dtype=np.float32)
    rows = np.repeat(np.arange(n_users - 1), per_user)
    x[rows, cols.ravel()] = rng.uniform(1.0, 5.0, size=rows.size)  # confidence-like values
    return x, user_block, item_block


ALL_MODELS: list[tuple[str, BehaviorParams]] = [
    ("ease", BehaviorParams(algorithm="ease", l2=5.0)),
    ("ease-conf", BehaviorParams(algorithm="ease", l2=5.0, ease_input="confidence")),
    ("als", BehaviorParams(algorithm="als", factors=4, iterations=10, als_alpha=2.0)),  # rank ≈ 3
    ("knn-cosine", BehaviorParams(algorithm="itemknn", neighbors=5, similarity="cosine")),
    ("knn-asym", BehaviorParams(algorithm="itemknn", neighbors=5,
                                similarity="asymmetric_cosine", asymmetric_alpha=0.3)),
    ("knn-euclid", BehaviorParams(algorithm="itemknn", neighbors=5, similarity="euclidean")),
    ("knn-manhattan", BehaviorParams(algorithm="itemknn", neighbors=5,
                                     similarity="manhattan")),
    ("defaults", BehaviorParams()),
    ("auto", BehaviorParams(algorithm="auto")),
]


# ------------------------------------------------------------------------------------ EASE


def test_ease_zero_diagonal_and_matches_direct_constrained_solve() -> None:
    rng = np.random.default_rng(1)
    x = (rng.random((40, 7)) < 0.4).astype(np.float64)
    lam = 3.0
    b = ease_weights(x.T @ x, lam)
    assert np.allclose(np.diag(b), 0.0)
    # Column j of B is the ridge regression of item j on all *other* items (b_jj = 0).
    for j in range(x.shape[1]):
        others = np.delete(np.arange(x.shape[1]), j)
        xo = x[:, others]
        direct = np.linalg.solve(xo.T @ xo + lam * np.eye(len(others)), xo.T @ x[:, j])
        np.testing.assert_allclose(b[others, j], direct, rtol=1e-4, atol=1e-6)  # float32 solve


def test_ease_cap_keeps_most_interacted_items_and_scores_rest_neg_inf() -> None:
    x, _, _ = planted_blocks(seed=2)
    counts = (x > 0).sum(axis=0)
    model = EaseModel(l2=5.0, max_items=12).fit(make_data(x))
    assert len(model.items_) == 12
    assert counts[model.items_].min() >= np.sort(counts)[::-1][11]
    scores = model.score_block(np.arange(5))
    outside = np.setdiff1d(np.arange(x.shape[1]), model.items_)
    assert np.all(np.isneginf(scores[:, outside]))
    assert np.all(np.isfinite(scores[:, model.items_]))


# ---------------------------------------------------------------------------------------- ALS


@pytest.mark.parametrize("parts", [1, 3])
def test_als_cg_half_sweep_converges_to_exact_least_squares(parts: int) -> None:
    rng = np.random.default_rng(3)
    conf = sp.random(12, 9, density=0.4, random_state=4, format="lil", dtype=np.float32)
    conf[7, :] = 0  # a row without interactions: its exact solution is 0
    conf = conf.tocsr()
    conf.eliminate_zeros()
    conf.data = 1.0 + 3.0 * conf.data  # confidences > 1 on observed entries
    y = rng.standard_normal((9, 4)).astype(np.float32)
    reg = 0.5
    x = rng.standard_normal((12, 4)).astype(np.float32)
    cg_half_sweep(x, conf, y, reg, steps=30, parts=parts)
    dense_c = conf.toarray()
    assert not x[7].any()
    for u in range(12):
        c = np.where(dense_c[u] > 0, dense_c[u], 1.0)
        p = (dense_c[u] > 0).astype(np.float64)
        a = y.T.astype(np.float64) @ (c[:, None] * y) + reg * np.eye(4)
        exact = np.linalg.solve(a, y.T @ (c * p))
        np.testing.assert_allclose(x[u], exact, rtol=1e-3, atol=1e-4)


# ------------------------------------------------------------------------------------ item-kNN


@pytest.mark.parametrize("similarity", ["cosine", "asymmetric_cosine", "euclidean", "manhattan"])
def test_identical_item_columns_have_maximal_similarity(similarity: str) -> None:
    rng = np.random.default_rng(5)
    x = rng.uniform(0.5, 3.0, size=(15, 6)) * (rng.random((15, 6)) < 0.5)
    x[:, 3] = x[:, 1]  # items 1 and 3 are the same column
    xs = sp.csr_matrix(x.astype(np.float32))
    sim = similarity_block(xs, xs.T.tocsr(), np.arange(6), similarity)  # type: ignore[arg-type]
    np.fill_diagonal(sim, -np.inf)
    assert sim[1, 3] == pytest.approx(1.0, abs=1e-5)  # cosine 1, distance 0 → 1/(1+0)
    assert np.argmax(sim[1]) == 3 and np.argmax(sim[3]) == 1


def test_euclidean_and_manhattan_disagree_on_hand_checked_case() -> None:
    # Two users as coordinates: t = (1, 1), a = (3, 1), b = (2.2, 2.2).
    # Euclidean: d(t,a) = 2, d(t,b) = √2·1.2 ≈ 1.697 → b nearer.
    # Manhattan: d(t,a) = 2, d(t,b) = 2.4 → a nearer.
    x = sp.csr_matrix(np.array([[1.0, 3.0, 2.2], [1.0, 1.0, 2.2]], dtype=np.float32))
    xt = x.T.tocsr()
    eu = similarity_block(x, xt, np.array([0]), "euclidean")[0]
    ma = similarity_block(x, xt, np.array([0]), "manhattan")[0]
    assert eu[1] == pytest.approx(1 / 3, rel=1e-5)
    assert eu[2] == pytest.approx(1 / (1 + 1.2 * np.sqrt(2)), rel=1e-5)
    assert ma[1] == pytest.approx(1 / 3, rel=1e-5)
    assert ma[2] == pytest.approx(1 / 3.4, rel=1e-5)
    s_eu = knn_similarity(x, 1, "euclidean")
    s_ma = knn_similarity(x, 1, "manhattan")
    assert s_eu[0].indices.tolist() == [2]
    assert s_ma[0].indices.tolist() == [1]


def test_shrinkage_and_asymmetric_cosine() -> None:
    x = sp.csr_matrix(np.array([[1, 1, 1], [1, 1, 0], [0, 1, 0], [0, 1, 1]], dtype=np.float32))
    xt = x.T.tocsr()
    cos = similarity_block(x, xt, np.arange(3), "cosine")
    shrunk = similarity_block(x, xt, np.arange(3), "cosine", shrink=10.0)
    assert cos[0, 1] == pytest.approx(2 / np.sqrt(2 * 4))
    assert shrunk[0, 1] == pytest.approx(2 / (np.sqrt(2 * 4) + 10.0))
    half = similarity_block(x, xt, np.arange(3), "asymmetric_cosine", asymmetric_alpha=0.5)
    np.testing.assert_allclose(half, cos)
    asym = similarity_block(x, xt, np.arange(3), "asymmetric_cosine", asymmetric_alpha=0.0)
    assert asym[0, 1] == pytest.approx(2 / 4)  # dot / |j|²: "how much of j co-occurs with i"
    assert asym[1, 0] == pytest.approx(2 / 2)


@pytest.mark.parametrize("similarity", ["cosine", "euclidean", "manhattan"])
def test_neighbour_cap_and_blocking_do_not_change_result(similarity: str) -> None:
    rng = np.random.default_rng(6)
    x = sp.csr_matrix((rng.uniform(1, 4, (30, 25)) * (rng.random((30, 25)) < 0.3))
                      .astype(np.float32))
    whole = knn_similarity(x, 4, similarity, block_items=1000)  # type: ignore[arg-type]
    tiny = knn_similarity(x, 4, similarity, block_items=3, max_pairs=5)  # type: ignore[arg-type]
    assert np.diff(whole.indptr).max() <= 4
    assert np.all(whole.diagonal() == 0)
    np.testing.assert_allclose(whole.toarray(), tiny.toarray(), rtol=1e-6)
    # the kept neighbours are the row's largest similarities
    xt = x.T.tocsr()
    full = similarity_block(x, xt, np.arange(25), similarity)  # type: ignore[arg-type]
    np.fill_diagonal(full, -np.inf)
    for i in range(25):
        kept = whole[i].data
        if len(kept):
            assert kept.min() >= np.sort(full[i])[-4] - 1e-6


# ----------------------------------------------------------------------------- all models


@pytest.mark.parametrize(("label", "params"), ALL_MODELS, ids=[m[0] for m in ALL_MODELS])
def test_user_without_history_gets_all_neg_inf(label: str, params: BehaviorParams) -> None:
    x, _, _ = planted_blocks(seed=7)
    model = make_behavior(params).fit(make_data(x))
    assert isinstance(model, Modality) and model.name == "behavior"
    scores = model.score_block(np.array([0, x.shape[0] - 1]))
    assert scores.dtype == np.float32 and scores.shape == (2, x.shape[1])
    assert np.all(np.isneginf(scores[1]))
    assert np.isfinite(scores[0]).sum() > 0


@pytest.mark.parametrize(("label", "params"), ALL_MODELS, ids=[m[0] for m in ALL_MODELS])
def test_planted_blocks_are_recovered(label: str, params: BehaviorParams) -> None:
    x, user_block, item_block = planted_blocks(seed=8)
    data = make_data(x)
    model = make_behavior(params).fit(data)
    users = np.arange(data.n_users - 1)  # the last user is empty
    recs = top_n(model, users, 3, seen=data.seen(), block_size=7)
    rec_users = recs["user_idx"].to_numpy()
    rec_items = recs["item_idx"].to_numpy()
    # every user gets 3 recommendations, all unseen and all from the user's own block
    assert np.all(np.bincount(rec_users, minlength=len(users)) == 3)
    assert np.all(item_block[rec_items] == user_block[rec_users])
    assert not np.any(x[rec_users, rec_items] > 0)


def test_auto_picks_ease_when_catalog_fits_else_als() -> None:
    x, _, _ = planted_blocks(seed=9)
    data = make_data(x)
    assert choose_algorithm(data, BehaviorParams(algorithm="auto")) == "ease"
    capped = BehaviorParams(algorithm="auto", max_items_for_ease=30)  # 30 of 36 items ≥ 80 %
    assert choose_algorithm(data, capped) == "ease"
    # capped EASE (5 of 36 items) would keep too little of the data → ALS
    small = BehaviorParams(algorithm="auto", max_items_for_ease=5, ease_min_coverage=0.9)
    assert choose_algorithm(data, small) == "als"
    model = make_behavior(small).fit(data)
    assert getattr(model, "algorithm_", None) == "als"
    assert isinstance(make_behavior(BehaviorParams(algorithm="ease")), EaseModel)
    assert isinstance(make_behavior(BehaviorParams(algorithm="als")), AlsModel)
    assert isinstance(make_behavior(BehaviorParams(algorithm="itemknn")), ItemKnnModel)


@pytest.mark.parametrize(
    "params",
    [
        BehaviorParams(algorithm="ease", l2=5.0, ease_input="confidence"),
        BehaviorParams(algorithm="als", factors=4, iterations=5, als_input="confidence"),
        BehaviorParams(algorithm="itemknn", neighbors=5, shrink=2.0, knn_input="confidence"),
    ],
    ids=["ease", "als", "itemknn"],
)
def test_confidence_scale_does_not_change_scores(params: BehaviorParams) -> None:
    # Confidence is rescaled to mean 1, so tuned λ / alpha / shrink survive other event weights.
    x, _, _ = planted_blocks(seed=10)
    a = make_behavior(params).fit(make_data(x)).score_block(np.arange(10))
    b = make_behavior(params).fit(make_data(x * 7.5)).score_block(np.arange(10))
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-5)


def test_als_scores_are_the_same_bytes_whatever_blas_s_thread_count() -> None:
    """Found: one chunk of users (≤ 256) was scored on every BLAS thread, and OpenBLAS's split
    of the rows changed a user's float32 sums with the thread count (2,257 of 12,000 differed
    between 1 and 2 threads), so lists could differ between machines with other core counts."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(3)
    x = (rng.random((120, 400)) < 0.05) * rng.uniform(1, 5, (120, 400))
    model = AlsModel(factors=64, iterations=2).fit(make_data(x))
    users = np.arange(100)
    blocks = []
    for threads in (1, 2):
        with threadpool_limits(threads, user_api="blas"):
            blocks.append(model.score_block(users).copy())
    np.testing.assert_array_equal(blocks[0], blocks[1])
