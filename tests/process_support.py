"""Real `recfusion run` subprocesses for kill tests: their own temporary Prefect server, and a way
to find every process they spawned after the run itself is gone.

Each run gets a unique tag in its environment. Children inherit the environment (Prefect passes
`os.environ` on to its server), so any process still carrying the tag after the run was killed is
one it leaked, whoever its parent now is (PID 1 or a subreaper).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TAG = "RECFUSION_TEST_TAG"


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    cmdline: str


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # gone meanwhile, or not ours to read
        return b""


def tagged_processes(tag: str) -> list[Proc]:
    """Live processes whose environment carries `TAG=tag` (zombies have no environment)."""
    needle = f"{TAG}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or needle not in _read(entry / "environ").split(b"\0"):
            continue
        stat = _read(entry / "stat").decode(errors="replace")
        if not stat or stat.rsplit(")", 1)[1].split()[0] == "Z":
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        cmdline = _read(entry / "cmdline").replace(b"\0", b" ").decode(errors="replace")
        found.append(Proc(int(entry.name), ppid, cmdline.strip()))
    return found


def survivors(tag: str, within: float = 10.0) -> list[Proc]:
    """Tagged processes still alive after waiting up to `within` seconds for them to exit."""
    deadline = time.monotonic() + within
    while (left := tagged_processes(tag)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def no_server_env(prefect_home: Path, tag: str, **extra: str) -> dict[str, str]:
    """Environment for a run that starts its own temporary Prefect server (no PREFECT_API_URL)."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    return {
        **env,
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        TAG: tag,
        **extra,
    }


def warm_prefect_home(prefect_home: Path) -> None:
    """Create and migrate Prefect's database once, so kill tests time runs, not migrations."""
    subprocess.run(
        [sys.executable, "-c", "from flows.prefect_server import start_temporary_server as s; s()"],
        cwd=REPO,
        env=no_server_env(prefect_home, "warm-up"),
        check=True,
        capture_output=True,
        timeout=600,
    )


def start_run(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
