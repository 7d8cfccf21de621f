"""A real `prefect server` for tests, run the README's way: a checkout copy, a Prefect home of
its own, each README line through bash (tests/test_work_pool.py, tests/test_prefect_form.py).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from process_support import TAG, tagged_processes

REPO = Path(__file__).resolve().parents[1]
README_PORT = "4200"


def readme_blocks() -> tuple[list[str], list[str]]:
    """(the work-pool commands of step 4, the trigger of step 5) from the README."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    ops = text[text.index("## Operations") :]

    def block_after(marker: str) -> list[str]:
        rest = ops[ops.index(marker) :]
        found = re.search(r"```bash\n(.*?)```", rest, re.S)
        assert found, f"no bash block after {marker!r} in the README"
        return [line.strip() for line in found.group(1).splitlines() if line.strip()]

    return block_after("**Or the work-pool route**"), block_after("**Trigger by hand**")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def checkout_copy(into: Path) -> Path:
    """The checkout as an operator has it (code, README, deployments), without caches."""
    return Path(
        shutil.copytree(
            REPO,
            into,
            ignore=shutil.ignore_patterns(
                ".git", "__pycache__", ".*_cache", ".hypothesis", "*.egg-info", "*.duckdb*",
                "recfusion-*",
            ),
        )
    )


def edit_run_defaults(checkout: Path, source: Path, db: Path) -> None:
    """What the README asks first: a real source and database under run_defaults."""
    path = checkout / "deployments" / "prefect.yaml"
    lines = path.read_text(encoding="utf-8").splitlines()
    for old, new in [
        ("    source: null", f"    source: {source}"),
        ("    db: recfusion.duckdb", f"    db: {db}"),
        ("    evaluate: true", "    evaluate: false"),  # a short run
        ("    retention_runs: 30", "    retention_runs: 3"),
    ]:
        assert lines.count(old) == 1, old  # the line under run_defaults
        lines[lines.index(old)] = new
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


class Shell:
    """Runs README lines with bash in the checkout, with a Prefect home of their own."""

    def __init__(self, cwd: Path, home: Path, port: int) -> None:
        self.cwd, self.port = cwd, port
        self.tag = uuid.uuid4().hex
        keep = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        self.env = {
            **keep,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{keep.get('PATH', '')}",
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_API_PORT": str(port),  # `prefect server start` as typed, our port
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            TAG: self.tag,
        }
        self.env.pop("RECFUSION_HOME", None)
        self.transcript: list[str] = []

    def run(self, line: str, timeout: float) -> str:
        command = line.replace(f"127.0.0.1:{README_PORT}", f"127.0.0.1:{self.port}")
        started = time.monotonic()
        try:
            done = subprocess.run(
                ["bash", "-c", command], cwd=self.cwd, env=self.env, capture_output=True,
                text=True, timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else exc.stdout
            pytest.fail(f"README step did not finish in {timeout:.0f} s: {line}\n{out or ''}")
        output = done.stdout + done.stderr
        seconds = time.monotonic() - started
        self.transcript.append(f"$ {command}  # {seconds:.0f} s\n{output[-3000:]}")
        assert done.returncode == 0, "\n".join(self.transcript[-3:])
        return output

    def stop(self) -> None:
        """`prefect server stop`, then whatever of ours is left (by pid, tagged ones only)."""
        subprocess.run(["bash", "-c", "prefect server stop"], cwd=self.cwd, env=self.env,
                       capture_output=True, timeout=120)
        deadline = time.monotonic() + 20
        while (left := tagged_processes(self.tag)) and time.monotonic() < deadline:
            time.sleep(0.5)
        for proc in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
