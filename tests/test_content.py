"""Content modality: behaviour on tiny hand-made snapshots, and the fast scoring path checked
against the plain dense computation on a small synthetic source."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
from sklearn.preprocessing import normalize

from tasks.data.dataset import Dataset, build_dataset
from tasks.kernels.blocks import top_n
from tasks.kernels.sparse import add_sparse_dense_product, product_to_scores, sparse_gram
from tasks.modalities import content
from tasks.modalities.base import Modality
from tasks.modalities.content import (
    ContentModality,
    ContentParams,
    MissingModalityInput,
    history_weights,
    item_features,
    make_content,
)

NOW = datetime(2024, 6, 1, tzinfo=UTC)


def events(rows: list[tuple[str, str]], ts: list[datetime] | None = None) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": [u for u, _ in rows],
            "item_id": [i for _, i in rows],
            "event_type": ["listen"] * len(rows),
            "value": [1.0] * len(rows),
            "ts": ts or [NOW] * len(rows),
        },
        schema_overrides={"ts": pl.Datetime("us", "UTC")},
    )


ITEMS = pl.DataFrame(
    {
        "item_id": ["rock1", "rock2", "rock_cold", "pop_hit", "jazz1", "jazz_cold"],
        "title": ["Band A", "Band B", "Band C", "Star", "Trio", "Quartet"],
        "tags": [
            ["indie rock", "britpop"],
            ["indie rock", "guitar"],
            ["indie rock", "britpop", "guitar"],
            ["dance", "pop"],
            ["jazz", "bebop"],
            ["jazz", "bebop", "piano"],
        ],
    }
)

# Everyone else loves pop_hit; "u" listened to indie rock only; "one" has a single listen.
BASE = [("u", "rock1"), ("u", "rock2"), ("one", "jazz1")] + [
    (f"fan{i}", "pop_hit") for i in range(5)
]


def dataset(items: pl.DataFrame | None = ITEMS, rows: list[tuple[str, str]] = BASE,
            ts: list[datetime] | None = None) -> Dataset:
    return build_dataset(events(rows, ts), items=items, as_of=NOW)


def test_factory_builds_a_modality() -> None:
    model = make_content()
    assert isinstance(model, Modality) and model.name == "content"


def scores_for(model: Modality, data: Dataset, user: str) -> dict[str, float]:
    row = model.score_block(data.user_index([user]))[0]
    return dict(zip(data.item_ids.tolist(), row.tolist(), strict=True))


@pytest.mark.parametrize("variant", ["profile", "item_knn"])
def test_cold_item_sharing_tags_beats_unrelated_popular_item(variant: str) -> None:
    data = dataset()
    cold = int(np.flatnonzero(data.item_ids == "rock_cold")[0])
    assert data.interactions[:, cold].nnz == 0  # nobody interacted with it
    model = make_content(ContentParams(variant=variant)).fit(data)
    recs = top_n(model, data.user_index(["u"]), n=3, seen=data.seen())
    ranked = data.item_ids[recs.sort("rank")["item_idx"].to_numpy()].tolist()
    assert ranked[0] == "rock_cold"
    s = scores_for(model, data, "u")
    assert s["rock_cold"] > s["pop_hit"]
    assert s["pop_hit"] == -np.inf  # no shared attribute: no evidence, not a weak yes


def test_user_with_one_interaction_gets_recommendations() -> None:
    data = dataset()
    model = make_content().fit(data)
    recs = top_n(model, data.user_index(["one"]), n=5, seen=data.seen())
    ranked = data.item_ids[recs.sort("rank")["item_idx"].to_numpy()].tolist()
    assert ranked and ranked[0] == "jazz_cold"
    assert "jazz1" not in ranked  # seen items are excluded


def test_user_without_history_cannot_be_served() -> None:
    data = build_dataset(events(BASE), items=ITEMS, users=pl.DataFrame({"user_id": ["new"]}))
    row = make_content().fit(data).score_block(data.user_index(["new"]))[0]
    assert row.dtype == np.float32 and np.isneginf(row).all()


def test_pipe_separated_tags_match_list_tags() -> None:
    piped = ITEMS.with_columns(pl.col("tags").list.join("|"))
    a = make_content().fit(dataset()).score_block(np.arange(3))
    b = make_content().fit(dataset(items=piped)).score_block(np.arange(3))
    np.testing.assert_allclose(a, b, rtol=1e-5)


def test_category_and_embedding_blocks_carry_similarity() -> None:
    items = pl.DataFrame(
        {
            "item_id": ["a", "b", "c", "d"],
            "category": ["film", "film", "book", None],
            "embedding": [[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.8, 0.2]],
        }
    )
    data = build_dataset(events([("u", "a"), ("v", "c")]), items=items)
    s = scores_for(make_content().fit(data), data, "u")
    # b shares category and direction with a; d only the direction; c neither.
    assert s["b"] > s["d"] > s["c"]


def test_recent_history_outweighs_old_history() -> None:
    rows = [("u", "rock1"), ("u", "jazz1")]
    ts = [NOW - timedelta(days=365), NOW - timedelta(days=1)]
    data = dataset(rows=rows, ts=ts)
    decayed = scores_for(make_content(ContentParams(half_life_days=30)).fit(data), data, "u")
    assert decayed["jazz_cold"] > decayed["rock_cold"]
    flat = scores_for(make_content(ContentParams(half_life_days=None)).fit(data), data, "u")
    assert flat["jazz_cold"] - flat["rock_cold"] < decayed["jazz_cold"] - decayed["rock_cold"]


def test_recency_is_a_no_op_when_timestamps_are_constant() -> None:
    data = dataset()
    users = np.arange(data.n_users)
    a = make_content(ContentParams(half_life_days=7)).fit(data).score_block(users)
    b = make_content(ContentParams(half_life_days=None)).fit(data).score_block(users)
    np.testing.assert_array_equal(a, b)


def test_missing_items_raise_missing_modality_input() -> None:
    with pytest.raises(MissingModalityInput):
        make_content().fit(dataset(items=None))
    with pytest.raises(MissingModalityInput):
        make_content().fit(dataset(items=ITEMS.select("item_id")))


# --------------------------------------------------------------------------- fast path = plain math


def demo_dataset(source: Path, embedding: bool = True, featureless: int = 0) -> Dataset:
    """The small demo source; the first `featureless` items lose every attribute."""
    items = pl.read_parquet(source / "items.parquet")
    if featureless:
        blank = pl.int_range(pl.len()) < featureless
        items = items.with_columns(
            pl.when(~blank).then(pl.col(c)).alias(c)
            for c in ("title", "text", "tags", "category", "embedding")
        )
    return build_dataset(
        pl.read_parquet(source / "events.parquet"),
        items=items if embedding else items.drop("embedding"),
        social=pl.read_parquet(source / "social.parquet"),
    )


def plain_profile_scores(data: Dataset, params: ContentParams) -> np.ndarray:
    """The profile variant written densely: cosine to the unit mean item vector."""
    assert data.items is not None
    x, dense = item_features(data.items, params)
    feats = np.hstack([x.toarray(), dense]).astype(np.float64)
    hist = normalize(history_weights(data, params.half_life_days, params.history_weighting),
                     norm="l1")
    profile = np.asarray(hist @ feats)
    norms = np.linalg.norm(profile, axis=1)
    cos = (profile / np.where(norms > 0, norms, 1)[:, None]) @ feats.T
    if dense.shape[1] == 0:
        cos[cos == 0] = -np.inf  # no shared attribute
    else:
        cos[:, np.abs(feats).sum(axis=1) == 0] = -np.inf
        cos[norms == 0] = -np.inf
    return cos


@pytest.mark.parametrize("embedding", [True, False])
@pytest.mark.parametrize("dense_share", [0.0, 0.1, 2.0])  # all dense, split, all sparse
def test_profile_scores_equal_the_plain_computation(
    small_source: Path, embedding: bool, dense_share: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(content, "_DENSE_COLUMN_SHARE", dense_share)
    data = demo_dataset(small_source, embedding, featureless=3)
    params = ContentParams()
    users = np.arange(data.n_users)
    got = make_content(params).fit(data).score_block(users)
    expected = plain_profile_scores(data, params)
    # both kinds of "no evidence" occur: items without attributes, users without a profile
    assert np.isneginf(expected).all(axis=0).sum() >= 3
    assert np.isneginf(expected).all(axis=1).any()
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(got[finite], expected[finite], atol=2e-6)


def test_product_to_scores_equals_dense_product() -> None:
    left = sp.random(30, 50, density=0.1, format="csr", dtype=np.float32, random_state=1)
    left.data[::7] = 0.0  # explicit zeros contribute nothing
    right = sp.random(50, 40, density=0.08, format="csr", dtype=np.float32, random_state=2)
    dense = left.toarray().astype(np.float64) @ right.toarray()
    expected = np.where(dense == 0, -np.inf, dense)
    out = np.full((30, 40), 7.0, dtype=np.float32)  # stale values must not leak through
    got = product_to_scores(left, right, out=out)
    assert got is out
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(expected))
    np.testing.assert_allclose(got[np.isfinite(got)], expected[np.isfinite(expected)], rtol=1e-5)
    assert np.isneginf(product_to_scores(sp.csr_matrix((3, 50)), right)).all()


def test_add_sparse_dense_product_accumulates_a_row_range() -> None:
    left = sp.random(20, 30, density=0.2, format="csr", dtype=np.float32, random_state=3)
    right = np.random.default_rng(4).standard_normal((30, 9)).astype(np.float32)
    out = np.ones((6, 9), dtype=np.float32)
    add_sparse_dense_product(left, right, out, start=10)
    np.testing.assert_allclose(out, 1.0 + left[10:16].toarray() @ right, rtol=1e-5, atol=1e-6)


def test_the_gram_summed_on_its_upper_half_is_the_full_sum_bit_for_bit() -> None:
    # 700 items: several row chunks, tiles cut mid-row; unsorted indices are sorted first.
    x = sp.random(400, 700, density=0.05, format="csr", dtype=np.float32, random_state=5)
    x.data = np.random.default_rng(6).uniform(0.1, 3.0, x.nnz).astype(np.float32)
    shuffled = x.copy()
    for u in range(shuffled.shape[0]):
        lo, hi = shuffled.indptr[u], shuffled.indptr[u + 1]
        order = np.random.default_rng(u).permutation(hi - lo)
        shuffled.indices[lo:hi], shuffled.data[lo:hi] = (shuffled.indices[lo:hi][order],
                                                          shuffled.data[lo:hi][order])
    shuffled.has_sorted_indices = False
    full = sparse_gram(x, x)  # every (i, j) summed on its own
    half = sparse_gram(shuffled)
    np.testing.assert_array_equal(half, full)
    np.testing.assert_array_equal(half, half.T)
    np.testing.assert_allclose(half, (x.T @ x).toarray(), rtol=1e-5, atol=1e-5)
    assert sparse_gram(sp.csr_matrix((5, 3), dtype=np.float32)).tolist() == [[0.0] * 3] * 3


def test_zeros_to_neg_inf_keeps_every_other_value() -> None:
    values = np.array([[0.0, -0.0, 1.5, -2.0], [np.inf, -np.inf, 1e-30, 0.0]], dtype=np.float32)
    expected = np.where(values == 0, -np.inf, values).astype(np.float32)
    content.zeros_to_neg_inf(values)
    np.testing.assert_array_equal(values, expected)


def test_item_knn_scores_are_history_votes(small_source: Path) -> None:
    data = demo_dataset(small_source)
    model = ContentModality(ContentParams(variant="item_knn", neighbours=20)).fit(data)
    users = np.arange(data.n_users)
    assert model._history is not None and model._neighbours is not None
    votes = (model._history @ model._neighbours).toarray()
    expected = np.where(votes == 0, -np.inf, votes)
    got = model.score_block(users)
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(expected))
    np.testing.assert_allclose(got[np.isfinite(got)], expected[np.isfinite(expected)], rtol=1e-5)


def test_latest_event_per_pair_in_any_row_order() -> None:
    """The latest time of each (user, item) pair, nulls skipped, whatever order events come in
    (the Dataset keeps them sorted; a shuffled frame must give the same answer)."""
    rng = np.random.default_rng(5)
    n = 400
    ts = [datetime(2024, 1, 1, tzinfo=UTC) + timedelta(hours=int(h))
          for h in rng.integers(0, 5000, n)]
    events = pl.DataFrame({
        "user_idx": rng.integers(0, 9, n).astype(np.int32),
        "item_idx": rng.integers(0, 7, n).astype(np.int32),
        "ts": pl.Series(ts).cast(pl.Datetime("us", "UTC")),
    }).with_columns(pl.when(pl.int_range(pl.len()) % 11 == 0).then(None)
                    .otherwise(pl.col("ts")).alias("ts"))
    expected = (events.group_by("user_idx", "item_idx")
                .agg(pl.col("ts").max().dt.epoch("s").cast(pl.Float64).alias("t"))
                .sort("user_idx", "item_idx"))
    for frame in (events.sort("user_idx", "item_idx", "ts"), events):
        codes, latest = content._latest_per_pair(frame, 7)
        assert codes.tolist() == (expected["user_idx"] * 7 + expected["item_idx"]).to_list()
        assert np.array_equal(latest, expected["t"].fill_null(np.nan).to_numpy(), equal_nan=True)
