"""A fusion plan — which recipe makes whose list — and the registry of fusers that make them.

A *recipe* is one way to build a user's list from the candidate frame: a single source's own
list, or a fuser (weighted, a rank fusion, stacking) with what it learned. A *plan* gives every
user the default recipe, and users with at most `cold_max` items the cold recipe when one was
learned. Lists shorter than K (a source that cannot serve a user) are topped up from the union
of all candidates, so every plan serves every user that any source can serve.

Adding a fuser: one `Fuser` entry in `FUSERS` (a fit function returning a `Recipe`); nothing else
branches on fuser names.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from tasks.data.dataset import Dataset
from tasks.fusion.stacking import (
    StackingModel,
    StackingParams,
    StackingUnavailable,
    fit_stacker,
    fuse_stacking,
)
from tasks.fusion.table import RRF_K, CandidateTable, Normalisation, candidate_table, fuse_table
from tasks.fusion.weights import tune_weights

log = logging.getLogger(__name__)

SINGLE = "single"
#: The strategy value that means "choose on validation" (not a fuser of its own).
AUTO = "auto"
#: The fuser used when nothing could be learned (no hold-out), with default weights.
DEFAULT_FUSER = "weighted"
FUSED_KEYS = {"user_idx": pl.Int32, "item_idx": pl.Int32, "score": pl.Float64, "rank": pl.Int32}


@dataclass
class Recipe:
    """One way to make a list: a single source (`fuser == 'single'`) or a fitted fuser."""

    fuser: str
    modality: str | None = None
    weights: dict[str, float] | None = None
    normalisation: Normalisation = "minmax"
    stacker: StackingModel | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.modality or SINGLE if self.fuser == SINGLE else self.fuser

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"recipe": self.name, "fuser": self.fuser}
        if self.weights:
            out["weights"] = {m: round(w, 4) for m, w in self.weights.items()}
        if self.fuser in FUSERS and FUSERS[self.fuser].normalised:
            out["normalisation"] = self.normalisation
        if self.stacker is not None:
            out["stacker"] = self.stacker.summary()
        return out


@dataclass
class CandidatePool:
    """A candidate frame with its wide tables built once per normalisation, so many recipes and
    folds over the same candidates do not each pivot millions of rows again."""

    candidates: pl.DataFrame
    tables: dict[str, CandidateTable] = field(default_factory=dict)

    @classmethod
    def of(cls, candidates: pl.DataFrame | CandidatePool) -> CandidatePool:
        return candidates if isinstance(candidates, CandidatePool) else cls(candidates)

    @property
    def modalities(self) -> list[str]:
        return sorted(self.candidates["modality"].unique().to_list())

    @property
    def height(self) -> int:
        return self.candidates.height

    def table(self, normalisation: Normalisation = "minmax") -> CandidateTable:
        if normalisation not in self.tables:
            self.tables[normalisation] = candidate_table(self.candidates, normalisation)
        return self.tables[normalisation]

    def single(self, modality: str) -> CandidateTable:
        """One modality's own list, min-max normalised within it (as built from it alone)."""
        table = self.table("minmax")
        frame = table.frame.filter(pl.col(f"rank_{modality}").is_not_null()).select(
            "user_idx", "item_idx", *[f"{c}_{modality}" for c in ("norm", "rank", "len")]
        )
        return CandidateTable(frame, (modality,), "minmax")

    def restrict(self, users: np.ndarray) -> CandidatePool:
        keep = pl.Series(np.asarray(users, dtype=np.int32))
        return CandidatePool(
            self.candidates.filter(pl.col("user_idx").is_in(keep.implode())),
            {n: CandidateTable(t.frame.filter(pl.col("user_idx").is_in(keep.implode())),
                               t.modalities, t.normalisation) for n, t in self.tables.items()},
        )


@dataclass(frozen=True)
class FitContext:
    """What every fuser may need besides candidates and labels."""

    data: Dataset
    k: int
    seed: int = 7
    normalisation: Normalisation = "minmax"
    fixed_weights: Mapping[str, float] | None = None
    stacking: StackingParams | None = None


@dataclass(frozen=True)
class Fuser:
    """A registered fuser: `fit` returns its recipe (None when it cannot be fitted here), `apply`
    makes the top-k lists of a recipe it fitted."""

    name: str
    learned: bool  # fitted on labels: judged out of fold, never on its own training users
    fit: Callable[[CandidatePool, pl.DataFrame, FitContext], Recipe | None]
    apply: Callable[[Recipe, CandidatePool, int, Dataset | None], pl.DataFrame]
    weights: bool = True  # what it learns is modality weights (fixed weights replace the search)
    normalised: bool = False  # fuses scores normalised as `fusion.normalisation` says
    needs_labels: bool = False  # cannot be made at all without the hold-out (evaluate=false)


def _modalities(candidates: pl.DataFrame) -> list[str]:
    return sorted(candidates["modality"].unique().to_list())


