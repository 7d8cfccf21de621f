"""Analysts never break a run: the path a user gives is the analyst copy, which each run replaces
whole (atomically) from its private warehouse. Real reader processes, real flow runs, real files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import duckdb
import pytest
from process_support import REPO
from support import query, run_nightly

from tasks.fault_injection import FAULT_ENV
from tasks.warehouse.analyst_copy import open_warehouse, refresh_analyst_copy, warehouse_path
from tasks.warehouse.connection import BUSY_WAIT_ENV, apply_schema, connect
from tasks.warehouse.runs import fail_run, failure_sidecar

pytestmark = pytest.mark.usefixtures("prefect_harness")

LATEST = "SELECT user_id, rank, item_id, score, run_id FROM recommendations_latest ORDER BY ALL"

# An analyst's client: one read-only session held open from before a run to after it, querying
# in a loop, with a result it has only begun to fetch. Commands on stdin, JSON lines on stdout.
READER = r"""
import json, select, sys, time, duckdb

db = sys.argv[1]

def view(con):
    first, last, rows = con.execute(
        "SELECT min(run_id), max(run_id), count(*) FROM recommendations_latest").fetchone()
    history = con.execute("SELECT run_id, status, message FROM run_history").fetchall()
    return {"latest": first if first == last else "MIXED", "rows": rows,
            "history": sorted(map(list, history))}

con = duckdb.connect(db, read_only=True)
pending = con.cursor().execute("SELECT run_id FROM recommendations")
begun = len(pending.fetchmany(3))
seen = view(con)
print(json.dumps({"event": "holding", **seen}), flush=True)
queries, changes = 0, 0
while True:
    try:
        now = view(con)
    except Exception as exc:
        print(json.dumps({"event": "error", "error": str(exc)}), flush=True)
        sys.exit(1)
    queries += 1
    changes += now != seen
    if select.select([sys.stdin], [], [], 0.05)[0]:
        command = sys.stdin.readline().strip()
        if command == "status":
            print(json.dumps({"event": "status", "queries": queries, "changes": changes, **now}),
                  flush=True)
        elif command == "finish":  # the rest of the result begun before the run
            runs = {r for (r,) in pending.fetchall()}
            print(json.dumps({"event": "finished", "runs": sorted(runs)}), flush=True)
        elif command == "reconnect":
            con.close()
            con = duckdb.connect(db, read_only=True)
            seen, queries, changes = view(con), 0, 0
            print(json.dumps({"event": "reconnected", **seen}), flush=True)
        else:
            break
"""


class Reader:
    def __init__(self, db: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", READER, str(db)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.holding = self._line()
        assert self.holding["event"] == "holding", self.holding

    def _line(self) -> dict[str, Any]:
        out: IO[str] | None = self.proc.stdout
        assert out is not None
        line = out.readline()
        assert line, f"the reader died: {self.proc.stderr.read() if self.proc.stderr else ''}"
        reply: dict[str, Any] = json.loads(line)
        assert reply["event"] != "error", reply
        return reply

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._line()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def reader_factory() -> Iterator[Any]:
    started: list[Reader] = []

    def start(db: Path) -> Reader:
        started.append(Reader(db))
        return started[-1]

    yield start
    for reader in started:
        reader.close()


def bad_source(tmp_path: Path) -> Path:
    folder = tmp_path / "bad-source"
    folder.mkdir()
    (folder / "events.csv").write_text("user_id,item_id,event_type\nu1,i1,view\n")  # no ts
    return folder


def test_a_session_held_across_whole_runs_never_breaks_them_and_sees_each_after_reconnecting(
    small_source: Path, tmp_path: Path, reader_factory: Any, monkeypatch: pytest.MonkeyPatch
):
    """The finding: a read_only session open through a run failed it after 47 s (lock
    conflict) and nothing reached `runs`. Now the session never errors, the run publishes, and a
    failed run's reason reaches the analyst copy too."""
    monkeypatch.setenv(BUSY_WAIT_ENV, "2")  # were the run to wait for the reader, fail fast
    db = tmp_path / "rf.duckdb"
    first = run_nightly(small_source, db, evaluate=False)
    assert first.status == "published", first.message

    reader = reader_factory(db)
    assert reader.holding["latest"] == first.run_id and reader.holding["rows"] > 0
    second = run_nightly(small_source, db, evaluate=False, allow_regression=True)
    assert second.status == "published", second.message
    during = reader.ask("status")
    # The reader queried all along on the session it opened before the run, and saw one
    # consistent state: the old copy, whole (the old file lives on while it is open).
    assert during["queries"] > 20 and during["changes"] == 0
    assert during["latest"] == first.run_id and during["rows"] == reader.holding["rows"]
    assert reader.ask("finish")["runs"] == [first.run_id]  # a result begun before, read to the end
    after = reader.ask("reconnect")
    assert after["latest"] == second.run_id and after["rows"] == second.n_recommendations
    assert [r[:2] for r in after["history"]] == sorted(
        [[first.run_id, "published"], [second.run_id, "published"]]
    )

    failed = run_nightly(bad_source(tmp_path), db, evaluate=False)  # still held by the reader
    assert failed.status == "failed" and "ts" in failed.message
    assert reader.ask("status")["changes"] == 0
    shown = reader.ask("reconnect")
    assert shown["latest"] == second.run_id  # a failed run never changes the list
    assert [failed.run_id, "failed", failed.message] in shown["history"]  # its reason is there
    assert not failure_sidecar(db).exists()


