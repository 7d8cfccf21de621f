"""Which parameters a deployment's run applies (the merge rule) and what started it (pure parts).

The runs themselves (a deployment triggered with one field over REST, by a worker from the CLI)
are in tests/test_deployment_runs.py and tests/test_work_pool.py.
"""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prefect.client.schemas.objects import CreatedBy, FlowRun

from flows.backfill import BackfillParameters
from flows.triggers import (
    DeploymentParametersInvalid,
    changed_fields,
    classify,
    merge_parameters,
    merged_run_parameters,
)
from tasks.config import RunParameters

#: What an operator saves under `run_defaults` in deployments/prefect.yaml.
SAVED: dict[str, Any] = {
    "source": "/srv/data/source",
    "db": "/srv/recfusion/recfusion.duckdb",
    "top_k": 10,
    "modalities": ["behavior", "content", "popularity"],
    "fusion": {"strategy": "weighted", "normalisation": "zscore",
               "weights": {"behavior": 1.0, "content": 0.5, "popularity": 0.2}},
    "evaluate": True,
    "evaluation": {"holdout_days": 14},
    "retention_runs": 5,
    "lock_timeout_seconds": 900,
    "triggered_by": "ops: nightly on the shop data",
}


def merged(given: dict[str, Any], saved: dict[str, Any] | None = None) -> RunParameters:
    params, _ = merged_run_parameters(RunParameters, SAVED if saved is None else saved, given,
                                      "recfusion-nightly/nightly")
    return params


def test_a_trigger_with_only_top_k_keeps_every_other_saved_value() -> None:
    params = merged({"top_k": 20})
    assert params.top_k == 20
    assert params.source == SAVED["source"] and params.db == SAVED["db"]
    assert params.retention_runs == 5 and params.lock_timeout_seconds == 900
    assert params.modalities == ["behavior", "content", "popularity"]
    assert params.fusion.strategy == "weighted" and params.fusion.normalisation == "zscore"
    assert params.evaluation.holdout_days == 14
    assert params.triggered_by == SAVED["triggered_by"]


def test_a_nested_field_merges_into_the_saved_model() -> None:
    params = merged({"fusion": {"strategy": "rrf"}, "evaluation": {"protocol": "user_random"}})
    assert params.fusion.strategy == "rrf"
    assert params.fusion.normalisation == "zscore"  # saved, kept
    assert params.fusion.weight_map() == SAVED["fusion"]["weights"]
    assert params.evaluation.protocol == "user_random" and params.evaluation.holdout_days == 14


def test_dict_and_list_fields_are_replaced_whole() -> None:
    params = merged({"fusion": {"weights": {"behavior": 1.0}}, "modalities": ["behavior"]})
    assert params.fusion.weight_map() == {"behavior": 1.0}  # not merged with the saved ones
    assert params.modalities == ["behavior"]


def test_the_ui_form_sends_every_field_and_gets_exactly_what_it_shows() -> None:
    form = RunParameters.model_validate(
        {**SAVED, "top_k": 7, "db": "/tmp/other.duckdb"}
    ).model_dump(mode="json")
    assert merged(form).model_dump(mode="json") == form


def test_a_schedule_gives_the_saved_values_and_gets_them() -> None:
    expected = RunParameters.model_validate(SAVED).model_dump(mode="json")
    assert merged(dict(SAVED)).model_dump(mode="json") == expected
    assert merged({}).model_dump(mode="json") == expected


def test_a_field_a_validator_filled_does_not_override_a_saved_value() -> None:
    # RunParameters raises candidates_per_modality to top_k when it was not given, so its
    # model_fields_set names it; the trigger gave only top_k, and the saved 300 stays.
    params = merged({"top_k": 200}, {**SAVED, "candidates_per_modality": 300})
    assert params.top_k == 200 and params.candidates_per_modality == 300


def test_an_explicit_null_is_a_value_the_trigger_gave() -> None:
    assert merged({"source": None}).source is None  # the demo data, asked for by name


def test_changed_fields_name_what_the_trigger_changed() -> None:
    given = {"top_k": 20, "db": SAVED["db"], "fusion": {"strategy": "rrf",
                                                        "weights": {"behavior": 1.0}}}
    _, changed = merged_run_parameters(RunParameters, SAVED, given, "x/y")
    assert changed == {"top_k": 20, "fusion.strategy": "rrf",  # db: same as saved, no change
                       "fusion.weights": [{"modality": "behavior", "weight": 1.0}]}


