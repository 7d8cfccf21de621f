"""`recfusion serve`: one process that schedules the nightly run and serves manual triggers.

For a single box without a work pool. The work-pool route (deployments/prefect.yaml, `prefect
deploy --all`) makes the same three deployments, named `nightly`, `backfill` and `evaluate`;
served ones are `nightly-serve`, `backfill-serve` and `evaluate-serve`, so that neither route
overwrites the other's in place (a served deployment has no pull step and no work pool: a worker
that picked up a run of it crashed with `FileNotFoundError: '…/None'`).
"""

from __future__ import annotations

from datetime import date
from typing import Any

from prefect.schedules import Cron

from flows.backfill import BackfillParameters, backfill
from flows.evaluate import evaluate
from flows.nightly import nightly
from tasks.parameters import RunParameters

NIGHTLY_CRON = "0 2 * * *"
#: Appended to the names `prefect deploy` uses (deployments/prefect.yaml).
SERVED_SUFFIX = "-serve"


def deployments(
    db: str, source: str | None, cron: str = NIGHTLY_CRON, timezone: str = "UTC"
) -> list[Any]:
    """nightly (scheduled), backfill and evaluate (manual), with defaults for this database."""
    run = RunParameters(db=db, source=source)
    today = date.today()
    return [
        nightly.to_deployment(
            name="nightly" + SERVED_SUFFIX,
            schedules=[Cron(cron, timezone=timezone)],
            parameters={"params": run.model_dump(mode="json", exclude_defaults=True)},
            description="Nightly run: ingest, evaluate, recommend, publish.",
            tags=["recfusion"],
        ),
        backfill.to_deployment(
            name="backfill" + SERVED_SUFFIX,
            parameters={
                "params": BackfillParameters(
                    start=today, end=today, run=run
                ).model_dump(mode="json")
            },
            description="Nightly runs as of each day in a range; skips published days.",
            tags=["recfusion"],
        ),
        evaluate.to_deployment(
            name="evaluate" + SERVED_SUFFIX,
            parameters={"db": db, "test_file": "test.parquet", "k": 10},
            description="Score the published lists against a held-out file.",
            tags=["recfusion"],
        ),
    ]


def serve_all(db: str, source: str | None, cron: str = NIGHTLY_CRON, timezone: str = "UTC") -> None:
    from prefect import serve

    serve(*deployments(db, source, cron, timezone))
