"""Fusion strategies on hand-computed examples."""

from __future__ import annotations

import math

import polars as pl
import pytest

from tasks.fusion.table import fuse_rank, fuse_weighted, normalise, top_k


def cands(rows: list[tuple[str, int, int, float, int]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={
            "modality": pl.String,
            "user_idx": pl.Int32,
            "item_idx": pl.Int32,
            "score": pl.Float32,
            "rank": pl.Int32,
        },
        orient="row",
    )


# user 0: behavior ranks items 1 > 2 > 3 (scores 9, 5, 1); social ranks 3 > 4 (scores 2, 1)
EXAMPLE = cands(
    [
        ("behavior", 0, 1, 9.0, 1),
        ("behavior", 0, 2, 5.0, 2),
        ("behavior", 0, 3, 1.0, 3),
        ("social", 0, 3, 2.0, 1),
        ("social", 0, 4, 1.0, 2),
    ]
)


def test_minmax_normalisation_per_modality_and_user():
    norm = normalise(EXAMPLE, "minmax").sort("modality", "item_idx")["norm"].to_list()
    assert norm == pytest.approx([1.0, 0.5, 0.0, 1.0, 0.0])


def test_weighted_fusion_hand_computed():
    # behavior norms: i1 1, i2 .5, i3 0; social norms: i3 1, i4 0.  w = (1, 0.8)
    # fused: i1 1.0, i2 0.5, i3 0.8, i4 0.0
    fused = fuse_weighted(EXAMPLE, {"warm": {"behavior": 1.0, "social": 0.8}}, k=3)
    assert fused["item_idx"].to_list() == [1, 3, 2]
    assert fused["score"].to_list() == pytest.approx([1.0, 0.8, 0.5])
    assert fused["rank"].to_list() == [1, 2, 3]
    row = fused.filter(pl.col("item_idx") == 3)
    assert row["contrib_social"][0] == pytest.approx(0.8)
    assert row["contrib_behavior"][0] == pytest.approx(0.0)


def test_rrf_hand_computed():
    fused = fuse_rank(EXAMPLE, "rrf", k=4)
    expected = {1: 1 / 61, 2: 1 / 62, 3: 1 / 63 + 1 / 61, 4: 1 / 62}
    got = dict(zip(fused["item_idx"].to_list(), fused["score"].to_list(), strict=True))
    assert got == pytest.approx(expected)
    assert fused["item_idx"].to_list()[0] == 3  # the item both lists agree on wins
    # ties (items 2 and 4 both 1/62) break by item index, deterministically
    assert fused["item_idx"].to_list()[2:] == [2, 4]


def test_combmnz_rewards_agreement_and_borda_uses_positions():
    mnz = fuse_rank(EXAMPLE, "combmnz", k=4)
    got = dict(zip(mnz["item_idx"].to_list(), mnz["score"].to_list(), strict=True))
    assert got == pytest.approx({1: 1.0, 2: 0.5, 3: 2 * (0.0 + 1.0), 4: 0.0})
    borda = fuse_rank(EXAMPLE, "borda", k=4)
    got = dict(zip(borda["item_idx"].to_list(), borda["score"].to_list(), strict=True))
    assert got == pytest.approx({1: 1.0, 2: 2 / 3, 3: 1 / 3 + 1.0, 4: 0.5})


def test_segment_weights_switch_the_blend_for_cold_users():
    two_users = pl.concat([EXAMPLE, EXAMPLE.with_columns(pl.lit(1, pl.Int32).alias("user_idx"))])
    segments = pl.DataFrame(
        {"user_idx": [0, 1], "segment": ["warm", "cold"]},
        schema={"user_idx": pl.Int32, "segment": pl.String},
    )
    weights = {"warm": {"behavior": 1.0, "social": 0.0}, "cold": {"behavior": 0.0, "social": 1.0}}
    fused = fuse_weighted(two_users, weights, k=1, segments=segments)
    assert fused.sort("user_idx")["item_idx"].to_list() == [1, 3]


def test_top_k_keeps_k_and_ranks_contiguously():
    scored = pl.DataFrame(
        {"user_idx": [0] * 5, "item_idx": [5, 4, 3, 2, 1], "score": [0.1, 0.5, 0.5, math.inf, -1.0]}
    )
    out = top_k(scored, 3)
    assert out["item_idx"].to_list() == [2, 3, 4] and out["rank"].to_list() == [1, 2, 3]


@pytest.mark.parametrize("strategy", ["weighted", "rrf"])
def test_weight_tuning_scores_a_trial_as_the_fused_list_scores(strategy: str) -> None:
    """The compiled NDCG of a weight trial is the NDCG of the list the fuser would publish."""
    import numpy as np

    from tasks.fusion.selection import per_user_ndcg
    from tasks.fusion.table import candidate_table, fuse_table
    from tasks.fusion.weights import _FastNdcg, _wide_terms, tune_weights

    rng = np.random.default_rng(11)
    rows = []
    for m in ("a", "b", "c"):
        for u in range(60):
            items = rng.choice(80, 25, replace=False)
            scores = np.sort(rng.random(25))[::-1]
            rows += [(m, u, int(i), float(s), r + 1) for r, (i, s) in enumerate(
                zip(items, scores, strict=True))]
    candidates = cands(rows)
    truth = candidates.filter(pl.col("modality") == "b").sample(fraction=0.08, seed=2) \
        .select(pl.col("user_idx").cast(pl.Int32), pl.col("item_idx").cast(pl.Int32)).unique()
    table = candidate_table(candidates)
    fast = _FastNdcg(_wide_terms(table, strategy), truth, list(table.modalities), 10)
    users = np.unique(truth["user_idx"].to_numpy())
    for weights in ([1.0, 1.0, 1.0], [0.0, 2.0, 0.35], [3.0, 0.05, 0.0]):
        fused = fuse_table(table, strategy, 10, {"warm": dict(zip("abc", weights, strict=True))})
        slow = per_user_ndcg(fused, truth, users, 10).mean()
        assert fast(np.array(weights)) == pytest.approx(slow, rel=1e-5)
    tuned, best = tune_weights(table, truth, 10, strategy=strategy)
    assert best >= fast(np.ones(3)) and best > 0  # never worse than where the ascent starts
    assert set(tuned) == {"a", "b", "c"}


def test_a_weight_trial_scores_the_same_bits_in_chunks_of_users(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Users' gains are computed in chunks on the pool: any chunking gives the same NDCG bits."""
    import numpy as np

    import tasks.fusion.weights as weights_module
    from tasks.fusion.table import candidate_table
    from tasks.fusion.weights import _FastNdcg, _wide_terms

    rng = np.random.default_rng(5)
    rows = [(m, u, int(i), float(rng.random()), r + 1) for m in ("a", "b") for u in range(50)
            for r, i in enumerate(rng.choice(40, 12, replace=False))]
    candidates = cands(rows)
    truth = candidates.sample(fraction=0.1, seed=3).select(
        pl.col("user_idx").cast(pl.Int32), pl.col("item_idx").cast(pl.Int32)).unique()
    table = candidate_table(candidates)
    fast = _FastNdcg(_wide_terms(table, "weighted"), truth, list(table.modalities), 5)
    trials = [np.array(w) for w in ([1.0, 1.0], [0.2, 3.0], [2.0, 0.05])]
    whole = [fast(w) for w in trials]
    monkeypatch.setattr(weights_module, "TRIAL_USERS", 7)  # 8 chunks, side by side
    assert [fast(w) for w in trials] == whole
    assert len(set(whole)) > 1