def test_the_form_sends_every_field_and_only_what_the_person_changed_is_a_change() -> None:
    """The finding: changing only top_k in the UI's form logged ~100 values and 87 entries in
    runs.trigger_overrides. The form fills every field with the saved value or the default."""
    form = RunParameters.model_validate(SAVED).model_dump(mode="json") | {"top_k": 5}
    params, changed = merged_run_parameters(RunParameters, SAVED, form, "x/y")
    assert params.top_k == 5 and changed == {"top_k": 5}
    # JSON mode, the same object typed back with one nested change
    form["fusion"] = {**form["fusion"], "strategy": "rrf"}
    assert merged_run_parameters(RunParameters, SAVED, form, "x/y")[1] == {
        "top_k": 5, "fusion.strategy": "rrf"}
    # a field the saved values leave at its default, sent at that default: no change either
    assert "seed" not in SAVED and merged_run_parameters(
        RunParameters, SAVED, {"seed": RunParameters().seed}, "x/y")[1] == {}


def test_a_merge_that_is_not_valid_is_one_line_naming_the_deployment_and_parameter() -> None:
    with pytest.raises(DeploymentParametersInvalid) as caught:
        merged({"top_k": 200}, {**SAVED, "candidates_per_modality": 100})
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("deployment recfusion-nightly/nightly:")
    assert "invalid parameter candidates_per_modality: must be >= top_k (200)" in message


def test_backfill_parameters_merge_into_their_run() -> None:
    saved = {"start": "2026-01-01", "end": "2026-01-07", "force": False, "run": SAVED}
    params, changed = merged_run_parameters(
        BackfillParameters, saved, {"start": "2026-01-05", "run": {"top_k": 3}}, "b/backfill"
    )
    assert str(params.start) == "2026-01-05" and str(params.end) == "2026-01-07"
    assert params.run.top_k == 3 and params.run.db == SAVED["db"]
    assert changed == {"start": "2026-01-05", "run.top_k": 3}


# A few top-level fields and nested ones, each with values the models accept.
_FIELDS: dict[tuple[str, ...], st.SearchStrategy[Any]] = {
    ("top_k",): st.integers(1, 50),
    ("db",): st.sampled_from(["a.duckdb", "/srv/b.duckdb"]),
    ("source",): st.sampled_from([None, "/data/x", "/data/y"]),
    ("retention_runs",): st.integers(1, 9),
    ("lock_timeout_seconds",): st.floats(0, 1e4),
    ("evaluate",): st.booleans(),
    ("fusion", "normalisation"): st.sampled_from(["minmax", "zscore", "rank"]),
    ("evaluation", "holdout_days"): st.integers(1, 30),
    ("behavior", "factors"): st.integers(2, 64),
}


def _nested(paths: dict[tuple[str, ...], Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, value in paths.items():
        target = out
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = value
    return out


def _get(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    for part in path:
        data = data[part]
    return data


@settings(max_examples=40, deadline=None)
@given(
    saved=st.fixed_dictionaries({}, optional={p: s for p, s in _FIELDS.items()}),
    trigger=st.fixed_dictionaries({}, optional={p: s for p, s in _FIELDS.items()}),
)
def test_every_field_is_the_trigger_s_if_it_gave_one_else_the_saved_one(
    saved: dict[tuple[str, ...], Any], trigger: dict[tuple[str, ...], Any]
) -> None:
    params = merged(_nested(trigger), _nested(saved)).model_dump(mode="json")
    defaults = RunParameters().model_dump(mode="json")
    for path in _FIELDS:
        expected = trigger.get(path, saved.get(path, _get(defaults, path)))
        assert _get(params, path) == expected, path
    given_changes = changed_fields(RunParameters, _nested(saved),
                                   merge_parameters(RunParameters, _nested(saved),
                                                    _nested(trigger)))
    assert set(given_changes) <= {".".join(p) for p in trigger}


def _flow_run(**fields: Any) -> FlowRun:
    return FlowRun(flow_id=uuid4(), **fields)


def test_classify_tells_schedule_deployment_cli_and_backfill_apart() -> None:
    deployment = uuid4()
    assert classify(_flow_run(deployment_id=deployment, auto_scheduled=True)) == (
        "schedule", None)
    assert classify(_flow_run(deployment_id=deployment)) == ("deployment", None)
    by_automation = _flow_run(
        deployment_id=deployment,
        created_by=CreatedBy(id=uuid4(), type="AUTOMATION", display_value="retry-nightly"),
    )
    assert classify(by_automation) == ("deployment", "automation retry-nightly")
    by_user = _flow_run(deployment_id=deployment,
                        created_by=CreatedBy(type="USER", display_value="alice"))
    assert classify(by_user) == ("deployment", "user alice")
    assert classify(_flow_run()) == ("cli", None)
    day = _flow_run(parent_task_run_id=uuid4())
    assert classify(day, "recfusion-backfill", "abc") == (
        "backfill", "recfusion-backfill flow run abc")
    assert classify(day, "my-own-flow", "def") == ("subflow", "my-own-flow flow run def")
    assert classify(None) == ("cli", None)
