"""The run's core, as plain functions: evaluate on a hold-out, then fit on everything and fuse.

Protocol (no leakage): the hold-out window is the test; the fusion plan scored on it is tuned on
an earlier validation window cut from the training part only. The plan that is published is then
re-tuned on the most recent window (train → test), because nothing is evaluated after it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from tasks.candidate_generation import (
    CandidateSet,
    fit_modalities,
    generate_candidates,
    score_candidates,
)
from tasks.dataset import Dataset, build_dataset
from tasks.evaluation import evaluate_lists, user_segments
from tasks.fusion import DEFAULT_SEGMENT, CandidateTable
from tasks.fusion_tuning import FusionPlan, apply_plan, apply_plans, choose_plan
from tasks.holdout import Holdout, holdout_split
from tasks.parameters import RunParameters
from tasks.snapshot import Snapshot

log = logging.getLogger(__name__)

DEFAULT_WEIGHTS = {"behavior": 1.0, "content": 0.3, "social": 0.3, "popularity": 0.1}


@dataclass
class Evaluation:
    metrics: pl.DataFrame
    plan: FusionPlan  # tuned on the most recent window: what gets published
    eval_plan: FusionPlan  # tuned before the test window: what the metrics describe
    split_kind: str
    n_test_users: int


@dataclass
class Recommendations:
    data: Dataset
    candidates: CandidateSet  # in memory; empty when they were staged to `candidate_files`
    fused: pl.DataFrame  # user_idx, item_idx, score, rank, contrib_*
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
        user_ids=None if like is None else like.user_ids,
        item_ids=None if like is None else like.item_ids,
    )


def _truth_idx(truth: pl.DataFrame, data: Dataset) -> pl.DataFrame:
    return data.with_codes(truth).select("user_idx", "item_idx")


def _fixed_plan(params: RunParameters, modalities: list[str]) -> FusionPlan:
    weights = params.fusion.weights or {m: DEFAULT_WEIGHTS.get(m, 0.1) for m in modalities}
    strategy = (
        "weighted" if params.fusion.strategy in ("auto", "stacking") else params.fusion.strategy
    )
    return FusionPlan(strategy, params.fusion.normalisation, {DEFAULT_SEGMENT: dict(weights)})


def _plan(
    cands: CandidateSet,
    truth: pl.DataFrame,
    segments: pl.DataFrame,
    data: Dataset,
    params: RunParameters,
    strategy: str | None = None,
) -> FusionPlan:
    return choose_plan(
        cands.candidates,
        truth,
        params.top_k,
        segments,
        strategy or params.fusion.strategy,
        params.fusion.normalisation,
        params.fusion.weights,
        data=data,
        seed=params.seed,
        stacking=params.fusion.stacking,
    )


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


def _validation_plan(
    snapshot: Snapshot, outer: Holdout, full: Dataset, params: RunParameters
) -> FusionPlan | None:
    """The fusion plan tuned on the window before the test window (None: too little data)."""
    inner = holdout_split(
        outer.train, params.holdout_days, params.holdout_fraction, params.seed + 1
    )
    if not (inner.truth.height and inner.train.height):
        return None
    valid = dataset_from(snapshot, params, inner.train, like=full)
    valid_truth = _truth_idx(inner.truth, valid)
    valid_users = sample_users(valid_truth, params.max_eval_users, params.seed + 1)
    valid_cands = generate_candidates(valid, params, users=valid_users)
    return _plan(
        valid_cands,
        _restrict(valid_truth, valid_users),
        user_segments(valid, params.fusion.cold_history_max),
        valid,
        params,
    )


def evaluate_holdout(snapshot: Snapshot, full: Dataset, params: RunParameters) -> Evaluation | None:
    """Fit on the past, score the hold-out window; None when there is too little data for it.

    Lists are built, fused and scored only for hold-out users (at most `max_eval_users` of
    them): metrics average over users, so a large sample estimates them well, and every
    candidate set stays bounded whatever the number of users.
    """
    outer: Holdout = holdout_split(
        snapshot.events, params.holdout_days, params.holdout_fraction, params.seed
    )
    if outer.truth.height == 0 or outer.train.height == 0:
        log.warning("evaluation skipped: not enough events to hold out a test window")
        return None
    k = params.top_k
    # Validation runs first, in its own function: its dataset, fitted models and candidates are
    # freed before the test part builds its own, so the two never share memory.
    eval_plan = _validation_plan(snapshot, outer, full, params)

    train = dataset_from(snapshot, params, outer.train, like=full)
    test_truth = _truth_idx(outer.truth, train)
    test_users = sample_users(test_truth, params.max_eval_users, params.seed)
    test_truth = _restrict(test_truth, test_users)
    train_segments = user_segments(train, params.fusion.cold_history_max)
    train_cands = generate_candidates(train, params, users=test_users)
    eval_plan = eval_plan or _fixed_plan(params, train_cands.modalities)

    lists = modality_lists(train_cands, k)
    tables: dict[str, CandidateTable] = {}
    lists |= apply_plans(
        train_cands.candidates,
        eval_plan.alternatives or [eval_plan],
        k,
        train_segments,
        tables,
        data=train,
    )
    lists["fused"] = lists[eval_plan.strategy]
    pool = train_cands.candidates.select("user_idx", "item_idx").unique()
    metrics = evaluate_lists(lists, test_truth, train, k, train_segments, pool=pool)

    # The strategy was chosen on validation; the plan to publish refits it on the latest window.
    plan = _plan(train_cands, test_truth, train_segments, train, params, eval_plan.strategy)
    return Evaluation(metrics, plan, eval_plan, outer.kind, test_truth["user_idx"].n_unique())


def recommend(
    snapshot: Snapshot,
    full: Dataset,
    params: RunParameters,
    plan: FusionPlan | None,
    staging: Path | None = None,
) -> Recommendations:
    """Fit every modality on all data once, then score and fuse users a block at a time.

    Fusion (the stacker's features above all) needs several values per candidate; doing it for
    `fusion_block_users` users at a time bounds that memory whatever the number of users. With
    `staging`, each block's candidates (users × sources × N rows, the run's largest output) go
    to a Parquet file there instead of staying in memory until publishing.
    """
    start = time.perf_counter()
    fitted = fit_modalities(full, params)
    segments = user_segments(full, params.fusion.cold_history_max)
    blocks: list[CandidateSet] = []
    fused: list[pl.DataFrame] = []
    files: list[Path] = []
    n_candidates = 0
    for lo in range(0, full.n_users, params.fusion_block_users):
        users = np.arange(lo, min(lo + params.fusion_block_users, full.n_users))
        cands = score_candidates(fitted, params, users)
        plan = plan or _fixed_plan(params, cands.modalities)
        fused.append(apply_plan(cands.candidates, plan, params.top_k, segments, data=full))
        n_candidates += cands.candidates.height
        if staging is not None:
            files.append(staging / f"candidates-{len(files):05d}.parquet")
            cands.candidates.write_parquet(files[-1])
            cands.candidates = cands.candidates.clear()
        blocks.append(cands)
    if not blocks:  # no users at all: the empty frames of one (empty) block
        blocks.append(score_candidates(fitted, params, np.arange(0)))
        plan = plan or _fixed_plan(params, list(fitted.models))
        fused.append(apply_plan(blocks[0].candidates, plan, params.top_k, segments, data=full))
    seconds = {  # fit once + every block's scoring
        m: fit + sum(b.seconds.get(m, 0.0) for b in blocks) for m, fit in fitted.seconds.items()
    }
    cands = CandidateSet(
        pl.concat([b.candidates for b in blocks]), dict(fitted.skipped), seconds
    )
    seconds = dict(seconds)
    seconds["recommend_total"] = time.perf_counter() - start
    return Recommendations(full, cands, pl.concat(fused, how="diagonal_relaxed"), segments,
                           seconds, files, n_candidates)
