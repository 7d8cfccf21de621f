"""Learn how to fuse on a validation window, then apply that plan to fresh candidates.

Tuning only ever sees candidates from models fitted strictly before the validation window, so the
plan it returns can be evaluated on a later window without leakage. With `auto`, every strategy
is fitted on half of the validation users and compared on the other half (so a learned stacker
is not judged on its own training labels); the winner is then refitted on all of them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from tasks.dataset import Dataset
from tasks.fusion import (
    DEFAULT_SEGMENT,
    CandidateTable,
    Normalisation,
    candidate_table,
    fuse_table,
)

if TYPE_CHECKING:
    from tasks.stacking import StackingParams

log = logging.getLogger(__name__)

WEIGHT_GRID = (0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
RANK_STRATEGIES = ("rrf", "combsum", "combmnz", "borda")


@dataclass
class FusionPlan:
    """A chosen strategy with its per-segment weights, recorded with every run."""

    strategy: str
    normalisation: Normalisation = "minmax"
    weights: dict[str, dict[str, float]] = field(default_factory=dict)
    validation_ndcg: dict[str, float] = field(default_factory=dict)
    alternatives: list[FusionPlan] = field(default_factory=list)  # every plan that was compared
    stacker: Any = field(default=None, repr=False)  # a fitted tasks.stacking.StackingModel

    def to_dict(self) -> dict[str, object]:
        return {
            "strategy": self.strategy,
            "normalisation": self.normalisation,
            "weights": self.weights,
            "validation_ndcg": self.validation_ndcg,
        }


def apply_plan(
    candidates: pl.DataFrame | CandidateTable,
    plan: FusionPlan,
    k: int,
    segments: pl.DataFrame | None,
    data: Dataset | None = None,
) -> pl.DataFrame:
    """Fuse with a plan; pass a CandidateTable built with the plan's normalisation to reuse it.

    Stacking needs the raw candidate frame and the Dataset the candidates came from.
    """
    if plan.strategy == "stacking":
        from tasks.stacking import fuse_stacking

        if not isinstance(candidates, pl.DataFrame) or data is None:
            raise ValueError("stacking needs the candidate frame and its Dataset")
        return fuse_stacking(candidates, data, plan.stacker, k)
    normalisation = plan.normalisation if plan.strategy == "weighted" else "minmax"
    if isinstance(candidates, CandidateTable):
        if candidates.normalisation != normalisation:
            raise ValueError(
                f"candidate table is {candidates.normalisation}, plan needs {normalisation}"
            )
        table = candidates
    else:
        table = candidate_table(candidates, normalisation)
    return fuse_table(table, plan.strategy, k, plan.weights or None, segments)


def apply_plans(
    candidates: pl.DataFrame,
    plans: Sequence[FusionPlan],
    k: int,
    segments: pl.DataFrame | None,
    tables: dict[str, CandidateTable] | None = None,
    data: Dataset | None = None,
) -> dict[str, pl.DataFrame]:
    """Fuse with several plans, building each normalisation's candidate table only once."""
    tables = {} if tables is None else tables
    out = {}
    for plan in plans:
        if plan.strategy == "stacking":
            out[plan.strategy] = apply_plan(candidates, plan, k, segments, data)
            continue
        normalisation = plan.normalisation if plan.strategy == "weighted" else "minmax"
        if normalisation not in tables:
            tables[normalisation] = candidate_table(candidates, normalisation)
        out[plan.strategy] = apply_plan(tables[normalisation], plan, k, segments)
    return out


def _wide_norms(table: CandidateTable) -> pl.DataFrame:
    # A modality that did not propose an item gives it its floor (0 after min-max).
    return table.frame.select(
        "user_idx",
        "item_idx",
        *[pl.col(f"norm_{m}").fill_null(0.0).alias(m) for m in table.modalities],
    ).sort("user_idx")


