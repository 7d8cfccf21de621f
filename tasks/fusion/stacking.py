"""Stacking fusion: learn to rank the union of every modality's candidates.

Weighted and rank fusion combine modality scores with a few global weights, so they cannot use
"who is asking" (a heavy or a mainstream listener vs a newcomer) or "what is proposed" (a hit vs a
niche item). Stacking turns each (user, item) in the union of the candidate lists into a feature
row (each modality's score, within-list normalised score, rank and presence; cross-modality
agreement; user/item context) and fits a pointwise classifier "is this pair in the next window's
truth?". Its predicted probability is the fused score.

The default learner is a logistic regression on standardised features over (almost) all
candidates: on the Last.fm validation protocol it beat boosted trees (HistGradientBoosting,
`learner="hgb"`, bagged over negative samples) and is cheaper, deterministic and robust to the
shift between the models the stacker is trained on and those it is applied to.

No leakage: the classifier is fit on candidates of models trained strictly before the window its
labels come from, and applied to candidates of models trained on later data (the run's nested
protocol: `tasks.recommend.evaluate_holdout`). The feature spec (modality list,
missing-rank sentinel, blend weights) lives in the model, so training and application always see
the same columns.
"""

from __future__ import annotations

import functools
import logging
import operator
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
import polars as pl
from pydantic import AfterValidator, ConfigDict, Field
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic_core import PydanticCustomError
from scipy.special import expit
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from tasks.data.dataset import Dataset
from tasks.fusion.table import RRF_K, candidate_table, ordered_sum
from tasks.fusion.weights import tune_weights
from tasks.kernels.blocks import parallel_map
from tasks.kernels.linear import add_standardised
from tasks.kernels.topn import top_k_per_user

log = logging.getLogger(__name__)

Learner = Literal["auto", "hgb", "logistic"]

#: Per-modality feature suffixes, in column order.
MODALITY_FEATURES = ("score", "norm", "rank", "inv_rank", "present")
#: Context features (after every modality's block), in column order.
CONTEXT_FEATURES = ("n_modalities", "sum_norm", "blend_norm", "sum_rrf", "item_log_pop",
                    "item_mean_confidence", "user_log_activity", "user_mean_item_log_pop",
                    "user_log_degree", "item_age_days", "item_log_pop_near_user")
#: Equal-frequency time bins for "how popular was the item when the user was last active".
TIME_BINS = 32
KEY_COLUMNS = ("user_idx", "item_idx")
BLEND_K = 10  # list length the blend weights are tuned for (NDCG@K)
# Users whose feature rows exist at once (≈ 40 float64 columns × users × candidates per user):
# 250 users × 600 candidates is about 50 MB, whatever the number of users in the run (1,000
# users' 0.2 GB was a quarter of a 100k-user night's peak over its steady state).
FEATURE_BLOCK_USERS = 250
#: Training rows the stacker's scaler learns from at a time (≈ 13 MB of 40 float64 features).
SCALER_BLOCK_ROWS = 40_000
#: The fused shape shared with tasks.fusion.table (plus one contrib_<modality> column per modality).
FUSED_SCHEMA = {"user_idx": pl.Int32, "item_idx": pl.Int32, "score": pl.Float64, "rank": pl.Int32}


class StackingUnavailable(Exception):
    """The stacker cannot be trained (e.g. no positive or no negative labels): use another plan."""


def feature_columns(modalities: Sequence[str]) -> list[str]:
    """Feature names for a modality list: same list, same columns, same order."""
    return [c for c, _ in _column_kinds(modalities)]


def _column_kinds(modalities: Sequence[str]) -> list[tuple[str, str]]:
    """(column, kind) pairs in feature_columns order; kind = per-modality suffix or context name."""
    return [(f"{m}_{s}", s) for m in modalities for s in MODALITY_FEATURES] + \
        [(c, c) for c in CONTEXT_FEATURES]


def _absent_values(modality: str, missing_rank: int) -> dict[str, float]:
    """Feature values of a modality that did not propose the item."""
    return {f"{modality}_score": 0.0, f"{modality}_norm": 0.0,
            f"{modality}_rank": float(missing_rank), f"{modality}_inv_rank": 0.0,
            f"{modality}_present": 0.0}


#: `_Context.of`'s cache: id of the dataset -> (a weak reference to it, its context).
_CONTEXTS: dict[int, tuple[weakref.ref[Dataset], _Context]] = {}
_CONTEXTS_LOCK = threading.Lock()


