"""Run parameters: every mistake is rejected by the models themselves, one line per problem.

The same models are the `--params` file, the command line and the Prefect form, so these checks
hold for all three; tests/test_cli.py covers how the command line reports them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from flows.backfill import BackfillParameters
from tasks.config import RunParameters, parameter_errors
from tasks.fusion.stacking import StackingParams


def errors_of(data: Any, model: type[BaseModel] = RunParameters) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    return parameter_errors(caught.value, model)


def _models(model: Any, seen: set[Any]) -> None:
    """Every parameter model reachable from `model` (models and pydantic dataclasses)."""
    if model in seen:
        return
    seen.add(model)
    for field in model.__pydantic_fields__.values():
        if hasattr(field.annotation, "__pydantic_fields__"):
            _models(field.annotation, seen)


ALL_MODELS: set[Any] = set()
_models(BackfillParameters, ALL_MODELS)


def test_the_parameter_tree_is_the_one_expected() -> None:
    names = {m.__name__ for m in ALL_MODELS}
    assert names == {
        "BackfillParameters", "RunParameters", "FusionParams", "StackingParams",
        "BehaviorParams", "ContentParams", "SocialParams", "PopularityParams", "HybridParams",
        "EvaluationParams",
    }


@pytest.mark.parametrize("model", sorted(ALL_MODELS, key=lambda m: m.__name__),
                         ids=lambda m: m.__name__)
def test_every_parameter_model_forbids_unknown_keys_and_describes_every_field(model: Any) -> None:
    config = getattr(model, "model_config", None) or model.__pydantic_config__
    assert config.get("extra") == "forbid"
    assert config.get("allow_inf_nan") is False
    undescribed = [n for n, f in model.__pydantic_fields__.items() if not f.description]
    assert undescribed == []  # the Prefect form shows these as the field's help


@pytest.mark.parametrize(
    ("data", "line"),
    [
        ({"topk": 20}, "invalid parameter topk: unknown parameter (did you mean top_k?)"),
        ({"behavior": {"factor": 8}}, "behavior.factor: unknown parameter (did you mean factors?)"),
        ({"content": {"tag_weight": 1}}, "content.tag_weight: unknown parameter (did you mean"),
        ({"social": {"restrat": 0.5}}, "social.restrat: unknown parameter (did you mean restart?)"),
        ({"popularity": {"halflife": 3}},
         "popularity.halflife: unknown parameter (did you mean half_life_days?)"),
        ({"hybrid": {"max_item": 10}},
         "hybrid.max_item: unknown parameter (did you mean max_items?)"),
        ({"fusion": {"wieghts": {"behavior": 1}}}, "fusion.wieghts: unknown parameter (did you"),
        ({"fusion": {"stacking": {"n_bag": 2}}}, "fusion.stacking.n_bag: unknown parameter (did"),
    ],
)
def test_a_misspelt_key_at_any_level_is_an_error_naming_it(data: dict[str, Any], line: str) -> None:
    lines = errors_of(data)
    assert len(lines) == 1 and line in lines[0], lines


BAD = [
    ({"top_k": 0}, "top_k: must be >= 1 (got 0)"),
    ({"top_k": 1001}, "top_k: must be <= 1000"),
    ({"modalities": []}, "modalities: List should have at least 1 item"),
    ({"modalities": ["social", "behavior", "social"]}, "modalities: lists social more than once"),
    ({"modalities": ["behaviour"]}, "modalities[0]: Input should be 'behavior'"),
    ({"fusion": {"weights": {"popularty": 1.0}}},
     "fusion.weights[0].modality: Input should be 'behavior', 'content', 'social', 'popularity',"),
    ({"fusion": {"weights": [{"modality": "behavior", "weight": -1}]}},
     "fusion.weights[0].weight: must be >= 0 (got -1)"),
    ({"fusion": {"weights": [{"modality": "social", "weight": 1},
                             {"modality": "social", "weight": 2}]}},
     "fusion.weights: lists social more than once"),
    ({"fusion": {"weights": {"behavior": 0, "social": 0}}}, "fusion.weights: all weights are 0"),
    ({"modalities": ["behavior"], "fusion": {"weights": {"behavior": 1, "social": 1}}},
     "fusion.weights[1].modality: modality social is not enabled in modalities (behavior)"),
    ({"event_weights": {"view": -0.5}}, "event_weights[0].weight: must be >= 0 (got -0.5)"),
    ({"event_weights": [{"event_type": "view", "weight": 1}, {"event_type": "view"}]},
     "event_weights: lists view more than once"),
    ({"event_weights": [{"weight": 1}]}, "event_weights[0].event_type: Field required"),
    ({"event_weights": {"view": 0, "click": 0}}, "event_weights: needs at least one event type"),
    ({"event_weights": {}}, "event_weights: needs at least one event type"),
    ({"event_weights": {" ": 1}}, "event_weights[0].event_type: event type must not be empty"),
    ({"evaluation": {"holdout_days": 1e-9}},
     "evaluation.holdout_days: must be >= 0.04167 (got 1e-09)"),
    ({"evaluation": {"holdout_days": 1e6}},
     "evaluation.holdout_days: must be <= 3650 (got 1000000.0)"),
    ({"evaluation": {"max_users": 5}}, "evaluation.max_users: must be >= 100"),
    ({"evaluation": {"protocol": "weekly"}}, "evaluation.protocol: Input should be 'auto'"),
    ({"half_life_days": 1e-9}, "half_life_days: must be >= 0.04167"),
    ({"content": {"half_life_days": 0.001}}, "content.half_life_days: must be >= 0.04167"),
    ({"candidates_per_modality": 5, "top_k": 20},
     "candidates_per_modality: must be >= top_k (20): lists are fused from these candidates"),
    ({"seed": -1}, "seed: must be >= 0"),
    ({"behavior": {"seed": -3}}, "behavior.seed: must be >= 0"),
    ({"regression_tolerance": 1.5}, "regression_tolerance: must be <= 1"),
    ({"evaluate": False, "fusion": {"strategy": "stacking"}},
     "fusion.strategy: stacking is learned on the hold-out window, so it needs evaluate=true"),
    ({"fusion": {"stacking": {"n_bags": 0}}}, "fusion.stacking.n_bags: must be >= 1"),
    ({"fusion": {"stacking": {"drop_features": ["bogus"]}}},
     "fusion.stacking.drop_features[0]: unknown feature"),
    ({"as_of": "yesterday"}, "as_of: Input should be a valid datetime"),
    ({"db": ""}, "db: String should have at least 1 character"),
    ({"content": {k: 0 for k in ("title_weight", "text_weight", "tags_weight",
                                 "category_weight", "embedding_weight")}},
     "content: title_weight, text_weight, tags_weight, category_weight and embedding_weight are "
     "all 0"),
]


@pytest.mark.parametrize(("data", "line"), BAD, ids=[str(d)[:60] for d, _ in BAD])
def test_a_value_that_cannot_work_is_one_line_naming_its_parameter(
    data: dict[str, Any], line: str
) -> None:
    lines = errors_of(data)
    assert len(lines) == 1, lines
    assert lines[0].startswith("invalid parameter ") and line in lines[0], lines


def test_nan_and_infinity_from_a_json_file_are_rejected() -> None:
    # Python's JSON reader accepts NaN/Infinity; no parameter means them.
    data = json.loads(
        '{"lock_timeout_seconds": Infinity, "fusion": {"weights": {"behavior": NaN}},'
        ' "event_weights": {"view": -Infinity}}'
    )
    lines = errors_of(data)
    assert sorted(lines) == [
        "invalid parameter event_weights[0].weight: Input should be a finite number (got -inf)",
        "invalid parameter fusion.weights[0].weight: Input should be a finite number (got nan)",
        "invalid parameter lock_timeout_seconds: Input should be a finite number (got inf)",
    ]


def test_every_problem_gets_its_own_line() -> None:
    lines = errors_of({"top_k": 0, "topk": 3, "modalities": [],
                       "evaluation": {"holdout_days": 0}})
    assert len(lines) == 4
    assert {line.split(":")[0] for line in lines} == {
        "invalid parameter top_k", "invalid parameter topk", "invalid parameter modalities",
        "invalid parameter evaluation.holdout_days",
    }


def test_origins_name_the_flag_a_value_came_from() -> None:
    with pytest.raises(ValidationError) as caught:
        RunParameters.model_validate({"top_k": 0})
    assert parameter_errors(caught.value, origins={"top_k": "--top-k"}) == [
        "invalid parameter top_k: must be >= 1 (got 0 from --top-k)"
    ]


def test_sensible_values_are_normalised_not_rejected() -> None:
    p = RunParameters.model_validate({
        "top_k": 200,  # candidates_per_modality left at its default: raised to K
        "as_of": "2026-01-01T02:00:00+02:00",
        "source": "",  # the Prefect form's cleared text box: the demo data
        "fusion": {"weights": {}},  # empty: tuned
        "event_weights": {"view": 0, "purchase": 3},  # 0 ignores a type; not all are 0
    })
    assert p.candidates_per_modality == 200
    assert p.as_of == datetime(2026, 1, 1, tzinfo=UTC) and p.as_of.utcoffset() is not None
    assert p.source is None and p.fusion.weights is None
    naive = RunParameters.model_validate({"as_of": "2026-01-01T00:00:00"})
    assert naive.as_of == datetime(2026, 1, 1, tzinfo=UTC)  # no zone = UTC, as in the contract
    # The defaults and the deployment's stored dump stay valid round trips.
    again = RunParameters.model_validate(p.model_dump(mode="json"))
    assert again == p
    assert RunParameters.model_validate(RunParameters().model_dump(mode="json")) == RunParameters()


def test_backfill_range_and_as_of_are_checked_on_the_model() -> None:
    lines = errors_of(
        {"start": "2026-02-01", "end": "2026-01-01", "run": {"as_of": "2026-01-05"}},
        BackfillParameters,
    )
    assert sorted(lines) == [
        'invalid parameter end: is before start (2026-02-01) (got "2026-01-01")',
        "invalid parameter run.as_of: must be empty: a backfill runs as of each day's end in "
        'turn (got "2026-01-05T00:00:00+00:00")',
    ]
    assert errors_of({"start": "2026-01-01", "end": "2026-01-02", "dry_run": True},
                     BackfillParameters) == [
        "invalid parameter dry_run: unknown parameter (known: start, end, force, run)"
    ]


def test_stacking_parameters_reach_the_learned_fusion(small_source: Path) -> None:
    """fusion.stacking is not a dead form field: the stacker fitted in evaluation uses it."""
    import polars as pl

    from tasks.data.snapshot import Snapshot
    from tasks.recommend import dataset_from, evaluate_holdout

    params = RunParameters.model_validate({
        "modalities": ["behavior", "popularity"],
        "evaluation": {"max_users": 100},
        "fusion": {"strategy": "stacking",
                   "stacking": {"logistic_c": 0.01, "negatives_per_positive": 5}},
    })
    snap = Snapshot(*(pl.read_parquet(small_source / f"{t}.parquet") for t in
                      ("events", "items", "social")), None, None)
    evaluation = evaluate_holdout(dataset_from(snap, params), params)
    assert evaluation is not None and evaluation.plan.strategy == "stacking"
    assert evaluation.plan.default.stacker is not None
    used = evaluation.plan.default.stacker.params
    assert isinstance(used, StackingParams)
    assert (used.logistic_c, used.negatives_per_positive) == (0.01, 5.0)


def test_the_prefect_form_gets_the_same_checks(prefect_harness: None, tmp_path: Path) -> None:
    """A flow run started with a raw parameter dict (as from the UI) fails naming the key."""
    from flows.nightly import nightly

    db = tmp_path / "form.duckdb"
    state = nightly(params={"db": str(db), "topk": 20}, return_state=True)  # type: ignore[arg-type]
    assert state.is_failed()
    assert state.message == "invalid parameter topk: unknown parameter (did you mean top_k?)"
    from support import query

    assert query(db, "SELECT status FROM runs") == [("rejected",)]
    assert query(db, "SELECT count(*) FROM recommendations") == [(0,)]  # nothing ran


def test_invalid_values_that_reach_the_flow_are_one_line_recorded_rejected_and_publish_nothing(
    prefect_harness: None, small_source: Path, tmp_path: Path
) -> None:
    """The finding: with the form's validation off, or a rule the form cannot express, the run
    failed before recfusion ran, with a traceback, no report and no row in `runs`. Prefect no
    longer checks the nightly's parameters; recfusion does, in one line per bad field."""
    from support import query

    from flows.nightly import RunSummary, nightly

    db = tmp_path / "rf.duckdb"
    given = {"source": str(small_source), "db": str(db), "top_k": 0,
             "fusion": {"strategy": "nonsense"}}
    state = nightly(params=given, return_state=True)  # as the API delivers it: plain JSON
    assert state.is_failed()
    summary = state.result(raise_on_failure=False)
    assert isinstance(summary, RunSummary) and summary.status == "rejected"
    assert state.message is not None and "\n" not in state.message
    assert "invalid parameter top_k: must be >= 1 (got 0)" in state.message
    assert "invalid parameter fusion.strategy:" in state.message
    [(status, message, parameters)] = query(db, "SELECT status, message, parameters FROM runs")
    assert (status, message) == ("rejected", state.message)
    assert json.loads(parameters)["top_k"] == 0  # what was asked, as it was asked
    assert query(db, "SELECT count(*) FROM recommendations") == [(0,)]