class _FastNdcg:
    """NDCG@k of many weight vectors over one fixed candidate pool, with NumPy only.

    Candidates are laid out as a padded users × slots block, so each evaluation is one matrix
    product and one row-wise argpartition instead of a global sort.
    """

    def __init__(self, wide: pl.DataFrame, truth: pl.DataFrame, modalities: Sequence[str], k: int):
        labelled = wide.join(
            truth.with_columns(pl.lit(1.0).alias("hit")), on=["user_idx", "item_idx"], how="left"
        ).sort("user_idx", "item_idx")
        users = labelled["user_idx"].to_numpy()
        self.uniq, starts, counts = np.unique(users, return_index=True, return_counts=True)
        slots = int(counts.max()) if counts.size else 0
        row = np.repeat(np.arange(len(self.uniq)), counts)
        col = np.arange(len(users)) - np.repeat(starts, counts)
        self.features = np.zeros((len(self.uniq), slots, len(modalities)), dtype=np.float32)
        self.features[row, col] = labelled.select(modalities).to_numpy().astype(np.float32)
        self.valid = np.zeros((len(self.uniq), slots), dtype=bool)
        self.valid[row, col] = True
        self.hits = np.zeros((len(self.uniq), slots), dtype=np.float32)
        self.hits[row, col] = labelled["hit"].fill_null(0.0).to_numpy()
        n_rel = truth.group_by("user_idx").len()
        rel = pl.DataFrame({"user_idx": self.uniq}).join(n_rel, on="user_idx", how="left")
        rel_per_user = rel["len"].fill_null(0).to_numpy()
        self.n_users = max(1, n_rel.height)
        self.k = min(k, slots) if slots else 0
        self.discounts = (1.0 / np.log2(np.arange(2, k + 2))).astype(np.float32)
        ideal = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])
        self.idcg = ideal[np.minimum(rel_per_user, k)]

    def __call__(self, weights: np.ndarray) -> float:
        if self.k == 0:
            return 0.0
        score = self.features @ weights.astype(np.float32)
        score[~self.valid] = -np.inf
        # Slots are item-ordered within a user, so a stable descending sort breaks ties by item.
        top = np.argpartition(-score, self.k - 1, axis=1)[:, : self.k]
        top_scores = np.take_along_axis(score, top, axis=1)
        order = np.lexsort((top, -top_scores), axis=1)
        top = np.take_along_axis(top, order, axis=1)
        gains = np.take_along_axis(self.hits, top, axis=1) @ self.discounts[: self.k]
        with np.errstate(invalid="ignore", divide="ignore"):
            ndcg = np.where(self.idcg > 0, gains / self.idcg, 0.0)
        return float(ndcg.sum() / self.n_users)


def tune_weights(
    table: CandidateTable, truth: pl.DataFrame, k: int, passes: int = 2
) -> tuple[dict[str, float], float]:
    """Coordinate ascent over a weight grid, maximising validation NDCG@k."""
    modalities = list(table.modalities)
    if not modalities or truth.height == 0:
        return dict.fromkeys(modalities, 1.0), 0.0
    wide = _wide_norms(table)
    ndcg = _FastNdcg(wide, truth, modalities, k)
    weights = np.ones(len(modalities))
    best = ndcg(weights)
    for _ in range(passes):
        improved = False
        for j in range(len(modalities)):
            for value in WEIGHT_GRID:
                trial = weights.copy()
                trial[j] = value
                if not trial.any():
                    continue
                score = ndcg(trial)
                if score > best + 1e-9:
                    best, weights, improved = score, trial, True
        if not improved:
            break
    return dict(zip(modalities, weights.tolist(), strict=True)), best


def tune_segment_weights(
    table: CandidateTable, truth: pl.DataFrame, k: int, segments: pl.DataFrame
) -> dict[str, dict[str, float]]:
    """Weights per user segment (cold users get their own blend), each tuned on its own users."""
    seg_of = segments.select(pl.col("user_idx").cast(pl.Int32), "segment")
    tuned: dict[str, dict[str, float]] = {}
    for segment in sorted(seg_of["segment"].unique().to_list()):
        users = seg_of.filter(pl.col("segment") == segment).select("user_idx")
        seg_truth = truth.join(users, on="user_idx", how="semi")
        if seg_truth.height == 0:
            continue
        seg_table = CandidateTable(
            table.frame.join(users, on="user_idx", how="semi"),
            table.modalities,
            table.normalisation,
        )
        tuned[segment], score = tune_weights(seg_table, seg_truth, k)
        log.info("tuned weights for %s users: %s (ndcg %.4f)", segment, tuned[segment], score)
    return tuned or {DEFAULT_SEGMENT: dict.fromkeys(table.modalities, 1.0)}