def test_a_database_from_before_the_analyst_copy_is_adopted_whole(
    small_source: Path, tmp_path: Path
):
    """A database made before this change: the data lives in the user's path, with an
    analyst's own table and a transaction a killed process left only in its WAL."""
    db = tmp_path / "rf.duckdb"
    first = run_nightly(small_source, db, evaluate=False)
    assert first.status == "published", first.message
    shutil.rmtree(warehouse_path(db).parent)  # what such a database looks like: no warehouse
    legacy_writer = (
        "import duckdb, os, sys\n"
        "con = duckdb.connect(sys.argv[1])\n"
        "con.execute('CREATE TABLE analyst_notes AS SELECT 42 AS answer')\n"
        "os._exit(9)  # killed: the commit is in the WAL only\n"
    )
    subprocess.run([sys.executable, "-c", legacy_writer, str(db)], check=False)
    assert Path(f"{db}.wal").exists()
    before = query(db, LATEST)

    second = run_nightly(small_source, db, evaluate=False, allow_regression=True)
    assert second.status == "published", second.message
    warehouse = warehouse_path(db)
    assert warehouse == tmp_path / "rf.duckdb.warehouse" / "warehouse.duckdb"
    for path in (db, warehouse):  # both hold everything the old database held, and the new run
        assert query(path, "SELECT answer FROM analyst_notes") == [(42,)]
        statuses = dict(query(path, "SELECT run_id, status FROM runs"))
        assert statuses == {first.run_id: "published", second.run_id: "published"}
        assert query(path, f"SELECT * EXCLUDE run_id FROM ({LATEST}) WHERE run_id = "
                     f"'{second.run_id}'") == [row[:-1] for row in before]  # same data, same list
    assert not Path(f"{db}.wal").exists()  # the WAL went into the warehouse, not beside the copy
    assert not list(tmp_path.glob("rf.duckdb.changed-*"))  # adopted, so not "changed by someone"


