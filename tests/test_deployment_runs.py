"""A deployment's run applies its saved parameters under a partial trigger (finding 1), and says
what started it (finding 5), run for real: a deployment on the test server, a flow run created
over the REST API the way `prefect deployment run --param` and the UI do, executed by
`prefect flow-run execute` (what a worker runs) in a folder of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from support import query

from flows.nightly import nightly

pytestmark = pytest.mark.usefixtures("prefect_harness")


def deploy_nightly(saved: dict[str, Any]) -> tuple[UUID, str]:
    """A nightly deployment with these saved `params`; (its id, its name)."""
    from prefect.deployments.runner import EntrypointType

    name = f"nightly-{uuid4().hex[:8]}"
    deployment = nightly.to_deployment(
        name=name, parameters={"params": saved}, entrypoint_type=EntrypointType.MODULE_PATH
    )
    return UUID(str(deployment.apply())), name


def trigger(deployment_id: UUID, parameters: dict[str, Any]) -> UUID:
    """A flow run of the deployment, created as the CLI and the UI create one (REST)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.create_flow_run_from_deployment(deployment_id, parameters=parameters).id


def execute(flow_run_id: UUID, api_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "prefect", "flow-run", "execute", str(flow_run_id)],
        cwd=cwd,
        env={**os.environ, "PREFECT_API_URL": api_url},
        capture_output=True,
        text=True,
        timeout=600,
    )


def flow_run_state(flow_run_id: UUID) -> tuple[str, str]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
    assert state is not None
    return state.type.value, state.message or ""


def test_a_trigger_with_one_field_runs_on_the_deployment_s_source_and_database(
    api_url: str, small_source: Path, tmp_path: Path
):
    db = tmp_path / "deployed" / "rf.duckdb"
    db.parent.mkdir()
    saved = {
        "source": str(small_source),
        "db": str(db),
        "evaluate": False,
        "retention_runs": 2,
        "lock_timeout_seconds": 120,
        "modalities": ["behavior", "popularity"],
        "triggered_by": "nightly on the small source",
    }
    deployment_id, name = deploy_nightly(saved)
    flow_run_id = trigger(deployment_id, {"params": {"top_k": 3}})  # Prefect replaces `params`
    # Before: the run went back to the demo data and ./recfusion.duckdb in the temporary folder
    # `flow-run execute` runs in, and ended Completed; this database was never created.
    done = execute(flow_run_id, api_url, tmp_path / "worker-cwd")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert flow_run_state(flow_run_id)[0] == "COMPLETED"
    [(status, parameters, source)] = query(db, "SELECT status, parameters, source FROM runs")
    applied = json.loads(parameters)
    assert status == "published" and source == str(small_source)
    assert applied["top_k"] == 3  # the trigger's
    for key, value in saved.items():  # and every other saved value
        assert applied[key] == value, key
    assert query(db, "SELECT max(rank) FROM recommendations_latest") == [(3,)]

    [row] = query(
        db,
        "SELECT triggered_by, flow_run_id, deployment_name, trigger_note, trigger_overrides "
        "FROM runs",
    )
    assert row[:4] == (
        "deployment", str(flow_run_id), f"recfusion-nightly/{name}", saved["triggered_by"]
    )
    assert json.loads(row[4]) == {"top_k": 3}


def test_a_trigger_whose_merge_is_invalid_fails_in_one_line_and_writes_nothing(
    api_url: str, small_source: Path, tmp_path: Path
):
    db = tmp_path / "rf.duckdb"
    saved = {"source": str(small_source), "db": str(db), "candidates_per_modality": 50}
    deployment_id, name = deploy_nightly(saved)
    flow_run_id = trigger(deployment_id, {"params": {"top_k": 80}})
    execute(flow_run_id, api_url, tmp_path / "cwd")
    state, message = flow_run_state(flow_run_id)
    assert state == "FAILED"
    reason = (
        f"deployment recfusion-nightly/{name}: its saved parameters with the "
        "trigger's are invalid: invalid parameter candidates_per_modality: must be >= top_k "
        "(80): lists are fused from these candidates (got 50)"
    )
    assert message == reason
    # Recorded where the parameters point, as rejected with the reason; nothing published.
    [(run_id, status, why, flow_run)] = query(
        db, "SELECT run_id, status, message, flow_run_id FROM runs")
    assert (status, why, flow_run) == ("rejected", reason, str(flow_run_id))
    assert query(db, "SELECT count(*) FROM recommendations_latest") == [(0,)]


def test_a_tune_trigger_with_one_field_tunes_the_deployment_s_database(
    api_url: str, published_db: Path, tmp_path: Path
):
    import shutil

    from prefect.deployments.runner import EntrypointType

    from flows.tune import tune

    db = tmp_path / "tuned" / "rf.duckdb"
    db.parent.mkdir()
    shutil.copy(published_db, db)
    [(source,)] = query(db, "SELECT DISTINCT source FROM runs")
    saved = {
        "run": {"source": source, "db": str(db), "evaluate": False},
        "modalities": ["popularity"], "trials": 5, "max_users": 100, "budget_seconds": 60,
    }
    deployment = tune.to_deployment(
        name=f"tune-{uuid4().hex[:8]}", parameters={"params": saved},
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    flow_run_id = trigger(UUID(str(deployment.apply())), {"params": {"trials": 2}})
    # Before: the run took the model's defaults (every modality, ./recfusion.duckdb in the
    # worker's folder) and failed there; this database got no tuning.
    done = execute(flow_run_id, api_url, tmp_path / "worker-cwd")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert flow_run_state(flow_run_id)[0] == "COMPLETED"
    rows = query(db, "SELECT modality, source, n_trials, flow_run_id FROM tuning_results")
    assert rows == [("popularity", source, 2, str(flow_run_id))]