def fit_plan(
    strategy: str,
    candidates: pl.DataFrame,
    truth: pl.DataFrame,
    k: int,
    segments: pl.DataFrame,
    data: Dataset | None,
    normalisation: Normalisation = "minmax",
    fixed_weights: Mapping[str, float] | None = None,
    seed: int = 7,
    stacking: StackingParams | None = None,
) -> FusionPlan | None:
    """Fit one strategy on (candidates, truth); None when it cannot be fitted (e.g. stacking)."""
    fixed = {DEFAULT_SEGMENT: dict(fixed_weights)} if fixed_weights else None
    if strategy == "weighted":
        weights = fixed or tune_segment_weights(
            candidate_table(candidates, normalisation), truth, k, segments
        )
        return FusionPlan("weighted", normalisation, {s: dict(w) for s, w in weights.items()})
    if strategy in RANK_STRATEGIES:
        return FusionPlan(strategy, weights=fixed or {})
    if strategy == "stacking":
        from tasks.stacking import StackingUnavailable, fit_stacker

        if data is None:
            return None
        modalities = sorted(candidates["modality"].unique().to_list())
        try:
            stacker = fit_stacker(candidates, truth, data, modalities, seed=seed, params=stacking)
        except StackingUnavailable as exc:
            log.warning("stacking unavailable: %s", exc)
            return None
        return FusionPlan("stacking", stacker=stacker)
    raise ValueError(f"unknown fusion strategy {strategy!r}")


def _ndcg(fused: pl.DataFrame, truth: pl.DataFrame, k: int) -> float:
    from tasks.metrics import ranking_metrics

    recs = fused.select(
        pl.col("user_idx").alias("user_id"), pl.col("item_idx").alias("item_id"), "rank"
    )
    return ranking_metrics(recs, truth.rename({"user_idx": "user_id", "item_idx": "item_id"}), k)[
        "ndcg"
    ]


def choose_plan(
    candidates: pl.DataFrame,
    truth: pl.DataFrame,
    k: int,
    segments: pl.DataFrame,
    strategy: str = "auto",
    normalisation: Normalisation = "minmax",
    fixed_weights: Mapping[str, float] | None = None,
    data: Dataset | None = None,
    seed: int = 7,
    stacking: StackingParams | None = None,
) -> FusionPlan:
    """Fit the requested strategy, or for `auto` pick the best one on held-apart users.

    `auto`: validation users are split in two halves; every strategy is fitted on one half and
    scored (NDCG@k) on the other; the winner is refitted on all users. A strategy that cannot be
    fitted falls back to `weighted`. The returned plan lists every refitted alternative.
    """
    strategies = ["weighted", *RANK_STRATEGIES, "stacking"] if strategy == "auto" else [strategy]

    def fit(name: str, cands: pl.DataFrame, labels: pl.DataFrame) -> FusionPlan | None:
        return fit_plan(
            name, cands, labels, k, segments, data, normalisation, fixed_weights, seed, stacking
        )

    scores: dict[str, float] = {}
    half_fitted: dict[str, FusionPlan] = {}
    if len(strategies) > 1 and truth.height:
        users = truth.select("user_idx").unique().sort("user_idx")
        rng = np.random.default_rng(seed)
        half = users.filter(pl.Series(rng.random(users.height) < 0.5))
        fit_c = candidates.join(half, on="user_idx", how="semi")
        fit_t = truth.join(half, on="user_idx", how="semi")
        held_c = candidates.join(half, on="user_idx", how="anti")
        held_t = truth.join(half, on="user_idx", how="anti")
        for name in strategies:
            plan = fit(name, fit_c, fit_t)
            if plan is not None:
                half_fitted[name] = plan
                scores[name] = _ndcg(apply_plan(held_c, plan, k, segments, data), held_t, k)
        log.info("fusion strategies on held-apart validation users: %s", scores)
    best = max(scores, key=lambda n: scores[n]) if scores else None
    finals = []
    for name in strategies:
        # A learned stacker is costly: refit it on all users only when it is the winner.
        expensive_loser = name == "stacking" and name != best and name in half_fitted
        plan = half_fitted[name] if expensive_loser else fit(name, candidates, truth)
        if plan is not None:
            finals.append(plan)
    if not finals:
        finals = [fit("weighted", candidates, truth) or FusionPlan("weighted")]
    if not scores:
        scores = {
            p.strategy: _ndcg(apply_plan(candidates, p, k, segments, data), truth, k)
            for p in finals
        }
    winner = max(finals, key=lambda p: scores.get(p.strategy, float("-inf")))
    winner.validation_ndcg = scores
    winner.alternatives = finals
    return winner
