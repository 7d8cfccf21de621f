"""Prefect's temporary API server, started by us so that it dies with the run that needs it.

Without PREFECT_API_URL, Prefect starts a temporary server as a child process (`python -m uvicorn
… prefect.server.api.server:create_app`, see `SubprocessASGIServer`) and stops it from an
`atexit` handler. A run killed with SIGKILL (the OOM killer, `kill -9`, a container stop) runs no
handler, so the server lived on, orphaned under PID 1, holding ~200 MB per killed run.

Here the CLI starts that same command itself, before any flow runs, and the child asks the Linux
kernel (prctl PR_SET_PDEATHSIG) to send it SIGTERM as soon as its parent dies, however it dies.
This process then reports to it as to any configured server: PREFECT_API_URL is set in its
environment (which Dask workers inherit) and Prefect's settings are read again. Prefect's own
`SubprocessASGIServer` is not used: importing its module (the whole server: database models,
routes) cost the run process 80 MB for the rest of the run and 1.5 s before its flow began.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

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


#: How long the temporary server may take to answer (it migrates a new Prefect home first).
STARTUP_SECONDS = 120.0
#: uvicorn's exit code when its port was taken between our check and its bind.
PORT_TAKEN = 3
#: Where Prefect's own temporary servers pick a port.
PORTS = range(8000, 9000)
#: Told to the server as Prefect tells its own temporary server.
SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
              "PREFECT__SERVER_FINAL": "1"}


def start_temporary_server() -> str | None:
    """Start Prefect's temporary server now, tied to this process; its API URL, or None.

    None when PREFECT_API_URL names a server (nothing to own; it must answer, else
    `PrefectApiUnreachable`) or a temporary server is already running in this process (e.g. a
    test harness's).
    """
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        check_configured_api(str(PREFECT_API_URL.value()))
        return None
    server_module = sys.modules.get("prefect.server.api.server")  # loaded only by a harness
    if server_module is not None:
        existing = server_module.SubprocessASGIServer._instances.get(None)
        if existing is not None and existing.running:
            return None
    url = _spawn_until_healthy()
    _report_to(url)
    return url


def _spawn_until_healthy() -> str:
    """Start the server on a free port and wait for its health check; a port taken meanwhile
    (uvicorn exits) is retried on another."""
    import httpx

    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        port = _free_port()
        process = _spawn(port)
        url = f"http://127.0.0.1:{port}/api"
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                    atexit.register(_stop, process)
                    return url
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        if process.poll() is None:
            _stop(process)
            raise RuntimeError(f"the temporary Prefect server did not answer on {url} within "
                               f"{STARTUP_SECONDS:.0f} s")
        if process.returncode != PORT_TAKEN or time.monotonic() >= deadline:
            raise RuntimeError(f"the temporary Prefect server exited with code "
                               f"{process.returncode}")


def _free_port() -> int:
    for _ in range(20):
        port = random.choice(PORTS)
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port for the temporary Prefect server in {PORTS}")


def _spawn(port: int) -> subprocess.Popen[bytes]:
    """Prefect's own temporary-server command line and environment, tied to this process."""
    import prefect
    from prefect.settings import get_current_settings

    hook = die_with_parent_hook()
    if hook is None:
        log.warning("the temporary Prefect server may outlive this process if it is killed")
    env = {**os.environ, **SERVER_ENV,
           **get_current_settings().to_environment_variables(exclude_unset=True)}
    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent),
         "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "error", "--lifespan", "on"],
        env=env, preexec_fn=hook,  # noqa: PLW1509 - only a prctl, see die_with_parent_hook
    )


def _report_to(url: str) -> None:
    """This process, its threads and its children report to `url` from now on."""
    from prefect.context import refresh_global_settings_context

    os.environ["PREFECT_API_URL"] = url
    # It serves no UI (as Prefect's own temporary server): no "View at" link to a page that 404s.
    os.environ.setdefault("PREFECT_UI_URL", "")
    refresh_global_settings_context()
    log.info("temporary Prefect server started on %s", url)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """At exit, after Prefect's own handlers (registered later, run first) sent their logs."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
