"""The snapshot every modality is fitted on: id spaces, confidence weighting, side tables."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

from tasks.data.dataset import InteractionWeighting, build_dataset

TS = datetime(2026, 1, 1, tzinfo=UTC)


def _events(rows: list[tuple[str, str, str, float | None]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "event_type": [r[2] for r in rows],
            "value": [r[3] for r in rows],
            "ts": [TS] * len(rows),
        },
        schema_overrides={"value": pl.Float64},
    )


def test_events_of_a_pair_are_summed_with_type_weights_and_log_values() -> None:
    data = build_dataset(
        _events([("u1", "a", "purchase", 1.0), ("u1", "a", "view", 3.0), ("u2", "b", "odd", None)]),
        weighting=InteractionWeighting(unknown_event_weight=0.5),
    )
    m = data.interactions.toarray()
    assert list(data.user_ids) == ["u1", "u2"] and list(data.item_ids) == ["a", "b"]
    assert math.isclose(m[0, 0], 4.0 * math.log1p(1.0) + 0.25 * math.log1p(3.0), rel_tol=1e-6)
    assert math.isclose(m[1, 1], 0.5 * math.log1p(1.0), rel_tol=1e-6)  # null value counts as 1
    assert m[0, 1] == 0 and m[1, 0] == 0
    assert data.events.columns == ["user_idx", "item_idx", "ts", "confidence"]
    assert data.events.height == 3


def test_pinned_id_space_drops_unknown_ids_and_keeps_indexes() -> None:
    data = build_dataset(
        _events(
            [("u2", "b", "like", 1.0), ("stranger", "a", "like", 1.0), ("u1", "zz", "like", 1.0)]
        ),
        user_ids=np.array(["u1", "u2", "u3"], dtype=object),
        item_ids=np.array(["a", "b"], dtype=object),
    )
    assert data.interactions.shape == (3, 2)
    assert data.interactions.nnz == 1
    assert data.interactions[1, 1] > 0  # u2 × b kept at its pinned indexes
    assert data.events["user_idx"].to_list() == [1]


def test_zero_valued_event_is_still_seen() -> None:
    data = build_dataset(_events([("u", "a", "listen", 0.0)]))
    assert data.seen().toarray().tolist() == [[1.0]]


def test_social_edges_map_to_user_indexes_keep_max_weight_and_drop_self_loops() -> None:
    social = pl.DataFrame(
        {
            "user_id": ["u1", "u1", "u2", "u3"],
            "friend_id": ["u2", "u2", "u2", "u1"],
            "weight": [1.0, 3.0, 5.0, None],
        }
    )
    data = build_dataset(_events([("u1", "a", "like", 1.0)]), social=social)
    assert list(data.user_ids) == ["u1", "u2", "u3"]  # friends join the user space
    assert data.social is not None
    assert data.social.toarray().tolist() == [[0, 3, 0], [0, 0, 0], [1, 0, 0]]


def test_already_seen_finds_exactly_the_pairs_with_events(small_source) -> None:
    events = pl.read_parquet(small_source / "events.parquet")
    data = build_dataset(events)
    rng = np.random.default_rng(0)
    had = events.select("user_id", "item_id").unique().sample(50, seed=1)
    guesses = pl.DataFrame(
        {
            "user_id": rng.choice(data.user_ids.astype(str), 400).tolist() + ["nobody"],
            "item_id": rng.choice(data.item_ids.astype(str), 400).tolist() + ["x"],
        }
    )
    pairs = pl.concat([had, guesses, had.head(5)])  # duplicates come back once
    truth = set(events.select("user_id", "item_id").iter_rows())
    expected = {p for p in pairs.iter_rows() if p in truth}
    found = data.already_seen(pairs)
    assert set(found.iter_rows()) == expected and found.height == len(expected) >= 50
    # Keyed by codes (a run's lists before their ids), the same pairs come back as codes.
    coded = data.already_seen(data.with_codes(pairs).select("user_idx", "item_idx"))
    assert set(data.with_ids(coded).iter_rows()) == expected and coded.height == len(expected)


def test_a_split_cut_from_codes_builds_the_dataset_the_id_strings_would(
    small_source: Path,
) -> None:
    """The evaluation cuts its splits from integer codes (no string per event); the stage
    dataset must be the one the split's own rows, ids and all, would have built."""
    from tasks.data.dataset import coded_events, subset
    from tasks.data.splits import EvaluationParams, holdout_split

    events = pl.read_parquet(small_source / "events.parquet").sample(fraction=1.0, seed=3,
                                                                     shuffle=True)
    full = build_dataset(events)
    ev = EvaluationParams(protocol="user_random")
    by_ids = holdout_split(events.with_columns(pl.col("ts").dt.replace_time_zone("UTC")), ev)
    by_codes = holdout_split(coded_events(full), ev)
    from_ids = build_dataset(by_ids.train, user_ids=full.user_ids, item_ids=full.item_ids)
    from_codes = subset(full, by_codes.train)
    assert (from_ids.interactions != from_codes.interactions).nnz == 0
    assert np.array_equal(from_ids.interactions.data, from_codes.interactions.data)
    assert from_ids.events.equals(from_codes.events)
    truth_codes = by_codes.truth.rename({"user_id": "user_idx", "item_id": "item_idx"})
    assert full.with_codes(by_ids.truth).select("user_idx", "item_idx").sort(
        "user_idx", "item_idx").equals(truth_codes.cast(pl.Int32).sort("user_idx", "item_idx"))


