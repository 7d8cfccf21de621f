"""The run's core, as plain functions: evaluate on a hold-out, then fit on everything and fuse.

Protocol (no leakage): the hold-out window is the test; the fusion plan scored on it is tuned on
an earlier validation window cut from the training part only. The plan that is published is then
re-tuned on the most recent window (train → test), because nothing is evaluated after it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from tasks.candidates import (
    CandidateSet,
    OnStep,
    fit_modalities,
    generate_candidates,
)
from tasks.config import RunParameters
from tasks.data.dataset import Dataset, build_dataset, coded_events, subset
from tasks.data.snapshot import Snapshot
from tasks.data.splits import Holdout, holdout_split
from tasks.evaluation.lists import evaluate_lists, user_segments
from tasks.fusion.plan import (
    AUTO,
    DEFAULT_FUSER,
    FUSERS,
    CandidatePool,
    FusionPlan,
    Recipe,
    apply_plan,
    apply_recipe,
    top_up,
)
from tasks.fusion.selection import per_user_ndcg, refit_plan, select_plan
from tasks.memory import release_freed_memory
from tasks.modalities.popularity import PopularityParams, make_popularity
from tasks.modalities.registry import FLOOR_BASELINE, FLOOR_MODALITY, REGISTRY
from tasks.shards import ShardResult, ShardWork, run_shard, user_shards

log = logging.getLogger(__name__)

#: Users with at most this many items are reported as "cold" when the plan has no cold rule.
REPORT_COLD_MAX = 2


@dataclass
class Evaluation:
    metrics: pl.DataFrame
    plan: FusionPlan  # chosen on the most recent split: what gets published
    eval_plan: FusionPlan  # chosen before the test split: what the metrics describe
    split_kind: str
    n_test_users: int  # main (non cold-pool) users the headline metrics average over
    protocol: dict[str, object] = field(default_factory=dict)  # how it was split and sampled
    per_user: dict[str, np.ndarray] = field(default_factory=dict)  # test NDCG@K, main users


@dataclass
class Recommendations:
    data: Dataset
    candidates: CandidateSet  # in memory; empty when they were staged to `candidate_files`
    fused: pl.DataFrame  # tasks.shards.LIST_COLUMNS of every shard
    segments: pl.DataFrame
    seconds: dict[str, float] = field(default_factory=dict)
    candidate_files: list[Path] = field(default_factory=list)  # Parquet, one per user block
    n_candidates: int = 0


def dataset_from(
    snapshot: Snapshot,
    params: RunParameters,
    events: pl.DataFrame | None = None,
    like: Dataset | None = None,
) -> Dataset:
    """Build a Dataset; `like` pins the id space so splits and the full data share indexes."""
    return build_dataset(
        snapshot.events if events is None else events,
        items=snapshot.items,
        social=snapshot.social,
        users=snapshot.users,
        weighting=params.weighting(),
        as_of=snapshot.as_of,
        user_ids=snapshot.user_ids if like is None else like.user_ids,
        item_ids=snapshot.item_ids if like is None else like.item_ids,
    )


def _fixed_plan(params: RunParameters, modalities: list[str]) -> FusionPlan:
    """The plan when nothing could be evaluated: the given (or default) weights, no cold rule."""
    weights = params.fusion.weight_map() or {m: REGISTRY[m].default_weight for m in modalities}
    strategy = (
        DEFAULT_FUSER
        if params.fusion.strategy == AUTO or FUSERS[params.fusion.strategy].needs_labels
        else params.fusion.strategy
    )
    return FusionPlan(Recipe(strategy, weights=dict(weights),
                             normalisation=params.fusion.normalisation))


def modality_lists(cands: CandidateSet, k: int) -> dict[str, pl.DataFrame]:
    c = cands.candidates.filter(pl.col("rank") <= k)
    return {
        m: c.filter(pl.col("modality") == m).select("user_idx", "item_idx", "rank")
        for m in cands.modalities
    }


def sample_users(truth: pl.DataFrame, most: int | None, seed: int) -> np.ndarray:
    """Sorted user indexes of `truth` (user_idx, item_idx), at most `most` of them at random."""
    users = np.unique(truth["user_idx"].to_numpy())
    if most is not None and len(users) > most:
        users = np.sort(np.random.default_rng(seed).choice(users, most, replace=False))
    return users


def _restrict(truth: pl.DataFrame, users: np.ndarray) -> pl.DataFrame:
    return truth.filter(pl.col("user_idx").is_in(pl.Series(users, dtype=pl.Int32)))


@dataclass
class Stage:
    """One side of a hold-out: models fitted on its past, candidates and truth for its users."""

    data: Dataset
    truth: pl.DataFrame  # user_idx, item_idx of the sampled users
    cold_pool: np.ndarray  # sampled user indexes of the cold pool
    candidates: CandidateSet
    split: dict[str, object]


def build_stage(
    split: Holdout, full: Dataset, params: RunParameters, seed: int,
    on_step: OnStep | None = None,
) -> Stage:
    """Fit every modality on the split's past and score its (sampled) hold-out users.

    `split` cuts `coded_events(full)`: its keys are `full`'s integer codes. The main users and
    the cold pool are sampled separately (at most `max_users` and half of a fifth of that), so
    a data set of mostly newcomers still has enough main users to decide on.
    """
    data = subset(full, split.train)
    truth = split.truth.select(pl.col("user_id").cast(pl.Int32).alias("user_idx"),
                               pl.col("item_id").cast(pl.Int32).alias("item_idx"))
    most = params.evaluation.max_users
    pool_idx = (np.zeros(0, dtype=np.int64) if split.cold_users is None
                else split.cold_users.to_numpy().astype(np.int64))
    in_pool = truth["user_idx"].is_in(pl.Series(pool_idx, dtype=pl.Int32).implode())
    main_users = sample_users(truth.filter(~in_pool), most, seed)
    pool_users = sample_users(truth.filter(in_pool), None if most is None else most // 5, seed)
    users = np.union1d(main_users, pool_users)
    cands = generate_candidates(data, params, users=users, on_step=on_step)
    described = split.describe() | {"sampled_users": len(main_users),
                                    "sampled_cold_pool_users": len(pool_users)}
    return Stage(data, _restrict(truth, users), pool_users, cands, described)


def _select(stage: Stage, params: RunParameters) -> FusionPlan:
    f = params.fusion
    return select_plan(
        stage.candidates.candidates,
        stage.truth,
        stage.data,
        params.top_k,
        strategy=f.strategy,
        z=params.evaluation.selection_z,
        cold_history_max=f.cold_history_max,
        cold_users=stage.cold_pool,
        normalisation=f.normalisation,
        fixed_weights=f.weight_map(),
        seed=params.seed,
        stacking=f.stacking,
    )


def report_cold_max(plan: FusionPlan, params: RunParameters) -> int:
    """History length up to which a user is reported (and served) as cold."""
    if plan.cold is not None:
        return plan.cold_max
    return params.fusion.cold_history_max or REPORT_COLD_MAX


def _outer_split(full: Dataset, params: RunParameters) -> Holdout:
    # The splits cut integer-coded events: the same cuts as on the ids (codes sort as ids do),
    # without a copy of every id string per split.
    return holdout_split(coded_events(full), params.evaluation, params.seed)


def _validation_plan(
    full: Dataset, params: RunParameters, step: OnStep
) -> tuple[FusionPlan | None, dict[str, object]] | None:
    """The fusion plan chosen on the window before the test window (plan None: too little
    data to validate); None when the test split itself is empty (nothing to evaluate).

    The test split is cut here and again after: seeded, it is the same split both times, and
    its copy of the events (~0.1 GB at 5M events) is not held while validation fits and fuses.
    """
    outer = _outer_split(full, params)
    if outer.truth.height == 0 or outer.train.height == 0:
        return None
    inner = holdout_split(outer.train, params.evaluation, params.seed + 1, kind=outer.kind)
    del outer
    if not (inner.truth.height and inner.train.height):
        return None, inner.describe()
    stage = build_stage(inner, full, params, params.seed + 1,
                        on_step=lambda done: step(f"validation: {done}"))
    plan = _select(stage, params)
    step("validation: chose the plan")
    return plan, stage.split


#: Told after each part of the hold-out evaluation: (parts done, parts in all, what was done).
OnEvaluationStep = Callable[[int, int, str], None]


def _stepper(params: RunParameters, on_progress: OnEvaluationStep | None) -> OnStep:
    """Count the evaluation's parts: per stage every source's fit and the scoring, then the
    choice of plan (validation), the scored lists and the plan refitted (test)."""
    total = 2 * (len(params.modalities) + 1) + 3
    done = 0

    def step(label: str) -> None:
        nonlocal done
        done = min(done + 1, total)
        if on_progress is not None:
            on_progress(done, total, label)

    return step


def evaluate_holdout(
    full: Dataset, params: RunParameters, on_progress: OnEvaluationStep | None = None
) -> Evaluation | None:
    """Fit on the past, score the hold-out; None when there is too little data for it.

    The plan scored here was chosen on a validation split cut from the training part only, with
    the same protocol; the plan that gets published is chosen the same way on the latest split
    (train → test), since nothing is evaluated after it. Lists are built, fused and scored only
    for hold-out users (at most `max_users` of them), so every candidate set stays bounded.
    """
    k = params.top_k
    # Validation runs first, in its own function: its dataset, fitted models and candidates are
    # freed before the test part builds its own, so the two never share memory.
    step = _stepper(params, on_progress)
    validated = _validation_plan(full, params, step)
    if validated is None:
        log.warning("evaluation skipped: not enough events to hold out")
        return None
    eval_plan, valid_split = validated
    release_freed_memory()  # what validation held, before the test part builds its own

    outer = _outer_split(full, params)
    test = build_stage(outer, full, params, params.seed,
                       on_step=lambda done: step(f"test: {done}"))
    cands = test.candidates
    eval_plan = eval_plan or _fixed_plan(params, cands.modalities)
    segments = user_segments(test.data, report_cold_max(eval_plan, params))

    lists = modality_lists(cands, k)
    pool_ = CandidatePool(cands.candidates)
    for recipe in eval_plan.alternatives:
        lists[recipe.name] = top_up(apply_recipe(recipe, pool_, k, test.data), pool_, k)
    lists["fused"] = apply_plan(pool_, eval_plan, k, test.data)
    if FLOOR_MODALITY not in lists:  # the floor every list is checked against
        lists[FLOOR_BASELINE] = popularity_baseline(test.data, test.truth, k)
    # Not made distinct here: the labelled pool sorts the pairs' codes and drops repeats, and
    # a hash `unique` of every candidate pair was the evaluation's peak (+0.15 GB at 100k users).
    pool = cands.candidates.select("user_idx", "item_idx")
    metrics = evaluate_lists(lists, test.truth, test.data, k, segments, pool=pool,
                             cold_pool=test.cold_pool)
    users = np.unique(test.truth["user_idx"].to_numpy())
    main = ~np.isin(users, test.cold_pool) if len(test.cold_pool) else np.ones(len(users), bool)
    if not main.any():
        main[:] = True
    per_user = {name: per_user_ndcg(frame, test.truth, users, k)[main]
                for name, frame in lists.items()}
    step("test: scored every list")

    # The plan to publish: the one evaluated here, learned again on the latest split.
    f = params.fusion
    plan = refit_plan(eval_plan, pool_, test.truth, test.data, k, f.normalisation, f.weight_map(),
                      params.seed, f.stacking)
    step("test: refitted the plan to publish")
    protocol: dict[str, object] = {
        "kind": outer.kind, "validation": valid_split, "test": test.split, "k": k,
        "seed": params.seed,
    }
    return Evaluation(metrics, plan, eval_plan, outer.kind, int(main.sum()), protocol, per_user)


def popularity_baseline(data: Dataset, truth: pl.DataFrame, k: int) -> pl.DataFrame:
    """Most-interacted unseen items for the truth users: the floor a useful list must clear."""
    from tasks.kernels.blocks import top_n

    model = make_popularity(PopularityParams(half_life_days=None, category_blend=0.0)).fit(data)
    users = np.unique(truth["user_idx"].to_numpy())
    return top_n(model, users, k, seen=data.seen()).select("user_idx", "item_idx", "rank")


def prepare_shards(
    full: Dataset, params: RunParameters, plan: FusionPlan | None,
    on_step: OnStep | None = None,
) -> tuple[ShardWork, pl.DataFrame]:
    """The serial half of recommending: fit every modality on all data once, fix the plan and
    each user's segment. What is left is per user (`tasks.shards.run_shard`)."""
    fitted = fit_modalities(full, params, on_step=on_step)
    plan = plan or _fixed_plan(params, list(fitted.models))
    segments = user_segments(full, report_cold_max(plan, params)).with_columns(
        pl.Series("segment", plan.segment_of(full.history_lengths()), dtype=pl.String)
    )
    return ShardWork(fitted, plan, params), segments


