"""`recfusion serve`: one process that schedules the nightly and weekly tune runs, serves triggers.

For a single box without a work pool. The work-pool route (deployments/prefect.yaml, `prefect
deploy --all`) makes the same four deployments, named `nightly`, `backfill`, `evaluate` and
`tune`; served ones are `nightly-serve`, `backfill-serve`, `evaluate-serve` and `tune-serve`, so
that neither route overwrites the other's in place (a served deployment has no pull step and no
work pool: a worker that picked up a run of it crashed with `FileNotFoundError: '…/None'`).
"""

from __future__ import annotations

from datetime import date
from typing import Any

from prefect.schedules import Cron

from flows.backfill import BackfillParameters, backfill
from flows.evaluate import evaluate
from flows.nightly import nightly
from flows.tune import TuneParameters, tune
from tasks.config import RunParameters

NIGHTLY_CRON = "0 2 * * *"
#: Sundays, an hour after the nightly: tune reads the database the nightly writes.
TUNE_CRON = "0 3 * * 0"
#: Appended to the names `prefect deploy` uses (deployments/prefect.yaml).
SERVED_SUFFIX = "-serve"


def deployments(
    db: str, source: str | None, cron: str = NIGHTLY_CRON, timezone: str = "UTC"
) -> list[Any]:
    """nightly and tune (scheduled), backfill and evaluate (manual), for this database.

    `timezone` applies to both schedules; tune's stays Sunday 03:00 whatever `cron` says.
    """
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
        tune.to_deployment(
            name="tune" + SERVED_SUFFIX,
            schedules=[Cron(TUNE_CRON, timezone=timezone)],
            parameters={
                "params": TuneParameters(run=run).model_dump(mode="json", exclude_defaults=True)
            },
            description="Weekly: search each modality's hyperparameters, store the best.",
            tags=["recfusion"],
        ),
    ]


def serve_all(db: str, source: str | None, cron: str = NIGHTLY_CRON, timezone: str = "UTC") -> None:
    from prefect import serve

    serve(*deployments(db, source, cron, timezone))
