"""The modality registry: the one place that names each modality and says what goes with it.

Adding a modality: its module (a `Params` model and a factory returning a `Modality`), one
`ModalitySpec` below, its `Params` field on `tasks.config.RunParameters` and its name in
`tasks.config.ModalityName` (a Literal, because it is the Prefect UI form);
`tests/test_registries.py` fails when those disagree. Everything else (fusion weights, reasons,
tuning, the report) reads this table, so nothing else branches on modality names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel

from tasks.modalities.base import Modality
from tasks.modalities.behavior import BehaviorParams, make_behavior
from tasks.modalities.content import ContentParams, make_content
from tasks.modalities.hybrid import HybridParams, make_feature_fusion, make_sample_fusion
from tasks.modalities.popularity import PopularityParams, make_popularity
from tasks.modalities.social import SocialParams, make_social


class ModalityConfigs(Protocol):
    """What a factory reads from the run's parameters (`tasks.config.RunParameters` is one)."""

    @property
    def behavior(self) -> BehaviorParams: ...
    @property
    def content(self) -> ContentParams: ...
    @property
    def social(self) -> SocialParams: ...
    @property
    def popularity(self) -> PopularityParams: ...
    @property
    def hybrid(self) -> HybridParams: ...


Space = Callable[[Any], dict[str, Any]]  # optuna.Trial -> update of the modality's Params


@dataclass(frozen=True)
class ModalitySpec:
    """Everything the product needs to know about one modality, besides its module."""

    name: str
    params_field: str  # the RunParameters field holding its Params
    params: type[BaseModel]
    make: Callable[[ModalityConfigs], Modality]
    default_weight: float  # its weight in a weighted fusion when nothing could be tuned
    reason: str  # the reason shown when nothing more specific is known
    because: str | None  # "… {}" naming the user's closest history item, when there are titles
    search: Space  # the hyperparameters `recfusion tune` searches, as an Optuna space
    friends_reason: bool = False  # the reason counts the user's friends who have the item
    # Its fit's working memory is the largest (every user's and friends' histories pooled): it is
    # fitted by itself after the others, which are fitted two at a time.
    fit_alone: bool = False


def _half_life(t: Any, choices: list[float | None]) -> float | None:
    return t.suggest_categorical("half_life_days", choices)


_SPECS = (
    ModalitySpec(
        "behavior", "behavior", BehaviorParams, lambda p: make_behavior(p.behavior), 1.0,
        "people with similar taste chose it", "because you liked {}",
        lambda t: {
            "factors": t.suggest_categorical("factors", [16, 32, 64, 128]),
            "als_regularization": t.suggest_float("als_regularization", 1.0, 1000.0, log=True),
            "als_alpha": t.suggest_float("als_alpha", 0.5, 100.0, log=True),
        },
    ),
    ModalitySpec(
        "content", "content", ContentParams, lambda p: make_content(p.content), 0.3,
        "similar to items you interacted with", "similar to {}",
        lambda t: {
            "neighbours": t.suggest_int("neighbours", 50, 3000, log=True),
            "similarity_power": t.suggest_float("similarity_power", 0.5, 4.0),
            "half_life_days": _half_life(t, [None, 7.0, 30.0, 180.0]),
        },
    ),
    ModalitySpec(
        "social", "social", SocialParams, lambda p: make_social(p.social), 0.3,
        "popular among your friends", None,
        lambda t: {
            "taste_weight": t.suggest_float("taste_weight", 0.0, 1.0),
            "restart": t.suggest_float("restart", 0.1, 0.9),
            "half_life_days": _half_life(t, [None, 7.0, 30.0, 180.0]),
        },
        friends_reason=True,
    ),
    ModalitySpec(
        "popularity", "popularity", PopularityParams, lambda p: make_popularity(p.popularity),
        0.1, "popular right now", None,
        lambda t: {
            "half_life_days": _half_life(t, [None, 1.0, 7.0, 14.0, 60.0, 365.0]),
            "category_blend": t.suggest_float("category_blend", 0.0, 1.0),
        },
    ),
    ModalitySpec(
        "hybrid_features", "hybrid", HybridParams,
        lambda p: make_feature_fusion(p.hybrid, p.content), 0.1,
        "similar to items you interacted with", "because you liked {}",
        lambda t: {
            "features_l2": t.suggest_float("features_l2", 10.0, 3000.0, log=True),
            "feature_weight": t.suggest_categorical(
                "feature_weight", [0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]),
        },
    ),
    ModalitySpec(
        "hybrid_samples", "hybrid", HybridParams, lambda p: make_sample_fusion(p.hybrid), 0.1,
        "people like you and your friends chose it", "because you liked {}",
        lambda t: {
            "samples_l2": t.suggest_float("samples_l2", 10.0, 3000.0, log=True),
            "social_weight": t.suggest_float("social_weight", 0.0, 1.0),
        },
        fit_alone=True,
    ),
)

#: Every modality, in the order runs list them.
REGISTRY: dict[str, ModalitySpec] = {spec.name: spec for spec in _SPECS}
#: The list every other list is checked against (the evaluation alarm's floor).
FLOOR_MODALITY = "popularity"
#: The floor scored by itself when the run has no popularity list of its own.
FLOOR_BASELINE = f"{FLOOR_MODALITY}_baseline"
#: Reason for a modality the registry does not know (a list built outside a run).
FALLBACK_REASON = "recommended for you"


def build_modality(name: str, params: ModalityConfigs) -> Modality:
    """A fresh, unfitted modality configured from the run's parameters."""
    return REGISTRY[name].make(params)


def search_update(name: str, trial: Any) -> dict[str, Any]:
    """One Optuna trial's nested run-parameter update for a modality (e.g. {"hybrid": {...}})."""
    spec = REGISTRY[name]
    return {spec.params_field: spec.search(trial)}