def gather_shards(
    work: ShardWork, segments: pl.DataFrame, shards: list[ShardResult], started: float
) -> Recommendations:
    """The shards' results as one run's recommendations (in user order, whatever ran first)."""
    shards = sorted(shards, key=lambda r: r.index)
    if not shards:  # no users at all: the empty frames of one (empty) shard
        shards = [run_shard(work, 0, 0, 0)]
    fitted = work.fitted
    seconds = {  # fit once + every shard's scoring
        m: fit + sum(r.candidates.seconds.get(m, 0.0) for r in shards)
        for m, fit in fitted.seconds.items()
    }
    cands = CandidateSet(
        pl.concat([r.candidates.candidates for r in shards]), dict(fitted.skipped), seconds
    )
    seconds = dict(seconds)
    seconds["recommend_total"] = time.perf_counter() - started
    files = [r.candidate_file for r in shards if r.candidate_file is not None]
    return Recommendations(
        work.data, cands, pl.concat([r.lists() for r in shards], how="diagonal_relaxed"),
        segments, seconds, files, sum(r.n_candidates for r in shards),
    )


def recommend(
    full: Dataset,
    params: RunParameters,
    plan: FusionPlan | None,
    staging: Path | None = None,
    on_shard: Callable[[ShardResult], None] | None = None,
    on_fitted: Callable[[], None] | None = None,
    on_step: OnStep | None = None,
) -> Recommendations:
    """Fit every modality on all data once, then score, fuse and explain users a shard at a time.

    Fusion (the stacker's features above all) needs several values per candidate; doing it for
    `fusion_block_users` users at a time bounds that memory whatever the number of users. With
    `staging`, each shard's candidates (users × sources × N rows, the run's largest output) go
    to a Parquet file there instead of staying in memory until publishing. This is the
    in-process loop; `flows/nightly.py` maps the same `run_shard` over a Dask cluster.
    """
    start = time.perf_counter()
    work, segments = prepare_shards(full, params, plan, on_step)
    if on_fitted is not None:
        on_fitted()
    results = []
    for index, (lo, hi) in enumerate(user_shards(full.n_users, params.fusion_block_users)):
        results.append(run_shard(work, index, lo, hi, staging))
        if on_shard is not None:
            on_shard(results[-1])
    return gather_shards(work, segments, results, start)
