"""The tune flow: search each modality's hyperparameters on this warehouse's data, store them.

Weekly by default (deployments/prefect.yaml, `recfusion serve`), or `recfusion tune`. The
nightly then uses the latest result for its source (`use_tuned`), defaults when there is none.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run
from pydantic import BaseModel, Field

from flows.triggers import apply_deployment_parameters
from tasks.config import ModalityName, RunParameters
from tasks.data.snapshot import load_snapshot
from tasks.parameter_rules import PARAMETER_CONFIG
from tasks.tuning.search import tune_modalities
from tasks.tuning.store import save_results
from tasks.warehouse.analyst_copy import check_room, open_warehouse, refresh_analyst_copy
from tasks.warehouse.connection import connect, run_lock

ARTIFACT_KEY = "recfusion-tuning"


class TuneParameters(BaseModel):
    """What to tune, on which warehouse, within which budget."""

    model_config = PARAMETER_CONFIG

    run: RunParameters = Field(
        default_factory=RunParameters,
        description="The run whose database, source and current values are the starting point.",
    )
    modalities: list[ModalityName] | None = Field(
        None, description="Modalities to tune; empty = every modality of the run."
    )
    trials: int = Field(
        30, ge=1, le=1000,
        description="Trials per modality (the first is the current values); with enough budget "
        "the result depends only on the data, the seed and this number.",
    )
    budget_seconds: float = Field(
        1800.0, gt=0, le=7 * 86400,
        description="Wall-time bound of the whole search, shared evenly by the modalities.",
    )
    max_users: int = Field(
        2_000, ge=100, description="Validation users each trial is scored on (a seeded sample)."
    )


@dataclass
class TuneSummary:
    tuning_id: str | None
    improved: dict[str, tuple[float, float]] = field(default_factory=dict)  # default, tuned


#: A default rather than `None`: the form's JSON mode then names a bad field (see nightly).
DEFAULT_PARAMETERS = TuneParameters()


@flow(name="recfusion-tune", log_prints=True, validate_parameters=True)
def tune(params: TuneParameters = DEFAULT_PARAMETERS) -> TuneSummary:
    """Tune, then store every modality's best values with its validation score."""
    params, _ = apply_deployment_parameters(params, TuneParameters)
    logger = get_run_logger()
    run = params.run
    # The analyst copy: a consistent snapshot that never waits for (or blocks) a nightly run.
    with connect(run.db, read_only=True) as con:
        snapshot = load_snapshot(con, run.as_of, coded=False)  # its splits cut id strings
    if snapshot.events.height == 0:
        raise ValueError(f"{run.db} holds no events to tune on: run the nightly first")
    check_room(run.db)  # before the search, not after it
    results = tune_modalities(
        snapshot, run, list(params.modalities) if params.modalities else None,
        params.trials, params.budget_seconds, params.max_users,
    )
    protocol = {"evaluation": run.evaluation.model_dump(mode="json"), "seed": run.seed,
                "k": run.top_k, "trials": params.trials, "max_users": params.max_users}
    with run_lock(run.db, run.lock_timeout_seconds, holder="tune"):
        with connect(open_warehouse(run.db)) as con:
            tuning_id = save_results(con, results, run.source, snapshot.fingerprint(), protocol,
                                     str(flow_run.id) if flow_run.id else None)
        refresh_analyst_copy(run.db)
    create_table_artifact(
        key=ARTIFACT_KEY,
        table=[{"modality": r.modality, "default_ndcg": round(r.default_ndcg, 4),
                "tuned_ndcg": round(r.validation_ndcg, 4), "trials": r.n_trials,
                "seconds": round(r.seconds, 1), "values": str(r.update)}
               for r in results.values()],
        description=f"Tuning {tuning_id} of {run.db}: validation NDCG@{run.top_k}",
    )
    for r in results.values():
        logger.info("%s: %.4f -> %.4f %s", r.modality, r.default_ndcg, r.validation_ndcg,
                    r.update)
    return TuneSummary(tuning_id, {m: (r.default_ndcg, r.validation_ndcg)
                                   for m, r in results.items() if r.improves})
