"""The synthetic source: contract shape, exact sizes, cold start, and per-modality signal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from tasks.sources.demo import (
    DEFAULT_END,
    EMBED_DIM,
    EVENT_TYPES,
    WINDOW_DAYS,
    generate_demo_source,
)

USERS, ITEMS, EVENTS = 1000, 1500, 30_001
TABLES = ("events", "items", "users", "social")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pl.DataFrame]:
    out = tmp_path_factory.mktemp("demo")
    counts = generate_demo_source(out, users=USERS, items=ITEMS, events=EVENTS, seed=7)
    frames = {name: pl.read_parquet(out / f"{name}.parquet") for name in TABLES}
    assert counts == {name: frame.height for name, frame in frames.items()}
    return frames


def _matrix(source: dict[str, pl.DataFrame]) -> tuple[sp.csr_matrix, dict[str, int], np.ndarray]:
    """Binary user×item matrix plus id maps (users in users.parquet order)."""
    users = source["users"]["user_id"].to_list()
    uidx = {u: i for i, u in enumerate(users)}
    items = source["items"]["item_id"]
    pairs = source["events"].select("user_id", "item_id").unique()
    rows = pairs["user_id"].replace_strict(uidx).to_numpy()
    cols = pairs["item_id"].replace_strict(dict(zip(items, range(len(items)), strict=True)))
    m = sp.csr_matrix(
        (np.ones(len(rows)), (rows, cols.to_numpy())), shape=(len(users), len(items))
    )
    return m, uidx, items.to_numpy()


def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path) -> None:
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate_demo_source(tmp_path / name, users=200, items=150, events=3_000, seed=seed)
    for name in TABLES:
        a = pl.read_parquet(tmp_path / "a" / f"{name}.parquet")
        assert a.equals(pl.read_parquet(tmp_path / "b" / f"{name}.parquet")), name
    events_c = pl.read_parquet(tmp_path / "c" / "events.parquet")
    assert not pl.read_parquet(tmp_path / "a" / "events.parquet").equals(events_c)


def test_schemas_follow_the_contract(source: dict[str, pl.DataFrame]) -> None:
    utc = pl.Datetime("us", "UTC")
    expected: dict[str, list[tuple[str, pl.DataType]]] = {
        "events": [("event_id", pl.String()), ("user_id", pl.String()), ("item_id", pl.String()),
                   ("event_type", pl.String()), ("value", pl.Float64()), ("ts", utc)],
        "items": [("item_id", pl.String()), ("title", pl.String()), ("text", pl.String()),
                  ("tags", pl.List(pl.String)), ("category", pl.String()),
                  ("embedding", pl.List(pl.Float32))],
        "users": [("user_id", pl.String()), ("country", pl.String()), ("signup_ts", utc)],
        "social": [("user_id", pl.String()), ("friend_id", pl.String()), ("weight", pl.Float64())],
    }
    for name, columns in expected.items():
        assert list(source[name].schema.items()) == columns, name
    for frame in source.values():
        assert frame.null_count().sum_horizontal().item() == 0
    items = source["items"]
    assert (items["embedding"].list.len() == EMBED_DIM).all()
    assert (items["tags"].list.len() >= 1).all()
    assert (items["tags"].list.n_unique() == items["tags"].list.len()).all()


def test_sizes_ids_and_window(source: dict[str, pl.DataFrame]) -> None:
    events, items, users = source["events"], source["items"], source["users"]
    assert events.height == EVENTS
    assert items.height == ITEMS and users.height == USERS
    assert events["event_id"].n_unique() == events.height
    assert items["item_id"].n_unique() == items.height
    assert users["user_id"].n_unique() == users.height
    assert events["user_id"].is_in(users["user_id"].implode()).all()
    assert events["item_id"].is_in(items["item_id"].implode()).all()
    start = DEFAULT_END - timedelta(days=WINDOW_DAYS)
    assert events["ts"].is_between(start, DEFAULT_END, closed="left").all()
    assert events["ts"].is_sorted()
    assert (users["signup_ts"] < start).all()


def test_exact_event_count_and_other_window(tmp_path: Path) -> None:
    end = datetime(2024, 1, 1, tzinfo=UTC)
    counts = generate_demo_source(tmp_path / "x", users=50, items=40, events=1_234, seed=1, end=end)
    assert counts["events"] == 1_234
    ts = pl.read_parquet(tmp_path / "x" / "events.parquet")["ts"]
    assert ts.is_between(end - timedelta(days=WINDOW_DAYS), end, closed="left").all()
    empty = generate_demo_source(tmp_path / "y", users=50, items=40, events=0)
    assert empty["events"] == 0
    assert pl.read_parquet(tmp_path / "y" / "events.parquet").height == 0


def test_bad_arguments_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 2"):
        generate_demo_source(tmp_path, users=1)
    with pytest.raises(ValueError, match="events"):
        generate_demo_source(tmp_path, events=-1)
    with pytest.raises(ValueError, match="timezone"):
        generate_demo_source(tmp_path, end=datetime(2024, 1, 1))


def test_cold_users_have_friends_and_cold_items_exist(source: dict[str, pl.DataFrame]) -> None:
    active = source["events"]["user_id"].unique().implode()
    cold_users = source["users"].filter(~pl.col("user_id").is_in(active))["user_id"]
    assert cold_users.len() >= 0.02 * USERS
    befriended = source["social"]["user_id"].unique().implode()
    assert cold_users.is_in(befriended).all()
    seen_items = source["events"]["item_id"].unique().implode()
    cold_items = source["items"].filter(~pl.col("item_id").is_in(seen_items))
    assert cold_items.height >= 0.02 * ITEMS


def test_social_is_symmetric_without_self_ties(source: dict[str, pl.DataFrame]) -> None:
    social = source["social"]
    assert (social["user_id"] != social["friend_id"]).all()
    assert social.select("user_id", "friend_id").is_unique().all()
    mirrored = social.select(
        pl.col("friend_id").alias("user_id"), pl.col("user_id").alias("friend_id"), "weight"
    )
    assert mirrored.join(social, on=["user_id", "friend_id", "weight"], how="anti").height == 0
    assert social["weight"].is_between(0.0, 1.0, closed="right").all()
    assert 4 <= social.height / USERS <= 20


def test_funnel_and_popularity_skew(source: dict[str, pl.DataFrame]) -> None:
    counts = dict(source["events"]["event_type"].value_counts().iter_rows())
    assert set(counts) == set(EVENT_TYPES)
    assert counts["view"] > counts["click"] > counts["like"] > counts["purchase"] > 0
    assert counts["view"] / source["events"].height > 0.5
    per_item = source["events"]["item_id"].value_counts(sort=True)["count"].to_numpy()
    top_decile = per_item[: ITEMS // 10].sum() / per_item.sum()
    assert top_decile > 0.35  # uniform would be 0.10


def test_drift_new_items_and_shifting_popularity(source: dict[str, pl.DataFrame]) -> None:
    events = source["events"]
    mid = DEFAULT_END - timedelta(days=WINDOW_DAYS // 2)
    first_seen = events.group_by("item_id").agg(pl.col("ts").min())
    late_debut = first_seen.filter(pl.col("ts") >= DEFAULT_END - timedelta(days=WINDOW_DAYS * 0.4))
    assert late_debut.height >= 0.02 * ITEMS
    early = events.filter(pl.col("ts") < mid)["item_id"].value_counts(name="early")
    late = events.filter(pl.col("ts") >= mid)["item_id"].value_counts(name="late")
    both = early.join(late, on="item_id", how="full", coalesce=True).fill_null(0)
    rank_corr = np.corrcoef(both["early"].rank(), both["late"].rank())[0, 1]
    assert 0.3 < rank_corr < 0.95  # related, but popularity moves


def _jaccard(m: sp.csr_matrix, a: np.ndarray, b: np.ndarray) -> float:
    inter = np.asarray(m[a].multiply(m[b]).sum(axis=1)).ravel()
    sizes = np.asarray(m.sum(axis=1)).ravel()
    union = sizes[a] + sizes[b] - inter
    ok = union > 0
    return float(np.mean(inter[ok] / union[ok]))


def test_friends_share_more_items_than_random_pairs(source: dict[str, pl.DataFrame]) -> None:
    m, uidx, _ = _matrix(source)
    social = source["social"]
    a = social["user_id"].replace_strict(uidx).to_numpy()
    b = social["friend_id"].replace_strict(uidx).to_numpy()
    rng = np.random.default_rng(0)
    friends = _jaccard(m, a, b)
    strangers = _jaccard(m, a, rng.permutation(b))
    assert friends > 1.6 * strangers


def test_content_predicts_what_users_do_next(source: dict[str, pl.DataFrame]) -> None:
    """Early items' tags, embeddings and category rank a user's *new* later items above chance.

    Measured as AUC: how often a new later item outscores a random catalog item for the same user.
    """
    events, items = source["events"], source["items"]
    iidx = dict(zip(items["item_id"], range(items.height), strict=True))
    tags = items.select("item_id", "tags").explode("tags")
    vocab = {t: j for j, t in enumerate(tags["tags"].unique().sort())}
    t = sp.csr_matrix(
        (np.ones(tags.height),
         (tags["item_id"].replace_strict(iidx).to_numpy(),
          tags["tags"].replace_strict(vocab).to_numpy())),
        shape=(items.height, len(vocab)),
    )
    idf = np.log(items.height / np.asarray(t.sum(axis=0)).ravel())
    t = sp.csr_matrix(t.multiply(idf))
    t = sp.csr_matrix(t.multiply(1.0 / np.sqrt(np.asarray(t.multiply(t).sum(axis=1)))))
    emb = np.vstack(items["embedding"].to_list()).astype(np.float64)
    cats, cat = np.unique(items["category"].to_numpy(), return_inverse=True)
    one_hot = sp.csr_matrix(
        (np.ones(items.height), (np.arange(items.height), cat)), shape=(items.height, len(cats))
    )

    mid = DEFAULT_END - timedelta(days=WINDOW_DAYS // 2)
    early = events.filter(pl.col("ts") < mid).select("user_id", "item_id").unique()
    late = (
        events.filter(pl.col("ts") >= mid).select("user_id", "item_id").unique()
        .join(early, on=["user_id", "item_id"], how="anti")
        .filter(pl.col("user_id").is_in(early["user_id"].implode()))
    )
    users = sorted(set(late["user_id"]))
    uidx = {u: i for i, u in enumerate(users)}
    early = early.filter(pl.col("user_id").is_in(users))
    e = sp.csr_matrix(
        (np.ones(early.height),
         (early["user_id"].replace_strict(uidx).to_numpy(),
          early["item_id"].replace_strict(iidx).to_numpy())),
        shape=(len(users), items.height),
    )
    rows = late["user_id"].replace_strict(uidx).to_numpy()
    later = late["item_id"].replace_strict(iidx).to_numpy()
    chance = np.random.default_rng(0).integers(0, items.height, len(rows))

    profile_tags = sp.csr_matrix(e @ t)
    profile_emb = e @ emb
    profile_cat = (e @ one_hot).toarray()

    def auc(score_later: np.ndarray, score_chance: np.ndarray) -> float:
        ties = np.mean(score_later == score_chance)
        return float(np.mean(score_later > score_chance) + 0.5 * ties)

    def tag_scores(cols: np.ndarray) -> np.ndarray:
        return np.asarray(profile_tags[rows].multiply(t[cols]).sum(axis=1)).ravel()

    def emb_scores(cols: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ij->i", profile_emb[rows], emb[cols])

    def cat_scores(cols: np.ndarray) -> np.ndarray:
        return profile_cat[rows, cat[cols]]

    # Chance is 0.5; knowing the true topic gets ~0.65 here (tastes drift, trends and word of
    # mouth pull users off-topic), so content is real but partial signal.
    assert auc(tag_scores(later), tag_scores(chance)) > 0.56
    assert auc(emb_scores(later), emb_scores(chance)) > 0.56
    assert auc(cat_scores(later), cat_scores(chance)) > 0.55


def test_big_sources_are_drawn_in_blocks_and_written_in_slices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 50M events one draw of all events held 9.5 GB: events come in blocks of BLOCK_EVENTS
    (the first continuing the seed, so a small source is unchanged) and are written a slice at a
    time into the one events file; the slice size never changes the data."""
    import pyarrow.parquet as pq

    import tasks.sources.demo as demo

    monkeypatch.setattr(demo, "BLOCK_EVENTS", 1000)
    small = tmp_path / "small"
    generate_demo_source(small, users=200, items=150, events=1000, seed=9)
    frames = {}
    for rows in (400, 1_000_000):
        out = tmp_path / f"rows{rows}"
        counts = generate_demo_source(
            out, users=200, items=150, events=2500, seed=9, write_rows=rows
        )
        assert counts["events"] == 2500
        frames[rows] = pl.read_parquet(out / "events.parquet")
        groups = pq.ParquetFile(out / "events.parquet").metadata.num_row_groups
        assert groups == (8 if rows == 400 else 3)  # blocks 1000, 1000, 500 in slices of 400
    events = frames[400]
    assert events.equals(frames[1_000_000])
    assert events["event_id"].to_list() == [f"e{i:04d}" for i in range(2500)]
    for lo in (0, 1000, 2000):
        assert events["ts"].slice(lo, 1000).is_sorted()
    # The first block is the 1000-event source; later blocks are fresh draws, not copies.
    columns = ["user_id", "item_id", "event_type", "value", "ts"]
    first = pl.read_parquet(small / "events.parquet").select(columns)
    assert events.select(columns).head(1000).equals(first)
    assert not events.select(columns).slice(1000, 1000).equals(first)
    for name in ("items", "users", "social"):
        assert pl.read_parquet(small / f"{name}.parquet").equals(
            pl.read_parquet(tmp_path / "rows400" / f"{name}.parquet")
        )
