"""SIGTERM and SIGINT: the run they stop is recorded as failed, and the command ends with one line.

systemd, Kubernetes and `timeout` stop a process with SIGTERM; a person with Ctrl-C (SIGINT).
Python dies silently on the first (exit 143) and Prefect, while a flow runs, turns it into its
own `TerminationSignal` and then re-sends it to the handler that was there before. So the CLI
installs a handler that raises `Stopped` before any flow starts: Prefect's re-sent signal lands
there, the flow has already recorded its run (`note_stopped`), and `main` prints one line.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

#: Exit codes of a command stopped by a signal, as shells report them (128 + the signal).
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130


class Stopped(BaseException):
    """The process was told to stop (a BaseException, like KeyboardInterrupt: no `except
    Exception` on the way may swallow it)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


_stopped_runs: list[str] = []


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signum)


Handler = Callable[[int, FrameType | None], Any] | int | None


def install() -> Handler:
    """SIGTERM raises `Stopped` in the main thread (SIGINT already raises KeyboardInterrupt);
    returns the handler it replaced (none outside the main thread, where signals cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise)


def restore(previous: Handler) -> None:
    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous)


def stop_reason(exc: BaseException) -> str | None:
    """'stopped by SIGTERM' for an exception a signal raised; None for anything else."""
    if isinstance(exc, KeyboardInterrupt):
        return "stopped by SIGINT (Ctrl-C)"
    if isinstance(exc, Stopped):
        return f"stopped by {exc}"
    number = getattr(exc, "signal", None)  # prefect.exceptions.TerminationSignal
    if type(exc).__name__ == "TerminationSignal" and isinstance(number, int):
        return f"stopped by {signal.Signals(number).name}"
    return None


def note_stopped(run_id: str) -> None:
    """A run that a signal stopped, recorded as failed: the command's last line names it."""
    _stopped_runs.append(run_id)


def stopped_runs() -> list[str]:
    return list(_stopped_runs)


def exit_code(exc: BaseException) -> int:
    if isinstance(exc, Stopped):
        return 128 + exc.signum
    return EXIT_INTERRUPTED