@dataclass(frozen=True)
class _Context:
    """Per-user and per-item context arrays, computed once per Dataset (not per user block)."""

    item_log_pop: np.ndarray
    item_mean_confidence: np.ndarray
    user_log_activity: np.ndarray
    user_mean_item_log_pop: np.ndarray
    user_log_degree: np.ndarray
    item_age_days: np.ndarray
    item_bin_log_pop: np.ndarray  # items × TIME_BINS: log1p events per item around each bin
    user_last_bin: np.ndarray  # per user: the time bin of their latest event

    def near_user(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return self.item_bin_log_pop[items, self.user_last_bin[users]]

    @classmethod
    def of(cls, data: Dataset) -> _Context:
        """The context of `data`, computed once per dataset object and process (every shard
        of a run asks for it; it costs a pass over every interaction)."""
        with _CONTEXTS_LOCK:
            cached = _CONTEXTS.get(id(data))
            if cached is not None and cached[0]() is data:
                return cached[1]
        context = cls._compute(data)
        with _CONTEXTS_LOCK:
            _CONTEXTS.clear()  # one dataset at a time: a run's, then the next stage's
            _CONTEXTS[id(data)] = (weakref.ref(data), context)
        return context

    @classmethod
    def _compute(cls, data: Dataset) -> _Context:
        matrix = data.interactions
        item_users = np.diff(matrix.tocsc().indptr)
        item_conf = np.asarray(matrix.sum(axis=0), dtype=np.float64).ravel()
        log_pop = np.log1p(item_users).astype(np.float64)
        history = data.history_lengths()
        # Mainstreamness: how popular the user's items are on average (niche vs hit listeners).
        seen = data.seen()
        user_pop = np.asarray(seen @ log_pop, dtype=np.float64).ravel() / np.maximum(history, 1)
        degree = (np.diff(data.social.indptr) if data.social is not None
                  else np.zeros(data.n_users, dtype=np.int64))
        return cls(
            item_log_pop=log_pop,
            item_mean_confidence=item_conf / np.maximum(item_users, 1),
            user_log_activity=np.log1p(history).astype(np.float64),
            user_mean_item_log_pop=user_pop,
            user_log_degree=np.log1p(degree).astype(np.float64),
            item_age_days=_item_age_days(data),
            **_popularity_near_users(data),
        )


def _popularity_near_users(data: Dataset) -> dict[str, np.ndarray]:
    """How popular each item was around the time each user was last active.

    Time is cut into `TIME_BINS` bins holding equal numbers of events, so the feature means the
    same on data spanning hours or decades; an item's count is over the user's last bin and its
    neighbours. For users active now it is "trending now"; for a user last seen years ago, what
    was popular then. All zero when timestamps do not vary (then it says nothing new).
    """
    pop = np.zeros((data.n_items, TIME_BINS), dtype=np.float32)
    last = np.zeros(data.n_users, dtype=np.int64)
    events = data.events
    if events.height == 0:
        return {"item_bin_log_pop": pop, "user_last_bin": last}
    t = events["ts"].cast(pl.Datetime("us")).dt.epoch("s").to_numpy().astype(np.float64)
    if np.isnan(t).all() or np.nanmax(t) == np.nanmin(t):
        return {"item_bin_log_pop": pop, "user_last_bin": last}
    t = np.where(np.isnan(t), np.nanmin(t), t)
    edges = np.quantile(t, np.linspace(0, 1, TIME_BINS + 1)[1:-1])
    bins = np.searchsorted(edges, t, side="right")
    items = events["item_idx"].to_numpy().astype(np.int64)
    users = events["user_idx"].to_numpy().astype(np.int64)
    counts = np.zeros((data.n_items, TIME_BINS), dtype=np.float64)
    np.add.at(counts, (items, bins), 1.0)
    window = counts.copy()
    window[:, 1:] += counts[:, :-1]
    window[:, :-1] += counts[:, 1:]
    np.maximum.at(last, users, bins)
    return {"item_bin_log_pop": np.log1p(window).astype(np.float32), "user_last_bin": last}


def _item_age_days(data: Dataset) -> np.ndarray:
    """Days between an item's first event and the snapshot time (0 without timestamps)."""
    age = np.zeros(data.n_items, dtype=np.float64)
    events = data.events
    if events.height == 0 or events["ts"].null_count() == events.height:
        return age
    first = events.group_by("item_idx").agg(pl.col("ts").min().alias("first"))
    end = events["ts"].max()
    if data.as_of is not None:
        as_of = pl.Series([data.as_of]).cast(events.schema["ts"], strict=False)[0]
        end = as_of if as_of is not None else end
    days = first.select(
        "item_idx", ((pl.lit(end) - pl.col("first")).dt.total_seconds() / 86400.0)
        .clip(lower_bound=0.0).fill_null(0.0).alias("days"))
    age[days["item_idx"].to_numpy()] = days["days"].to_numpy()
    return age


def _aggregates(modalities: Sequence[str],
                blend_weights: Mapping[str, float] | None = None) -> list[pl.Expr]:
    """Cross-modality evidence from the per-modality columns (recomputed when a modality is
    blanked for contributions): how many lists propose the item, CombSUM, the weighted blend
    of normalised scores (weights tuned like weighted fusion: trees approximate sums poorly)
    and RRF."""
    weights = blend_weights or {}

    def total(term: Callable[[str], pl.Expr]) -> pl.Expr:
        terms = [term(m) for m in modalities]
        return ordered_sum(terms).cast(pl.Float64)

    return [
        total(lambda m: pl.col(f"{m}_present")).alias("n_modalities"),
        total(lambda m: pl.col(f"{m}_norm")).alias("sum_norm"),
        total(lambda m: float(weights.get(m, 1.0)) * pl.col(f"{m}_norm")).alias("blend_norm"),
        total(lambda m: pl.col(f"{m}_present") / (RRF_K + pl.col(f"{m}_rank"))).alias("sum_rrf"),
    ]


def _sorted_union(arrays: list[np.ndarray]) -> np.ndarray:
    """The sorted distinct values of int64 arrays. A sort and a mask: `np.unique` hashes, which
    on codes spread over users × items was 9× slower (measured: 0.37 s vs 0.04 s for 600k)."""
    if not arrays:
        return np.zeros(0, dtype=np.int64)
    values = np.sort(np.concatenate(arrays))
    keep = np.ones(len(values), dtype=bool)
    keep[1:] = values[1:] != values[:-1]
    return values[keep]


def candidate_features(candidates: pl.DataFrame, data: Dataset,
                       modalities: Sequence[str] | None = None,
                       missing_rank: int | None = None,
                       blend_weights: Mapping[str, float] | None = None,
                       context: _Context | None = None) -> pl.DataFrame:
    """One row per (user_idx, item_idx) in the union of `modalities`' candidates, with features.

    Per modality m: `m_score` (raw), `m_norm` (min-max within the user's list; 1 for a list of
    equal scores), `m_rank`, `m_inv_rank` (1/rank) and `m_present`; a modality that did not
    propose the item gets score/norm/inv_rank 0, rank `missing_rank` and present 0.
    Cross-modality: `n_modalities` proposing the item, `sum_norm` (CombSUM), `blend_norm`
    (Σ w_m·norm_m with `blend_weights`, default 1 each), `sum_rrf` (Σ 1/(60+rank)).
    Context: log1p item popularity (users in `data.interactions`), the item's mean confidence,
    log1p user history length, the user's mean item log-popularity (mainstream vs niche), log1p
    social degree (0 without a social graph), item age in days since its first event (0 when
    timestamps do not vary).

    Candidates of modalities not in the list are ignored; a modality in the list with no
    candidates gives an all-absent block, so columns are fixed by `modalities` (default: the
    sorted modalities present; pass it explicitly, or use `StackingModel.features`, so training
    and application agree). `missing_rank` defaults to the largest rank + 1. Rows are sorted by
    (user_idx, item_idx).
    """
    mods = sorted(candidates["modality"].unique().to_list()) if modalities is None \
        else list(modalities)
    if missing_rank is None:
        top = candidates["rank"].max() if candidates.height else 0
        missing_rank = int(top if isinstance(top, int | float) else 0) + 1
    context = context or _Context.of(data)
    n_items = max(1, data.n_items)
    per: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]] = {}
    for key, part in candidates.filter(pl.col("modality").is_in(mods)).partition_by(
        "modality", as_dict=True
    ).items():
        code = (part["user_idx"].to_numpy().astype(np.int64) * n_items
                + part["item_idx"].to_numpy().astype(np.int64))
        rank = part["rank"].to_numpy().astype(np.float64)
        order = np.lexsort((rank, code))  # a pair listed twice by one modality: best rank wins
        code = code[order]
        first = np.ones(len(code), dtype=bool)
        first[1:] = code[1:] != code[:-1]
        keep, code = order[first], code[first]
        score = part["score"].to_numpy().astype(np.float64)[keep]
        per[str(key[0])] = (code, _modality_values(score, rank[keep], code // n_items))
    # The union of pairs as sorted int64 codes; each modality's values land by binary search
    # (no hash join, no sort of every candidate row).
    union = _sorted_union([c for c, _ in per.values()])
    columns: dict[str, np.ndarray] = {}
    for m in mods:
        code, found = per.get(m, (np.zeros(0, dtype=np.int64), None))
        at = np.searchsorted(union, code)
        for feature, absent in zip(MODALITY_FEATURES,
                                   _absent_values(m, missing_rank).values(), strict=True):
            values = np.full(len(union), absent, dtype=np.float64)
            if found is not None:
                values[at] = found[feature]
            columns[f"{m}_{feature}"] = values
    users, items = union // n_items, union % n_items
    if len(users) and (users.max() >= data.n_users or items.max() >= data.n_items):
        raise ValueError("candidates reference users or items outside the dataset")
    columns |= _aggregate_values(columns, mods, blend_weights)
    columns |= {
        "item_log_pop": context.item_log_pop[items],
        "item_mean_confidence": context.item_mean_confidence[items],
        "user_log_activity": context.user_log_activity[users],
        "user_mean_item_log_pop": context.user_mean_item_log_pop[users],
        "user_log_degree": context.user_log_degree[users],
        "item_age_days": context.item_age_days[items],
        "item_log_pop_near_user": context.near_user(users, items).astype(np.float64),
    }
    return pl.DataFrame({
        "user_idx": users.astype(np.int32),
        "item_idx": items.astype(np.int32),
        **{c: np.asarray(columns[c], dtype=np.float64) for c in feature_columns(mods)},
    })


def _modality_values(score: np.ndarray, rank: np.ndarray, users: np.ndarray
                     ) -> dict[str, np.ndarray]:
    """One modality's feature columns for its pairs (sorted by user): NaN scores count 0, and
    `norm` is min-max within the user's list (1 when the list's scores are all equal)."""
    score = np.where(np.isnan(score), 0.0, score)
    norm = np.ones(len(score), dtype=np.float64)
    if len(score):
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
        counts = np.diff(np.r_[starts, len(users)])
        lo = np.repeat(np.minimum.reduceat(score, starts), counts)
        hi = np.repeat(np.maximum.reduceat(score, starts), counts)
        np.divide(score - lo, hi - lo, out=norm, where=hi > lo)
    return {"score": score, "norm": norm, "rank": rank, "inv_rank": 1.0 / rank,
            "present": np.ones(len(score), dtype=np.float64)}


def _aggregate_values(columns: Mapping[str, np.ndarray], modalities: Sequence[str],
                      blend_weights: Mapping[str, float] | None) -> dict[str, np.ndarray]:
    """`_aggregates` on arrays: the same terms added in the same order, so the same bits."""
    weights = blend_weights or {}

    n = len(next(iter(columns.values()))) if columns else 0

    def total(term: Callable[[str], np.ndarray]) -> np.ndarray:
        terms = [term(m) for m in modalities]
        return functools.reduce(operator.add, terms) if terms else np.zeros(n)

    return {
        "n_modalities": total(lambda m: columns[f"{m}_present"]),
        "sum_norm": total(lambda m: columns[f"{m}_norm"]),
        "blend_norm": total(lambda m: float(weights.get(m, 1.0)) * columns[f"{m}_norm"]),
        "sum_rrf": total(lambda m: columns[f"{m}_present"] / (RRF_K + columns[f"{m}_rank"])),
    }


def _known_feature(name: str) -> str:
    kinds = (*MODALITY_FEATURES, *CONTEXT_FEATURES)
    if name in kinds or any(name.endswith(f"_{s}") and len(name) > len(s) + 1
                            for s in MODALITY_FEATURES):
        return name
    raise PydanticCustomError(
        "unknown_feature", "unknown feature (kinds: {kinds}; or <modality>_<kind>)",
        {"kinds": ", ".join(kinds)})


# A pydantic dataclass: the run parameters validate it like their other models (and the Prefect
# form shows it), while `dataclasses.replace` and keyword construction keep working.
@pydantic_dataclass(config=ConfigDict(extra="forbid", allow_inf_nan=False))
class StackingParams:
    """Learner settings; the defaults were chosen on the Last.fm validation protocol."""

    learner: Learner = Field(
        default="logistic",
        description="'logistic', 'hgb' (boosted trees), or 'auto': trees when there are at "
        "least min_positives_for_hgb positives.")
    min_positives_for_hgb: int = Field(
        default=200, ge=1, description="'auto' with fewer positives uses logistic regression.")
    negatives_per_positive: float | None = Field(
        default=100.0, gt=0,
        description="Per-user cap on negatives (× the user's positives); empty keeps all. "
        "Training rows grow with users × candidates, so the cap bounds memory at scale.")
    n_bags: int = Field(
        default=3, ge=1,
        description="hgb: models on different negative samples/seeds, averaged (less variance).")
    tune_blend: bool = Field(
        default=False,
        description="Tune the blend_norm feature's weights on the training labels first (helps "
        "trees, which approximate weighted sums poorly).")
    max_iter: int = Field(default=300, ge=1, description="hgb: boosting iterations.")
    learning_rate: float = Field(default=0.05, gt=0, description="hgb: shrinkage per tree.")
    max_leaf_nodes: int = Field(default=31, ge=2, description="hgb: leaves per tree.")
    min_samples_leaf: int = Field(default=100, ge=1, description="hgb: rows per leaf, at least.")
    l2_regularization: float = Field(default=1.0, ge=0, description="hgb: L2 on leaf values.")
    early_stopping: bool = Field(
        default=True, description="hgb: stop when a 10% validation split stops improving.")
    monotonic: bool = Field(
        default=True,
        description="hgb: score/norm/presence/agreement can only help, rank only hurt.")
    logistic_c: float = Field(
        default=1.0, gt=0, description="logistic: inverse L2 strength (larger = weaker).")
    drop_features: tuple[Annotated[str, AfterValidator(_known_feature)], ...] = Field(
        default=(), description="Feature kinds or column names to ignore (ablations).")


#: Monotonic constraint per feature kind when `StackingParams.monotonic` (0 = free).
MONOTONIC_SIGN = {"score": 1, "norm": 1, "inv_rank": 1, "present": 1, "rank": -1,
                  "n_modalities": 1, "sum_norm": 1, "blend_norm": 1, "sum_rrf": 1}


@dataclass
class StackingModel:
    """A fitted stacker plus the feature spec it needs (modalities, missing rank, blend weights)."""

    modalities: tuple[str, ...]
    missing_rank: int
    params: StackingParams = field(default_factory=StackingParams)
    seed: int = 7
    blend_weights: dict[str, float] | None = None
    learner: str | None = None
    n_train_rows: int = 0
    n_train_positives: int = 0
    fit_seconds: float = 0.0
    estimators: list[Any] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        """Columns fed to the estimator: feature_columns minus `params.drop_features`."""
        drop = set(self.params.drop_features)
        return [c for c, kind in _column_kinds(self.modalities)
                if c not in drop and kind not in drop]

    def features(self, candidates: pl.DataFrame, data: Dataset,
                 context: _Context | None = None) -> pl.DataFrame:
        """`candidate_features` with this model's spec, so training and application agree."""
        return candidate_features(candidates, data, self.modalities, self.missing_rank,
                                  self.blend_weights, context)

    def fit(self, features: pl.DataFrame, labels: np.ndarray) -> StackingModel:
        """Fit on feature rows (from `features`/`candidate_features`) and 0/1 labels.

        Raises StackingUnavailable when the labels have no positives or no negatives (nothing to
        learn); the caller then falls back to weighted fusion.
        """
        return self.fit_blocks([(features, labels)])

    def fit_blocks(self, blocks: Iterable[tuple[pl.DataFrame, np.ndarray]]) -> StackingModel:
        """`fit` over (features, labels) blocks that each hold whole users, in user order.

        Every block is subsampled (every positive, capped negatives per user) as it arrives, so
        only the kept rows stay in memory: feature rows grow with users × candidates, kept rows
        with positives. Each bag's random draws continue one stream across blocks, so the model
        is the one `fit` would give on the concatenated blocks.
        """
        start = time.perf_counter()
        learner = self.params.learner
        # Draw for every bag the learner may use; "auto" picks the learner after the last block.
        n_draws = max(1, self.params.n_bags) if learner in ("auto", "hgb") else 1
        streams = [np.random.default_rng(self.seed + bag) for bag in range(n_draws)]
        kept: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in streams]
        n_pos = n_rows = 0
        for features, labels in blocks:
            y = np.asarray(labels).astype(bool)
            if len(y) != features.height:
                raise ValueError(f"{len(y)} labels for {features.height} feature rows")
            n_pos, n_rows = n_pos + int(y.sum()), n_rows + len(y)
            users = features["user_idx"].to_numpy()
            for bag, stream in enumerate(streams):
                keep = self._subsample(users, y, stream)
                # Only the kept rows become a matrix: a block's every row would be ~0.2 GB.
                x = features.filter(pl.Series(keep)).select(self.columns).to_numpy()
                kept[bag].append((x.astype(np.float64, copy=False), y[keep]))
        if n_pos == 0 or n_pos == n_rows:
            raise StackingUnavailable(
                f"need positive and negative labels, got {n_pos} of {n_rows} positive")
        if learner == "auto":
            learner = "hgb" if n_pos >= self.params.min_positives_for_hgb else "logistic"
        # A linear model on all rows is deterministic: bagging only pays for subsampled trees.
        bags = max(1, self.params.n_bags) if learner == "hgb" else 1
        self.estimators, self.n_train_rows = [], 0
        for bag in range(bags):
            x_bag, y_bag = _stack_parts(kept[bag])
            # On one thread: OpenBLAS (the logistic loss's matrix-vector products) and OpenMP
            # (the trees' gradient sums) add across threads, so another thread count gave
            # another model, and other scores, from the same rows.
            with threadpool_limits(1):
                if learner == "hgb":
                    estimator = self._hgb(self.seed + bag).fit(x_bag, y_bag)
                else:
                    estimator = self._logistic(x_bag, y_bag)
            self.estimators.append(estimator)
            self.n_train_rows += len(y_bag)
        self.learner, self.n_train_positives = learner, n_pos
        self.fit_seconds = time.perf_counter() - start
        log.info("stacker %s×%d fit on %d rows (%d positive) in %.1fs", learner, bags,
                 self.n_train_rows, n_pos, self.fit_seconds)
        return self

    def _subsample(self, users: np.ndarray, y: np.ndarray, draws: np.random.Generator
                   ) -> np.ndarray:
        """Rows to train on: every positive; per user at most `negatives_per_positive` × its
        positives negatives (seeded); users without a positive carry no ranking signal and go."""
        ratio = self.params.negatives_per_positive
        _, inverse = np.unique(users.astype(np.int64), return_inverse=True)
        pos = np.bincount(inverse, weights=y.astype(np.float64))
        neg = np.bincount(inverse, weights=(~y).astype(np.float64))
        if ratio is None:
            rate = np.where(pos > 0, 1.0, 0.0)
        else:
            rate = np.where(pos > 0, np.minimum(1.0, ratio * pos / np.maximum(neg, 1.0)), 0.0)
        return y | (draws.random(len(y)) < rate[inverse])

    def _logistic(self, x: np.ndarray, y: np.ndarray) -> Pipeline:
        """Standardise `x` in place, then fit the logistic regression: the pipeline
        `predict_proba` uses. The scaler learns its means and variances a block of rows at a
        time (`partial_fit`): fitted at once, it made a centred copy of all the rows, which
        was the peak of a 100k-user night's evaluation (0.5 GB more)."""
        scaler = StandardScaler(copy=False)
        for lo in range(0, len(y), SCALER_BLOCK_ROWS):
            scaler.partial_fit(x[lo:lo + SCALER_BLOCK_ROWS])
        x = scaler.transform(x)  # in place (copy=False)
        linear = LogisticRegression(C=self.params.logistic_c, max_iter=2000).fit(x, y)
        return make_pipeline(scaler, linear)

    def _hgb(self, seed: int) -> HistGradientBoostingClassifier:
        p = self.params
        monotonic = None
        if p.monotonic:
            kinds = dict(_column_kinds(self.modalities))
            monotonic = [MONOTONIC_SIGN.get(kinds[c], 0) for c in self.columns]
        return HistGradientBoostingClassifier(
            max_iter=p.max_iter, learning_rate=p.learning_rate, max_leaf_nodes=p.max_leaf_nodes,
            min_samples_leaf=p.min_samples_leaf, l2_regularization=p.l2_regularization,
            early_stopping=p.early_stopping, n_iter_no_change=20, validation_fraction=0.1,
            monotonic_cst=monotonic, random_state=seed)

    def predict(self, features: pl.DataFrame) -> np.ndarray:
        """Relevance scores in [0, 1] (higher = better): the bags' mean predicted probability.

        Negative subsampling inflates them per user, so they rank rather than calibrate.
        """
        if not self.estimators:
            raise RuntimeError("StackingModel.predict called before fit")
        if features.height == 0:
            return np.zeros(0, dtype=np.float64)
        if self.learner == "logistic" and len(self.estimators) == 1:
            return self._predict_linear(features)
        x = features.select(self.columns).to_numpy().astype(np.float64, copy=False)
        proba = np.mean([e.predict_proba(x)[:, 1] for e in self.estimators], axis=0)
        return np.asarray(proba, dtype=np.float64)

    def _predict_linear(self, features: pl.DataFrame) -> np.ndarray:
        """The logistic pipeline's probability, a column at a time: the same standardise,
        weigh, add and sigmoid as scikit-learn, without its copies and checks of a rows ×
        features matrix (they were half of fusing a shard), and with no BLAS product, so the
        sum's order, and its bits, never depend on threads."""
        scaler, linear = self.estimators[0][0], self.estimators[0][-1]
        z = np.zeros(features.height, dtype=np.float64)
        for j, column in enumerate(self.columns):
            add_standardised(z, features[column].to_numpy(), scaler.mean_[j], scaler.scale_[j],
                             linear.coef_[0, j])
        return np.asarray(expit(z + linear.intercept_[0]), dtype=np.float64)

    def summary(self) -> dict[str, object]:
        """What to record with a run: learner, data sizes, spec and timing."""
        return {"strategy": "stacking", "learner": self.learner, "bags": len(self.estimators),
                "modalities": list(self.modalities), "missing_rank": self.missing_rank,
                "blend_weights": self.blend_weights, "n_train_rows": self.n_train_rows,
                "n_train_positives": self.n_train_positives,
                "fit_seconds": round(self.fit_seconds, 3),
                "n_iter": [getattr(e, "n_iter_", None) for e in self.estimators]}


def _stack_parts(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The blocks' kept rows as one matrix, each part freed as soon as it is copied: the rows
    exist once plus one block, not twice (`np.concatenate` held every part and the whole)."""
    n = sum(len(y) for _, y in parts)
    width = parts[0][0].shape[1] if parts else 0
    x_all = np.empty((n, width), dtype=np.float64)
    y_all = np.empty(n, dtype=bool)
    at = 0
    parts.reverse()  # popped from the end: first block first
    while parts:
        x, y = parts.pop()
        x_all[at:at + len(y)], y_all[at:at + len(y)] = x, y
        at += len(y)
        del x, y
    return x_all, y_all


def label_pairs(features: pl.DataFrame, truth: pl.DataFrame) -> np.ndarray:
    """1 where the feature row's (user_idx, item_idx) is in truth, else 0 (order preserved)."""
    hits = truth.select(pl.col("user_idx").cast(pl.Int32), pl.col("item_idx").cast(pl.Int32)) \
        .unique().with_columns(pl.lit(1, pl.Int8).alias("_label"))
    labelled = features.select(KEY_COLUMNS).join(hits, on=list(KEY_COLUMNS), how="left",
                                                  maintain_order="left")
    return labelled["_label"].fill_null(0).to_numpy().astype(np.int8)


def user_ranges(candidates: pl.DataFrame, block_users: int) -> list[tuple[int, int]]:
    """(first, last) user index of each run of at most `block_users` users, in user order."""
    users = np.unique(candidates["user_idx"].to_numpy())
    return [(int(users[start]), int(users[min(start + block_users, len(users)) - 1]))
            for start in range(0, len(users), block_users)]


def user_block(candidates: pl.DataFrame, bounds: tuple[int, int]) -> pl.DataFrame:
    """The candidates of the users `bounds` (first, last) spans."""
    return candidates.filter(pl.col("user_idx").is_between(*bounds))


def fit_stacker(candidates: pl.DataFrame, truth: pl.DataFrame, data: Dataset,
                modalities: Sequence[str], seed: int = 7,
                params: StackingParams | None = None,
                missing_rank: int | None = None) -> StackingModel:
    """Train a stacker: label = candidate pair is in `truth` (user_idx, item_idx).

    `data` must be the Dataset the candidates' models were fitted on (context features come from
    it). With `params.tune_blend`, the `blend_norm` weights are first tuned like weighted fusion
    (coordinate ascent on NDCG@10 of the same labels). Raises StackingUnavailable when the
    candidates hold no positive (or no negative) pair.
    """
    params = params or StackingParams()
    if missing_rank is None:
        top = candidates["rank"].max() if candidates.height else 0
        missing_rank = int(top if isinstance(top, int | float) else 0) + 1
    model = StackingModel(tuple(modalities), missing_rank, params, seed)
    known = candidates.filter(pl.col("modality").is_in(list(modalities)))
    if known.height == 0:
        raise StackingUnavailable("no candidates to learn from")
    if params.tune_blend and truth.height:
        tuned, _ = tune_weights(candidate_table(known), truth, BLEND_K)
        model.blend_weights = {m: float(tuned.get(m, 0.0)) for m in modalities}
    context = _Context.of(data)

    def labelled(bounds: tuple[int, int]) -> tuple[pl.DataFrame, np.ndarray]:
        features = model.features(user_block(known, bounds), data, context)
        return features, label_pairs(features, truth)

    # Blocks are built side by side on the shared pool and learned from in user order: the
    # model is the sequential one (its draws follow the blocks' order, not their timing).
    return model.fit_blocks(parallel_map(labelled, user_ranges(known, FEATURE_BLOCK_USERS)))


def _top_k_of_sorted(scored: pl.DataFrame, k: int) -> pl.DataFrame:
    """`top_k` of feature rows, which come sorted by (user, item): one compiled pass keeps each
    user's k best (ties to the smaller item) instead of sorting every candidate row."""
    users = scored["user_idx"].to_numpy()
    picked = top_k_per_user(users, scored["score"].to_numpy().astype(np.float64, copy=False), k)
    best = scored[picked]
    kept = users[picked]
    starts = np.flatnonzero(np.r_[True, kept[1:] != kept[:-1]]) if len(kept) else kept
    counts = np.diff(np.r_[starts, len(kept)])
    rank = np.arange(len(kept)) - np.repeat(starts, counts) + 1
    return best.with_columns(pl.Series("rank", rank, dtype=pl.Int32))


def _fused_schema(modalities: Sequence[str]) -> dict[str, Any]:
    return {**FUSED_SCHEMA, **{f"contrib_{m}": pl.Float64 for m in modalities}}


def fuse_stacking(candidates: pl.DataFrame, data: Dataset, model: StackingModel, k: int,
                  modalities: Sequence[str] | None = None,
                  block_users: int = FEATURE_BLOCK_USERS) -> pl.DataFrame:
    """Rank each user's candidate union by the stacker; the fused shape of `tasks.fusion.table`.

    Returns user_idx, item_idx, score (stacker probability), rank (1..k, contiguous per user,
    ties by item index) and contrib_<m> for every modality of the model. Contribution of m =
    max(0, score − score with m's features set to "absent" and the cross-modality aggregates
    recomputed without m): how much the prediction relies on m having proposed the item
    (leave-one-modality-out, one extra predict per modality on the top-k rows only). A modality
    that did not propose the item contributes exactly 0, and so does one whose presence lowers
    the score (clipped); contributions need not sum to the score (redundant evidence shares
    credit, synergies can exceed it). Users are processed in blocks to bound feature memory.
    """
    mods = list(model.modalities)
    if modalities is not None and list(modalities) != mods:
        raise ValueError(f"modalities {list(modalities)} differ from the model's {mods}")
    schema = _fused_schema(mods)
    if candidates.height == 0:
        return pl.DataFrame(schema=schema)
    context = _Context.of(data)

    def fuse_block(bounds: tuple[int, int]) -> pl.DataFrame:
        features = model.features(user_block(candidates, bounds), data, context)
        scored = features.with_columns(pl.Series("score", model.predict(features)))
        best = _top_k_of_sorted(scored, k)
        contribs = []
        for m in mods:
            present = best[f"{m}_present"].to_numpy()
            absent = best.with_columns(
                *[pl.lit(v, pl.Float64).alias(c)
                  for c, v in _absent_values(m, model.missing_rank).items()]
            ).with_columns(_aggregates(mods, model.blend_weights))
            drop = best["score"].to_numpy() - model.predict(absent)
            contribs.append(pl.Series(f"contrib_{m}", np.where(present > 0,
                                                               np.clip(drop, 0.0, None), 0.0)))
        return best.with_columns(contribs).select(list(schema))

    # Blocks run side by side on the shared pool (half a shard's time was this loop on one
    # core); each block's rows depend only on its users, and the parts are joined in order.
    parts = list(parallel_map(fuse_block, user_ranges(candidates, block_users)))
    return pl.concat(parts).cast(schema)  # type: ignore[arg-type]
