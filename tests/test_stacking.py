"""Stacking fusion on tiny synthetic candidates: features, a planted signal, the fused contract."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest
from threadpoolctl import threadpool_limits

from tasks.data.dataset import Dataset, build_dataset
from tasks.fusion.stacking import (
    StackingModel,
    StackingParams,
    StackingUnavailable,
    _aggregates,
    candidate_features,
    feature_columns,
    fit_stacker,
    fuse_stacking,
    label_pairs,
)

MODS = ["a", "b", "c"]  # "c" never proposes anything: its block must be all-absent
FAST = StackingParams(max_iter=60, min_samples_leaf=5, early_stopping=False, n_bags=1)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny data: OpenMP threads in the boosted trees only add overhead on shared CPUs."""
    with threadpool_limits(1):
        yield


def cands(rows: list[tuple[str, int, int, float, int]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={"modality": pl.String, "user_idx": pl.Int32,
                                      "item_idx": pl.Int32, "score": pl.Float32, "rank": pl.Int32},
                        orient="row")


def dataset(n_users: int, n_items: int, seed: int = 0) -> Dataset:
    """Each user has 3 random items; user 0 has two friends; fixed timestamps."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), 3)
    items = np.concatenate([rng.choice(n_items, 3, replace=False) for _ in range(n_users)])
    ts = datetime(2024, 1, 1, tzinfo=UTC)
    events = pl.DataFrame({
        "user_id": [f"u{u:04d}" for u in users], "item_id": [f"i{i:04d}" for i in items],
        "event_type": "listen", "value": 1.0, "ts": ts,
    })
    social = pl.DataFrame({"user_id": ["u0000", "u0000"], "friend_id": ["u0001", "u0002"]})
    return build_dataset(events, social=social,
                         user_ids=np.array([f"u{u:04d}" for u in range(n_users)], dtype=object),
                         item_ids=np.array([f"i{i:04d}" for i in range(n_items)], dtype=object))


def hand_made_dataset() -> Dataset:
    """u0 has items 0, 1, 5 (two friends); u1 has items 5, 6 (play count 3 on item 6); u2 item 5."""
    pairs = [(0, 0, 1.0), (0, 1, 1.0), (0, 5, 1.0), (1, 5, 1.0), (1, 6, 3.0), (2, 5, 1.0)]
    events = pl.DataFrame({
        "user_id": [f"u{u}" for u, _, _ in pairs], "item_id": [f"i{i}" for _, i, _ in pairs],
        "event_type": "listen", "value": [v for _, _, v in pairs],
        "ts": datetime(2024, 1, 1, tzinfo=UTC),
    })
    social = pl.DataFrame({"user_id": ["u0", "u0"], "friend_id": ["u1", "u2"]})
    return build_dataset(events, social=social,
                         user_ids=np.array(["u0", "u1", "u2"], dtype=object),
                         item_ids=np.array([f"i{i}" for i in range(10)], dtype=object))


def test_features_hand_made_case():
    data = hand_made_dataset()
    # user 0: a proposes items 5 (score 4) and 6 (score 2); b proposes item 6 only.
    c = cands([("a", 0, 5, 4.0, 1), ("a", 0, 6, 2.0, 2), ("b", 0, 6, 0.5, 1)])
    f = candidate_features(c, data, MODS, missing_rank=11)
    assert f.columns == ["user_idx", "item_idx", *feature_columns(MODS)]
    assert f.columns == candidate_features(c.filter(pl.col("modality") == "a"), data, MODS,
                                           missing_rank=11).columns  # stable without b
    assert f["item_idx"].to_list() == [5, 6]
    i5, i6 = f.row(0, named=True), f.row(1, named=True)
    assert (i5["a_score"], i5["a_norm"], i5["a_rank"], i5["a_inv_rank"], i5["a_present"]) == \
        pytest.approx((4.0, 1.0, 1.0, 1.0, 1.0))
    assert (i6["a_score"], i6["a_norm"], i6["a_rank"], i6["a_inv_rank"]) == \
        pytest.approx((2.0, 0.0, 2.0, 0.5))
    # b lists one item: a single score normalises to 1; item 5 is absent from b.
    assert (i6["b_norm"], i6["b_rank"], i6["b_present"]) == pytest.approx((1.0, 1.0, 1.0))
    assert (i5["b_score"], i5["b_norm"], i5["b_rank"], i5["b_present"]) == \
        pytest.approx((0.0, 0.0, 11.0, 0.0))
    assert (i5["c_rank"], i5["c_present"]) == pytest.approx((11.0, 0.0))
    assert (i5["n_modalities"], i6["n_modalities"]) == (1.0, 2.0)
    assert (i5["sum_norm"], i6["sum_norm"]) == pytest.approx((1.0, 1.0))
    assert (i5["sum_rrf"], i6["sum_rrf"]) == pytest.approx((1 / 61, 1 / 62 + 1 / 61))
    assert (i5["item_log_pop"], i6["item_log_pop"]) == pytest.approx((math.log1p(3), math.log1p(1)))
    # confidence = log1p(play count): item 6's single listener played it 3 times
    assert (i5["item_mean_confidence"], i6["item_mean_confidence"]) == \
        pytest.approx((math.log1p(1), math.log1p(3)))
    # u0's items 0, 1, 5 have 1, 1, 3 listeners
    assert i5["user_mean_item_log_pop"] == pytest.approx(
        (2 * math.log1p(1) + math.log1p(3)) / 3)
    assert i5["user_log_activity"] == pytest.approx(math.log1p(3))
    assert i5["user_log_degree"] == pytest.approx(math.log1p(2))
    assert i5["item_age_days"] == 0.0  # every event has the same timestamp
    assert f.select(feature_columns(MODS)).null_count().sum_horizontal().item() == 0


def planted(n_users: int = 120, n_items: int = 60, per_list: int = 8, seed: int = 1
            ) -> tuple[pl.DataFrame, pl.DataFrame, Dataset]:
    """Random lists from a and b; the truth is exactly a's top-1 item per user."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[str, int, int, float, int]] = []
    for u in range(n_users):
        for m in ("a", "b"):
            items = rng.choice(n_items, per_list, replace=False)
            scores = np.sort(rng.random(per_list))[::-1]
            rows += [(m, u, int(i), float(s), r + 1) for r, (i, s) in enumerate(
                zip(items, scores, strict=True))]
    c = cands(rows)
    truth = c.filter((pl.col("modality") == "a") & (pl.col("rank") == 1)).select(
        "user_idx", "item_idx")
    return c, truth, dataset(n_users, n_items, seed)


@pytest.mark.parametrize("learner", ["hgb", "logistic"])
def test_planted_signal_is_learned(learner: str):
    c, truth, data = planted()
    model = fit_stacker(c, truth, data, MODS, seed=3,
                        params=StackingParams(**{**FAST.__dict__, "learner": learner}))
    assert model.learner == learner
    fresh, fresh_truth, fresh_data = planted(seed=2)  # unseen users' lists
    fused = fuse_stacking(fresh, fresh_data, model, k=5)
    first = fused.filter(pl.col("rank") == 1).select("user_idx", "item_idx")
    hit = first.join(fresh_truth, on=["user_idx", "item_idx"], how="semi").height
    assert hit / fresh_truth.height >= 0.95


def test_fused_shape_rank_contract_and_contributions():
    c, truth, data = planted()
    model = fit_stacker(c, truth, data, MODS, params=FAST)
    # user 999-like edge: user 0 keeps only two candidates -> ranks 1..2 only.
    short = c.filter((pl.col("user_idx") != 0) | ((pl.col("modality") == "a")
                                                  & (pl.col("rank") <= 2)))
    k = 5
    fused = fuse_stacking(short, data, model, k=k, modalities=MODS, block_users=7)
    assert fused.schema == pl.Schema({
        "user_idx": pl.Int32, "item_idx": pl.Int32, "score": pl.Float64, "rank": pl.Int32,
        "contrib_a": pl.Float64, "contrib_b": pl.Float64, "contrib_c": pl.Float64})
    ranks = fused.group_by("user_idx").agg(pl.col("rank").sort(), pl.len())
    for r, n in zip(ranks["rank"].to_list(), ranks["len"].to_list(), strict=True):
        assert r == list(range(1, n + 1))
    assert fused.filter(pl.col("user_idx") == 0).height == 2
    assert ranks["len"].max() == k
    assert fused.select("user_idx", "item_idx").is_unique().all()
    # scores descend within each user, ties broken by item index
    ordered = fused.sort("user_idx", "score", "item_idx", descending=[False, True, False])
    assert ordered["rank"].to_list() == fused.sort("user_idx", "rank")["rank"].to_list()
    # contributions: within [0, score]; c never proposes anything; b absent -> 0
    for m in MODS:
        col = fused[f"contrib_{m}"]
        assert (col >= 0).all() and (col <= fused["score"] + 1e-12).all()
    assert (fused["contrib_c"] == 0.0).all()
    proposed_by_b = short.filter(pl.col("modality") == "b").select("user_idx", "item_idx")
    only_a = fused.join(proposed_by_b, on=["user_idx", "item_idx"], how="anti")
    assert only_a.height > 0 and (only_a["contrib_b"] == 0.0).all()
    # the planted modality carries the top items: a's contribution dominates at rank 1
    top = fused.filter(pl.col("rank") == 1)
    mean_a = float(top["contrib_a"].to_numpy().mean())
    assert mean_a > float(top["contrib_b"].to_numpy().mean())
    assert mean_a > 0.1


def test_deterministic_and_modality_mismatch_rejected():
    c, truth, data = planted(n_users=60)
    one = fuse_stacking(c, data, fit_stacker(c, truth, data, MODS, seed=5, params=FAST), k=3)
    two = fuse_stacking(c, data, fit_stacker(c, truth, data, MODS, seed=5, params=FAST), k=3)
    assert one.equals(two)
    model = fit_stacker(c, truth, data, MODS, params=FAST)
    assert model.blend_weights is None  # default: blend_norm = CombSUM
    tuned = fit_stacker(c, truth, data, MODS, params=StackingParams(tune_blend=True))
    assert tuned.blend_weights is not None and set(tuned.blend_weights) == set(MODS)
    auto = fit_stacker(c, truth, data, MODS, params=StackingParams(learner="auto"))
    assert auto.learner == "logistic"  # 60 positives: too few for boosted trees
    bagged = fit_stacker(c, truth, data, MODS, params=StackingParams(
        learner="hgb", n_bags=2, max_iter=10, min_samples_leaf=5, early_stopping=False))
    assert len(bagged.estimators) == 2 and bagged.summary()["bags"] == 2
    with pytest.raises(ValueError, match="differ"):
        fuse_stacking(c, data, model, k=3, modalities=["a", "b"])
    empty = fuse_stacking(c.clear(), data, model, k=3)
    assert empty.height == 0 and "contrib_c" in empty.columns


def test_user_blocks_fused_side_by_side_give_the_one_block_bytes():
    """Blocks of users are fused on the shared pool: the list must be the one of a single
    block, byte for byte (scores, ranks and contributions)."""
    c, truth, data = planted(n_users=90)
    model = fit_stacker(c, truth, data, MODS, seed=5, params=FAST)
    whole = fuse_stacking(c, data, model, k=4, block_users=1_000)
    blocked = fuse_stacking(c, data, model, k=4, block_users=7)  # 13 blocks, 2 at a time
    assert whole.height == 90 * 4
    assert blocked.equals(whole)


def test_degenerate_labels_raise_stacking_unavailable():
    c, truth, data = planted(n_users=30)
    with pytest.raises(StackingUnavailable):
        fit_stacker(c, truth.clear(), data, MODS, params=FAST)  # no positives
    features = candidate_features(c, data, MODS)
    model = StackingModel(tuple(MODS), missing_rank=9, params=FAST)
    with pytest.raises(StackingUnavailable):
        model.fit(features, np.ones(features.height))  # no negatives
    with pytest.raises(StackingUnavailable):
        fit_stacker(c.clear(), truth, data, MODS, params=FAST)  # no candidates
    labels = label_pairs(features, truth)
    assert labels.sum() == truth.height


@pytest.mark.parametrize(
    "params",
    [
        StackingParams(negatives_per_positive=2.0),
        StackingParams(learner="hgb", n_bags=2, negatives_per_positive=2.0, max_iter=10,
                       min_samples_leaf=5, early_stopping=False),
    ],
    ids=["logistic", "hgb-bagged"],
)
def test_fit_in_user_blocks_gives_the_one_shot_model(
    params: StackingParams, monkeypatch: pytest.MonkeyPatch
):
    """Features are built and negatives sampled a user block at a time (bounded memory); the
    sampled rows, and so the model, must not depend on the block size."""
    import tasks.fusion.stacking as stacking

    c, truth, data = planted(n_users=90)
    one_shot = fit_stacker(c, truth, data, MODS, seed=4, params=params)
    monkeypatch.setattr(stacking, "FEATURE_BLOCK_USERS", 7)
    blocked = fit_stacker(c, truth, data, MODS, seed=4, params=params)
    assert 0 < blocked.n_train_rows < c.height  # negatives were capped
    assert blocked.n_train_rows == one_shot.n_train_rows
    features = blocked.features(c, data)
    assert np.array_equal(blocked.predict(features), one_shot.predict(features))


def test_popularity_near_user_follows_the_users_own_time() -> None:
    """An item that was a hit years ago scores high for a user last seen then, low for one now."""
    from tasks.fusion.stacking import _popularity_near_users

    old, new = datetime(2000, 1, 1, tzinfo=UTC), datetime(2020, 1, 1, tzinfo=UTC)
    # Item 0 is the old hit (40 events in 2000), item 1 the new one (40 events in 2020).
    rows = [(f"f{k:03d}", "i0000", old) for k in range(40)]
    rows += [(f"g{k:03d}", "i0001", new) for k in range(40)]
    rows += [("u_old", "i0002", old), ("u_new", "i0002", new)]
    events = pl.DataFrame(rows, schema=["user_id", "item_id", "ts"], orient="row").with_columns(
        event_type=pl.lit("listen"), value=pl.lit(1.0))
    data = build_dataset(events)
    near = _popularity_near_users(data)
    code = {u: i for i, u in enumerate(data.user_ids)}
    item = {it: i for i, it in enumerate(data.item_ids)}
    pop, last = near["item_bin_log_pop"], near["user_last_bin"]
    u_old, u_new = last[code["u_old"]], last[code["u_new"]]
    assert pop[item["i0000"], u_old] > pop[item["i0001"], u_old]
    assert pop[item["i0001"], u_new] > pop[item["i0000"], u_new]


def test_popularity_near_user_is_silent_without_time() -> None:
    """Constant timestamps (data without time): the feature is all zero, adding nothing."""
    from tasks.fusion.stacking import _popularity_near_users

    near = _popularity_near_users(dataset(30, 20))
    assert not near["item_bin_log_pop"].any()


def test_logistic_scores_are_the_pipelines_probability() -> None:
    """The column-at-a-time logistic score is scikit-learn's own predict_proba, and the feature
    aggregates built on arrays are those the contributions recompute with Polars."""
    c, truth, data = planted()
    model = fit_stacker(c, truth, data, MODS, seed=3,
                        params=StackingParams(**{**FAST.__dict__, "learner": "logistic"}))
    fresh, _, fresh_data = planted(seed=2)
    features = model.features(fresh, fresh_data)
    x = features.select(model.columns).to_numpy()
    expected = model.estimators[0].predict_proba(x)[:, 1]
    got = model.predict(features)
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert not np.array_equal(got, np.full_like(got, got[0]))  # a real ranking, not a constant
    again = features.with_columns(_aggregates(MODS, model.blend_weights))
    for column in ("n_modalities", "sum_norm", "blend_norm", "sum_rrf"):
        assert again[column].to_numpy().tobytes() == features[column].to_numpy().tobytes()


def test_top_k_of_sorted_rows_is_the_sorted_cut() -> None:
    """The compiled cut keeps what a sort by (user, score desc, item) and a cut at k keep,
    ties included (scores drawn from a few values, so many tie)."""
    from tasks.fusion.stacking import _top_k_of_sorted
    from tasks.fusion.table import top_k

    rng = np.random.default_rng(4)
    users = np.sort(rng.integers(0, 40, 3000)).astype(np.int32)
    frame = pl.DataFrame({"user_idx": users, "item_idx": rng.integers(0, 500, 3000)
                          .astype(np.int32), "score": rng.integers(0, 6, 3000) / 5.0}) \
        .unique(["user_idx", "item_idx"]).sort("user_idx", "item_idx")
    for k in (1, 7, 200):
        assert _top_k_of_sorted(frame, k).equals(top_k(frame, k))
    assert _top_k_of_sorted(frame.clear(), 5).height == 0


def test_kept_rows_are_stacked_in_block_order_and_each_block_is_let_go():
    from tasks.fusion.stacking import _stack_parts

    rng = np.random.default_rng(3)
    parts = [(rng.random((n, 4)), rng.random(n) < 0.3) for n in (5, 0, 7, 1)]
    expected_x = np.concatenate([x for x, _ in parts])
    expected_y = np.concatenate([y for _, y in parts])
    x, y = _stack_parts(parts)
    assert parts == []  # nothing of the blocks is held once stacked
    assert np.array_equal(x, expected_x) and x.dtype == np.float64
    assert np.array_equal(y, expected_y) and y.dtype == bool


def test_the_logistic_scaler_learns_in_blocks_what_it_learns_at_once(monkeypatch) -> None:
    """Blocks of rows (no centred copy of them all) give the one-shot scaler's statistics and
    the one-shot pipeline's probabilities, up to rounding."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from tasks.fusion import stacking
    from tasks.fusion.stacking import StackingModel, StackingParams

    monkeypatch.setattr(stacking, "SCALER_BLOCK_ROWS", 7)
    rng = np.random.default_rng(5)
    x = rng.normal(3.0, 2.0, (200, 6)) * np.array([1, 10, 0.1, 1, 1, 100])
    y = x[:, 0] + rng.normal(0, 2, 200) > 3.5
    model = StackingModel(("a",), 5, StackingParams(learner="logistic"), 1)
    pipe = model._logistic(x.copy(), y)
    whole = StandardScaler().fit(x)
    assert pipe[0].n_samples_seen_ == 200
    assert pipe[0].mean_ == pytest.approx(whole.mean_, rel=1e-12)
    assert pipe[0].scale_ == pytest.approx(whole.scale_, rel=1e-12)
    at_once = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, y)
    # (the fitted scaler, like the one it replaced, standardises what it is given in place)
    got = pipe.predict_proba(x.copy())[:, 1]
    assert got == pytest.approx(at_once.predict_proba(x.copy())[:, 1], rel=1e-8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.bool_])
def test_the_compiled_linear_sum_has_numpys_bits_for_every_column_type(dtype: type) -> None:
    """`_predict_linear` moved from NumPy's expression to a compiled loop: same bits or the
    published scores (and tied ranks) would move."""
    from tasks.kernels.linear import add_standardised

    draws = np.random.default_rng(3)
    columns = [(draws.normal(size=10_001) * 50).astype(dtype) for _ in range(7)]
    if dtype == np.float32:
        columns[0][::97] = np.nan  # a missing feature stays missing
    stats = draws.normal(size=(7, 3)) + [0.0, 2.0, 0.0]
    expected = np.zeros(10_001)
    compiled = np.zeros(10_001)
    for x, (mean, scale, coef) in zip(columns, stats, strict=True):
        expected += (x.astype(np.float64) - mean) / scale * coef
        add_standardised(compiled, x, mean, scale, coef)
    assert compiled.tobytes() == expected.tobytes()
    with pytest.raises(ValueError, match="float64"):
        add_standardised(np.zeros(3, dtype=np.float32), columns[1][:3], 0.0, 1.0, 1.0)
