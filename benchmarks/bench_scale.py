"""The whole nightly at scale, as a user runs it: `recfusion demo-data`, then `recfusion run`.

Each command is a subprocess; its process tree (the run, the temporary Prefect server it starts,
any workers) is polled through /proc for every process's peak RSS (`VmHWM`, the kernel's own
high-water mark, so a peak between two polls is not missed). Wall per stage comes from the
`timings` the run records in its `runs` row. Prints one table; exits non-zero if a command fails.

    python benchmarks/bench_scale.py                       # 100k users × 20k items × 5M events
    python benchmarks/bench_scale.py --users 1000000 --items 100000 --events 50000000 --only-ingest
    python benchmarks/bench_scale.py --cost-model           # + what 4, 16, 64 workers would buy
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

POLL_S = 0.2
#: Creates the Prefect home's database, as the first command on a machine does.
WARM_PREFECT_HOME = ("from flows.prefect_server import start_temporary_server; "
                     "start_temporary_server()")


@dataclass
class Measured:
    """One command: wall, exit code, and the peak RSS of every process of its tree."""

    wall_s: float
    returncode: int
    peaks: dict[int, tuple[str, int]] = field(default_factory=dict)  # pid -> (command, bytes)
    tail: str = ""
    rss: list[tuple[float, int]] = field(default_factory=list)  # (s since start, root's RSS)
    lines: list[tuple[float, str]] = field(default_factory=list)  # (s since start, log line)


def _children(pid: int) -> list[int]:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    out: list[int] = []
    for tid in tasks:
        try:
            out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except OSError:
            continue
    return out


def _tree(root: int) -> list[int]:
    seen, todo = [], [root]
    while todo:
        pid = todo.pop()
        seen.append(pid)
        todo += _children(pid)
    return seen


def _status(pid: int, key: str) -> int | None:
    """A memory line of /proc/PID/status (VmHWM: peak, VmRSS: now) in bytes."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) * 1024
    return None


def _peak_and_name(pid: int) -> tuple[str, int] | None:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return None
    peak = _status(pid, "VmHWM")
    return None if peak is None else (cmd, peak)


