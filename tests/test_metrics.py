"""Metrics are checked against hand-computed values and against a slow loop-based reference."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
from synthetic import skewed_views

from tasks.evaluation.metrics import (
    RANKING_METRICS,
    catalog_coverage,
    intra_list_diversity,
    novelty,
    per_user_metrics,
    pool_accuracy,
    ranking_metrics,
)

LOG2_3 = math.log2(3)


def _recs(rows: Sequence[tuple[object, object, int]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["user_id", "item_id", "rank"], orient="row")


def _truth(rows: Sequence[tuple[object, object]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["user_id", "item_id"], orient="row")


def _row(df: pl.DataFrame, user: object) -> dict[str, object]:
    return df.filter(pl.col("user_id") == user).row(0, named=True)


def test_readme_example_three_relevant_hits_at_1_and_3() -> None:
    # relevant {a, b, c}; list a x b y z; hits at ranks 1 and 3; K = 5.
    # DCG  = 1/log2(2) + 1/log2(4) = 1 + 0.5
    # IDCG = 1 + 1/log2(3) + 1/log2(4)            (min(5, 3) = 3 ideal hits)
    # P = 2/5, R = 2/3, F1 = 2PR/(P+R) = 2*2/(5+3) = 0.5
    # AP = (1/1 + 2/3) / min(5, 3) = 5/9; MRR = 1; hit = 1
    recs = _recs([("u", "a", 1), ("u", "x", 2), ("u", "b", 3), ("u", "y", 4), ("u", "z", 5)])
    truth = _truth([("u", "a"), ("u", "b"), ("u", "c")])
    m = ranking_metrics(recs, truth, k=5)
    assert m["ndcg"] == pytest.approx((1 + 0.5) / (1 + 1 / LOG2_3 + 0.5))
    assert m["precision"] == pytest.approx(0.4)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(0.5)
    assert m["map"] == pytest.approx(5 / 9)
    assert m["mrr"] == pytest.approx(1.0)
    assert m["hit_rate"] == pytest.approx(1.0)
    assert m["n_users"] == 1.0


def test_fewer_and_more_relevant_than_k() -> None:
    # u1: 1 relevant ("a") found at rank 2, K=5 -> ideal has min(5,1)=1 hit:
    #   NDCG = (1/log2 3) / 1; AP = (1/2) / 1; MRR = 1/2; R = 1; P = 1/5
    # u2: 4 relevant, K=2, list (x, b): hit at rank 2 -> ideal has min(2,4)=2 hits:
    #   NDCG = (1/log2 3) / (1 + 1/log2 3); AP = (1/2) / 2; R = 1/4; P = 1/2
    recs = _recs([("u1", "x", 1), ("u1", "a", 2), ("u2", "x", 1), ("u2", "b", 2)])
    truth = _truth([("u1", "a"), ("u2", "b"), ("u2", "c"), ("u2", "d"), ("u2", "e")])
    u1 = _row(per_user_metrics(recs, truth, k=5), "u1")
    assert u1["ndcg"] == pytest.approx(1 / LOG2_3)
    assert u1["map"] == pytest.approx(0.5)
    assert u1["mrr"] == pytest.approx(0.5)
    assert (u1["recall"], u1["precision"]) == pytest.approx((1.0, 0.2))
    u2 = _row(per_user_metrics(recs, truth, k=2), "u2")
    assert u2["ndcg"] == pytest.approx((1 / LOG2_3) / (1 + 1 / LOG2_3))
    assert u2["map"] == pytest.approx(0.25)
    assert (u2["recall"], u2["precision"]) == pytest.approx((0.25, 0.5))
    # F1 = 2PR/(P+R) = 2 * 0.5 * 0.25 / 0.75 = 1/3
    assert u2["f1"] == pytest.approx(1 / 3)


def test_perfect_list_scores_one() -> None:
    recs = _recs([(1, 10, 1), (1, 11, 2)])
    truth = _truth([(1, 10), (1, 11)])
    m = ranking_metrics(recs, truth, k=2)
    for key in RANKING_METRICS:
        assert m[key] == pytest.approx(1.0), key


def test_duplicate_truth_rows_count_once() -> None:
    # truth (u, a) twice + (u, b): |relevant| = 2. List: a. K = 1.
    # R = 1/2 (not 2/3), NDCG = 1 / 1 (ideal min(1, 2) = 1 hit), AP = 1/1
    recs = _recs([("u", "a", 1)])
    truth = _truth([("u", "a"), ("u", "a"), ("u", "b")])
    row = _row(per_user_metrics(recs, truth, k=1), "u")
    assert row["n_relevant"] == 2
    assert row["recall"] == pytest.approx(0.5)
    assert row["ndcg"] == pytest.approx(1.0)
    assert row["map"] == pytest.approx(1.0)


def test_duplicate_recommendation_is_one_hit_at_its_best_rank() -> None:
    # "a" listed at ranks 1 and 3 -> kept once at rank 1; list becomes a(1), b(2); K=3.
    # hits = 1 -> P = 1/3, R = 1, NDCG = 1
    recs = _recs([("u", "a", 1), ("u", "b", 2), ("u", "a", 3)])
    truth = _truth([("u", "a")])
    row = _row(per_user_metrics(recs, truth, k=3), "u")
    assert row["n_hits"] == 1
    assert row["n_recommended"] == 2
    assert row["precision"] == pytest.approx(1 / 3)
    assert row["ndcg"] == pytest.approx(1.0)


def test_tied_ranks_keep_k_items_smaller_item_id_first() -> None:
    # Both "b" and "a" claim rank 1 and both are relevant. K=1: order by (rank, item_id) -> "a"
    # keeps position 1, "b" falls to position 2 and is cut. P = 1 (not 2), NDCG = 1.
    recs = _recs([("u", "b", 1), ("u", "a", 1)])
    truth = _truth([("u", "a"), ("u", "b")])
    row = _row(per_user_metrics(recs, truth, k=1), "u")
    assert row["n_recommended"] == 1
    assert row["precision"] == pytest.approx(1.0)
    assert row["ndcg"] == pytest.approx(1.0)
    # With K=2 the tie is resolved into positions 1 and 2: perfect list.
    assert _row(per_user_metrics(recs, truth, k=2), "u")["ndcg"] == pytest.approx(1.0)


def test_user_without_recommendations_counts_as_zero() -> None:
    # u1 perfect (every metric 1), u2 has truth but no list -> 0; means are 1/2.
    recs = _recs([("u1", "a", 1)])
    truth = _truth([("u1", "a"), ("u2", "a")])
    per_user = per_user_metrics(recs, truth, k=1)
    u2 = _row(per_user, "u2")
    assert u2["n_recommended"] == 0
    assert all(u2[key] == 0.0 for key in RANKING_METRICS)
    m = ranking_metrics(recs, truth, k=1)
    assert m["n_users"] == 2.0
    for key in RANKING_METRICS:
        assert m[key] == pytest.approx(0.5), key


def test_short_list_precision_divides_by_k() -> None:
    # 2 items recommended, 1 hit (rank 1), K = 10 -> P = 1/10 (not 1/2); R = 1/1.
    recs = _recs([("u", "a", 1), ("u", "b", 2)])
    truth = _truth([("u", "a")])
    row = _row(per_user_metrics(recs, truth, k=10), "u")
    assert row["precision"] == pytest.approx(0.1)
    assert row["recall"] == pytest.approx(1.0)
    # F1 = 2 * 0.1 * 1 / 1.1 = 2/11 = 2 * hits / (K + |relevant|)
    assert row["f1"] == pytest.approx(2 / 11)


def test_rank_above_k_ignored() -> None:
    # The only relevant item sits at rank 6; with K = 5 it is not a hit, with K = 6 it is.
    recs = _recs([("u", f"x{r}", r) for r in range(1, 6)] + [("u", "a", 6)])
    truth = _truth([("u", "a")])
    assert ranking_metrics(recs, truth, k=5)["hit_rate"] == 0.0
    assert ranking_metrics(recs, truth, k=5)["ndcg"] == 0.0
    # K=6: NDCG = (1/log2 7) / 1, MRR = 1/6
    m6 = ranking_metrics(recs, truth, k=6)
    assert m6["ndcg"] == pytest.approx(1 / math.log2(7))
    assert m6["mrr"] == pytest.approx(1 / 6)
    assert catalog_coverage(recs, catalog_size=10, k=5) == pytest.approx(0.5)


def test_users_restriction() -> None:
    # Only u1 is evaluated; "ghost" has no truth items (dropped), u2 is excluded.
    recs = _recs([("u1", "a", 1), ("u2", "z", 1)])
    truth = _truth([("u1", "a"), ("u2", "a")])
    m = ranking_metrics(recs, truth, k=1, users=pl.Series(["u1", "ghost", "u1"]))
    assert m["n_users"] == 1.0
    assert m["ndcg"] == pytest.approx(1.0)
    assert ranking_metrics(recs, truth, k=1)["ndcg"] == pytest.approx(0.5)
    assert per_user_metrics(recs, truth, k=1, users=pl.Series(["u2"]))["user_id"].to_list() == [
        "u2"
    ]


def test_no_evaluated_users_is_nan() -> None:
    recs = _recs([("u1", "a", 1)])
    truth = _truth([("u1", "a")])
    m = ranking_metrics(recs, truth, k=1, users=pl.Series(["nobody"]))
    assert m["n_users"] == 0.0
    assert all(math.isnan(m[key]) for key in RANKING_METRICS)


def test_id_dtypes_are_aligned_or_rejected() -> None:
    recs = pl.DataFrame(
        {"user_id": [1], "item_id": [7], "rank": [1]},
        schema={"user_id": pl.Int32, "item_id": pl.UInt16, "rank": pl.Int64},
    )
    truth = pl.DataFrame({"user_id": [1], "item_id": [7]})  # Int64
    assert ranking_metrics(recs, truth, k=1)["ndcg"] == pytest.approx(1.0)
    with pytest.raises(TypeError):
        ranking_metrics(recs, truth.with_columns(pl.col("item_id").cast(pl.String)), k=1)
    with pytest.raises(ValueError):
        ranking_metrics(recs, truth, k=0)


def test_ranking_metrics_is_mean_of_per_user() -> None:
    recs = _recs([(1, 1, 1), (1, 2, 2), (2, 3, 1), (3, 1, 1)])
    truth = _truth([(1, 2), (2, 3), (2, 4), (3, 9), (4, 1)])
    per_user = per_user_metrics(recs, truth, k=2)
    m = ranking_metrics(recs, truth, k=2)
    for key in RANKING_METRICS:
        assert m[key] == pytest.approx(per_user[key].mean()), key


def test_pool_accuracy() -> None:
    # Pool u1: a b c d; top-2 = a b; truth = a c -> a TP, b FP, c FN, d TN -> 2/4 correct.
    # Pool u2: a b; top-2 = a; truth = a, z (z outside pool: ignored) -> a TP, b TN -> 2/2.
    # Micro-average over all 6 pairs: (2 + 2) / 6. "x" is recommended but outside the pool.
    recs = _recs([("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3), ("u2", "a", 1), ("u2", "x", 2)])
    truth = _truth([("u1", "a"), ("u1", "c"), ("u2", "a"), ("u2", "z")])
    pool = _truth(
        [("u1", "a"), ("u1", "b"), ("u1", "c"), ("u1", "d"), ("u1", "d"), ("u2", "a"), ("u2", "b")]
    )
    assert pool_accuracy(recs, truth, pool, k=2) == pytest.approx(4 / 6)
    assert pool_accuracy(recs, truth, pool, k=2, users=pl.Series(["u2"])) == pytest.approx(1.0)
    # K = 3 adds c to u1's top-k: a TP, b FP, c TP, d TN -> (3 + 2) / 6.
    assert pool_accuracy(recs, truth, pool, k=3) == pytest.approx(5 / 6)
    assert math.isnan(pool_accuracy(recs, truth, pool.clear(), k=2))


@pytest.mark.parametrize("k", [1, 3, 10])
def test_pool_accuracy_on_integer_codes_counts_what_the_join_counts(k: int) -> None:
    """Integer ids are found in the pool by binary search over pair codes, other ids by a
    join: on the same pairs both give the same bits (items past the pool's widest, users
    outside it, a pair listed twice, and ranks past k included)."""
    rng = np.random.default_rng(k)
    pool = pl.DataFrame({"user_id": rng.integers(0, 60, 3000),
                         "item_id": rng.integers(0, 90, 3000)})
    truth = pl.concat([pool.sample(300, seed=k), pl.DataFrame(
        {"user_id": [5, 70], "item_id": [95, 3]})]).cast(pl.Int64)
    recs = pl.DataFrame({"user_id": rng.integers(0, 70, 900), "item_id": rng.integers(0, 99, 900),
                         "rank": rng.integers(1, 15, 900)})
    recs = pl.concat([recs, recs.head(20)])
    as_text = [f.with_columns(pl.col("user_id", "item_id").cast(pl.String))
               for f in (recs, truth, pool)]
    codes = pool_accuracy(recs, truth, pool, k)
    assert codes == pool_accuracy(*as_text, k)
    assert 0.0 < codes < 1.0
    shifted = [f.with_columns(pl.col("item_id") - 50) for f in (recs, truth, pool)]  # < 0: joined
    assert pool_accuracy(*shifted, k) == codes


def test_catalog_coverage() -> None:
    # Top-2 lists: u1 {a, b}, u2 {b, c} -> 3 distinct items of a catalog of 12 = 0.25.
    recs = _recs([("u1", "a", 1), ("u1", "b", 2), ("u1", "d", 3), ("u2", "b", 1), ("u2", "c", 2)])
    assert catalog_coverage(recs, catalog_size=12, k=2) == pytest.approx(0.25)
    assert catalog_coverage(recs, catalog_size=12, k=3) == pytest.approx(4 / 12)


def test_novelty() -> None:
    # 8 train users. popularity a:4, b:2, c:1; d unknown -> treated as 1 user.
    # u1 list (a, b): -log2(4/8) = 1, -log2(2/8) = 2 -> mean 1.5
    # u2 list (c, d): -log2(1/8) = 3, 3                -> mean 3
    # mean over users = 2.25. u1's rank-3 item "c" is cut by K = 2.
    recs = _recs([("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3), ("u2", "c", 1), ("u2", "d", 2)])
    pop = pl.DataFrame({"item_id": ["a", "b", "c"], "n_users": [4, 2, 1]})
    assert novelty(recs, pop, n_users=8, k=2) == pytest.approx(2.25)
    assert math.isnan(novelty(recs.clear(), pop, n_users=8, k=2))


@pytest.mark.parametrize("as_sparse", [False, True])
def test_intra_list_diversity(as_sparse: bool) -> None:
    # item 0 = (1, 0), 1 = (0, 1), 2 = (1, 1), 3 = (2, 0) (same direction as 0), 4 = (0, 0).
    # u1 (0, 1, 2): cos = 0, 1/√2, 1/√2 -> mean(1 - cos) = 1 - (√2)/3
    # u2 (0, 3):    cos = 1 -> 0
    # u3 (0, 4):    zero vector -> cos 0 -> 1
    # u4 (1):       one item, no pair -> skipped
    # K = 3: u2's rank-4 item 1 is cut. ILD = mean over u1..u3 = ((1 - √2/3) + 0 + 1) / 3.
    feats = np.array([[1, 0], [0, 1], [1, 1], [2, 0], [0, 0]], dtype=float)
    recs = pl.DataFrame(
        [
            ("u1", 0, 1),
            ("u1", 1, 2),
            ("u1", 2, 3),
            ("u2", 0, 1),
            ("u2", 3, 2),
            ("u2", 1, 4),
            ("u3", 4, 1),
            ("u3", 0, 2),
            ("u4", 1, 1),
        ],
        schema=["user_id", "item_idx", "rank"],
        orient="row",
    )
    features = sp.csr_matrix(feats) if as_sparse else feats
    expected = ((1 - math.sqrt(2) / 3) + 0.0 + 1.0) / 3
    assert intra_list_diversity(recs, features, k=3) == pytest.approx(expected)
    assert math.isnan(intra_list_diversity(recs.filter(pl.col("user_id") == "u4"), features, k=3))
    with pytest.raises(ValueError):
        intra_list_diversity(recs.with_columns(pl.lit(9).alias("item_idx")), features, k=3)


# --- cross-check against a deliberately naive reference ---------------------------------------


def _reference_per_user(
    recs: pl.DataFrame, truth: pl.DataFrame, k: int
) -> dict[object, dict[str, float]]:
    """Plain-Python metrics for well-formed lists (distinct items, distinct ranks)."""
    rel: dict[object, set[object]] = {}
    for u, i in truth.iter_rows():
        rel.setdefault(u, set()).add(i)
    lists: dict[object, list[tuple[int, object]]] = {}
    for u, i, r in recs.iter_rows():
        if r <= k:
            lists.setdefault(u, []).append((r, i))
    out: dict[object, dict[str, float]] = {}
    for u, relevant in rel.items():
        ranked = [i for _, i in sorted(lists.get(u, []))]
        hits = dcg = ap = 0.0
        first = 0
        for pos, item in enumerate(ranked, start=1):
            if item in relevant:
                hits += 1
                dcg += 1 / math.log2(pos + 1)
                ap += hits / pos
                first = first or pos
        n_ideal = min(k, len(relevant))
        idcg = sum(1 / math.log2(p + 1) for p in range(1, n_ideal + 1))
        p, r = hits / k, hits / len(relevant)
        out[u] = {
            "precision": p,
            "recall": r,
            "f1": 2 * p * r / (p + r) if hits else 0.0,
            "ndcg": dcg / idcg,
            "map": ap / n_ideal,
            "mrr": 1 / first if first else 0.0,
            "hit_rate": 1.0 if hits else 0.0,
        }
    return out


def test_matches_slow_reference_on_random_data() -> None:
    rng = np.random.default_rng(0)
    n_users, n_items, k = 300, 40, 7
    rec_rows: list[tuple[int, int, int]] = []
    truth_rows: list[tuple[int, int]] = []
    for u in range(n_users):
        length = int(rng.integers(0, 12))  # some empty, some shorter and some longer than k
        for r, i in enumerate(rng.choice(n_items, size=length, replace=False), start=1):
            rec_rows.append((u, int(i), r))
        for i in rng.integers(0, n_items, size=int(rng.integers(1, 10))):  # may repeat
            truth_rows.append((u, int(i)))
    for u in range(n_users, n_users + 20):  # recommended users without truth: not evaluated
        rec_rows.append((u, 0, 1))
    recs, truth = _recs(rec_rows), _truth(truth_rows)

    ref = _reference_per_user(recs, truth, k)
    per_user = per_user_metrics(recs, truth, k)
    assert per_user.height == len(ref) == n_users
    for row in per_user.iter_rows(named=True):
        expected = ref[row["user_id"]]
        for key in RANKING_METRICS:
            assert row[key] == pytest.approx(expected[key]), (row["user_id"], key)
    m = ranking_metrics(recs, truth, k)
    for key in RANKING_METRICS:
        assert m[key] == pytest.approx(np.mean([v[key] for v in ref.values()])), key

    # Pool accuracy: pool = each user's first 9 recs + 3 random items.
    pool_rows = [(u, i) for u, i, r in rec_rows if r <= 9]
    pool_rows += [(u, int(i)) for u in range(n_users) for i in rng.integers(0, n_items, 3)]
    rel = set(truth_rows)
    top = {(u, i) for u, i, r in rec_rows if r <= k}
    pairs = set(pool_rows)
    expected_acc = sum(((p in top) == (p in rel)) for p in pairs) / len(pairs)
    assert pool_accuracy(recs, truth, _truth(pool_rows), k) == pytest.approx(expected_acc)

    # Coverage and novelty.
    assert catalog_coverage(recs, n_items, k) == pytest.approx(len({i for _, i in top}) / n_items)
    counts = rng.integers(1, 50, size=n_items)
    pop = pl.DataFrame({"item_id": np.arange(n_items), "n_users": counts})
    by_user: dict[int, list[float]] = {}
    for u, i in top:
        by_user.setdefault(u, []).append(-math.log2(counts[i] / 50))
    expected_nov = float(np.mean([np.mean(v) for v in by_user.values()]))
    assert novelty(recs, pop, n_users=50, k=k) == pytest.approx(expected_nov)

    # ILD with random sparse non-negative features: brute-force pairwise cosine distances.
    feats = sp.random(n_items, 15, density=0.3, random_state=1, format="csr")
    dense = feats.toarray()
    unit = dense / np.maximum(np.linalg.norm(dense, axis=1, keepdims=True), 1e-300)
    lists: dict[int, list[int]] = {}
    for u, i in top:
        lists.setdefault(u, []).append(i)
    ilds = []
    for items in lists.values():
        if len(items) >= 2:
            dists = [1 - float(unit[a] @ unit[b]) for a in items for b in items if a != b]
            ilds.append(np.mean(dists))
    recs_idx = recs.rename({"item_id": "item_idx"})
    assert intra_list_diversity(recs_idx, feats, k) == pytest.approx(float(np.mean(ilds)))
    assert intra_list_diversity(recs_idx, dense, k) == pytest.approx(float(np.mean(ilds)))


def test_projected_diversity_matches_the_exact_one_on_many_users() -> None:
    from tasks.data.dataset import build_dataset
    from tasks.data.segments import EXACT_AUDIENCE_USERS
    from tasks.evaluation.lists import diversity_item_vectors

    rng = np.random.default_rng(11)
    # Skewed: some item pairs overlap a lot.
    data = build_dataset(skewed_views(rng, EXACT_AUDIENCE_USERS + 2000, 300, 60_000, zipf=1.4))
    assert data.n_users > EXACT_AUDIENCE_USERS
    projected = diversity_item_vectors(data)
    assert isinstance(projected, np.ndarray) and projected.shape[1] < data.n_users
    lists = pl.DataFrame(
        {
            "user_id": np.repeat(np.arange(800), 10),
            "item_idx": rng.integers(0, 50, 8000),  # the popular head: overlapping audiences
            "rank": np.tile(np.arange(1, 11), 800),
        }
    )
    exact = intra_list_diversity(lists, sp.csr_matrix(data.seen().T), 10)
    assert exact < 0.99  # audiences overlap: a projection that ignored them would show it
    assert abs(intra_list_diversity(lists, projected, 10) - exact) < 0.005


def test_evaluated_lists_get_the_diversity_of_vectors_for_every_item() -> None:
    """`evaluate_lists` projects only the listed items' audiences: each row is the bits it has
    among all rows, so the diversity is exactly the one over the whole catalogue's vectors."""
    from tasks.data.dataset import build_dataset
    from tasks.data.segments import EXACT_AUDIENCE_USERS
    from tasks.evaluation.lists import diversity_item_vectors, evaluate_lists, user_segments

    rng = np.random.default_rng(12)
    data = build_dataset(skewed_views(rng, EXACT_AUDIENCE_USERS + 900, 400, 50_000, zipf=1.4))
    users = np.arange(300, dtype=np.int32)
    lists = {
        name: pl.DataFrame(
            {
                "user_idx": np.repeat(users, 10),
                "item_idx": (rng.permuted(np.tile(np.arange(lo, lo + 60), (300, 1)), axis=1)
                             [:, :10].ravel()).astype(np.int32),
                "rank": np.tile(np.arange(1, 11, dtype=np.int32), 300),
            }
        )
        for name, lo in (("a", 0), ("b", 150))  # two lists over different items
    }
    truth = pl.DataFrame({"user_idx": users, "item_idx": users % 7}, schema_overrides={
        "item_idx": pl.Int32})
    metrics = evaluate_lists(lists, truth, data, 10, user_segments(data, 2))
    every_item = diversity_item_vectors(data)
    for name, frame in lists.items():
        got = metrics.filter((pl.col("model") == name) & (pl.col("metric") == "diversity"))
        expected = intra_list_diversity(
            frame.select(pl.col("user_idx").alias("user_id"), "item_idx", "rank"), every_item, 10
        )
        assert got["value"].item() == expected
