"""Which parameters a deployment's run applies, and what started the run.

Prefect merges a trigger's parameters over the deployment's saved ones one level deep only: our
flows take one object (`params`), so `prefect deployment run … --param params='{"top_k": 20}'`
(or the same REST call) replaced the whole saved object, and the run went back to the demo data
and `./recfusion.duckdb`. Here the run takes the deployment's saved `params` again and lays over
them only what the trigger gave, field by field into nested models. The UI's form sends every
field, so it gets what it shows; a schedule sends the saved values, so it gets those. A field
holding a list (fusion weights, event weights, modalities) is replaced whole, not merged row by
row: a trigger that names two weights means those two.

"What the trigger gave" is the flow run's parameters as Prefect recorded them: the fields
`model_fields_set` would name, without those a validator filled in (a bigger `top_k` raises
`candidates_per_modality` when it was not given; that must not override a saved value).

Without a deployment (`recfusion run`, a Python call) nothing changes.
"""

from __future__ import annotations

import json
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, Union, get_args, get_origin
from uuid import UUID

from pydantic import BaseModel, ValidationError

from tasks.config import parameter_errors

M = TypeVar("M", bound=BaseModel)

#: The flow whose subflows are the backfill's days.
BACKFILL_FLOW = "recfusion-backfill"

TriggerKind = Literal["schedule", "deployment", "cli", "backfill", "subflow"]