def measure(cmd: list[str], env: dict[str, str]) -> Measured:
    """Run `cmd`, polling its process tree until it exits; its output lines are timestamped."""
    start = time.perf_counter()
    result = Measured(0.0, 0)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, bufsize=1
    )
    assert proc.stdout is not None
    out = proc.stdout

    def read() -> None:
        for line in out:
            result.lines.append((time.perf_counter() - start, line.rstrip("\n")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while True:
        for pid in _tree(proc.pid):
            found = _peak_and_name(pid)
            if found and found[1] >= result.peaks.get(pid, ("", 0))[1]:
                result.peaks[pid] = found
        now = _status(proc.pid, "VmRSS")
        if now is not None:
            result.rss.append((time.perf_counter() - start, now))
        done, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if done:
            break
        time.sleep(POLL_S)
    result.wall_s = time.perf_counter() - start
    result.returncode = os.waitstatus_to_exitcode(status)
    proc.returncode = result.returncode
    # The root's own high-water mark, exactly (wait4's rusage; Linux reports KiB).
    name = result.peaks.get(proc.pid, (" ".join(cmd), 0))[0]
    result.peaks[proc.pid] = (name, max(result.peaks.get(proc.pid, ("", 0))[1],
                                        usage.ru_maxrss * 1024))
    reader.join(timeout=10)
    result.tail = "\n".join(line for _, line in result.lines[-20:])
    return result


TASK_DONE = re.compile(r"Task run '(?P<task>[\w-]+?)(-[0-9a-f]{3,})?' - Finished in state (\w+)")


def task_peaks(m: Measured) -> list[tuple[str, float, int]]:
    """(task, seconds, peak RSS of the run's process) per Prefect task run, in order.

    Prefect logs when a task finishes, not when it starts: a task's span is taken from the
    previous task's finish (or the first log line) to its own, so flow code between tasks is
    counted in the task after it."""
    out: list[tuple[str, float, int]] = []
    previous = m.lines[0][0] if m.lines else 0.0
    for at, line in m.lines:
        found = TASK_DONE.search(line)
        if not found:
            continue
        peak = max((rss for t, rss in m.rss if previous <= t <= at + POLL_S), default=0)
        out.append((found["task"], at - previous, peak))
        previous = at
    return out


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def _short(cmd: str) -> str:
    if "prefect" in cmd and "server" in cmd:
        return "prefect server (temporary)"
    parts = cmd.split()
    names = [Path(p).name for p in parts[:3]]
    return " ".join(names)[:60]


def _stage_timings(db: Path) -> dict[str, float]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        row = con.execute(
            "SELECT timings, status FROM runs ORDER BY started_at DESC LIMIT 1"
        ).fetchone()
    finally:
        con.close()
    if row is None or row[0] is None:
        return {}
    timings = row[0] if isinstance(row[0], dict) else json.loads(row[0])
    return {str(k): float(v) for k, v in timings.items()} | {"status": row[1]}


def _warehouse(db: Path) -> Path:
    return db.with_name(db.name + ".warehouse") / "warehouse.duckdb"


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


SHARD_LINE = re.compile(r"recommend: shard \d+/\d+ \(users (\d+)-(\d+)[^,]*, ([\d.]+)s\)")


def _cost_model(db: Path, run: Measured, timings: dict[str, float], users: int) -> list[str]:
    from cost_model import measure, report

    shards = [(int(m[2]) - int(m[1]) + 1, float(m[3]))
              for _, line in run.lines if (m := SHARD_LINE.search(line))]
    costs = measure(_warehouse(db), 5_000)
    spans = {task: seconds for task, seconds, _ in task_peaks(run)}
    serial = {
        "ingest": timings.get("ingest", 0.0),
        "snapshot": timings.get("snapshot_and_checks", 0.0),
        "evaluation": timings.get("evaluate", 0.0),
        "fit": sum(costs.fit_seconds.values()),
        "checks": timings.get("explain_and_check", 0.0),
        "publish": spans.get("publish", 0.0) + spans.get("refresh-analyst-copy", 0.0),
    }
    note = "shards scored in this process, the default plan"
    if shards:  # the run's own shards, with the plan it chose: what the prediction should use
        costs.shard_seconds_per_1k = 1000 * sum(s for _, s in shards) / sum(u for u, _ in shards)
        note = f"the run's own {len(shards)} shards and plan"
    return report(costs, serial, users, note)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--data", default="/tmp/recfusion-bench-scale", help="source, db go here")
    parser.add_argument("--only-ingest", action="store_true", help="`recfusion ingest`, not `run`")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--workers", type=int, help="`recfusion run --workers N` (Dask)")
    parser.add_argument("--cost-model", action="store_true",
                        help="then measure per-shard costs on the run's data (cost_model.py)")
    args = parser.parse_args()

    recfusion = shutil.which("recfusion") or str(Path(sys.executable).parent / "recfusion")
    env = os.environ | {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    base = Path(args.data)
    # A nightly runs with the Prefect home of the machine it runs on, whose database exists from
    # the first night; a fresh home adds Prefect's migrations (~6 s here) to the first run only.
    home = Path(env.setdefault("PREFECT_HOME", str(base / "prefect-home")))
    if not home.exists():
        warm = measure([sys.executable, "-c", WARM_PREFECT_HOME], env)
        print(f"Prefect home {home} created: {warm.wall_s:.1f}s, not counted in the run below")
    source = base / f"u{args.users}-i{args.items}-e{args.events}-s{args.seed}"
    db = base / f"{source.name}.duckdb"
    for leftover in base.glob(f"{db.name}*"):
        leftover.unlink() if leftover.is_file() else shutil.rmtree(leftover, ignore_errors=True)

    print(f"load before: {os.getloadavg()[0]:.2f} (1-min average, {os.cpu_count()} cores)")
    rows: list[tuple[str, Measured]] = []
    if not (source / "events.parquet").exists():
        demo = measure(
            [recfusion, "demo-data", "--out", str(source), "--users", str(args.users),
             "--items", str(args.items), "--events", str(args.events), "--seed", str(args.seed)],
            env,
        )
        rows.append(("demo-data", demo))
        if demo.returncode:
            print(demo.tail)
            return 1
    command = "ingest" if args.only_ingest else "run"
    workers = ["--workers", str(args.workers)] if args.workers and not args.only_ingest else []
    run = measure([recfusion, command, "--source", str(source), "--db", str(db), *workers], env)
    rows.append((command, run))
    print(f"load after: {os.getloadavg()[0]:.2f}")

    print(f"\n{args.users:,} users × {args.items:,} items × {args.events:,} events")
    print(f"{'command':<10} {'wall':>9}  {'exit':>4}  peak RSS per process")
    for name, m in rows:
        peaks = sorted(m.peaks.values(), key=lambda p: -p[1])
        shown = "; ".join(f"{_short(c)} {_gb(b)}" for c, b in peaks[:4]) or "-"
        print(f"{name:<10} {m.wall_s:8.1f}s  {m.returncode:>4}  {shown}")
    if not args.only_ingest:
        timings = _stage_timings(db) if db.exists() else {}
        status = timings.pop("status", "?")
        print(f"\nstages of the run (runs.timings; status {status})")
        for stage, seconds in timings.items():
            print(f"  {stage:<22} {seconds:8.1f}s")
        print(f"  {'sum of stages':<22} {sum(timings.values()):8.1f}s")
        if timings.get("recommend"):
            print(f"  recommend: {args.users / timings['recommend']:,.0f} users/s")
        print("\nsizes")
        for label, path in (("analyst copy", db), ("warehouse", _warehouse(db)),
                            ("run files (candidates)", Path(f"{db}.runs"))):
            print(f"  {label:<24} {_size(path) / 1e6:10.1f} MB")
        print("\ntasks of the run (span from the previous task's end; peak RSS of the run in it)")
        for task, seconds, peak in task_peaks(run):
            print(f"  {task:<28} {seconds:8.1f}s  {_gb(peak)}")
        if args.cost_model and run.returncode == 0:
            print("\n".join(_cost_model(db, run, timings, args.users)))
    if run.returncode:
        print(run.tail)
    if not args.keep:
        for leftover in base.glob(f"{db.name}*"):
            leftover.unlink() if leftover.is_file() else shutil.rmtree(leftover, ignore_errors=True)
    return run.returncode


if __name__ == "__main__":
    raise SystemExit(main())
