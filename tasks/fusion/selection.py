"""Choose a fusion plan on validation so that it cannot make the lists worse.

Every recipe — each single source alone and each fuser — gets one NDCG@K per validation user.
Learned fusers are judged out of fold: validation users are split in two seeded halves, a fuser
fitted on one half scores the other, so nobody is scored by a model trained on their own labels.
The best single source is the baseline; a more complex recipe replaces it only when its mean
per-user gain over that baseline exceeds `z` standard errors of the paired difference. A
cold-start rule (users with at most t items get another recipe) is kept the same way, against
the default recipe on those same users; "no special cold rule" is what remains otherwise.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from tasks.data.dataset import Dataset
from tasks.fusion.plan import (
    AUTO,
    DEFAULT_FUSER,
    FUSERS,
    SINGLE,
    CandidatePool,
    FitContext,
    Fuser,
    FusionPlan,
    Recipe,
    apply_recipe,
    single,
    top_up,
)
from tasks.fusion.stacking import StackingParams
from tasks.fusion.table import Normalisation
from tasks.modalities.registry import FLOOR_MODALITY

log = logging.getLogger(__name__)

#: Cold thresholds tried when the run does not fix one (users with at most t items).
COLD_THRESHOLDS = (1, 2, 3, 5)
#: A cold rule is judged on at least this many validation users with that short a history.
MIN_COLD_USERS = 30


@dataclass(frozen=True)
class Paired:
    """Mean per-user difference of a recipe against a baseline, with its standard error."""

    gain: float
    std_error: float
    n: int

    @classmethod
    def of(cls, values: np.ndarray, baseline: np.ndarray) -> Paired:
        d = np.asarray(values, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
        if d.size == 0:
            return cls(0.0, math.inf, 0)
        se = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else math.inf
        return cls(float(d.mean()), se, int(d.size))

    def beats(self, z: float) -> bool:
        """A real gain: positive and more than z standard errors (a 0-variance tie never beats)."""
        return self.gain > 0 and self.gain > z * self.std_error


def per_user_ndcg(
    fused: pl.DataFrame, truth: pl.DataFrame, users: np.ndarray, k: int
) -> np.ndarray:
    """NDCG@k per user of `users` (sorted user indexes); a user without a list scores 0."""
    rel = truth.select(pl.col("user_idx").cast(pl.Int32), pl.col("item_idx").cast(pl.Int32)) \
        .unique()
    n_rel = rel.group_by("user_idx").len()
    hits = (
        fused.filter(pl.col("rank") <= k)
        .select(pl.col("user_idx").cast(pl.Int32), pl.col("item_idx").cast(pl.Int32), "rank")
        .join(rel, on=["user_idx", "item_idx"], how="semi")
        .sort("user_idx", "rank")  # float sums in one order, whatever order the rows came in
        .group_by("user_idx", maintain_order=True)
        .agg((1.0 / (pl.col("rank").cast(pl.Float64) + 1.0).log(2)).sum().alias("dcg"))
    )
    ideal = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])
    frame = (
        pl.DataFrame({"user_idx": np.asarray(users, dtype=np.int32)})
        .join(n_rel, on="user_idx", how="left", maintain_order="left")
        .join(hits, on="user_idx", how="left", maintain_order="left")
    )
    n = np.minimum(frame["len"].fill_null(0).to_numpy(), k)
    dcg = frame["dcg"].fill_null(0.0).to_numpy()
    idcg = ideal[n]
    return np.divide(dcg, idcg, out=np.zeros(len(dcg)), where=idcg > 0)


def _restrict(frame: pl.DataFrame, users: np.ndarray) -> pl.DataFrame:
    return frame.filter(pl.col("user_idx").is_in(pl.Series(users.astype(np.int32)).implode()))


@dataclass
class _Scores:
    """Per-user validation NDCG of every recipe tried, aligned with `users`."""

    users: np.ndarray
    values: dict[str, np.ndarray]
    recipes: dict[str, Recipe]  # fitted on all validation users (or the fold fit, for reporting)
    references: tuple[str, ...] = ()  # scored for comparison only, never chosen


def _score_recipes(
    pool: CandidatePool,
    truth: pl.DataFrame,
    users: np.ndarray,
    fusers: Sequence[str],
    ctx: FitContext,
    references: Mapping[str, pl.DataFrame] | None = None,
) -> _Scores:
    k = ctx.k
    values: dict[str, np.ndarray] = {}
    recipes: dict[str, Recipe] = {}
    modalities = pool.modalities
    pool.table("minmax"), pool.table(ctx.normalisation)  # built once, shared by every fold
    for m in modalities:
        recipe = single(m)
        fused = top_up(apply_recipe(recipe, pool, k, ctx.data), pool, k)
        values[m], recipes[m] = per_user_ndcg(fused, truth, users, k), recipe
    fold = np.random.default_rng(ctx.seed).random(len(users)) < 0.5

    def learned(name: str) -> bool:
        return _learns(FUSERS[name], ctx)

    for name in [n for n in fusers if not learned(n)]:
        recipe_all = FUSERS[name].fit(pool, truth, ctx)
        if recipe_all is None:
            continue
        fused = top_up(apply_recipe(recipe_all, pool, k, ctx.data), pool, k)
        values[name], recipes[name] = per_user_ndcg(fused, truth, users, k), recipe_all
    # The learned fusers work on the halves, which carry their own part of the tables: the whole
    # pool's go meanwhile (held twice, they and the stacker's training rows were the validation's
    # peak), built again only if the chosen recipe is refitted on a table.
    halves = {side: (pool.restrict(users[fold == side]), _restrict(truth, users[fold == side]))
              for side in (True, False)}
    pool.tables.clear()
    for name in [n for n in fusers if learned(n)]:
        fuser = FUSERS[name]
        out = np.zeros(len(users))
        fitted: Recipe | None = None
        for side in (True, False):
            (fit_pool, fit_truth), (part, _) = halves[side], halves[not side]
            half = fuser.fit(fit_pool, fit_truth, ctx)
            if half is None or part.height == 0:
                fitted = None
                break
            fused = top_up(apply_recipe(half, part, k, ctx.data), part, k)
            out[fold != side] = per_user_ndcg(fused, truth, users[fold != side], k)
            fitted = fitted or half
        if fitted is not None:
            values[name], recipes[name] = out, fitted
    del halves
    # In the order the sources and fusers are listed, whatever order they were scored in.
    order = [*modalities, *fusers]
    values = {n: values[n] for n in order if n in values}
    recipes = {n: recipes[n] for n in order if n in recipes}
    refs = dict(references or {})
    for name, frame in refs.items():
        values[name] = per_user_ndcg(frame, truth, users, k)
    return _Scores(users, values, recipes, tuple(refs))


def _row(name: str, scores: _Scores, mask: np.ndarray, base: str) -> dict[str, object]:
    """One line of the selection table: the recipe's mean and its paired gain over `base`."""
    p = Paired.of(scores.values[name][mask], scores.values[base][mask])
    row: dict[str, object] = {
        "recipe": name,
        "single": name in scores.recipes and scores.recipes[name].fuser == SINGLE,
        "ndcg": float(scores.values[name][mask].mean()) if mask.any() else 0.0,
        "gain": p.gain, "std_error": p.std_error if math.isfinite(p.std_error) else None,
        "n_users": p.n, "vs": base,
    }
    pop = next((n for n in (FLOOR_MODALITY, *scores.references) if n in scores.values), None)
    if pop is not None:
        q = Paired.of(scores.values[name][mask], scores.values[pop][mask])
        row |= {"gain_vs_popularity": q.gain,
                "se_vs_popularity": q.std_error if math.isfinite(q.std_error) else None}
    return row


