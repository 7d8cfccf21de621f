"""Run parameters: one pydantic model, which is also the Prefect UI form for every deployment."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from tasks.dataset import DEFAULT_EVENT_WEIGHTS, InteractionWeighting
from tasks.holdout import EvaluationParams
from tasks.modalities.behavior import BehaviorParams
from tasks.modalities.content import ContentParams
from tasks.modalities.hybrid import HybridParams
from tasks.modalities.popularity import PopularityParams
from tasks.modalities.social import SocialParams

ModalityName = Literal[
    "behavior", "content", "social", "popularity", "hybrid_features", "hybrid_samples"
]
ALL_MODALITIES: list[ModalityName] = [
    "behavior",
    "content",
    "social",
    "popularity",
    "hybrid_features",
    "hybrid_samples",
]
#: The four single-evidence modalities; hybrids are fusions below the model level.
SINGLE_MODALITIES = ("behavior", "content", "social", "popularity")
FusionStrategy = Literal["auto", "weighted", "rrf", "combsum", "combmnz", "borda", "stacking"]


class FusionParams(BaseModel):
    """How modality lists become one list; `auto` picks the best strategy on validation."""

    strategy: FusionStrategy = Field(
        "auto",
        description="Fusion strategy; 'auto' tries all on a validation window, keeps the best.",
    )
    normalisation: Literal["minmax", "zscore", "rank"] = Field(
        "minmax", description="Score normalisation before weighted fusion."
    )
    weights: dict[str, float] | None = Field(
        None,
        description="Override per-modality weights (e.g. {'behavior': 1, 'social': 0.3}); "
        "when empty they are tuned on a validation window.",
    )
    cold_history_max: int | None = Field(
        None,
        ge=0,
        description="Users with at most this many items may get their own recipe (cold start). "
        "Empty = the threshold and the recipe are learned on validation (and kept only when they "
        "beat the default recipe on those users by more than its standard error); "
        "0 = no cold rule.",
    )


class RunParameters(BaseModel):
    """Everything one nightly run needs. Defaults run the demo end to end."""

    source: str | None = Field(
        None, description="Source folder in the data contract; empty = the built-in demo data."
    )
    db: str = Field("recfusion.duckdb", description="DuckDB database file to read and publish to.")
    top_k: int = Field(10, ge=1, le=1000, description="Length of each user's published list (K).")
    candidates_per_modality: int = Field(
        100, ge=1, description="Top-N candidates each modality keeps per user (N >= K)."
    )
    as_of: datetime | None = Field(
        None,
        description="Build the data as of this time (events after it are ignored); "
        "empty = latest event.",
    )
    modalities: list[ModalityName] = Field(
        default_factory=lambda: list(ALL_MODALITIES),
        description="Candidate sources to run: the four modalities, plus the feature-level "
        "(hybrid_features) and sample-level (hybrid_samples) fusion models.",
    )
    behavior: BehaviorParams = Field(default_factory=BehaviorParams)
    content: ContentParams = Field(default_factory=ContentParams)
    social: SocialParams = Field(default_factory=SocialParams)
    popularity: PopularityParams = Field(default_factory=PopularityParams)
    hybrid: HybridParams = Field(
        default_factory=HybridParams, description="Feature-level and sample-level fusion models."
    )
    fusion: FusionParams = Field(default_factory=FusionParams)
    event_weights: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS),
        description="Weight per event type (purchase > like > click > view).",
    )
    value_transform: Literal["log1p", "raw", "binary"] = Field(
        "log1p", description="How an event's value (count, rating) becomes confidence."
    )
    half_life_days: float | None = Field(
        None, gt=0, description="Optional recency decay of interactions (days); empty = none."
    )
    evaluate: bool = Field(
        True, description="Hold out recent events, score every list, log metrics."
    )
    evaluation: EvaluationParams = Field(
        default_factory=EvaluationParams,
        description="Hold-out protocol, sample size and selection margin of the run's own "
        "evaluation.",
    )
    seed: int = Field(7, description="Seed for random splits.")
    block_size: int = Field(2048, ge=1, description="Users scored per block (bounds memory).")
    fusion_block_users: int = Field(
        5_000, ge=1, description="Users whose candidates are fused at once (bounds memory)."
    )
    regression_tolerance: float = Field(
        0.05,
        ge=0,
        description="Reject the run when fused NDCG@K drops more than this share "
        "below the last published run on the same data.",
    )
    allow_regression: bool = Field(False, description="Publish even if the regression gate fails.")
    retention_runs: int | None = Field(
        None, ge=1, description="Keep recommendations of this many latest runs; metrics are kept."
    )
    lock_timeout_seconds: float = Field(
        0.0, ge=0, description="Wait this long for another run on the same database to finish."
    )
    triggered_by: str = Field("cli", description="Who or what started the run.")

    def weighting(self) -> InteractionWeighting:
        return InteractionWeighting(
            event_weights=self.event_weights,
            value_transform=self.value_transform,
            half_life_days=self.half_life_days,
        )
