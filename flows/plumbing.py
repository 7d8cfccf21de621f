"""Prefect plumbing shared by the flows: which steps retry, and how a run's errors read.

Steps that touch the database retry with backoff while another process holds it (the one trouble
that waiting fixes); anything else fails the run at once with a one-line message.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.states import State
from prefect.tasks import exponential_backoff

from flows.triggers import DeploymentParametersInvalid
from tasks.sources.files import SourceError
from tasks.warehouse.errors import DatabaseBusy, DatabaseUnusable, RunLockTimeout

IO_RETRIES = 2
IO_BACKOFF = exponential_backoff(backoff_factor=2)


def _retry_condition(task: Any, task_run: Any, state: State) -> bool:
    """Retry only while another process holds the database (bounded by IO_RETRIES).

    A file that is not a database, a full disk, a permission or a source that is wrong as a
    whole stays wrong however long we wait: those fail at once, naming the file.
    """
    try:
        state.result()
    except DatabaseBusy:
        return True
    except BaseException:
        return False
    return False


def io_task(name: str) -> Any:
    """A task that touches files or the database: retried with backoff while the file is busy."""
    return task(
        name=name,
        cache_policy=NO_CACHE,
        retries=IO_RETRIES,
        retry_delay_seconds=IO_BACKOFF,
        retry_jitter_factor=0.2,
        retry_condition_fn=_retry_condition,
    )


class RunFailed(RuntimeError):
    """A run that cannot go on; the message is what the operator sees."""


class RunRefused(RunFailed):
    """A run that must not start (nothing was written, not even its `runs` row)."""


#: Errors that stop a run before it is opened: no `runs` row, the message is all there is.
REFUSALS = (
    RunLockTimeout, SourceError, RunRefused, DatabaseBusy, DatabaseUnusable,
    DeploymentParametersInvalid,
)
#: Errors whose message is already the one line an operator needs.
OWN_MESSAGE = (
    RunFailed, SourceError, RunLockTimeout, DatabaseBusy, DatabaseUnusable,
    DeploymentParametersInvalid,
)


def one_line(exc: BaseException) -> str:
    """The error as the one line an operator reads (its type too, when it is not one of ours)."""
    text = " ".join(str(exc).split())
    return text if isinstance(exc, OWN_MESSAGE) else f"{type(exc).__name__}: {text}"