def select_plan(
    candidates: pl.DataFrame | CandidatePool,
    truth: pl.DataFrame,
    data: Dataset,
    k: int,
    strategy: str = AUTO,
    z: float = 1.0,
    cold_history_max: int | None = None,
    cold_users: np.ndarray | None = None,
    normalisation: Normalisation = "minmax",
    fixed_weights: Mapping[str, float] | None = None,
    seed: int = 7,
    references: Mapping[str, pl.DataFrame] | None = None,
    stacking: StackingParams | None = None,
) -> FusionPlan:
    """The plan for these validation candidates and labels (user_idx, item_idx).

    `strategy`: 'auto' compares every single source and every fuser; a fuser name fixes the
    default recipe to it. `cold_history_max`: None learns the cold rule (thresholds
    `COLD_THRESHOLDS`), 0 means no cold rule, n > 0 fixes the threshold and learns the recipe.
    `cold_users`: validation users of the cold pool, who never decide the default recipe.
    `references`: ready lists (e.g. a popularity baseline) scored for the record, never chosen.
    """
    users = np.unique(truth["user_idx"].to_numpy()).astype(np.int64)
    fusers = list(FUSERS) if strategy == AUTO else [strategy]
    if strategy != AUTO and strategy not in FUSERS:
        raise ValueError(f"unknown fusion strategy {strategy!r}")
    ctx = FitContext(data, k, seed, normalisation, fixed_weights, stacking)
    pool = CandidatePool.of(candidates)
    if len(users) == 0 or pool.height == 0:
        return FusionPlan(Recipe(fusers[0] if strategy != AUTO else DEFAULT_FUSER,
                                 weights=dict(fixed_weights) if fixed_weights else None))
    scores = _score_recipes(pool, truth, users, fusers, ctx, references)
    in_pool = (np.zeros(len(users), dtype=bool) if cold_users is None
               else np.isin(users, cold_users))
    main = ~in_pool if (~in_pool).any() else np.ones(len(users), dtype=bool)
    singles = [n for n, r in scores.recipes.items() if r.fuser == SINGLE]
    complex_ = [n for n, r in scores.recipes.items() if r.fuser != SINGLE]
    selection: list[dict[str, object]] = []

    base = max(singles, key=lambda n: (scores.values[n][main].mean(), n))
    default = base
    if strategy == AUTO:
        best_gain = 0.0
        for name in complex_:
            p = Paired.of(scores.values[name][main], scores.values[base][main])
            if p.beats(z) and p.gain > best_gain:
                default, best_gain = name, p.gain
    elif complex_:  # a fixed fuser serves, measured against the best single source all the same
        default = complex_[0]
    for name in scores.values:
        selection.append({**_row(name, scores, main, base), "role": "default"
                          if name == default else "candidate", "segment": "main"})

    cold_name, cold_max = _cold_rule(scores, default, data, cold_history_max, z, selection)
    recipes = dict(scores.recipes)
    for name in [n for n in (default, cold_name) if n is not None]:
        recipes[name] = refit_recipe(recipes[name], pool, truth, ctx)
    plan = FusionPlan(
        recipes[default],
        recipes[cold_name] if cold_name else None,
        cold_max,
        selection,
        [r for n, r in recipes.items() if r.fuser != SINGLE],
    )
    log.info("fusion plan: %s (validation users %d)", plan.strategy, len(users))
    return plan