def _tuned(
    strategy: str, normalised: bool = False
) -> Callable[[CandidatePool, pl.DataFrame, FitContext], Recipe | None]:
    def fit(pool: CandidatePool, truth: pl.DataFrame, ctx: FitContext) -> Recipe | None:
        if pool.height == 0:
            return None
        norm = ctx.normalisation if normalised else "minmax"
        if ctx.fixed_weights:
            return Recipe(strategy, weights=dict(ctx.fixed_weights), normalisation=norm)
        weights, _ = tune_weights(pool.table(norm), truth, ctx.k, strategy=strategy)
        return Recipe(strategy, weights=weights, normalisation=norm)

    return fit


def _equal(strategy: str) -> Callable[[CandidatePool, pl.DataFrame, FitContext], Recipe | None]:
    def fit(pool: CandidatePool, truth: pl.DataFrame, ctx: FitContext) -> Recipe | None:
        weights = dict(ctx.fixed_weights) if ctx.fixed_weights else None
        return Recipe(strategy, weights=weights) if pool.height else None

    return fit


STACKING = "stacking"


def _fit_stacking(pool: CandidatePool, truth: pl.DataFrame, ctx: FitContext) -> Recipe | None:
    # The stacker learns from the candidates, never from the wide tables, and its training
    # rows are the evaluation's largest working set: the tables go first (a recipe that needs
    # one later builds it again; stacking is tried last, so few do).
    pool.tables.clear()
    cands = pool.candidates
    try:
        model = fit_stacker(cands, truth, ctx.data, _modalities(cands), seed=ctx.seed,
                            params=ctx.stacking)
    except StackingUnavailable as exc:
        log.info("stacking unavailable: %s", exc)
        return None
    return Recipe(STACKING, stacker=model)


def _apply_table(
    recipe: Recipe, pool: CandidatePool, k: int, data: Dataset | None
) -> pl.DataFrame:
    weights = {"warm": recipe.weights} if recipe.weights else None
    norm = recipe.normalisation if FUSERS[recipe.fuser].normalised else "minmax"
    return fuse_table(pool.table(norm), recipe.fuser, k, weights)


def _apply_stacking(
    recipe: Recipe, pool: CandidatePool, k: int, data: Dataset | None
) -> pl.DataFrame:
    if recipe.stacker is None or data is None:
        raise ValueError("a stacking recipe needs its fitted model and the Dataset")
    known = pool.candidates.filter(pl.col("modality").is_in(list(recipe.stacker.modalities)))
    return _with_all_contribs(fuse_stacking(known, data, recipe.stacker, k), pool.modalities)


#: Every fuser the product knows, in the order they are tried and reported.
FUSERS: dict[str, Fuser] = {
    f.name: f
    for f in (
        Fuser("weighted", True, _tuned("weighted", normalised=True), _apply_table,
              normalised=True),
        Fuser("rrf", True, _tuned("rrf"), _apply_table),
        Fuser("borda", True, _tuned("borda"), _apply_table),
        Fuser("combsum", False, _equal("combsum"), _apply_table),
        Fuser("combmnz", False, _equal("combmnz"), _apply_table),
        Fuser(STACKING, True, _fit_stacking, _apply_stacking, weights=False, needs_labels=True),
    )
}


def single(modality: str) -> Recipe:
    return Recipe(SINGLE, modality=modality)


def apply_recipe(
    recipe: Recipe,
    candidates: pl.DataFrame | CandidatePool,
    k: int,
    data: Dataset | None = None,
) -> pl.DataFrame:
    """The recipe's top-k per user: user_idx, item_idx, score, rank, contrib_<m> per modality."""
    pool = CandidatePool.of(candidates)
    modalities = pool.modalities
    if pool.height == 0:
        return _empty(modalities)
    if recipe.fuser == SINGLE:
        if recipe.modality not in modalities:
            return _empty(modalities)
        m = str(recipe.modality)
        fused = fuse_table(pool.single(m), DEFAULT_FUSER, k, {"warm": {m: 1.0}})
        return _with_all_contribs(fused, modalities)
    fuser = FUSERS.get(recipe.fuser)
    if fuser is None:
        raise ValueError(f"unknown fuser {recipe.fuser!r}")
    return fuser.apply(recipe, pool, k, data)


def _empty(modalities: list[str]) -> pl.DataFrame:
    return pl.DataFrame(schema={**FUSED_KEYS, **{f"contrib_{m}": pl.Float64 for m in modalities}})


def _with_all_contribs(fused: pl.DataFrame, modalities: list[str]) -> pl.DataFrame:
    missing = [pl.lit(0.0).alias(f"contrib_{m}") for m in modalities
               if f"contrib_{m}" not in fused.columns]
    cols = [*FUSED_KEYS, *[f"contrib_{m}" for m in modalities]]
    schema: dict[str, Any] = {**FUSED_KEYS, **{f"contrib_{m}": pl.Float64 for m in modalities}}
    return fused.with_columns(missing).select(cols).cast(schema)  # type: ignore[arg-type]