def test_an_analyst_copy_someone_wrote_into_is_kept_and_the_new_copy_opens(
    small_source: Path, tmp_path: Path
):
    """A client that opens read-write (the DuckDB CLI's default; root ignores the copy's
    read-only mode) and writes: while it holds the file, the copy is not replaced (its later
    writes would land in a file no one sees); once it is gone, its work is kept beside, and its
    WAL does not poison the new copy ("WAL does not match")."""
    db = tmp_path / "rf.duckdb"
    first = run_nightly(small_source, db, evaluate=False)
    assert first.status == "published", first.message
    assert db.stat().st_mode & 0o222 == 0  # published read-only: a non-root writer is refused
    db.chmod(0o644)  # as an operator (or root) might
    writer = subprocess.Popen(
        [sys.executable, "-c",
         "import duckdb, sys, time\ncon = duckdb.connect(sys.argv[1])\n"
         "con.execute('CREATE TABLE my_notes AS SELECT 7 AS n')\nprint('wrote', flush=True)\n"
         "time.sleep(600)", str(db)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "wrote"
        held = run_nightly(small_source, db, evaluate=False, allow_regression=True)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert held.status == "published", held.message
    assert f"open for writing by process {writer.pid}" in held.analyst_copy_problem
    second = run_nightly(small_source, db, evaluate=False, allow_regression=True)
    assert second.status == "published" and not second.analyst_copy_problem, second
    assert {r for (*_, r) in query(db, LATEST)} == {second.run_id}  # the new copy opens
    assert query(db, "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'my_notes'") == [
        (0,)
    ]
    [kept] = [p for p in tmp_path.glob("rf.duckdb.changed-*") if p.suffix != ".wal"]
    assert query(kept, "SELECT n FROM my_notes") == [(7,)]  # the analyst's work, with its WAL
    assert not Path(f"{db}.wal").exists()

    third = run_nightly(small_source, db, evaluate=False, allow_regression=True)
    assert third.status == "published", third.message
    assert len([p for p in tmp_path.glob("rf.duckdb.changed-*") if p.suffix != ".wal"]) == 1


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cli_run(db: Path, source: Path, api_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--source", str(source), "--db", str(db),
         "--no-evaluate", "--allow-regression"],
        cwd=REPO, text=True, capture_output=True, timeout=600,
        env={**os.environ, "PREFECT_API_URL": api_url, **env},
    )


def test_a_run_killed_before_the_swap_leaves_the_analyst_copy_exactly_as_it_was(
    api_url: str, small_source: Path, tmp_path: Path
):
    db = tmp_path / "rf.duckdb"
    assert cli_run(db, small_source, api_url).returncode == 0
    digest, inode = sha256(db), db.stat().st_ino

    killed = cli_run(db, small_source, api_url, **{FAULT_ENV: "refresh:before_rename"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (sha256(db), db.stat().st_ino) == (digest, inode)  # every byte, the same file
    [leftover] = tmp_path.glob(".rf.duckdb.*.refreshing")  # the copy on its way, flushed
    # The warehouse committed the run: the next run shows it, and clears the leftover.
    [(killed_run,)] = query(warehouse_path(db), "SELECT run_id FROM runs WHERE status = "
                            "'published' ORDER BY finished_at DESC LIMIT 1")
    assert killed_run not in {r for (r,) in query(db, "SELECT run_id FROM runs")}

    after = run_nightly(small_source, db, evaluate=False, allow_regression=True)
    assert after.status == "published", after.message
    assert not leftover.exists()
    statuses = dict(query(db, "SELECT run_id, status FROM runs"))
    assert statuses[killed_run] == "published" and statuses[after.run_id] == "published"
    assert list(tmp_path.glob("rf.duckdb.changed-*")) == []


NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to drop the capability that ignores file permissions",
)
def test_an_analyst_copy_that_cannot_be_replaced_is_found_before_the_run_not_after(
    api_url: str, small_source: Path, tmp_path: Path
):
    """The finding: a folder that is not writable was found after the whole run, which then
    published where no analyst could see it, every night. Now it is refused at the start, and
    nothing is written; a copy that fails later anyway (a disk filled by something else) exits
    3, not 1, so a scheduler can tell "published, not yet visible" from a failed run."""
    folder = tmp_path / "srv"
    folder.mkdir()
    db = folder / "rf.duckdb"
    assert cli_run(db, small_source, api_url).returncode == 0
    before = query(db, LATEST)
    runs_before = query(warehouse_path(db), "SELECT run_id FROM runs")
    folder.chmod(0o555)  # no new file beside the analyst copy; the warehouse folder is writable
    try:
        blocked = subprocess.run(
            [*NO_DAC, sys.executable, "-m", "flows.cli", "run", "--source", str(small_source),
             "--db", str(db), "--no-evaluate", "--allow-regression"],
            cwd=REPO, text=True, capture_output=True, timeout=600,
            env={**os.environ, "PREFECT_API_URL": api_url},
        )
    finally:
        folder.chmod(0o755)
    assert blocked.returncode == 1, blocked.stderr[-2000:]
    [line] = [x for x in blocked.stderr.splitlines() if x.startswith("recfusion: ")]
    assert line.startswith(
        f"recfusion: not started: cannot write the analyst copy's folder {folder}"
    )
    assert "Permission denied" in line
    assert "Task run 'ingest" not in blocked.stderr  # refused before any work
    assert query(warehouse_path(db), "SELECT run_id FROM runs") == runs_before
    assert query(db, LATEST) == before

    late = cli_run(db, small_source, api_url, **{FAULT_ENV: "refresh:copy"})
    assert late.returncode == 3, late.stderr[-2000:]
    [line] = [x for x in late.stderr.splitlines() if x.startswith("recfusion: ")]
    assert line.startswith("recfusion: run ") and " published, but the analyst copy " in line
    assert "No space left on device" in line and "next command" in line
    assert query(db, LATEST) == before
    assert list(folder.glob(".rf.duckdb.*")) == []  # no half-made copy left behind

    after = run_nightly(small_source, db, evaluate=False, allow_regression=True)
    assert after.status == "published" and not after.analyst_copy_problem, after
    assert [s for (s,) in query(db, "SELECT status FROM runs")] == ["published"] * 3


# --- the copy itself, without a flow ------------------------------------------------------------


def test_the_swap_follows_a_symlink_keeps_the_mode_and_readers_keep_their_snapshot(
    tmp_path: Path,
):
    real = tmp_path / "data" / "rf.duckdb"
    real.parent.mkdir()
    alias = tmp_path / "alias.duckdb"
    alias.symlink_to(real)
    with connect(open_warehouse(alias)) as con:
        apply_schema(con)
        con.execute("CREATE TABLE raw.marker AS SELECT 1 AS generation")
    refresh_analyst_copy(alias)
    real.chmod(0o640)
    assert warehouse_path(alias) == warehouse_path(real)  # two names, one warehouse

    held = duckdb.connect(str(real), read_only=True)
    try:
        with connect(warehouse_path(real)) as con:
            con.execute("UPDATE raw.marker SET generation = 2")
        done = refresh_analyst_copy(alias)
        assert alias.is_symlink() and done.path == real  # the file replaced, not the link
        assert held.execute("SELECT generation FROM raw.marker").fetchall() == [(1,)]
    finally:
        held.close()
    assert query(real, "SELECT generation FROM raw.marker") == [(2,)]
    assert real.stat().st_mode & 0o777 == 0o440  # the mode it had, without write permission
    assert done.method == "verified copy" and done.size == real.stat().st_size


def test_failing_a_run_never_flips_one_that_finished(tmp_path: Path):
    db = tmp_path / "w.duckdb"
    with connect(db) as con:
        apply_schema(con)
        con.execute("INSERT INTO runs (run_id, status, started_at) VALUES "
                    "('done', 'published', now()), ('open', 'running', now())")
        fail_run(con, "done", "late trouble after the commit")
        fail_run(con, "open", "trouble")
    assert query(db, "SELECT run_id, status, message FROM runs ORDER BY run_id") == [
        ("done", "published", None), ("open", "failed", "trouble")
    ]


HOLDER = (
    "import duckdb, sys, time\ncon = duckdb.connect(sys.argv[1], read_only=True)\n"
    "print(con.execute('SELECT count(*) FROM raw.events').fetchone()[0], flush=True)\n"
    "time.sleep(600)"
)


def test_ingest_and_tune_show_their_work_in_the_analyst_copy_while_a_session_holds_it(
    small_source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    from flows.cli import main
    from tasks.sources.demo import generate_demo_source

    db = tmp_path / "rf.duckdb"
    more = tmp_path / "more"
    generate_demo_source(more, users=50, items=40, events=500, seed=11)
    assert main(["ingest", "--source", str(small_source), "--db", str(db)]) == 0
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and int(holder.stdout.readline()) == 8000
        assert main(["ingest", "--source", str(more), "--db", str(db)]) == 0
        assert "events: read 500, added 500" in capsys.readouterr().out
        assert query(db, "SELECT count(*) FROM raw.events") == [(8500,)]
        assert main(["tune", "--source", str(small_source), "--db", str(db), "--trials", "1",
                     "--modalities", "popularity", "--max-users", "100"]) == 0
        [(tuning_id,)] = query(db, "SELECT DISTINCT tuning_id FROM tuning_results")
        assert f"stored as tuning {tuning_id} in {db}" in capsys.readouterr().out
        assert holder.poll() is None  # the session lived through both
    finally:
        holder.kill()
        holder.wait()
