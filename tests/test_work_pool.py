"""The README's work-pool route, run as typed (findings 1 and 3 of "Operations as users meet them").

From zero: a Prefect home of its own, `prefect server start --background` (on a free port),
`prefect config set PREFECT_API_URL=…`, the wait, the work pool, `prefect deploy` from a checkout
whose `run_defaults` name a real source and database, the README's trigger with one field, and a
real process worker (`--run-once --limit 1`, so it stops after that run). The run must publish to
the deployment's database with the trigger's K and every other saved value, and leave nothing
in the checkout. The commands are read from the README itself, so the two cannot drift apart.
"""

from __future__ import annotations

import contextlib
import json
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
from support import query

REPO = Path(__file__).resolve().parents[1]
README_PORT = "4200"
#: Added to the README's worker command so that it stops after the one run the test triggers.
RUN_ONCE = " --run-once --limit 1"

pytestmark = pytest.mark.slow


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


def test_the_readme_names_every_step_from_zero() -> None:
    route, trigger = readme_blocks()
    assert route == [
        "prefect server start --background",
        f"prefect config set PREFECT_API_URL=http://127.0.0.1:{README_PORT}/api",
        f"curl -fsS --retry 60 --retry-connrefused --retry-delay 1 "
        f"http://127.0.0.1:{README_PORT}/api/health",
        "prefect work-pool create recfusion --type process",
        "RECFUSION_HOME=$PWD prefect deploy --all --prefect-file deployments/prefect.yaml",
        "prefect worker start --pool recfusion",
    ]
    assert trigger == [
        "prefect deployment run 'recfusion-nightly/nightly' --param params='{\"top_k\": 20}'"
    ]


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


def test_the_readme_work_pool_route_publishes_a_one_field_trigger_to_the_deployment_s_db(
    small_source: Path, tmp_path: Path
) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed: the README waits for the server with curl")
    route, [trigger] = readme_blocks()
    *setup, worker = route
    checkout = checkout_copy(tmp_path / "recfusion")
    db = tmp_path / "srv" / "recfusion.duckdb"
    db.parent.mkdir()
    edit_run_defaults(checkout, small_source, db)
    shell = Shell(checkout, tmp_path / "prefect-home", free_port())
    try:
        timeouts = {"server start": 120, "curl": 180, "deploy": 300}
        for line in setup:
            out = shell.run(line, next((t for k, t in timeouts.items() if k in line), 120))
            if "deploy" in line:
                assert f"workers will run the flows in {checkout.resolve()}" in out
        shell.run(trigger.replace('"top_k": 20', '"top_k": 3'), 120)
        shell.run(worker + RUN_ONCE, 600)
    finally:
        shell.stop()
        print("\n".join(t.splitlines()[0] for t in shell.transcript))  # each step and its time

    # Before: the worker ran the demo data into the checkout's ./recfusion.duckdb.
    assert sorted(p.name for p in checkout.iterdir() if p.name.startswith("recfusion")) == []
    assert db.exists(), "\n".join(shell.transcript)
    [(status, parameters, triggered_by, deployment, flow_run_id)] = query(
        db, "SELECT status, parameters, triggered_by, deployment_name, flow_run_id FROM runs"
    )
    applied = json.loads(parameters)
    assert status == "published", "\n".join(shell.transcript[-2:])
    assert applied["top_k"] == 3  # the trigger's
    assert (applied["source"], applied["db"]) == (str(small_source), str(db))  # saved
    assert (applied["retention_runs"], applied["lock_timeout_seconds"]) == (3, 600)
    assert applied["modalities"] == ["behavior", "content", "social", "popularity"]
    assert (triggered_by, deployment) == ("deployment", "recfusion-nightly/nightly")
    assert flow_run_id and flow_run_id in shell.transcript[-2]  # the flow run the trigger made
    assert query(db, "SELECT max(rank) FROM recommendations_latest") == [(3,)]
