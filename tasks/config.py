"""Run parameters: one pydantic model, which is also the Prefect UI form for every deployment.

Every check lives on the models, so the command line, a `--params` file and the Prefect form
reject the same mistakes with the same message; `parameter_errors` turns a ValidationError into
one line per problem, naming the parameter's path.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from tasks.data.dataset import DEFAULT_EVENT_WEIGHTS, InteractionWeighting
from tasks.data.splits import EvaluationParams
from tasks.fusion.plan import AUTO, FUSERS
from tasks.fusion.stacking import StackingParams
from tasks.kernels.blocks import BLOCK_USERS
from tasks.modalities.behavior import BehaviorParams
from tasks.modalities.content import ContentParams
from tasks.modalities.hybrid import HybridParams
from tasks.modalities.popularity import PopularityParams
from tasks.modalities.social import SocialParams
from tasks.parameter_rules import MIN_DAYS, PARAMETER_CONFIG

#: The modalities of `tasks.modalities.registry.REGISTRY`, spelt out because a Literal is what
#: the Prefect UI shows as a choice (tests/test_registries.py keeps the two equal).
ModalityName = Literal[
    "behavior", "content", "social", "popularity", "hybrid_features", "hybrid_samples"
]
ALL_MODALITIES: list[ModalityName] = list(get_args(ModalityName))
#: "auto" and the fusers of `tasks.fusion.plan.FUSERS` (kept equal by the same test).
FusionStrategy = Literal["auto", "weighted", "rrf", "combsum", "combmnz", "borda", "stacking"]

#: Limits shared with the command line's help (tests/test_cli.py keeps the two in step).
TOP_K_MAX = 1000

NonNegative = Annotated[float, Field(ge=0)]
#: A Dask scheduler address: [scheme://]host:port (host a name, IPv4 or [IPv6]).
DASK_ADDRESS = re.compile(
    r"(?:(?P<scheme>tcp|tls|ws|wss|ucx)://)?(?P<host>[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])"
    r":(?P<port>[0-9]{1,5})"
)


def _event_type(name: str) -> str:
    if not name.strip():
        raise PydanticCustomError("empty_event_type", "event type must not be empty")
    return name


def _pairs(key: str) -> Any:
    """A validator that reads `{name: weight}` as `[{key: name, weight: weight}]`.

    The typed list is what the Prefect form renders as rows and sends back as plain JSON (a
    free-form map becomes a JSON box the form cannot submit as filled in); the map stays
    accepted, so earlier params files, saved deployments and the command line keep working.
    """

    def read(value: Any) -> Any:
        if isinstance(value, Mapping):
            return [{key: name, "weight": weight} for name, weight in value.items()]
        return value

    return read


def _once_each(names: list[str]) -> None:
    """A list that names a modality or an event type names each once."""
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise PydanticCustomError(
            "repeated_name",
            "lists {repeated} more than once",
            {"repeated": ", ".join(repeated)},
        )


class EventWeight(BaseModel):
    """One event type's weight: a row of the form's `event_weights`."""

    model_config = PARAMETER_CONFIG

    event_type: Annotated[str, AfterValidator(_event_type)] = Field(
        description="A value of events.event_type, as the source spells it."
    )
    weight: NonNegative = Field(1.0, description="Its weight: >= 0, 0 ignores the type.")


class ModalityWeight(BaseModel):
    """One modality's fusion weight: a row of the form's `fusion.weights`."""

    model_config = PARAMETER_CONFIG

    modality: ModalityName = Field(description="An enabled modality.")
    weight: NonNegative = Field(description="Its weight in weighted fusion: >= 0.")


class FusionParams(BaseModel):
    """How modality lists become one list; `auto` picks the best strategy on validation."""

    model_config = PARAMETER_CONFIG

    strategy: FusionStrategy = Field(
        "auto",
        description="Fusion strategy; 'auto' tries all on a validation window, keeps the best. "
        "'stacking' is learned on the hold-out window, so it needs evaluate=true.",
    )
    normalisation: Literal["minmax", "zscore", "rank"] = Field(
        "minmax", description="Score normalisation before weighted fusion."
    )
    weights: Annotated[
        list[ModalityWeight] | None, BeforeValidator(_pairs("modality"))
    ] = Field(
        None,
        description="Override per-modality weights: rows of modality and weight (also read "
        "from a map such as {'behavior': 1, 'social': 0.3}); enabled modalities, each once, "
        "weights finite and >= 0 (a modality not listed weighs 0), not all 0. Empty = tuned on "
        "a validation window.",
    )
    cold_history_max: int | None = Field(
        None,
        ge=0,
        description="Users with at most this many items may get their own recipe (cold start). "
        "Empty = the threshold and the recipe are learned on validation (and kept only when they "
        "beat the default recipe on those users by more than its standard error); "
        "0 = no cold rule.",
    )
    stacking: StackingParams = Field(
        default_factory=StackingParams,
        description="The learned fusion ('stacking', and a candidate of 'auto').",
    )

    @field_validator("weights")
    @classmethod
    def _not_all_zero(cls, weights: list[ModalityWeight] | None) -> list[ModalityWeight] | None:
        if not weights:
            return None  # empty = tune them
        _once_each([w.modality for w in weights])
        if not any(w.weight > 0 for w in weights):
            raise PydanticCustomError(
                "all_zero_weights",
                "all weights are 0, so every fused score would be 0; give at least one modality "
                "a positive weight, or leave weights empty to tune them",
            )
        return weights

    def weight_map(self) -> dict[str, float] | None:
        """The given weights by modality (None: tune them)."""
        return None if self.weights is None else {w.modality: w.weight for w in self.weights}


class RunParameters(BaseModel):
    """Everything one nightly run needs. Defaults run the demo end to end."""

    model_config = PARAMETER_CONFIG

    source: str | None = Field(
        None, description="Source folder in the data contract; empty = the built-in demo data."
    )
    db: str = Field(
        "recfusion.duckdb",
        min_length=1,
        description="DuckDB database file to read and publish to.",
    )
    top_k: int = Field(
        10, ge=1, le=TOP_K_MAX, description="Length of each user's published list (K), 1-1000."
    )
    candidates_per_modality: int = Field(
        100,
        ge=1,
        description="Top-N candidates each modality keeps per user. Must be >= top_k; when "
        "left at its default it is raised to top_k.",
    )
    as_of: datetime | None = Field(
        None,
        description="Build the data as of this time (events after it are ignored); a time "
        "without a zone is UTC, as in the data contract. Empty = latest event.",
    )
    modalities: list[ModalityName] = Field(
        list(ALL_MODALITIES),
        min_length=1,
        description="Candidate sources to run (at least one, each once): the four modalities, "
        "plus the feature-level (hybrid_features) and sample-level (hybrid_samples) fusion "
        "models.",
    )
    behavior: BehaviorParams = Field(
        default_factory=BehaviorParams, description="Collaborative filtering on interactions."
    )
    content: ContentParams = Field(
        default_factory=ContentParams, description="Similarity of item attributes."
    )
    social: SocialParams = Field(
        default_factory=SocialParams, description="What the user's friends interacted with."
    )
    popularity: PopularityParams = Field(
        default_factory=PopularityParams, description="What is popular now (cold start)."
    )
    hybrid: HybridParams = Field(
        default_factory=HybridParams, description="Feature-level and sample-level fusion models."
    )
    fusion: FusionParams = Field(
        default_factory=FusionParams, description="How the candidate lists become one list."
    )
    event_weights: Annotated[list[EventWeight], BeforeValidator(_pairs("event_type"))] = Field(
        # a default, not a factory: the schema then holds it, and the form shows its rows
        [EventWeight(event_type=t, weight=w) for t, w in DEFAULT_EVENT_WEIGHTS.items()],
        description="Weight per event type (purchase > like > click > view): rows of event type "
        "and weight (also read from a map such as {'purchase': 4, 'view': 0.25}); each type "
        "once, weights finite and >= 0 (0 ignores the type), not all 0. Types not listed "
        "weigh 1.",
    )
    value_transform: Literal["log1p", "raw", "binary"] = Field(
        "log1p", description="How an event's value (count, rating) becomes confidence."
    )
    half_life_days: float | None = Field(
        None,
        ge=MIN_DAYS,
        description="Optional recency decay of interactions (days, at least 1/24 = one hour: "
        "shorter rounds older events' weight to 0); empty = none.",
    )
    evaluate: bool = Field(
        True, description="Hold out recent events, score every list, log metrics."
    )
    use_tuned: bool = Field(
        True,
        description="Use the latest `recfusion tune` result for this source (each modality's "
        "tuned values replace these); off = exactly these values. Defaults when there is none.",
    )
    evaluation: EvaluationParams = Field(
        default_factory=EvaluationParams,
        description="Hold-out protocol, sample size and selection margin of the run's own "
        "evaluation.",
    )
    seed: int = Field(7, ge=0, description="Seed for random splits (>= 0, as NumPy needs).")
    block_size: int = Field(
        BLOCK_USERS, ge=1, description="Users scored per block (bounds memory)."
    )
    fusion_block_users: int = Field(
        5_000, ge=1, description="Users whose candidates are fused at once (bounds memory)."
    )
    regression_tolerance: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Reject the run when fused NDCG@K drops more than this share (0-1) "
        "below the last published run on the same data.",
    )
    allow_regression: bool = Field(False, description="Publish even if the regression gate fails.")
    publish_on_alarm: bool = Field(
        False,
        description="Publish even when the run's own evaluation raises the alarm (too few "
        "evaluation users, or lists below the best single source or popularity).",
    )
    retention_runs: int | None = Field(
        7, ge=1, description="Keep the recommendations of this many latest published runs "
        "(empty = all); metrics, checks and runs are kept forever."
    )
    candidate_retention_runs: int | None = Field(
        1, ge=1, description="Keep the candidates (every source's top-N per user, a run's "
        "bulkiest output, one file per run beside the database) of this many latest published "
        "runs (empty = all)."
    )
    lock_timeout_seconds: float = Field(
        0.0,
        ge=0,
        description="Wait this long (seconds, >= 0) for another run on the same database to "
        "finish.",
    )
    triggered_by: str | None = Field(
        None,
        description="An optional note kept with the run (who asked for it, why). What started "
        "it (schedule, deployment, cli, backfill) and the flow run are recorded from Prefect.",
    )
    workers: int | None = Field(
        None,
        ge=1,
        description="Score, fuse and explain users on a local Dask cluster of this many worker "
        "processes (needs pip install -e \".[dask]\"); empty = in this process, as always. "
        "Not with dask_address.",
    )
    dask_address: str | None = Field(
        None,
        description="Address of a running Dask scheduler (tcp://HOST:PORT) to score users on "
        "instead; its workers need recfusion installed and the run's staging folder (TMPDIR) "
        "on storage they all read. Empty = none. Not with workers.",
    )

    @field_validator("source", mode="before")
    @classmethod
    def _blank_source_is_demo(cls, source: Any) -> Any:
        # The Prefect form sends "" for a cleared text box; it means the demo data.
        return None if isinstance(source, str) and not source.strip() else source

    @field_validator("dask_address", mode="before")
    @classmethod
    def _dask_address(cls, address: Any) -> Any:
        if not isinstance(address, str):
            return address
        address = address.strip()
        if not address:
            return None  # a cleared box in the Prefect form
        found = DASK_ADDRESS.fullmatch(address)
        if found is None or not 0 < int(found.group("port")) < 65536:
            raise PydanticCustomError(
                "dask_address",
                "expected a Dask scheduler address such as tcp://10.0.0.5:8786 "
                "(scheme tcp, tls, ws, wss or ucx; host; port 1-65535)",
            )
        return address if found.group("scheme") else f"tcp://{address}"

    @field_validator("as_of")
    @classmethod
    def _as_of_in_utc(cls, as_of: datetime | None) -> datetime | None:
        if as_of is None:
            return None
        if as_of.tzinfo is None:
            return as_of.replace(tzinfo=UTC)
        return as_of.astimezone(UTC)

    @field_validator("modalities")
    @classmethod
    def _each_modality_once(cls, modalities: list[ModalityName]) -> list[ModalityName]:
        _once_each(list(modalities))
        return modalities

    @field_validator("event_weights")
    @classmethod
    def _some_event_counts(cls, weights: list[EventWeight]) -> list[EventWeight]:
        _once_each([w.event_type for w in weights])
        if not any(w.weight > 0 for w in weights):
            raise PydanticCustomError(
                "all_zero_weights",
                "needs at least one event type with a positive weight "
                "(leave it out for the defaults)",
            )
        return weights

    @model_validator(mode="after")
    def _consistent(self) -> RunParameters:
        problems: list[InitErrorDetails] = []

        def problem(loc: tuple[str | int, ...], kind: str, message: str, value: Any) -> None:
            problems.append(
                InitErrorDetails(type=PydanticCustomError(kind, message), loc=loc, input=value)
            )

        if self.candidates_per_modality < self.top_k:
            if "candidates_per_modality" in self.model_fields_set:
                problem(
                    ("candidates_per_modality",),
                    "too_few_candidates",
                    f"must be >= top_k ({self.top_k}): lists are fused from these candidates",
                    self.candidates_per_modality,
                )
            else:
                self.candidates_per_modality = self.top_k
        for i, row in enumerate(self.fusion.weights or []):
            if row.modality not in self.modalities:
                problem(
                    ("fusion", "weights", i, "modality"),
                    "weight_for_disabled_modality",
                    f"modality {row.modality} is not enabled in modalities "
                    f"({', '.join(self.modalities)})",
                    row.modality,
                )
        if self.workers is not None and self.dask_address is not None:
            problem(
                ("dask_address",),
                "workers_and_address",
                f"give workers ({self.workers}) or dask_address, not both: workers starts a "
                "local cluster, dask_address uses a running one",
                self.dask_address,
            )
        strategy = self.fusion.strategy
        if strategy != AUTO and FUSERS[strategy].needs_labels and not self.evaluate:
            problem(
                ("fusion", "strategy"),
                "fuser_needs_evaluation",
                f"{strategy} is learned on the hold-out window, so it needs evaluate=true",
                self.fusion.strategy,
            )
        if problems:
            raise ValidationError.from_exception_data(type(self).__name__, problems)
        return self

    def event_weight_map(self) -> dict[str, float]:
        return {w.event_type: w.weight for w in self.event_weights}

    def weighting(self) -> InteractionWeighting:
        return InteractionWeighting(
            event_weights=self.event_weight_map(),
            value_transform=self.value_transform,
            half_life_days=self.half_life_days,
        )


# --------------------------------------------------------------------------- error lines


def _fields_of(kind: Any) -> dict[str, Any]:
    # Models and pydantic dataclasses both keep their fields here.
    return dict(getattr(kind, "__pydantic_fields__", None) or {})


def _field_names(model: type[BaseModel], path: tuple[str | int, ...]) -> list[str]:
    """The parameter names a (nested) model takes at `path`; [] when it is not a model."""
    fields = _fields_of(model)
    for part in path:
        field = fields.get(str(part))
        if field is None:
            return []
        fields = _fields_of(field.annotation)
    return list(fields)


def _path(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        if part == "[key]":
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(parameters)"


def _shown(value: Any, limit: int = 60) -> str:
    text = str(value) if isinstance(value, float) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


#: Bounds in plain words and numbers (pydantic prints 1/24 as 0.041666666666666664).
_BOUNDS = {
    "greater_than_equal": ("ge", ">="),
    "greater_than": ("gt", ">"),
    "less_than_equal": ("le", "<="),
    "less_than": ("lt", "<"),
}
_UNKNOWN_KEY = ("extra_forbidden", "unexpected_keyword_argument")


def _message(error: Any) -> str:
    if error["type"] in _BOUNDS:
        key, sign = _BOUNDS[error["type"]]
        return f"must be {sign} {error['ctx'][key]:.4g}"
    return str(error["msg"]).removeprefix("Value error, ")


def parameter_errors(
    exc: ValidationError,
    model: type[BaseModel] = RunParameters,
    origins: Mapping[str, str] | None = None,
) -> list[str]:
    """One line per problem: 'invalid parameter <path>: <what is wrong> (got <value>)'.

    `origins` maps a parameter path to where its value came from (e.g. 'top_k' -> '--top-k'),
    so a command-line user sees the flag they typed. A misspelt key gets the closest real name.
    """
    origins = origins or {}
    lines = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        path = _path(loc)
        origin = origins.get(path)
        if error["type"] in _UNKNOWN_KEY:
            names = _field_names(model, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.7)
            hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(names)}"
            lines.append(f"invalid parameter {path}: unknown parameter ({hint})")
            continue
        # A key that is wrong is named by the path; a whole object as the value is noise.
        value = error.get("input")
        quiet = error["type"] == "missing" or "[key]" in loc or isinstance(value, dict)
        got = [] if quiet else [f"got {_shown(value)}"]
        if origin:
            got.append(f"from {origin}")
        lines.append(
            f"invalid parameter {path}: {_message(error)}" + (f" ({' '.join(got)})" if got else "")
        )
    return lines
