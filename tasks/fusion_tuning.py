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
    CandidateTable,
    Normalisation,
    SegmentWeights,
    candidate_table,
    fuse_table,
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
) -> pl.DataFrame:
    """Fuse with a plan; pass a CandidateTable built with the plan's normalisation to reuse it."""
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
) -> dict[str, pl.DataFrame]:
    """Fuse with several plans, building each normalisation's candidate table only once."""
    tables = {} if tables is None else tables
    out = {}
    for plan in plans:
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


def choose_plan(
    candidates: pl.DataFrame,
    truth: pl.DataFrame,
    k: int,
    segments: pl.DataFrame,
    strategy: str = "auto",
    normalisation: Normalisation = "minmax",
    fixed_weights: Mapping[str, float] | None = None,
) -> FusionPlan:
    """Tune weights per segment and, for `auto`, pick the strategy with the best validation NDCG."""
    seg_of = segments.select(pl.col("user_idx").cast(pl.Int32), "segment")
    weighted_table = candidate_table(candidates, normalisation)
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
            seg_table = CandidateTable(
                weighted_table.frame.join(users, on="user_idx", how="semi"),
                weighted_table.modalities,
                normalisation,
            )
            w, score = tune_weights(seg_table, seg_truth, k)
            tuned[segment] = w
            log.info(
                "tuned %s weights for %s users: %s (validation ndcg %.4f)",
                normalisation,
                segment,
                w,
                score,
            )
        weights = tuned or {DEFAULT_SEGMENT: dict.fromkeys(candidates["modality"].unique(), 1.0)}
    plans = [FusionPlan("weighted", normalisation, {s: dict(w) for s, w in weights.items()})]
    if strategy == "auto":
        plans += [FusionPlan(s) for s in RANK_STRATEGIES]
    elif strategy != "weighted":
        plans = [
            FusionPlan(
                strategy, weights={s: dict(w) for s, w in weights.items()} if fixed_weights else {}
            )
        ]
    return best_plan(plans, candidates, truth, k, segments, {normalisation: weighted_table})


def best_plan(
    plans: Sequence[FusionPlan],
    candidates: pl.DataFrame,
    truth: pl.DataFrame,
    k: int,
    segments: pl.DataFrame,
    tables: dict[str, CandidateTable] | None = None,
) -> FusionPlan:
    """Evaluate each plan on the validation truth; the winner carries every plan's score."""
    from tasks.metrics import ranking_metrics

    scores: dict[str, float] = {}
    fused_by_strategy = apply_plans(candidates, plans, k, segments, tables)
    for plan in plans:
        fused = fused_by_strategy[plan.strategy]
        recs = fused.select(
            pl.col("user_idx").alias("user_id"), pl.col("item_idx").alias("item_id"), "rank"
        )
        scores[plan.strategy] = ranking_metrics(
            recs, truth.rename({"user_idx": "user_id", "item_idx": "item_id"}), k
        )["ndcg"]
    winner = max(plans, key=lambda p: scores[p.strategy])
    winner.validation_ndcg = scores
    winner.alternatives = list(plans)
    return winner
