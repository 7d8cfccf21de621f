"""Deterministic crash points, so tests can kill a real run exactly where it hurts most.

Set RECFUSION_FAULT_AT=<point> and the process SIGKILLs itself when it reaches that point: no
cleanup handler, no exception, exactly like the OOM killer or a pulled plug. Unset, it is a no-op.
"""

from __future__ import annotations

import errno
import os
import signal

FAULT_ENV = "RECFUSION_FAULT_AT"
POINTS = (
    "after_ingest",
    "after_evaluate",
    "publish:after_candidates",
    "publish:after_recommendations",
    "publish:before_commit",
    "after_publish",  # committed; the staged candidates and the report are not cleaned up yet
    "refresh:before_rename",  # the analyst copy's replacement is on disk, not yet renamed over it
)


def fault_point(name: str) -> None:
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


#: Points where the operation fails as a full disk would (OSError ENOSPC), instead of a kill:
#: for what a command says when its work is done but a later step cannot be.
ERROR_POINTS = ("refresh:copy",)


def fault_error(name: str) -> None:
    if os.environ.get(FAULT_ENV) == name:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"fault injected at {name}")
