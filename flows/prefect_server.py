"""Prefect's temporary API server, started by us so that it dies with the run that needs it.

Without PREFECT_API_URL, Prefect starts a temporary server as a child process (`python -m uvicorn
… prefect.server.api.server:create_app`, see `SubprocessASGIServer`) and stops it from an
`atexit` handler. A run killed with SIGKILL (the OOM killer, `kill -9`, a container stop) runs no
handler, so the server lived on, orphaned under PID 1, holding ~200 MB per killed run.

Here the CLI starts that same server itself, from the main thread, before any flow runs, and the
child asks the Linux kernel (prctl PR_SET_PDEATHSIG) to send it SIGTERM as soon as its parent
dies, however it dies. Prefect's own code then finds the running instance (it keeps one per
port, under the key None for "any port") and uses it. Elsewhere than Linux nothing changes.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
DEATH_SIGNAL = signal.SIGTERM  # uvicorn shuts down cleanly on it, and Prefect's SQLite with it


def die_with_parent_hook() -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child get DEATH_SIGNAL when this process dies (Linux only).

    It runs in the child between fork and exec, so it only calls a function resolved here. If
    the parent died before the prctl took effect, no signal will ever come: the child exits.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, int(DEATH_SIGNAL), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return hook


class _SubprocessWithHook(ModuleType):
    """The `subprocess` module as one Prefect module sees it, with a preexec hook on Popen."""

    def __init__(self, hook: Callable[[], None]) -> None:
        super().__init__("subprocess")
        self.Popen = functools.partial(subprocess.Popen, preexec_fn=hook)

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)


def _owned_server_class() -> type:
    from prefect.server.api import server as prefect_server

    class OwnedServer(prefect_server.SubprocessASGIServer):
        """Prefect's temporary server, spawned with `die_with_parent_hook` in the child.

        Prefect's own command line and environment are kept: only the module's view of
        `subprocess` is swapped while it spawns (from the main thread, before any flow runs).
        """

        spawned_with_hook = False

        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            hook = die_with_parent_hook()
            if hook is None:
                return super()._run_uvicorn_command()
            real = prefect_server.subprocess
            prefect_server.subprocess = _SubprocessWithHook(hook)
            try:
                process = super()._run_uvicorn_command()
            finally:
                prefect_server.subprocess = real
            self.spawned_with_hook = True
            return process

    return OwnedServer


class PrefectApiUnreachable(RuntimeError):
    """PREFECT_API_URL names a server that does not answer: said before any work starts."""


#: How long a command waits for the configured Prefect API to answer its health check.
API_CHECK_SECONDS = 10.0


def check_configured_api(url: str, timeout: float = API_CHECK_SECONDS) -> None:
    """The Prefect API at `url` answers its health check, or one line saying what to do.

    Prefect itself retries for about 20 s and then fails with a traceback that never names the
    setting; an operator needs to know it is PREFECT_API_URL, and that a run needs no server.
    """
    import httpx

    health = url.rstrip("/") + "/health"
    try:
        response = httpx.get(health, timeout=timeout)
        response.raise_for_status()
        return
    except httpx.HTTPStatusError as exc:
        problem = f"answers {health} with HTTP {exc.response.status_code}"
    except httpx.HTTPError as exc:
        detail = " ".join(str(exc).split()) or "no reply"
        problem = f"does not answer ({type(exc).__name__}: {detail})"
    raise PrefectApiUnreachable(
        f"the Prefect API at PREFECT_API_URL={url} {problem}; start that server (prefect server "
        "start), or run without one: `prefect config unset PREFECT_API_URL` (and unset it in "
        "the environment) and recfusion starts a temporary server for the run"
    )


def start_temporary_server() -> str | None:
    """Start Prefect's temporary server now, tied to this process; its API URL, or None.

    None when PREFECT_API_URL names a server (nothing to own; it must answer, else
    `PrefectApiUnreachable`) or a temporary server is already running in this process (e.g. a
    test harness's).
    """
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        check_configured_api(str(PREFECT_API_URL.value()))
        return None
    existing = SubprocessASGIServer._instances.get(None)
    if existing is not None and existing.running:
        return None
    SubprocessASGIServer._instances.pop(None, None)
    server = _owned_server_class()()  # registered under None: Prefect's lookups find this one
    server.start()
    if not getattr(server, "spawned_with_hook", False):
        log.warning("the temporary Prefect server may outlive this process if it is killed")
    return str(server.api_url)
