"""The README's work-pool route, run as typed (findings 1 and 3 of "Operations as users meet them").

From zero: a Prefect home of its own, `prefect server start --background` (on a free port),
`prefect config set PREFECT_API_URL=…`, the wait, the work pool, `prefect deploy` from a checkout
whose `run_defaults` name a real source and database, the README's trigger with one field, and a
real process worker (`--run-once --limit 1`, so it stops after that run). The run must publish to
the deployment's database with the trigger's K and every other saved value, and leave nothing
in the checkout. The commands are read from the README itself, so the two cannot drift apart.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from server_support import (
    README_PORT,
    Shell,
    checkout_copy,
    edit_run_defaults,
    free_port,
    readme_blocks,
)
from support import query

#: Added to the README's worker command so that it stops after the one run the test triggers.
RUN_ONCE = " --run-once --limit 1"

pytestmark = pytest.mark.slow


def test_the_readme_names_every_step_from_zero() -> None:
    route, trigger = readme_blocks()
    assert route == [
        "prefect server start --background",
        f"prefect config set PREFECT_API_URL=http://127.0.0.1:{README_PORT}/api",
        f"curl -fsS --retry 60 --retry-connrefused --retry-delay 1 "
        f"http://127.0.0.1:{README_PORT}/api/health",
        "prefect work-pool create recfusion --type process",
        "RECFUSION_HOME=$PWD prefect deploy --all --prefect-file deployments/prefect.yaml",
        "prefect worker start --pool recfusion",
    ]
    assert trigger == [
        "prefect deployment run 'recfusion-nightly/nightly' --param params='{\"top_k\": 20}'"
    ]


def test_the_readme_work_pool_route_publishes_a_one_field_trigger_to_the_deployment_s_db(
    small_source: Path, tmp_path: Path
) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed: the README waits for the server with curl")
    route, [trigger] = readme_blocks()
    *setup, worker = route
    checkout = checkout_copy(tmp_path / "recfusion")
    db = tmp_path / "srv" / "recfusion.duckdb"
    db.parent.mkdir()
    edit_run_defaults(checkout, small_source, db)
    shell = Shell(checkout, tmp_path / "prefect-home", free_port())
    try:
        timeouts = {"server start": 120, "curl": 180, "deploy": 300}
        for line in setup:
            out = shell.run(line, next((t for k, t in timeouts.items() if k in line), 120))
            if "deploy" in line:
                assert f"workers will run the flows in {checkout.resolve()}" in out
        shell.run(trigger.replace('"top_k": 20', '"top_k": 3'), 120)
        shell.run(worker + RUN_ONCE, 600)
    finally:
        shell.stop()
        print("\n".join(t.splitlines()[0] for t in shell.transcript))  # each step and its time

    # Before: the worker ran the demo data into the checkout's ./recfusion.duckdb.
    assert sorted(p.name for p in checkout.iterdir() if p.name.startswith("recfusion")) == []
    assert db.exists(), "\n".join(shell.transcript)
    [(status, parameters, triggered_by, deployment, flow_run_id)] = query(
        db, "SELECT status, parameters, triggered_by, deployment_name, flow_run_id FROM runs"
    )
    applied = json.loads(parameters)
    assert status == "published", "\n".join(shell.transcript[-2:])
    assert applied["top_k"] == 3  # the trigger's
    assert (applied["source"], applied["db"]) == (str(small_source), str(db))  # saved
    assert (applied["retention_runs"], applied["lock_timeout_seconds"]) == (3, 600)
    assert applied["modalities"] == ["behavior", "content", "social", "popularity"]
    assert (triggered_by, deployment) == ("deployment", "recfusion-nightly/nightly")
    assert flow_run_id and flow_run_id in shell.transcript[-2]  # the flow run the trigger made
    assert query(db, "SELECT max(rank) FROM recommendations_latest") == [(3,)]