def refit_recipe(
    recipe: Recipe, pool: CandidatePool, truth: pl.DataFrame, ctx: FitContext
) -> Recipe:
    """The same recipe learned again on these candidates and labels (singles need nothing)."""
    fuser = FUSERS.get(recipe.fuser)
    if fuser is None or not _learns(fuser, ctx):
        return recipe
    return fuser.fit(pool, truth, ctx) or recipe


def _learns(fuser: Fuser, ctx: FitContext) -> bool:
    """Learned from labels here: fixed weights replace a weight search."""
    return fuser.learned and not (ctx.fixed_weights and fuser.weights)


def refit_plan(
    plan: FusionPlan,
    candidates: pl.DataFrame | CandidatePool,
    truth: pl.DataFrame,
    data: Dataset,
    k: int,
    normalisation: Normalisation = "minmax",
    fixed_weights: Mapping[str, float] | None = None,
    seed: int = 7,
    stacking: StackingParams | None = None,
) -> FusionPlan:
    """The plan chosen on validation, its learned recipes refitted on a later split.

    What is published is what was evaluated (same recipes, same cold threshold), learned again
    on the most recent data, since nothing is evaluated after it.
    """
    pool = CandidatePool.of(candidates)
    ctx = FitContext(data, k, seed, normalisation, fixed_weights, stacking)
    # The cold recipe first: a stacker's fit drops the pool's tables, which a tuned fuser needs.
    cold = refit_recipe(plan.cold, pool, truth, ctx) if plan.cold else None
    return FusionPlan(
        refit_recipe(plan.default, pool, truth, ctx),
        cold,
        plan.cold_max,
        plan.selection,
        plan.alternatives,
    )


def _cold_rule(
    scores: _Scores,
    default: str,
    data: Dataset,
    cold_history_max: int | None,
    z: float,
    selection: list[dict[str, object]],
) -> tuple[str | None, int]:
    """The (recipe, threshold) that beats the default recipe on short-history users, if any."""
    if cold_history_max == 0:
        return None, 0
    thresholds = COLD_THRESHOLDS if cold_history_max is None else (cold_history_max,)
    history = data.history_lengths()[scores.users]
    best: tuple[float, str | None, int] = (0.0, None, 0)
    for t in thresholds:
        mask = history <= t
        if mask.sum() < MIN_COLD_USERS:
            continue
        for name in scores.values:
            if name == default:
                continue
            p = Paired.of(scores.values[name][mask], scores.values[default][mask])
            selection.append({**_row(name, scores, mask, default), "role": "cold candidate",
                              "segment": f"history ≤ {t}"})
            total = p.gain * p.n
            if p.beats(z) and total > best[0]:
                best = (total, name, t)
    if best[1] is not None:
        for row in selection:
            if row["recipe"] == best[1] and row["segment"] == f"history ≤ {best[2]}":
                row["role"] = "cold"
    return best[1], best[2]
