"""Reasons' evidence: friends who have the item, and the closest item in the user's history."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from synthetic import skewed_views

from tasks.data.dataset import Dataset, build_dataset
from tasks.data.segments import EXACT_AUDIENCE_USERS
from tasks.outputs.reasons import _closest_history_item, friends_who_have


def _small(source: Path) -> Dataset:
    return build_dataset(
        pl.read_parquet(source / "events.parquet"),
        social=pl.read_parquet(source / "social.parquet"),
    )


def _pairs(data: Dataset, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, data.n_users, n), rng.integers(0, data.n_items, n)


def _exact_closest(data: Dataset, users: np.ndarray, items: np.ndarray) -> list[int]:
    """Brute force: history item with the largest audience cosine, ties → smaller index."""
    seen = data.seen().toarray()
    pop = seen.sum(axis=0)
    out = []
    for u, i in zip(users, items, strict=True):
        history = np.flatnonzero(seen[u])
        co = seen[:, history].T @ seen[:, i]
        cos = np.where(co > 0, co / np.sqrt(np.maximum(pop[history] * pop[i], 1)), 0.0)
        out.append(int(history[np.argmax(cos)]) if len(history) and cos.max() > 0 else -1)
    return out


def test_friends_who_have_counts_friends_with_the_item(small_source: Path) -> None:
    data = _small(small_source)
    users, items = _pairs(data, 300, seed=1)
    assert data.social is not None
    friends = data.social.toarray() != 0
    seen = data.seen().toarray() > 0
    expected = [int((friends[u] & seen[:, i]).sum()) for u, i in zip(users, items, strict=True)]
    got = friends_who_have(data, users, items)
    assert got.tolist() == expected
    assert max(expected) > 0


def test_closest_history_item_is_the_most_co_consumed(small_source: Path) -> None:
    data = _small(small_source)
    users, items = _pairs(data, 300, seed=2)
    got = _closest_history_item(data, users, items, block=64)  # several blocks
    assert got.tolist() == _exact_closest(data, users, items)


def test_closest_history_item_on_many_users_picks_a_near_best_item() -> None:
    rng = np.random.default_rng(5)
    n_users, n_items, n_events = EXACT_AUDIENCE_USERS + 1500, 120, 50_000
    groups = rng.integers(0, 4, n_users)  # four tastes: items of a taste share audiences
    items = groups[np.arange(n_events) % n_users] * 30 + rng.integers(0, 30, n_events)
    mixed = rng.random(n_events) < 0.2
    items[mixed] = rng.integers(0, n_items, mixed.sum())
    events = pl.DataFrame(
        {
            "user_id": (np.arange(n_events) % n_users).astype(str),
            "item_id": items.astype(str),
            "event_type": "view",
            "value": 1.0,
            "ts": None,
        },
        schema_overrides={"ts": pl.Datetime("us", "UTC")},
    )
    data = build_dataset(events)
    users, items_ = _pairs(data, 400, seed=3)
    got = _closest_history_item(data, users, items_)
    exact = _exact_closest(data, users, items_)
    seen = data.seen().toarray()
    pop = seen.sum(axis=0)

    def cosine(i: int, h: int) -> float:
        return float(seen[:, i] @ seen[:, h] / np.sqrt(pop[i] * pop[h]))

    # a clear overlap (well above the projection's noise) is found, and it is nearly the best
    strong = [(i, g, e) for i, g, e in zip(items_, got, exact, strict=True)
              if e >= 0 and cosine(i, e) >= 0.2]
    assert len(strong) >= 20
    assert np.mean([g >= 0 for _, g, _ in strong]) >= 0.95
    ratios = [cosine(i, g) / cosine(i, e) for i, g, e in strong if g >= 0]
    assert np.mean(ratios) > 0.9


def _sequential_projection(data: Dataset, dims: int, seed: int = 0) -> np.ndarray:
    """The projection as first written: one slice of users at a time, one product each."""
    import scipy.sparse as sp

    from tasks.data.segments import _DIRECTION_ROWS, unit_audiences

    unit = sp.csc_matrix(unit_audiences(data))
    rng = np.random.default_rng(seed)
    scale = np.float32(1.0 / np.sqrt(dims))
    out = np.zeros((data.n_items, dims), dtype=np.float32)
    for lo in range(0, data.n_users, _DIRECTION_ROWS):
        hi = min(lo + _DIRECTION_ROWS, data.n_users)
        out += np.asarray(unit[:, lo:hi] @ (rng.standard_normal((hi - lo, dims),
                                                               dtype=np.float32) * scale))
    return out


def test_projected_audiences_are_the_same_bits_on_one_thread_or_many(monkeypatch) -> None:
    """Slices of users in order, their products split by items over the pool: an item's
    vector must not depend on the split, nor on the number of threads."""
    from tasks.data.segments import _DIRECTION_ROWS, projected_audiences
    from tasks.kernels.blocks import THREADS_ENV

    rng = np.random.default_rng(11)
    data = build_dataset(skewed_views(rng, 2 * _DIRECTION_ROWS + 700, 2500, 60_000, zipf=1.3))
    assert data.n_users > 2 * _DIRECTION_ROWS  # three slices of directions
    expected = _sequential_projection(data, 48)
    many = projected_audiences(data, 48)
    monkeypatch.setenv(THREADS_ENV, "1")
    one = projected_audiences(data, 48)
    assert many.tobytes() == expected.tobytes() == one.tobytes()
    assert np.abs(expected).sum() > 0
