"""Social modality on tiny graphs (friends' items, friends-of-friends, taste overlap, no input),
and the unrolled, gathered scoring checked against the plain iteration."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tasks.data.dataset import Dataset, build_dataset
from tasks.kernels.blocks import top_n
from tasks.modalities.base import Modality
from tasks.modalities.content import MissingModalityInput
from tasks.modalities.social import SocialModality, SocialParams, make_social

NOW = datetime(2024, 6, 1, tzinfo=UTC)


def events(rows: list[tuple[str, str]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": [u for u, _ in rows],
            "item_id": [i for _, i in rows],
            "event_type": ["listen"] * len(rows),
            "value": [1.0] * len(rows),
            "ts": [NOW] * len(rows),
        },
        schema_overrides={"ts": pl.Datetime("us", "UTC")},
    )


def ties(pairs: list[tuple[str, str]], weights: list[float] | None = None) -> pl.DataFrame:
    """Mutual friendships, both directions, as the data contract stores them."""
    both = pairs + [(b, a) for a, b in pairs]
    w = (weights or [1.0] * len(pairs)) * 2
    return pl.DataFrame(
        {"user_id": [a for a, _ in both], "friend_id": [b for _, b in both], "weight": w}
    )


# new -- friend -- fof (a chain); loner has history but no friends.
ROWS = [("friend", "x"), ("fof", "y"), ("loner", "z"), ("other", "x")]
CHAIN = ties([("new", "friend"), ("friend", "fof")])


def test_factory_builds_a_modality() -> None:
    model = make_social()
    assert isinstance(model, Modality) and model.name == "social"


def scores_for(model: Modality, data: Dataset, user: str) -> dict[str, float]:
    row = model.score_block(data.user_index([user]))[0]
    return dict(zip(data.item_ids.tolist(), row.tolist(), strict=True))


def test_friend_item_recommended_to_user_without_history() -> None:
    data = build_dataset(events(ROWS), social=CHAIN)
    assert data.history_lengths()[data.user_index(["new"])[0]] == 0
    model = make_social(SocialParams(propagation="direct")).fit(data)
    recs = top_n(model, data.user_index(["new"]), n=5, seen=data.seen())
    assert data.item_ids[recs.sort("rank")["item_idx"].to_numpy()].tolist() == ["x"]


@pytest.mark.parametrize(
    "params",
    [SocialParams(propagation="two_hop", hop_decay=1.0), SocialParams(propagation="ppr")],
)
def test_friend_of_friend_item_reached_below_direct_friend_item(params: SocialParams) -> None:
    data = build_dataset(events(ROWS), social=CHAIN)
    s = scores_for(make_social(params).fit(data), data, "new")
    assert np.isfinite(s["y"])
    assert s["x"] > s["y"] > -np.inf
    assert s["z"] == -np.inf  # the loner is not connected


def test_direct_propagation_does_not_reach_friend_of_friend() -> None:
    data = build_dataset(events(ROWS), social=CHAIN)
    s = scores_for(make_social(SocialParams(propagation="direct")).fit(data), data, "new")
    assert np.isfinite(s["x"]) and s["y"] == -np.inf


def test_user_without_friends_gets_all_minus_inf() -> None:
    data = build_dataset(events(ROWS), social=CHAIN)
    row = make_social().fit(data).score_block(data.user_index(["loner"]))[0]
    assert row.dtype == np.float32 and np.isneginf(row).all()


def test_taste_overlap_favours_the_like_minded_friend() -> None:
    rows = [("u", "a"), ("u", "b"), ("twin", "a"), ("twin", "b"), ("twin", "t"),
            ("stranger", "c"), ("stranger", "s")]
    data = build_dataset(events(rows), social=ties([("u", "twin"), ("u", "stranger")]))
    plain = scores_for(
        make_social(SocialParams(propagation="direct", taste_weight=0.0)).fit(data), data, "u"
    )
    tilted = scores_for(
        make_social(SocialParams(propagation="direct", taste_weight=0.9)).fit(data), data, "u"
    )
    assert tilted["t"] > tilted["s"]
    assert tilted["t"] / tilted["s"] > plain["t"] / plain["s"]


def test_tie_weight_orders_friends() -> None:
    rows = [("close", "c"), ("far", "f")]
    data = build_dataset(events(rows), social=ties([("u", "close"), ("u", "far")], [5.0, 1.0]))
    s = scores_for(make_social(SocialParams(taste_weight=0.0)).fit(data), data, "u")
    assert s["c"] > s["f"] > -np.inf


def test_missing_social_raises_missing_modality_input() -> None:
    with pytest.raises(MissingModalityInput):
        make_social().fit(build_dataset(events(ROWS)))
    empty = pl.DataFrame(schema={"user_id": pl.String, "friend_id": pl.String})
    with pytest.raises(MissingModalityInput):
        make_social().fit(build_dataset(events(ROWS), social=empty))


# --------------------------------------------------------------------------- fast path = plain math


def plain_social_scores(model: SocialModality, params: SocialParams) -> np.ndarray:
    """The propagation as first written: iterate the walk densely, drop own taste, multiply."""
    assert model._walk is not None and model._items is not None
    walk = model._walk.toarray().astype(np.float64)
    n = walk.shape[0]
    if params.propagation == "direct":
        reach = walk.copy()
    elif params.propagation == "two_hop":
        reach = walk + params.hop_decay * walk @ walk
    else:
        state = np.eye(n)
        for _ in range(params.ppr_iterations):
            state = params.restart * np.eye(n) + (1 - params.restart) * state @ walk
        reach = state
    np.fill_diagonal(reach, 0.0)
    scores = reach @ model._items.toarray()
    return np.where(scores == 0, -np.inf, scores)


@pytest.mark.parametrize(
    "params",
    [
        SocialParams(),
        SocialParams(ppr_iterations=1),
        SocialParams(ppr_iterations=2, restart=0.3),
        SocialParams(ppr_iterations=3),
        SocialParams(ppr_iterations=5),
        SocialParams(propagation="two_hop", hop_decay=0.3),
        SocialParams(propagation="direct", taste_weight=0.0),
    ],
)
def test_scores_equal_the_plain_iteration(small_source: Path, params: SocialParams) -> None:
    data = build_dataset(
        pl.read_parquet(small_source / "events.parquet"),
        social=pl.read_parquet(small_source / "social.parquet"),
    )
    model = SocialModality(params).fit(data)
    got = model.score_block(np.arange(data.n_users))
    expected = plain_social_scores(model, params)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-4, atol=1e-8)


def test_taste_overlap_in_blocks_of_ties_is_the_one_block_bytes(
    small_source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ties' cosines are computed a block of ties at a time (bounded memory): any block
    size gives the same fitted model, bit for bit."""
    import tasks.modalities.social as social

    data = build_dataset(
        pl.read_parquet(small_source / "events.parquet"),
        social=pl.read_parquet(small_source / "social.parquet"),
    )
    params = SocialParams(taste_weight=0.5)
    whole = SocialModality(params).fit(data)
    monkeypatch.setattr(social, "OVERLAP_TIES", 7)
    assert data.social is not None and data.social.nnz > 7 * 3  # several blocks
    blocked = SocialModality(params).fit(data)
    users = np.arange(data.n_users)
    assert np.array_equal(whole.score_block(users), blocked.score_block(users))
    assert whole._walk is not None and blocked._walk is not None
    assert np.array_equal(whole._walk.data, blocked._walk.data)
