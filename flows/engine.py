"""Which task runner a run's user shards use: this process (the default), a local Dask cluster of
`workers` processes, or a running Dask scheduler at `dask_address`.

Dask is an optional extra (`pip install -e ".[dask]"`): nothing here imports it unless a run asks
for it. Prefect fixes a flow's task runner when the flow is decorated, so the CLI calls
`flow_on(nightly, params)` (Prefect's `with_options(task_runner=…)`); a run started another way
(a deployment, a backfill day) that asks for Dask starts the runner for its shards itself.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, TypeVar

from tasks.config import RunParameters
from tasks.kernels.blocks import THREADS_ENV

if TYPE_CHECKING:
    from prefect.task_runners import TaskRunner

F = TypeVar("F")

DASK_EXTRA = 'pip install -e ".[dask]"'


class EngineUnavailable(RuntimeError):
    """A run asked for Dask, but it cannot be had here; the message says what to do."""


def on_dask(params: RunParameters) -> bool:
    return params.workers is not None or params.dask_address is not None


def _flag(params: RunParameters) -> str:
    return f"workers={params.workers}" if params.workers is not None else (
        f"dask_address={params.dask_address}"
    )


def check_available(params: RunParameters) -> None:
    """Fail at once, in one line, when the run asks for Dask and the extra is not installed."""
    if not on_dask(params):
        return
    try:
        import distributed  # noqa: F401
        import prefect_dask  # noqa: F401
    except ImportError as exc:
        raise EngineUnavailable(
            f"{_flag(params)} needs Dask, which is not installed ({exc.name} is missing): "
            f"{DASK_EXTRA}"
        ) from None


def dask_task_runner(params: RunParameters) -> TaskRunner[Any]:
    """prefect-dask's runner: a LocalCluster of `workers` processes, or the running scheduler.

    One thread per worker: a shard already uses the process's own thread pool for its kernels
    (`tasks.kernels.blocks`), and one shard at a time bounds each worker's memory to one shard.
    That pool gets the worker's share of the machine's cores (`RECFUSION_THREADS`, unless set):
    two workers with a pool as wide as the machine each ran twice the threads there are cores.
    No dashboard: bokeh is not a dependency, and a port nobody asked for stays closed.
    """
    check_available(params)
    from prefect_dask import DaskTaskRunner

    if params.dask_address is not None:
        return DaskTaskRunner(address=params.dask_address)
    url = prefect_api_url()
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": params.workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
            # Without it each worker would start a temporary Prefect server of its own (30 s
            # each) and report its shards there, where the run's flow never looks.
            "env": ({"PREFECT_API_URL": url} if url else {})
            | {THREADS_ENV: worker_threads(params)},
        },
    )


def worker_threads(params: RunParameters) -> str:
    """Each local worker's pool: its share of this machine's cores (an explicit setting wins)."""
    return os.environ.get(THREADS_ENV) or str(
        max(1, len(os.sched_getaffinity(0)) // max(1, params.workers or 1)))


def prefect_api_url() -> str | None:
    """The Prefect API this process reports to: PREFECT_API_URL, or its temporary server's."""
    from prefect.settings import PREFECT_API_URL

    if url := PREFECT_API_URL.value():
        return str(url)
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer._instances.get(None)
    return str(server.api_url) if server is not None and server.running else None


def task_runner(params: RunParameters) -> TaskRunner[Any] | None:
    """The runner `params` asks for; None = Prefect's default (threads in this process)."""
    return dask_task_runner(params) if on_dask(params) else None


def flow_on(flow: F, params: RunParameters) -> F:
    """`flow` with the task runner `params` asks for (the flow itself when in-process)."""
    runner = task_runner(params)
    if runner is None:
        return flow
    return flow.with_options(task_runner=runner)  # type: ignore[attr-defined]


def is_dask(runner: object) -> bool:
    """Is this (a flow run's) task runner prefect-dask's? False when it is not installed."""
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        return False
    return isinstance(runner, DaskTaskRunner)