def test_a_snapshot_coded_by_duckdb_builds_the_dataset_the_id_strings_would(
    tmp_path: Path,
) -> None:
    """DuckDB ranks the ids and codes the events (no string per event in Polars): the same id
    spaces, codes, matrices and events as coding the strings in Polars, with ids that differ
    only in case or accents, users and items known only from side tables, and an as-of time."""
    import duckdb

    from tasks.config import RunParameters
    from tasks.data.snapshot import load_snapshot
    from tasks.recommend import dataset_from
    from tasks.sources.ingest import load_source, read_source
    from tasks.warehouse.connection import apply_schema, connect

    names = ["Zoë", "zoe", "Émile", "emile", "b10", "b9", "B", "a", "日本", "z z"]
    rng = np.random.default_rng(1)
    n = 400
    day = datetime(2024, 1, 1, tzinfo=UTC)
    src = tmp_path / "src"
    src.mkdir()
    pl.DataFrame({
        "user_id": rng.choice(names, n), "item_id": [f"item-{i}" for i in rng.integers(0, 30, n)],
        "event_type": rng.choice(["view", "purchase", "it's"], n), "value": rng.uniform(0.5, 3, n),
        "ts": [day.replace(day=1 + int(d)) for d in rng.integers(0, 28, n)],
    }).write_parquet(src / "events.parquet")
    pl.DataFrame({"item_id": [f"item-{i}" for i in range(35)], "category": ["x"] * 35}) \
        .write_parquet(src / "items.parquet")  # items 30-34 only in the catalogue
    pl.DataFrame({"user_id": [*names, "only-a-user"]}).write_parquet(src / "users.parquet")
    pl.DataFrame({"user_id": ["a", "B", "zoe"], "friend_id": ["only-a-friend", "a", "late"],
                  "ts": [day, day, datetime(2024, 2, 1, tzinfo=UTC)]}) \
        .write_parquet(src / "social.parquet")
    db = tmp_path / "rf.duckdb"
    with connect(db) as con:
        apply_schema(con)
        load_source(con, read_source(src), "r1")
    params = RunParameters(source=str(src), db=str(db))
    heights: list[int] = []
    for as_of in (None, datetime(2024, 1, 15, tzinfo=UTC)):
        with duckdb.connect(str(db), read_only=True) as con:
            coded, strings = load_snapshot(con, as_of), load_snapshot(con, as_of, coded=False)
        assert coded.coded and not strings.coded
        assert "user_id" not in coded.events.columns
        assert coded.events["event_type"].dtype == pl.Categorical  # not a string per event
        assert sorted(coded.events["event_type"].unique().cast(pl.String).to_list()) == sorted(
            strings.events["event_type"].unique().to_list())
        assert coded.events.height == strings.events.height
        heights.append(coded.events.height)
        assert coded.fingerprint() == strings.fingerprint()
        by_duckdb, by_polars = dataset_from(coded, params), dataset_from(strings, params)
        assert by_duckdb.user_ids.tolist() == by_polars.user_ids.tolist()
        assert by_duckdb.item_ids.tolist() == by_polars.item_ids.tolist()
        assert ("late" in by_duckdb.user_ids.tolist()) == (as_of is None)
        assert {"only-a-user", "only-a-friend", "Zoë", "zoe"} <= set(by_duckdb.user_ids.tolist())
        assert np.array_equal(by_duckdb.interactions.indptr, by_polars.interactions.indptr)
        assert np.array_equal(by_duckdb.interactions.indices, by_polars.interactions.indices)
        assert np.array_equal(by_duckdb.interactions.data, by_polars.interactions.data)
        assert by_duckdb.events.equals(by_polars.events)
        assert by_duckdb.social is not None and by_polars.social is not None
        assert (by_duckdb.social != by_polars.social).nnz == 0
    assert heights[0] > heights[1] > 0  # the as-of time cut events


def test_coded_events_weighed_a_block_of_users_at_a_time_are_the_one_block_dataset(
    monkeypatch,  # type: ignore[no-untyped-def]
) -> None:
    import tasks.data.dataset as dataset

    rng = np.random.default_rng(0)
    n = 5000
    users = np.array([f"u{i:03d}" for i in range(300)], dtype=object)
    items = np.array([f"i{i:02d}" for i in range(80)], dtype=object)
    events = pl.DataFrame({
        "user_idx": rng.integers(0, 300, n).astype(np.int32),
        "item_idx": rng.integers(0, 80, n).astype(np.int32),
        "event_type": rng.choice(["view", "purchase"], n), "value": rng.uniform(0, 3, n),
        "ts": [datetime(2024, 1, 1 + int(d), tzinfo=UTC) for d in rng.integers(0, 28, n)],
    })
    whole = build_dataset(events, user_ids=users, item_ids=items)
    monkeypatch.setattr(dataset, "BLOCK_EVENTS", 333)
    blocks = dataset._user_blocks(events["user_idx"], 300)
    assert len(blocks) >= 14 and blocks[0][0] == 0 and blocks[-1][1] == 300
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:], strict=False))
    in_blocks = build_dataset(events.sample(fraction=1.0, shuffle=True, seed=1),
                              user_ids=users, item_ids=items)
    assert in_blocks.events.equals(whole.events)
    assert np.array_equal(in_blocks.interactions.indptr, whole.interactions.indptr)
    assert np.array_equal(in_blocks.interactions.data, whole.interactions.data)
