"""Self-tuning per data set: each modality's hyperparameters searched on the validation split.

The product's defaults were chosen on Last.fm; a shop's data has its own best EASE λ, ALS
factors and half-lives. `tune` fits each modality on the *inner* training part (the outer
training part minus its validation hold-out, the same split the nightly chooses its fusion plan
on), so the nightly's own test split never informs a hyperparameter. Optuna's TPE sampler,
seeded, with the current values as the first trial: the best found is never worse than the
defaults on validation, and the same data, seed and trial count give the same result.

A modality's search space is its registry entry's `search` (tasks/modalities/registry.py): a
function of an Optuna trial returning the values to try.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from tasks.config import RunParameters
from tasks.data.snapshot import Snapshot
from tasks.data.splits import holdout_split
from tasks.fusion.selection import per_user_ndcg
from tasks.kernels.blocks import top_n
from tasks.modalities.content import MissingModalityInput
from tasks.modalities.registry import REGISTRY, build_modality, search_update
from tasks.recommend import dataset_from, sample_users

log = logging.getLogger(__name__)

Space = Callable[[Any], dict[str, Any]]  # optuna.Trial -> nested run-parameter update



def _space(name: str) -> Space:
    return lambda trial: search_update(name, trial)


#: Each modality's space, from its registry entry (`ModalitySpec.search`).
SEARCH_SPACES: dict[str, Space] = {name: _space(name) for name in REGISTRY}


@dataclass
class TuningResult:
    """The best values found for one modality, and what they were worth on validation."""

    modality: str
    update: dict[str, Any]  # nested run-parameter update (e.g. {"hybrid": {"features_l2": 80}})
    validation_ndcg: float
    default_ndcg: float
    n_trials: int
    seconds: float
    trials: list[dict[str, Any]] = field(default_factory=list)

    @property
    def improves(self) -> bool:
        return self.validation_ndcg > self.default_ndcg


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Nested dict update: `update`'s leaves replace `base`'s (sub-dicts are merged)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _current(update: Mapping[str, Any], params: RunParameters) -> dict[str, Any]:
    """The run's present values of the keys `update` sets (the first trial)."""
    dumped = params.model_dump()
    return {group: {k: dumped[group][k] for k in keys} for group, keys in update.items()}


def apply_tuning(params: RunParameters, results: Mapping[str, Mapping[str, Any]]) -> RunParameters:
    """`params` with each modality's tuned values (a nested update per modality) applied."""
    merged = params.model_dump()
    for update in results.values():
        merged = merge(merged, update)
    return RunParameters.model_validate(merged)


def tune_modalities(
    snapshot: Snapshot,
    params: RunParameters,
    modalities: list[str] | None = None,
    trials: int = 30,
    budget_seconds: float = 600.0,
    max_users: int = 2_000,
) -> dict[str, TuningResult]:
    """Search each modality's space on the validation split; `budget_seconds` is shared evenly.

    The budget is a safety bound: with enough of it, `trials` trials run for every modality and
    the result depends only on the data, the seed and `trials`.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ev = params.evaluation
    outer = holdout_split(snapshot.events, ev, params.seed)
    inner = holdout_split(outer.train, ev, params.seed + 1, kind=outer.kind)
    if inner.truth.height == 0 or inner.train.height == 0:
        log.warning("tuning skipped: not enough events for a validation split")
        return {}
    full = dataset_from(snapshot, params)
    data = dataset_from(snapshot, params, inner.train, like=full)
    truth = data.with_codes(inner.truth).select("user_idx", "item_idx")
    users = sample_users(truth, max_users, params.seed + 2)
    truth = truth.filter(pl.col("user_idx").is_in(pl.Series(users, dtype=pl.Int32).implode()))
    seen = data.seen()
    names = [m for m in (modalities or params.modalities) if m in SEARCH_SPACES]
    results: dict[str, TuningResult] = {}
    for i, name in enumerate(names):
        start = time.perf_counter()
        share = budget_seconds / len(names)
        space = SEARCH_SPACES[name]

        def score(update: dict[str, Any], name: str = name) -> float:
            trial_params = RunParameters.model_validate(merge(params.model_dump(), update))
            try:
                model = build_modality(name, trial_params).fit(data)
            except MissingModalityInput:
                return float("nan")
            recs = top_n(model, users, params.top_k, seen=seen)
            return float(per_user_ndcg(recs, truth, users, params.top_k).mean())

        def objective(trial: Any, space: Space = space, score: Callable = score) -> float:
            value = score(space(trial))
            return value if np.isfinite(value) else 0.0

        study = optuna.create_study(
            direction="maximize", sampler=optuna.samplers.TPESampler(seed=params.seed + i)
        )
        probe = space(optuna.trial.FixedTrial(_flat_defaults(space, params)))
        study.enqueue_trial(_flat(probe))
        study.optimize(objective, n_trials=trials, timeout=share)
        default = study.trials[0].value if study.trials else 0.0
        best = study.best_trial
        if not np.isfinite(default or 0.0) or best.value is None:
            continue
        results[name] = TuningResult(
            name, space(optuna.trial.FixedTrial(best.params)), float(best.value),
            float(default or 0.0), len(study.trials), time.perf_counter() - start,
            [{"params": t.params, "ndcg": t.value} for t in study.trials],
        )
        log.info("tuned %s: validation ndcg %.4f (defaults %.4f) in %d trials, %.0fs",
                 name, best.value, default, len(study.trials), results[name].seconds)
    return results


def _flat(update: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for group in update.values() for k, v in group.items()}


def _flat_defaults(space: Space, params: RunParameters) -> dict[str, Any]:
    """The run's current values of the space's parameters, as an Optuna FixedTrial wants them.

    A current value outside a categorical list is replaced by the list's nearest entry (the
    enqueued first trial must be a point of the space)."""
    recorder = _Recorder()
    keys = space(recorder)
    current = _current(keys, params)
    flat = _flat(current)
    for name, choices in recorder.choices.items():
        if flat.get(name) not in choices:
            numeric = [c for c in choices if isinstance(c, int | float)]
            value = flat.get(name)
            flat[name] = (min(numeric, key=lambda c: abs(float(c) - float(value)))
                          if numeric and isinstance(value, int | float) else choices[0])
    return flat


class _Recorder:
    """A stand-in trial that records a space's parameter names and categorical choices."""

    def __init__(self) -> None:
        self.choices: dict[str, list[Any]] = {}

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        self.choices[name] = list(choices)
        return choices[0]

    def suggest_float(self, name: str, low: float, high: float, log: bool = False) -> float:
        return low

    def suggest_int(self, name: str, low: int, high: int, log: bool = False) -> int:
        return low
