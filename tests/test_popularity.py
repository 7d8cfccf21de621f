"""Popularity modality: decayed distinct-user counts, category tilt (BLAS blend = per-item
lookup), serves everyone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tasks.data.dataset import Dataset, build_dataset
from tasks.kernels.blocks import top_n
from tasks.modalities import popularity
from tasks.modalities.base import Modality
from tasks.modalities.popularity import PopularityParams, make_popularity


def test_factory_builds_a_modality() -> None:
    model = make_popularity()
    assert isinstance(model, Modality) and model.name == "popularity"

NOW = datetime(2024, 6, 1, tzinfo=UTC)


def events(rows: list[tuple[str, str, datetime]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": [u for u, _, _ in rows],
            "item_id": [i for _, i, _ in rows],
            "event_type": ["listen"] * len(rows),
            "value": [1.0] * len(rows),
            "ts": [t for _, _, t in rows],
        },
        schema_overrides={"ts": pl.Datetime("us", "UTC")},
    )


OLD = NOW - timedelta(days=90)
# "recent" and "old" each have two distinct users; "old" also has a repeat listen (same user).
ROWS = [
    ("a", "recent", NOW), ("b", "recent", NOW - timedelta(days=1)),
    ("c", "old", OLD), ("d", "old", OLD), ("c", "old", OLD),
]


def scores_for(model: Modality, data: Dataset, user: str) -> dict[str, float]:
    row = model.score_block(data.user_index([user]))[0]
    return dict(zip(data.item_ids.tolist(), row.tolist(), strict=True))


def test_decay_ranks_recent_item_above_old_one_with_equal_counts() -> None:
    data = build_dataset(events(ROWS), as_of=NOW)
    decayed = scores_for(make_popularity(PopularityParams(half_life_days=14)).fit(data), data, "a")
    assert decayed["recent"] > decayed["old"] > 0
    flat = scores_for(make_popularity(PopularityParams(half_life_days=None)).fit(data), data, "a")
    assert flat["recent"] == flat["old"]  # distinct users, not events: 2 vs 2


def test_decay_is_relative_to_newest_event_without_as_of() -> None:
    data = build_dataset(events(ROWS))
    s = scores_for(make_popularity(PopularityParams(half_life_days=14)).fit(data), data, "a")
    assert s["recent"] == 1.0 and s["old"] < 0.05


def test_serves_users_without_history_and_skips_items_nobody_used() -> None:
    data = build_dataset(
        events(ROWS), items=pl.DataFrame({"item_id": ["recent", "old", "never"]}),
        users=pl.DataFrame({"user_id": ["newcomer"]}), as_of=NOW,
    )
    recs = top_n(make_popularity().fit(data), data.user_index(["newcomer"]), n=5)
    assert data.item_ids[recs.sort("rank")["item_idx"].to_numpy()].tolist() == ["recent", "old"]


def test_category_blend_lifts_items_from_the_users_favourite_category() -> None:
    rows = [(u, "rock_hit", NOW) for u in "abcde"] + [
        ("a", "jazz_hit", NOW), ("b", "jazz_hit", NOW), ("fan", "jazz_old", NOW),
        ("fan", "jazz_more", NOW),
    ]
    items = pl.DataFrame(
        {"item_id": ["rock_hit", "jazz_hit", "jazz_old", "jazz_more"],
         "category": ["rock", "jazz", "jazz", "jazz"]}
    )
    data = build_dataset(events(rows), items=items, users=pl.DataFrame({"user_id": ["new"]}),
                         as_of=NOW)
    plain = make_popularity(PopularityParams(category_blend=0.0)).fit(data)
    tilted = make_popularity(PopularityParams(category_blend=0.8)).fit(data)
    assert scores_for(plain, data, "fan")["rock_hit"] > scores_for(plain, data, "fan")["jazz_hit"]
    assert scores_for(tilted, data, "fan")["jazz_hit"] > scores_for(tilted, data, "fan")["rock_hit"]
    # Without history there is no preference: the newcomer gets the global order.
    np.testing.assert_array_equal(
        tilted.score_block(data.user_index(["new"])), plain.score_block(data.user_index(["new"]))
    )


def test_first_tag_stands_in_for_a_missing_category() -> None:
    rows = [(u, "pop_hit", NOW) for u in "abcd"] + [("a", "metal_hit", NOW), ("m", "metal_b", NOW)]
    items = pl.DataFrame(
        {"item_id": ["pop_hit", "metal_hit", "metal_b"],
         "tags": ["pop|dance", "metal|loud", "metal"]}
    )
    data = build_dataset(events(rows), items=items, as_of=NOW)
    params = PopularityParams(category_blend=0.8, category_from_first_tag=True)
    s = scores_for(make_popularity(params).fit(data), data, "m")
    assert s["metal_hit"] > s["pop_hit"]
    no_tags = scores_for(make_popularity(PopularityParams(category_blend=0.8)).fit(data), data, "m")
    assert no_tags["pop_hit"] > no_tags["metal_hit"]


def test_every_user_gets_a_full_finite_row_for_used_items() -> None:
    data = build_dataset(events(ROWS), as_of=NOW)
    block = make_popularity().fit(data).score_block(np.arange(data.n_users))
    assert block.shape == (data.n_users, data.n_items) and block.dtype == np.float32
    assert np.isfinite(block).all()


@pytest.mark.parametrize("first_tag", [False, True])
def test_blas_blend_equals_the_per_item_lookup(
    small_source: Path, first_tag: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = pl.read_parquet(small_source / "items.parquet")
    data = build_dataset(pl.read_parquet(small_source / "events.parquet"),
                         items=items.drop("category") if first_tag else items,
                         users=pl.DataFrame({"user_id": ["newcomer"]}))
    params = PopularityParams(category_from_first_tag=first_tag)
    users = np.arange(data.n_users)
    fast = make_popularity(params).fit(data).score_block(users)
    monkeypatch.setattr(popularity, "_MAX_MIX_CATEGORIES", 0)  # force the gather path
    lookup = make_popularity(params).fit(data).score_block(users)
    np.testing.assert_array_equal(np.isneginf(fast), np.isneginf(lookup))
    np.testing.assert_allclose(fast[np.isfinite(fast)], lookup[np.isfinite(lookup)], rtol=1e-6)
    newcomer = data.user_index(["newcomer"])[0]
    plain = make_popularity(PopularityParams(category_blend=0.0)).fit(data).score_block(users)
    np.testing.assert_array_equal(fast[newcomer], plain[newcomer])  # no history: global order


class FullWidth:
    """The same model as any other modality: `top_n` scores the whole catalogue."""

    def __init__(self, model: Modality) -> None:
        self.model = model

    def score_block(self, users: np.ndarray) -> np.ndarray:
        return self.model.score_block(users)


@pytest.mark.parametrize("path", ["blas", "lookup", "global"])
@pytest.mark.parametrize("half_life", [14.0, None])
def test_the_short_list_lists_what_the_whole_catalogue_lists(
    small_source: Path, path: str, half_life: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scored on each category's most popular items only, then checked against the bound:
    the same candidates, scores and ranks as over every item, for any n."""
    from tasks.kernels.blocks import ShortlistScorer

    if path == "lookup":
        monkeypatch.setattr(popularity, "_MAX_MIX_CATEGORIES", 0)
    data = build_dataset(pl.read_parquet(small_source / "events.parquet"),
                         items=pl.read_parquet(small_source / "items.parquet"),
                         users=pl.DataFrame({"user_id": ["newcomer"]}))
    params = PopularityParams(half_life_days=half_life,
                              category_blend=0.0 if path == "global" else 0.9)
    model = make_popularity(params).fit(data)
    assert isinstance(model, ShortlistScorer)
    users = np.arange(data.n_users)
    columns = np.sort(np.random.default_rng(0).choice(data.n_items, 25, replace=False))
    np.testing.assert_array_equal(model.score_columns(users, columns),
                                  model.score_block(users)[:, columns])
    for n in (1, 5, 40, data.n_items):
        items, _ = model.shortlist(users[:7], n, data.seen()[:7])
        assert n >= data.n_items or len(items) < data.n_items  # a real short list
        for block_size in (7, data.n_users):
            short = top_n(model, users, n, seen=data.seen(), block_size=block_size)
            assert short.equals(top_n(FullWidth(model), users, n, seen=data.seen(),
                                      block_size=block_size))


def test_a_tie_at_the_edge_of_the_short_list_is_settled_over_the_whole_catalogue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every item equally popular: an item left off the short list ties with the last one kept
    and would win on its smaller index, so each user is scored over every item instead."""
    rows = [(f"u{u}", f"i{(u + d) % 30:02d}", NOW) for u in range(30) for d in (0, 1)]
    data = build_dataset(events(rows), as_of=NOW)
    model = make_popularity(PopularityParams(half_life_days=None)).fit(data)
    redone: list[int] = []
    score_block = model.score_block
    monkeypatch.setattr(model, "score_block", lambda u: (redone.append(len(u)), score_block(u))[1])
    users = np.arange(data.n_users)
    short = top_n(model, users, 3, seen=data.seen())
    assert sum(redone) == data.n_users
    assert short.equals(top_n(FullWidth(model), users, 3, seen=data.seen()))
    assert short.filter(pl.col("user_idx") == 0)["item_idx"].to_list() == [2, 3, 4]
