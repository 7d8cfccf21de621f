"""One contract every registered modality and every registered fuser keeps.

A new modality or fuser joins its registry and is tested here without a line of its own: the
shape and dtype of a score block, -inf for what it cannot score, the caller owning the block it
gets, determinism; a fuser's lists are top-k, ranked 1..k without gaps or repeats, drawn from the
user's candidates, and the same when fitted twice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tasks.candidates import generate_candidates
from tasks.config import RunParameters
from tasks.data.dataset import Dataset
from tasks.data.snapshot import Snapshot
from tasks.data.splits import EvaluationParams, holdout_split
from tasks.fusion.plan import FUSERS, CandidatePool, FitContext, apply_recipe
from tasks.modalities.content import MissingModalityInput
from tasks.modalities.registry import REGISTRY, build_modality
from tasks.recommend import dataset_from

K = 5


@pytest.fixture(scope="module")
def snapshot(small_source: Path) -> Snapshot:
    def read(name: str) -> pl.DataFrame:
        return pl.read_parquet(small_source / f"{name}.parquet")

    return Snapshot(read("events"), read("items"), read("social"), None, None)


@pytest.fixture(scope="module")
def data(snapshot: Snapshot) -> Dataset:
    return dataset_from(snapshot, RunParameters())


def _fit(name: str, data: Dataset):  # type: ignore[no-untyped-def]
    try:
        return build_modality(name, RunParameters()).fit(data)
    except MissingModalityInput as exc:  # the small source has every table: this is a bug
        pytest.fail(f"{name} refused a source with every table: {exc}")


@pytest.mark.parametrize("name", list(REGISTRY))
def test_a_score_block_is_float32_users_by_items_finite_or_minus_inf(
    name: str, data: Dataset
) -> None:
    model = _fit(name, data)
    users = np.array([0, 3, 5, data.n_users - 1])
    block = model.score_block(users)
    assert block.shape == (len(users), data.n_items)
    assert block.dtype == np.float32
    assert not np.isnan(block).any()
    assert not np.isposinf(block).any()  # "no evidence" is -inf, never +inf
    assert np.isfinite(block).any()  # it scores something for these users
    assert model.score_block(np.array([], dtype=np.int64)).shape == (0, data.n_items)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_the_caller_owns_the_block_and_scores_repeat(name: str, data: Dataset) -> None:
    """top_n masks seen items in place: writing into a block must not change later blocks.

    The same users in the same order give the same bytes whatever BLAS's thread count (found:
    2,257 of 12,000 products differed between 1 and 2 OpenBLAS threads). In another order they
    agree to float32 rounding only: a row's sums depend on its place in the product's kernels,
    and recfusion always scores a user at the same place (users in index order, fixed blocks).
    """
    from threadpoolctl import threadpool_limits

    model = _fit(name, data)
    users = np.arange(min(40, data.n_users))
    first = model.score_block(users)
    kept = first.copy()
    first[:] = -np.inf
    with threadpool_limits(2, user_api="blas"):
        np.testing.assert_array_equal(model.score_block(users), kept)
    with threadpool_limits(1, user_api="blas"):
        np.testing.assert_array_equal(model.score_block(users), kept)
    other = model.score_block(users[::-1])[::-1]
    np.testing.assert_array_equal(np.isfinite(other), np.isfinite(kept))
    finite = np.isfinite(kept)
    np.testing.assert_allclose(other[finite], kept[finite], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_fitting_twice_gives_the_same_scores(name: str, data: Dataset) -> None:
    users = np.arange(min(30, data.n_users))
    np.testing.assert_array_equal(
        _fit(name, data).score_block(users), _fit(name, data).score_block(users)
    )


@pytest.mark.parametrize("name", list(REGISTRY))
def test_a_sources_top_n_lists_what_its_full_block_lists(name: str, data: Dataset) -> None:
    """`top_n` scores a `SubsetScorer` on its items only, a `ShortlistScorer` on its short list
    and selects a `ProductScorer`'s lists from its sparse products: the same candidates, scores
    and ranks as over the full block (a cap of 30 items makes a subset a real one here). Any
    other source is the full block."""
    from tasks.kernels.blocks import ProductScorer, ShortlistScorer, SubsetScorer, top_n

    small = RunParameters(behavior={"algorithm": "ease", "max_items_for_ease": 30},
                          hybrid={"max_items": 30})
    try:
        model = build_modality(name, small).fit(data)
    except MissingModalityInput as exc:
        pytest.fail(f"{name} refused a source with every table: {exc}")
    users = np.arange(data.n_users)
    full = model.score_block(users)
    subset = model.scored_items() if isinstance(model, SubsetScorer) else None
    if subset is not None:
        assert 0 < len(subset) <= 30 < data.n_items
        assert np.array_equal(subset, np.sort(subset))
        assert np.array_equal(model.score_items(users), full[:, subset])
        assert np.isneginf(np.delete(full, subset, axis=1)).all()
    if isinstance(model, ShortlistScorer):
        columns = np.arange(0, data.n_items, 3)
        assert np.array_equal(model.score_columns(users, columns), full[:, columns])

    class FullWidth:  # the same model seen as any other modality: a full block per user block
        def score_block(self, block: np.ndarray) -> np.ndarray:
            return model.score_block(block)

    assert not isinstance(FullWidth(), SubsetScorer | ProductScorer | ShortlistScorer)
    for block_size in (7, data.n_users):
        for seen in (data.seen(), None):
            narrow = top_n(model, users, 10, seen=seen, block_size=block_size)
            wide = top_n(FullWidth(), users, 10, seen=seen, block_size=block_size)
            assert narrow.height > 0
            assert narrow.equals(wide)


def test_sources_fitted_side_by_side_score_the_bytes_each_fitted_alone_scores(
    data: Dataset,
) -> None:
    """`fit_modalities` fits two sources at once on the shared pool; what each learns must not
    depend on what ran beside it."""
    from tasks.candidates import fit_modalities

    params = RunParameters(modalities=list(REGISTRY))
    together = fit_modalities(data, params)
    assert list(together.models) == list(REGISTRY)  # the parameters' order, not finishing order
    users = np.arange(data.n_users)
    for name, model in together.models.items():
        alone = _fit(name, data)
        assert np.array_equal(model.score_block(users), alone.score_block(users)), name


@pytest.fixture(scope="module")
def labelled(snapshot: Snapshot) -> tuple[CandidatePool, pl.DataFrame, Dataset]:
    """Candidates of three cheap modalities on an inner training split, and its held-out pairs."""
    full = dataset_from(snapshot, RunParameters())
    split = holdout_split(snapshot.events, EvaluationParams(min_users=10), seed=1)
    data = dataset_from(snapshot, RunParameters(), split.train, like=full)
    cands = generate_candidates(
        data, RunParameters(candidates_per_modality=20), modalities=["behavior", "content",
                                                                     "popularity"])
    truth = data.with_codes(split.truth).select("user_idx", "item_idx")
    return CandidatePool.of(cands.candidates), truth, data


@pytest.mark.parametrize("name", list(FUSERS))
def test_a_fusers_lists_are_ranked_top_k_from_the_users_candidates(
    name: str, labelled: tuple[CandidatePool, pl.DataFrame, Dataset]
) -> None:
    pool, truth, data = labelled
    recipe = FUSERS[name].fit(pool, truth, FitContext(data, K, seed=3))
    assert recipe is not None and recipe.fuser == name
    fused = apply_recipe(recipe, pool, K, data)
    assert {"user_idx", "item_idx", "score", "rank"} <= set(fused.columns)
    assert {f"contrib_{m}" for m in pool.modalities} <= set(fused.columns)
    per_user = fused.group_by("user_idx").agg(
        pl.len().alias("n"), pl.col("rank").sort().alias("ranks"),
        pl.col("item_idx").n_unique().alias("distinct"),
    )
    assert (per_user["n"] <= K).all()
    assert (per_user["distinct"] == per_user["n"]).all()
    assert all(r == list(range(1, len(r) + 1)) for r in per_user["ranks"].to_list())
    # Higher rank, no lower score.
    ordered = fused.sort("user_idx", "rank")
    assert (ordered.group_by("user_idx", maintain_order=True)
            .agg((pl.col("score").diff().fill_null(0) <= 1e-9).all())["score"].all())
    # Every listed item was a candidate of that user; every user with candidates is served.
    offered = pool.candidates.select("user_idx", "item_idx").unique()
    assert fused.join(offered, on=["user_idx", "item_idx"], how="anti").height == 0
    assert set(fused["user_idx"].unique()) == set(offered["user_idx"].unique())


@pytest.mark.parametrize("name", list(FUSERS))
def test_a_fuser_fitted_twice_makes_the_same_lists(
    name: str, labelled: tuple[CandidatePool, pl.DataFrame, Dataset]
) -> None:
    pool, truth, data = labelled
    runs = []
    for _ in range(2):
        recipe = FUSERS[name].fit(pool, truth, FitContext(data, K, seed=3))
        assert recipe is not None
        runs.append(apply_recipe(recipe, pool, K, data).sort("user_idx", "rank")
                    .select("user_idx", "item_idx", "rank"))
    assert runs[0].equals(runs[1])