def top_up(
    fused: pl.DataFrame, candidates: pl.DataFrame | CandidatePool, k: int
) -> pl.DataFrame:
    """Fill lists shorter than k from the union of all candidates (equal-weight RRF order).

    Filled rows score strictly below the user's last listed item, so ranks stay contiguous and
    scores non-increasing; their contributions are the sources' RRF terms.
    """
    candidates = CandidatePool.of(candidates).candidates
    modalities = _modalities(candidates)
    counts = fused.group_by("user_idx").agg(
        pl.len().cast(pl.Int32).alias("n"), pl.col("score").min().alias("floor")
    )
    users = candidates.select(pl.col("user_idx").cast(pl.Int32)).unique()
    short = users.join(counts, on="user_idx", how="left").with_columns(
        pl.col("n").fill_null(0), pl.col("floor").fill_null(0.0)
    ).filter(pl.col("n") < k)
    if short.height == 0:
        return fused
    pool = (
        candidates.join(short.select("user_idx"), on="user_idx", how="semi")
        .with_columns((1.0 / (RRF_K + pl.col("rank").cast(pl.Float64))).alias("rrf"))
    )
    extra = (
        pool.group_by("user_idx", "item_idx")
        .agg(pl.col("rrf").sum().alias("total"), *[
            pl.col("rrf").filter(pl.col("modality") == m).sum().alias(f"contrib_{m}")
            for m in modalities
        ])
        .with_columns(pl.col("user_idx").cast(pl.Int32), pl.col("item_idx").cast(pl.Int32))
        .join(fused.select("user_idx", "item_idx"), on=["user_idx", "item_idx"], how="anti")
        .sort(["user_idx", "total", "item_idx"], descending=[False, True, False])
        .with_columns(pl.int_range(1, pl.len() + 1).over("user_idx").cast(pl.Int32).alias("j"))
        .join(short, on="user_idx")
        .filter(pl.col("j") <= k - pl.col("n"))
    )
    if extra.height == 0:
        return fused
    step = 1e-6 * pl.max_horizontal(pl.lit(1.0), pl.col("floor").abs())
    filled = extra.with_columns(
        (pl.col("floor") - pl.col("j").cast(pl.Float64) * step).alias("score"),
        (pl.col("n") + pl.col("j")).cast(pl.Int32).alias("rank"),
    )
    cols = [*FUSED_KEYS, *[c for c in fused.columns if c.startswith("contrib_")]]
    filled = filled.with_columns(
        [pl.lit(0.0).alias(c) for c in cols if c not in filled.columns]
    ).select(cols)
    return pl.concat([fused.select(cols), filled.cast(fused.select(cols).schema)]).sort(
        "user_idx", "rank"
    )


@dataclass
class FusionPlan:
    """Who gets which recipe; recorded with every run (`to_dict`)."""

    default: Recipe
    cold: Recipe | None = None
    cold_max: int = 0  # users with at most this many items get `cold` (when there is one)
    selection: list[dict[str, Any]] = field(default_factory=list)  # every recipe compared
    alternatives: list[Recipe] = field(default_factory=list)  # fitted recipes, for reporting

    @property
    def sources(self) -> list[str]:
        """The single sources the selection compared (names of modality lists)."""
        return sorted({str(r["recipe"]) for r in self.selection if r.get("single")})

    @property
    def strategy(self) -> str:
        """One name for runs.fusion_strategy: the default recipe, plus the cold rule if any."""
        if self.cold is None:
            return self.default.name
        return f"{self.default.name}; cold ≤{self.cold_max}: {self.cold.name}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "default": self.default.to_dict(),
            "cold": self.cold.to_dict() if self.cold else None,
            "cold_max": self.cold_max if self.cold else None,
            "selection": self.selection,
        }

    def segment_of(self, history: np.ndarray) -> np.ndarray:
        """'cold' where the cold recipe serves the user, else 'warm' (per user index)."""
        if self.cold is None:
            return np.full(len(history), "warm", dtype=object)
        return np.where(history <= self.cold_max, "cold", "warm").astype(object)


def apply_plan(
    candidates: pl.DataFrame | CandidatePool, plan: FusionPlan, k: int, data: Dataset
) -> pl.DataFrame:
    """Fuse every user's candidates with their recipe, then top lists up to k."""
    pool = CandidatePool.of(candidates)
    if plan.cold is None:
        fused = apply_recipe(plan.default, pool, k, data)
    else:
        users = np.unique(pool.candidates["user_idx"].to_numpy())
        is_cold = data.history_lengths()[users] <= plan.cold_max
        warm = apply_recipe(plan.default, pool.restrict(users[~is_cold]), k, data)
        cold = apply_recipe(plan.cold, pool.restrict(users[is_cold]), k, data)
        modalities = pool.modalities
        fused = pl.concat([_with_all_contribs(warm, modalities),
                           _with_all_contribs(cold, modalities)])
    return top_up(fused, pool, k).sort("user_idx", "rank")
