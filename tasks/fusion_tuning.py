"""Learn how to fuse on a validation window, then apply that plan to fresh candidates.

Tuning only ever sees candidates from models fitted strictly before the validation window, so the
plan it returns can be evaluated on a later window without leakage.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from tasks.fusion import (
    DEFAULT_SEGMENT,
    Normalisation,
    SegmentWeights,
    fuse_rank,
    fuse_weighted,
    normalise,
)

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

    def to_dict(self) -> dict[str, object]:
        return {"strategy": self.strategy, "normalisation": self.normalisation,
                "weights": self.weights, "validation_ndcg": self.validation_ndcg}


def apply_plan(candidates: pl.DataFrame, plan: FusionPlan, k: int,
               segments: pl.DataFrame | None) -> pl.DataFrame:
    if plan.strategy == "weighted":
        return fuse_weighted(candidates, plan.weights, k, plan.normalisation, segments)
    return fuse_rank(candidates, plan.strategy, k, plan.weights or None, segments)  # type: ignore[arg-type]


def _wide_norms(candidates: pl.DataFrame, modalities: Sequence[str],
                normalisation: Normalisation) -> pl.DataFrame:
    wide = normalise(candidates, normalisation).pivot(
        on="modality", index=["user_idx", "item_idx"], values="norm", aggregate_function="max")
    for m in modalities:
        if m not in wide.columns:
            wide = wide.with_columns(pl.lit(None, pl.Float64).alias(m))
    # A modality that did not propose an item gives it its floor (0 after min-max).
    return wide.with_columns([pl.col(m).fill_null(0.0) for m in modalities]).sort("user_idx")


class _FastNdcg:
    """NDCG@k of many weight vectors over one fixed candidate pool, with NumPy only."""

    def __init__(self, wide: pl.DataFrame, truth: pl.DataFrame, modalities: Sequence[str], k: int):
        labelled = wide.join(truth.with_columns(pl.lit(1.0).alias("hit")),
                             on=["user_idx", "item_idx"], how="left").sort("user_idx")
        self.users = labelled["user_idx"].to_numpy()
        self.features = labelled.select(modalities).to_numpy().astype(np.float64)
        self.hits = labelled["hit"].fill_null(0.0).to_numpy()
        self.items = labelled["item_idx"].to_numpy()
        n_rel = truth.group_by("user_idx").len()
        self.n_users = max(1, n_rel.height)
        rel = dict(zip(n_rel["user_idx"].to_list(), n_rel["len"].to_list(), strict=True))
        uniq = np.unique(self.users)
        rel_per_user = np.array([rel.get(int(u), 0) for u in uniq], dtype=np.int64)
        discounts = 1.0 / np.log2(np.arange(2, k + 2))
        ideal = np.concatenate([[0.0], np.cumsum(discounts)])
        self.uniq, self.k, self.discounts = uniq, k, discounts
        self.idcg_arr = ideal[np.minimum(rel_per_user, k)]

    def __call__(self, weights: np.ndarray) -> float:
        score = self.features @ weights
        order = np.lexsort((self.items, -score, self.users))
        users = self.users[order]
        starts = np.searchsorted(users, self.uniq)
        pos = np.arange(len(users)) - np.repeat(starts, np.diff(np.append(starts, len(users))))
        keep = pos < self.k
        gains = self.hits[order][keep] * self.discounts[pos[keep]]
        dcg = np.bincount(np.searchsorted(self.uniq, users[keep]), weights=gains,
                          minlength=len(self.uniq))
        with np.errstate(invalid="ignore", divide="ignore"):
            ndcg = np.where(self.idcg_arr > 0, dcg / self.idcg_arr, 0.0)
        return float(ndcg.sum() / self.n_users)


def tune_weights(candidates: pl.DataFrame, truth: pl.DataFrame, k: int,
                 normalisation: Normalisation = "minmax", passes: int = 2) -> tuple[dict[str, float], float]:
    """Coordinate ascent over a weight grid, maximising validation NDCG@k."""
    modalities = sorted(candidates["modality"].unique().to_list())
    if not modalities or truth.height == 0:
        return dict.fromkeys(modalities, 1.0), 0.0
    wide = _wide_norms(candidates, modalities, normalisation)
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


def choose_plan(candidates: pl.DataFrame, truth: pl.DataFrame, k: int,
                segments: pl.DataFrame, strategy: str = "auto",
                normalisation: Normalisation = "minmax",
                fixed_weights: Mapping[str, float] | None = None) -> FusionPlan:
    """Tune weights per segment and, for `auto`, pick the strategy with the best validation NDCG."""
    seg_of = segments.select("user_idx", "segment")
    weights: SegmentWeights
    if fixed_weights:
        weights = {DEFAULT_SEGMENT: dict(fixed_weights)}
    else:
        tuned: dict[str, dict[str, float]] = {}
        for segment in sorted(seg_of["segment"].unique().to_list()):
            users = seg_of.filter(pl.col("segment") == segment).select("user_idx")
            seg_truth = truth.join(users, on="user_idx", how="semi")
            if seg_truth.height == 0:
                continue
            w, score = tune_weights(candidates.join(users, on="user_idx", how="semi"), seg_truth,
                                    k, normalisation)
            tuned[segment] = w
            log.info("tuned %s weights for %s users: %s (validation ndcg %.4f)",
                     normalisation, segment, w, score)
        weights = tuned or {DEFAULT_SEGMENT: dict.fromkeys(candidates["modality"].unique(), 1.0)}
    plans = [FusionPlan("weighted", normalisation, {s: dict(w) for s, w in weights.items()})]
    if strategy == "auto":
        plans += [FusionPlan(s) for s in RANK_STRATEGIES]
    elif strategy != "weighted":
        plans = [FusionPlan(strategy, weights={s: dict(w) for s, w in weights.items()}
                            if fixed_weights else {})]
    return best_plan(plans, candidates, truth, k, segments)


def best_plan(plans: Sequence[FusionPlan], candidates: pl.DataFrame, truth: pl.DataFrame, k: int,
              segments: pl.DataFrame) -> FusionPlan:
    """Evaluate each plan on the validation truth; the winner carries every plan's score."""
    from tasks.metrics import ranking_metrics

    scores: dict[str, float] = {}
    for plan in plans:
        fused = apply_plan(candidates, plan, k, segments)
        recs = fused.select(pl.col("user_idx").alias("user_id"), pl.col("item_idx").alias("item_id"),
                            "rank")
        scores[plan.strategy] = ranking_metrics(
            recs, truth.rename({"user_idx": "user_id", "item_idx": "item_id"}), k)["ndcg"]
    winner = max(plans, key=lambda p: scores[p.strategy])
    winner.validation_ndcg = scores
    winner.alternatives = list(plans)
    return winner
