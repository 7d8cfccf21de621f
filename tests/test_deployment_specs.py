"""What deployments/prefect.yaml and `recfusion serve` register, checked without running them:
every entrypoint is a real flow whose parameter model accepts the saved values, the two routes'
deployment names never meet (finding 3: serve overwrote `prefect deploy`'s in place), and the
deploy step refuses a folder that is not a checkout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.backfill import BackfillParameters
from flows.deploy_steps import NotACheckout, recfusion_home
from flows.serve import SERVED_SUFFIX, deployments
from flows.tune import TuneParameters
from tasks.config import RunParameters

REPO = Path(__file__).resolve().parents[1]


def spec() -> dict[str, dict[str, Any]]:
    text = (REPO / "deployments" / "prefect.yaml").read_text(encoding="utf-8")
    return {d["name"]: d for d in yaml.safe_load(text)["deployments"]}


def entrypoint_flow(entrypoint: str) -> Any:
    from prefect.flows import load_flow_from_entrypoint

    path, name = entrypoint.split(":")
    assert (REPO / path).is_file(), entrypoint
    return load_flow_from_entrypoint(f"{REPO / path}:{name}")


def test_the_tune_deployment_runs_the_tune_flow_weekly_on_the_nightly_s_database():
    deployments_ = spec()
    tune = deployments_["tune"]
    assert entrypoint_flow(tune["entrypoint"]).name == "recfusion-tune"
    params = TuneParameters.model_validate(tune["parameters"]["params"])  # extra="forbid"
    nightly = RunParameters.model_validate(deployments_["nightly"]["parameters"]["params"])
    assert params.run == nightly  # the same db, source and values as run_defaults
    [schedule] = tune["schedules"]
    assert (schedule["cron"], schedule["timezone"], schedule["active"]) == (
        "0 3 * * 0", "UTC", True
    )
    assert tune["work_pool"] == deployments_["nightly"]["work_pool"]


@pytest.mark.parametrize(
    ("name", "flow_name", "model"),
    [
        ("nightly", "recfusion-nightly", RunParameters),
        ("backfill", "recfusion-backfill", BackfillParameters),
    ],
)
def test_every_run_deployment_names_a_real_flow_and_valid_parameters(
    name: str, flow_name: str, model: Any
):
    deployment = spec()[name]
    assert entrypoint_flow(deployment["entrypoint"]).name == flow_name
    model.model_validate(deployment["parameters"]["params"])


def test_served_deployments_never_take_the_names_prefect_deploy_uses(tmp_path: Path):
    served = deployments(str(tmp_path / "rf.duckdb"), None)
    names = {d.name for d in served}
    assert names == {name + SERVED_SUFFIX for name in spec()}
    assert names.isdisjoint(spec())
    [tune] = [d for d in served if d.name == "tune-serve"]
    assert [s.schedule.cron for s in tune.schedules] == ["0 3 * * 0"]
    assert TuneParameters.model_validate(tune.parameters["params"]).run.db == str(
        tmp_path / "rf.duckdb"
    )


def test_deploy_step_stores_the_checkout_it_runs_from(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("RECFUSION_HOME", raising=False)
    monkeypatch.chdir(REPO)
    assert recfusion_home() == {"directory": str(REPO)}


def test_deploy_step_refuses_a_folder_that_is_not_a_checkout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    # Before: the pull step stored `{{ $RECFUSION_HOME }}` unresolved, and workers ran in None.
    monkeypatch.setenv("RECFUSION_HOME", str(tmp_path))
    with pytest.raises(NotACheckout) as error:
        recfusion_home()
    assert str(error.value) == (
        f"RECFUSION_HOME={tmp_path} does not hold recfusion (flows/nightly.py is missing): run "
        "`prefect deploy` from the recfusion checkout, or set RECFUSION_HOME to the checkout the "
        "workers run from"
    )
    monkeypatch.delenv("RECFUSION_HOME")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NotACheckout, match=r"RECFUSION_HOME is not set and .* does not hold"):
        recfusion_home()


def _free_form_maps(node: Any, defs: dict[str, Any], path: str, seen: set[str]) -> list[str]:
    """Paths whose schema is an object without named fields: the form's free-form JSON box."""
    if isinstance(node, dict):
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            if name in seen:
                return []
            return _free_form_maps(defs[name], defs, path, seen | {name})
        found = []
        if node.get("type") == "object" and not node.get("properties"):
            found.append(path)
        for key, sub in (node.get("properties") or {}).items():
            found += _free_form_maps(sub, defs, f"{path}.{key}".lstrip("."), seen)
        for key in ("anyOf", "allOf", "oneOf"):
            for sub in node.get(key, []):
                found += _free_form_maps(sub, defs, path, seen)
        if "items" in node:
            found += _free_form_maps(node["items"], defs, f"{path}[]", seen)
        return found
    return []


@pytest.mark.parametrize("flow_name", ["nightly", "backfill", "tune"])
def test_every_parameter_is_a_field_the_prefect_form_renders(flow_name: str) -> None:
    """The finding: `event_weights` and `fusion.weights` were free-form maps, which the form
    shows as a JSON box holding `{"__prefect_kind": "json"}` that it then refuses to submit."""
    import importlib

    from prefect.utilities.callables import parameter_schema

    flow = getattr(importlib.import_module(f"flows.{flow_name}"), flow_name)
    schema = parameter_schema(flow.fn).model_dump_for_openapi()
    assert _free_form_maps(schema, schema.get("definitions", {}), "", set()) == []


def test_the_form_s_own_json_goes_back_in_as_it_came_out() -> None:
    """What JSON mode shows (every field, as the schema types it) validates against the
    deployment's schema as Prefect checks it and comes back as the same parameters."""
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools.validation import validate

    from flows.nightly import nightly

    schema = parameter_schema(nightly.fn).model_dump_for_openapi()
    shown = RunParameters.model_validate(
        {"fusion": {"weights": {"behavior": 1, "social": 0.3}}, "event_weights": {"view": 2}}
    ).model_dump(mode="json")
    validate({"params": shown}, schema, raise_on_error=True, ignore_required=True)
    assert shown["event_weights"] == [{"event_type": "view", "weight": 2.0}]
    assert RunParameters.model_validate(shown).model_dump(mode="json") == shown


def _error_paths(node: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(node, str):
        return [path]
    if isinstance(node, dict):
        inner = (*path, node["property"])
        return [p for e in node.get("errors", []) for p in _error_paths(e, inner)]
    return [p for e in node for p in _error_paths(e, path)]


def test_a_bad_value_in_json_mode_is_named_by_its_field() -> None:
    """The finding: an unknown fusion.strategy typed in JSON mode gave a red wall dumping the
    whole object ("… is not valid under any of the given schemas"), never naming the field."""
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools.validation import build_error_obj, validate

    from flows.nightly import nightly

    schema = parameter_schema(nightly.fn).model_dump_for_openapi()
    shown = RunParameters().model_dump(mode="json")
    shown["fusion"]["strategy"], shown["top_k"] = "nonsense", 0
    errors = build_error_obj(validate({"params": shown}, schema, ignore_required=True))
    assert sorted(_error_paths(errors["errors"])) == [
        ("params", "fusion", "strategy"), ("params", "top_k")
    ]
