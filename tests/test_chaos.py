"""Chaos: SIGKILL real `recfusion run` processes at random moments and at the fault points.

After every kill: `recommendations_latest` in the analyst copy (the `--db` file analysts open) is
exactly the previous published list or exactly a newly published run's (every row compared), no
run that was not published left a row anywhere, in the analyst copy or the private warehouse, no
process the run spawned (its temporary Prefect server) is alive, and both open. A final run that
is not killed publishes, and leaves no half-made copy behind. Runs start their own temporary
Prefect server, as `recfusion run` does on a box without PREFECT_API_URL.

RECFUSION_CHAOS_KILLS (default 4) sets the number of kills, RECFUSION_CHAOS_SEED the seed. Kills
take turns: at a random moment once the flow has begun (ingest to publish to shutdown), at one
of the fault points (in a seeded order), and at a random moment anywhere in the process's life
(start-up included, when the temporary Prefect server is being spawned).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from process_support import no_server_env, start_run, survivors, warm_prefect_home
from support import query

from flows.nightly import staging_dirs
from tasks.fault_injection import FAULT_ENV, POINTS
from tasks.sources.demo import generate_demo_source
from tasks.warehouse.analyst_copy import warehouse_path

pytestmark = pytest.mark.slow  # SIGKILLs real runs at random moments (minutes)

KILLS = int(os.environ.get("RECFUSION_CHAOS_KILLS", "4"))
SEED = int(os.environ.get("RECFUSION_CHAOS_SEED", "20261201"))
LATEST = (
    "SELECT user_id, rank, item_id, score, reason, segment, CAST(contributions AS VARCHAR), run_id "
    "FROM recommendations_latest ORDER BY user_id, rank"
)
HALF_PUBLISHED = """
SELECT r.run_id, r.status FROM runs r
WHERE r.status NOT IN ('published', 'rejected') AND (
    EXISTS (SELECT 1 FROM recommendations x WHERE x.run_id = r.run_id)
    OR EXISTS (SELECT 1 FROM candidates x WHERE x.run_id = r.run_id)
    OR EXISTS (SELECT 1 FROM run_metrics x WHERE x.run_id = r.run_id)
    OR EXISTS (SELECT 1 FROM check_results x WHERE x.run_id = r.run_id))
"""


def run_ids(db: Path) -> dict[str, str]:
    return dict(query(db, "SELECT run_id, status FROM runs")) if db.exists() else {}


def assert_all_or_nothing(
    db: Path, before: list[tuple], expected: list[tuple], shown_before: dict[str, str]
) -> str:
    """The analyst copy's list is the previous one or a whole newly published one (the killed
    run's, or one killed before its copy was swapped in, which the killed run then showed)."""
    after = query(db, LATEST)
    shown = {row[-1] for row in after}
    assert len(shown) == 1, f"recommendations_latest mixes runs: {shown}"
    assert [row[:-1] for row in after] == expected, "the published list is not a whole run's"
    assert query(db, HALF_PUBLISHED) == []
    assert query(warehouse_path(db), HALF_PUBLISHED) == []
    if after == before:
        return "previous list"
    [run] = shown
    assert run not in shown_before, f"latest switched back to the older run {run}"
    assert run_ids(db)[run] == "published"
    return "new list"


def flow_began(proc: subprocess.Popen[str]) -> bool:
    """Read the run's log until its flow begins (False: it ended first)."""
    assert proc.stdout is not None
    return any("Beginning flow run" in line for line in proc.stdout)


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny_source")
    generate_demo_source(out, users=120, items=80, events=2500, seed=5)
    return out


def test_random_sigkills_never_lose_or_half_publish_the_list(
    tiny_source: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
):
    home = tmp_path_factory.mktemp("prefect-home")
    warm_prefect_home(home)
    db = tmp_path / "rf.duckdb"
    args = ["--source", str(tiny_source), "--db", str(db), "--no-evaluate"]
    rng = random.Random(SEED)
    points = rng.sample(POINTS, len(POINTS))

    started = time.monotonic()
    base = start_run(args, no_server_env(home, uuid.uuid4().hex))
    assert flow_began(base), base.communicate()[0][-3000:]
    began = time.monotonic()
    out, _ = base.communicate(timeout=600)
    assert base.returncode == 0, out[-3000:]
    life, in_flow = time.monotonic() - started, time.monotonic() - began
    before = query(db, LATEST)
    expected = [row[:-1] for row in before]  # same data, same seed: every run publishes this
    assert len(expected) > 0

    log: list[str] = []
    attempts = 0
    while len(log) < KILLS and attempts < 3 * KILLS:
        attempts += 1
        tag = uuid.uuid4().hex
        known, shown_before = run_ids(warehouse_path(db)), run_ids(db)
        kind = ("in the flow", "at a fault point", "anywhere")[len(log) % 3]
        point = points[(len(log) // 3) % len(points)] if kind == "at a fault point" else None
        extra = {FAULT_ENV: point} if point else {}
        proc = start_run(args, no_server_env(home, tag, **extra))
        delay = rng.uniform(0.0, in_flow if kind == "in the flow" else life)
        if point is None and (kind == "anywhere" or flow_began(proc)):
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=600)
        left = survivors(tag, within=10)
        assert left == [], f"processes outlived the killed run: {left}"
        if proc.returncode != -signal.SIGKILL:  # finished before the delay ran out: not a kill
            assert proc.returncode == 0, out[-3000:]
            before = query(db, LATEST)
            continue
        new = [r for r in run_ids(warehouse_path(db)) if r not in known]
        assert len(new) <= 1
        new_run = new[0] if new else None
        outcome = assert_all_or_nothing(db, before, expected, shown_before)
        before = query(db, LATEST)
        where = {
            "in the flow": f"{delay:.1f} s into the flow",
            "at a fault point": f"at {point}",
            "anywhere": f"{delay:.1f} s after start",
        }[kind]
        state = (run_ids(warehouse_path(db)).get(new_run, "no run row yet") if new_run
                 else "no run row yet")
        log.append(f"kill {len(log) + 1} {where}: run {state}, {outcome}, 0 processes left")

    assert len(log) == KILLS, f"only {len(log)} of {KILLS} runs were killed: {log}"
    final = start_run(args, no_server_env(home, uuid.uuid4().hex))
    out, _ = final.communicate(timeout=600)
    assert final.returncode == 0, out[-3000:]
    assert [row[:-1] for row in query(db, LATEST)] == expected, log
    assert "running" not in run_ids(db).values(), log  # the next run marked each killed run
    left_behind = {r: staging_dirs(r) for r in run_ids(db) if staging_dirs(r)}
    assert left_behind == {}, log  # and removed what it staged
    assert run_ids(db) == run_ids(warehouse_path(db)), log  # the analyst copy caught up
    half_made = [p.name for p in db.parent.glob(f".{db.name}.*")]
    half_made += [p.name for p in warehouse_path(db).parent.glob("*.adopting")]
    assert half_made == [], log  # no copy a kill interrupted is left taking disk
    assert not Path(f"{db}.wal").exists() and not list(db.parent.glob(f"{db.name}.changed-*"))
    took = time.monotonic() - started
    print(f"\nchaos: {KILLS} kills (seed {SEED}) in {took:.0f} s, nothing lost:\n" + "\n".join(log))