class DeploymentParametersInvalid(RuntimeError):
    """The deployment's saved parameters with the trigger's are not valid parameters."""

    def __init__(self, message: str, parameters: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        #: What the run was asked to use, as given (to record the refusal where it points).
        self.parameters = dict(parameters or {})


class ParametersInvalid(DeploymentParametersInvalid):
    """A flow run's own parameters (no deployment) are not valid parameters."""


# --------------------------------------------------------------------------- merging


def _nested_model(annotation: Any) -> Any | None:
    """The parameter model a field holds (a model or pydantic dataclass, maybe optional)."""
    if hasattr(annotation, "__pydantic_fields__"):
        return annotation
    if get_origin(annotation) in (Union, types.UnionType):
        models = [a for a in get_args(annotation) if hasattr(a, "__pydantic_fields__")]
        return models[0] if len(models) == 1 else None
    return None


def merge_parameters(
    model: Any, saved: Mapping[str, Any], given: Mapping[str, Any]
) -> dict[str, Any]:
    """`saved` with every field `given` sets laid over it; nested models merge, the rest replace.

    Pure: `model` only says which fields hold nested models (anything with pydantic fields).
    """
    fields = getattr(model, "__pydantic_fields__", {})
    merged = dict(saved)
    for name, value in given.items():
        spec = fields.get(name)
        inner = _nested_model(spec.annotation) if spec is not None else None
        before = saved.get(name)
        if inner is not None and isinstance(value, Mapping) and isinstance(before, Mapping):
            merged[name] = merge_parameters(inner, before, value)
        else:
            merged[name] = value
    return merged


def changed_fields(
    model: Any, saved: Mapping[str, Any], merged: Mapping[str, Any], prefix: str = ""
) -> dict[str, Any]:
    """Dotted paths whose merged value differs from the saved one -> the merged value.

    Nested models are compared field by field; a dict or list as a whole, as it was replaced.
    """
    fields = getattr(model, "__pydantic_fields__", {})
    changed: dict[str, Any] = {}
    for name, value in merged.items():
        path = f"{prefix}{name}"
        before = saved.get(name, _ABSENT)
        spec = fields.get(name)
        inner = _nested_model(spec.annotation) if spec is not None else None
        if inner is not None and isinstance(value, Mapping) and not _given(before):
            before = {}  # a nested model the saved values leave at its defaults
        if inner is not None and isinstance(value, Mapping) and isinstance(before, Mapping):
            changed |= changed_fields(inner, before, value, path + ".")
        elif _canonical(value) != _canonical(before):
            changed[path] = value
    return changed


_ABSENT = object()


def _paths(data: Mapping[str, Any], prefix: str = "") -> set[str]:
    """Dotted paths of the leaves of a nested mapping (a dict value counts as one leaf only
    when it is not itself a mapping of further fields)."""
    out: set[str] = set()
    for name, value in data.items():
        if isinstance(value, Mapping) and value:
            out |= _paths(value, f"{prefix}{name}.") | {f"{prefix}{name}"}
        else:
            out.add(f"{prefix}{name}")
    return out


def _given(value: Any) -> bool:
    return value is not _ABSENT


def _canonical(value: Any) -> str:
    if value is _ABSENT:
        return "<absent>"
    return json.dumps(value, sort_keys=True, default=str)


@dataclass(frozen=True)
class Applied:
    """The parameters a run applies, and where they came from."""

    deployment: str | None = None  # 'flow/deployment' whose saved parameters were merged
    changed: dict[str, Any] = field(default_factory=dict)  # what the trigger changed


def merged_run_parameters(
    model: type[M],
    saved: Mapping[str, Any] | None,
    given: Mapping[str, Any] | None,
    deployment: str,
) -> tuple[M, dict[str, Any]]:
    """The validated merge of a deployment's saved parameters and a trigger's, or one line why not.

    Returns (parameters, what the trigger changed): the fields whose value differs from what the
    run would have used anyway, the deployment's saved value, else the model's default. The UI's
    form sends every field it shows; those it left alone are no change.
    """
    saved = dict(saved or {})
    merged = merge_parameters(model, saved, dict(given or {}))
    try:
        params = model.model_validate(merged)
    except ValidationError as exc:
        raise DeploymentParametersInvalid(
            f"deployment {deployment}: its saved parameters with the trigger's are invalid: "
            + "; ".join(parameter_errors(exc, model)), merged
        ) from None
    try:
        anyway = model.model_validate(saved).model_dump(mode="json")
    except ValidationError:  # saved values valid only with the trigger's: compare as saved
        anyway = saved
    given_paths = _paths(merge_parameters(model, {}, dict(given or {})))
    changed = changed_fields(model, anyway, params.model_dump(mode="json"))
    # A value a validator derived (a bigger top_k raising candidates_per_modality) follows a
    # change the trigger made; only what the trigger itself set is named.
    return params, {p: v for p, v in changed.items() if any(
        p == g or p.startswith(g + ".") for g in given_paths)}


# --------------------------------------------------------------------------- the runtime


def _flow_run_context() -> Any:
    from prefect.context import FlowRunContext

    return FlowRunContext.get()


def apply_deployment_parameters(
    params: Any, model: type[M] | None = None, key: str = "params"
) -> tuple[M, Applied]:
    """The parameters this flow run applies: its deployment's saved `key` merged with the trigger's.

    Call at the start of a flow. Outside a deployment's run (no flow run of its own with a
    deployment: `recfusion run`, a backfill's days) `params` come back as given, validated.
    `params` may be the model or, for a flow that leaves validation to recfusion
    (`validate_parameters=False`), whatever reached it: a mapping, or nothing (the defaults).
    Invalid values raise `DeploymentParametersInvalid` (`ParametersInvalid` without a
    deployment), one line naming each bad field.
    """
    model = model or type(params)
    ctx = _flow_run_context()
    flow_run = getattr(ctx, "flow_run", None)
    deployment_id = getattr(flow_run, "deployment_id", None)
    if flow_run is None or deployment_id is None:
        return _validated(model, params), Applied()
    from prefect import get_run_logger
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment(deployment_id)
    name = f"{ctx.flow.name}/{deployment.name}"
    saved = (deployment.parameters or {}).get(key)
    given = (flow_run.parameters or {}).get(key)
    if not isinstance(given, Mapping):  # e.g. a model passed in-process: what it was given
        given = (params.model_dump(mode="json", exclude_unset=True)
                 if isinstance(params, BaseModel) else {})
    merged, changed = merged_run_parameters(
        model, saved if isinstance(saved, Mapping) else {}, given, name
    )
    logger = get_run_logger()
    if changed:
        logger.info(
            "parameters: deployment %s's saved values, with these from the trigger: %s",
            name,
            ", ".join(f"{path}={json.dumps(v, default=str)}" for path, v in changed.items()),
        )
    else:
        logger.info("parameters: deployment %s's saved values (the trigger changed none)", name)
    return merged, Applied(name, changed)


def _validated(model: type[M], params: Any) -> M:
    if isinstance(params, model):
        return params.model_copy(deep=True)  # never the flow's shared default itself
    try:
        return model.model_validate(params if params is not None else {})
    except ValidationError as exc:
        given = params if isinstance(params, Mapping) else {}
        raise ParametersInvalid("; ".join(parameter_errors(exc, model)), given) from None


@dataclass(frozen=True)
class Trigger:
    """What started a run, as Prefect knows it (recorded in `runs`)."""

    kind: TriggerKind
    detail: str | None = None  # who or what, when Prefect says (a user, an automation, a parent)
    flow_run_id: str | None = None
    deployment: str | None = None  # 'flow/deployment' of the run, or of the flow that ran it


def _created_by(created_by: Any) -> str | None:
    if created_by is None:
        return None
    kind = str(getattr(created_by, "type", None) or "").lower()
    shown = getattr(created_by, "display_value", None) or getattr(created_by, "id", None)
    text = " ".join(str(p) for p in (kind, shown) if p)
    return text or None


def classify(
    flow_run: Any, parent_flow_name: str | None = None, parent_flow_run_id: str | None = None
) -> tuple[TriggerKind, str | None]:
    """(kind, detail) of a flow run: pure, from the fields Prefect keeps on it.

    A deployment's run is 'schedule' when the scheduler made it, else 'deployment' (the UI, the
    CLI, the REST API, an automation; `created_by` says who when Prefect knows). A run of the
    flow called directly is 'cli' (`recfusion run`, or Python), or 'backfill' when it is one of
    a backfill's days ('subflow' inside any other flow).
    """
    if flow_run is None:
        return "cli", None
    by = _created_by(getattr(flow_run, "created_by", None))
    parent = f"flow run {parent_flow_run_id}" if parent_flow_run_id else None
    if getattr(flow_run, "deployment_id", None) is not None:
        if getattr(flow_run, "auto_scheduled", False):
            return "schedule", by
        details = [d for d in (by, f"started by {parent}" if parent else None) if d]
        return "deployment", "; ".join(details) or None
    if getattr(flow_run, "parent_task_run_id", None) is not None:
        kind: TriggerKind = "backfill" if parent_flow_name == BACKFILL_FLOW else "subflow"
        label = parent_flow_name or "flow"
        return kind, f"{label} {parent}" if parent else label
    return "cli", by


def current_trigger(applied: Applied | None = None) -> Trigger:
    """What started the current flow run (call inside a flow or task)."""
    ctx = _flow_run_context()
    flow_run = getattr(ctx, "flow_run", None)
    if flow_run is None:
        return Trigger("cli")
    parent_name: str | None = None
    parent_id: str | None = None
    deployment = applied.deployment if applied else None
    if flow_run.parent_task_run_id is not None or (
        flow_run.deployment_id is not None and deployment is None
    ):
        parent_name, parent_id, parent_deployment, own = _lookups(flow_run)
        deployment = deployment or own or parent_deployment
    kind, detail = classify(flow_run, parent_name, parent_id)
    return Trigger(kind, detail, str(flow_run.id), deployment)


def _lookups(flow_run: Any) -> tuple[str | None, str | None, str | None, str | None]:
    """(parent flow's name, parent flow run id, parent's deployment, own deployment) via the API.

    Best effort: provenance must never stop a run, so an API hiccup leaves them empty.
    """
    from prefect.client.orchestration import get_client

    parent_name = parent_id = parent_deployment = own = None
    try:
        with get_client(sync_client=True) as client:
            if flow_run.deployment_id is not None:
                own = _deployment_name(client, flow_run.deployment_id, flow_run.flow_id)
            if flow_run.parent_task_run_id is not None:
                task_run = client.read_task_run(flow_run.parent_task_run_id)
                if task_run.flow_run_id is not None:
                    parent = client.read_flow_run(task_run.flow_run_id)
                    parent_id = str(parent.id)
                    parent_name = client.read_flow(parent.flow_id).name
                    if parent.deployment_id is not None:
                        parent_deployment = _deployment_name(
                            client, parent.deployment_id, parent.flow_id
                        )
    except Exception as exc:  # the run goes on; its row just says less
        from prefect import get_run_logger

        get_run_logger().warning("could not read what started this run: %s", exc)
    return parent_name, parent_id, parent_deployment, own


def _deployment_name(client: Any, deployment_id: UUID, flow_id: UUID) -> str:
    deployment = client.read_deployment(deployment_id)
    return f"{client.read_flow(flow_id).name}/{deployment.name}"
