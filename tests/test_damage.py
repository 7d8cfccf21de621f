"""Damage never spreads: a warehouse damaged the way disks, copies and operators damage files is
caught before it reaches the analyst copy, named in one line with the recovery to type, and
`recfusion restore` brings back what can come back. Real DuckDB files, really damaged.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest

from flows.cli import main
from tasks.sources.demo import generate_demo_source
from tasks.warehouse.analyst_copy import warehouse_path
from tasks.warehouse.restore import damage_of
from tasks.warehouse.source_log import logged_sources

RAW = ("raw.events", "raw.items", "raw.users", "raw.social")


def counts(db: Path) -> dict[str, int]:
    with duckdb.connect(str(db), read_only=True) as con:
        return {t: int(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in RAW}  # type: ignore[index]


def digest(path: Path) -> bytes:
    return path.read_bytes()


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two sources: the database is built from the first, the second is ingested into it."""
    first = tmp_path_factory.mktemp("first")
    generate_demo_source(first, users=1500, items=600, events=60_000, seed=5)
    second = tmp_path_factory.mktemp("second")
    generate_demo_source(second, users=40, items=30, events=300, seed=6)
    return first, second


@pytest.fixture(scope="module")
def template(sources: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database folder (analyst copy and warehouse) after one ingest, copied by each test."""
    folder = tmp_path_factory.mktemp("template")
    assert main(["ingest", "--source", str(sources[0]), "--db", str(folder / "rf.duckdb")]) == 0
    return folder


@pytest.fixture
def db(template: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "db"
    shutil.copytree(template, folder)
    return folder / "rf.duckdb"


def truncate_to(fraction: float) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        os.truncate(path, max(4096, int(path.stat().st_size * fraction) // 4096 * 4096))

    return damage


def truncate_on_a_block_boundary(blocks_kept: float) -> Callable[[Path], None]:
    """Cut where DuckDB itself could have ended the file: found only by reading the blocks."""

    def damage(path: Path) -> None:
        block = 262144
        blocks = (path.stat().st_size - 3 * 4096) // block
        os.truncate(path, 3 * 4096 + int(blocks * blocks_kept) * block)

    return damage


def overwrite_block(where: float | int, seed: int = 0) -> Callable[[Path], None]:
    """Overwrite 4 KiB with noise at a byte offset (int) or a share of the file (float)."""

    def damage(path: Path) -> None:
        size = path.stat().st_size
        offset = where if isinstance(where, int) else int(size * where) // 4096 * 4096
        with path.open("r+b") as f:
            f.seek(min(offset, size - 4096))
            f.write(random.Random(seed).randbytes(4096))

    return damage


DAMAGE = {
    "truncated to half": truncate_to(0.5),
    "truncated by one block": truncate_to(0.97),
    "truncated to the headers": truncate_to(0.0),
    "truncated on a block boundary": truncate_on_a_block_boundary(0.6),
    "file header": overwrite_block(0),
    "database header 1": overwrite_block(4096),
    "database header 2": overwrite_block(8192),
    "first block": overwrite_block(12288),
    **{f"block at {share:.0%}": overwrite_block(share, seed=i)
       for i, share in enumerate((0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 0.99))},
}
#: Damage that a command must always notice: the file's own structure.
ALWAYS_CAUGHT = {"truncated to half", "truncated by one block", "truncated to the headers",
                 "database header 1", "database header 2", "first block"}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_warehouse_never_replaces_the_analyst_copy_and_restore_brings_it_back(
    case: str, db: Path, sources: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
):
    before, rows_before = digest(db), counts(db)
    warehouse = warehouse_path(db)
    DAMAGE[case](warehouse)

    code = main(["ingest", "--source", str(sources[1]), "--db", str(db)])
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    if code == 0:
        # The damage sat where nothing reads (a free block, an index DuckDB rebuilds): the new
        # analyst copy was made by reading every table, so it is whole and lost nothing.
        assert case not in ALWAYS_CAUGHT, err
        assert damage_of(db) is None
        after = counts(db)
        assert all(after[t] >= rows_before[t] for t in RAW), (after, rows_before)
    else:
        assert code == 1 and len(err) == 1, err
        assert err[0].startswith(f"recfusion: the warehouse {warehouse} is damaged (")
        assert err[0].endswith(f"Recover with: recfusion restore --db {db}")
        assert digest(db) == before  # the analyst copy is exactly what it was

    assert main(["restore", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    if code == 1:
        assert f"the warehouse {warehouse} was damaged" in out and "rebuilt from the analyst" in out
        assert list(warehouse.parent.glob("warehouse.duckdb.damaged-*"))  # kept for inspection
    assert damage_of(warehouse) is None and damage_of(db) is None
    assert main(["ingest", "--source", str(sources[1]), "--db", str(db)]) == 0
    assert counts(warehouse_path(db)) == counts(db)


def test_both_copies_damaged_rebuilds_the_raw_tables_from_the_logged_sources(
    db: Path, sources: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
):
    assert main(["ingest", "--source", str(sources[1]), "--db", str(db)]) == 0
    expected = counts(db)
    assert [s.folder for s in logged_sources(db)] == [sources[0].resolve(), sources[1].resolve()]
    capsys.readouterr()
    truncate_to(0.5)(warehouse_path(db))
    overwrite_block(0.5)(db)

    assert main(["restore", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "rebuilt" in out and "by ingesting 2 source folder(s) again" in out
    assert "cannot come back: the published history" in out
    assert counts(db) == expected and damage_of(db) is None
    assert len(list(db.parent.glob("rf.duckdb.damaged-*"))) == 1
    assert main(["restore", "--db", str(db)]) == 0  # now both whole
    assert "nothing to restore" in capsys.readouterr().out


def test_both_damaged_and_the_sources_gone_says_which_folders_to_name(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    moved = tmp_path / "moved"
    generate_demo_source(moved, users=30, items=20, events=200, seed=9)
    (warehouse_path(db).parent / "sources.json").write_text(
        '{"sources": [{"folder": "/nonexistent/src", "mapping": null, "ingested_at": "x"}]}'
    )
    truncate_to(0.5)(warehouse_path(db))
    truncate_to(0.5)(db)
    assert main(["restore", "--db", str(db)]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert "/nonexistent/src are gone" in line
    assert line.endswith(f"recfusion restore --db {db} --source DIR")
    assert main(["restore", "--db", str(db), "--source", str(moved)]) == 0
    assert counts(db)["raw.events"] == 200


def test_a_restored_folder_is_not_taken_for_an_analyst_copy_someone_changed(
    db: Path, sources: tuple[Path, Path], tmp_path: Path
):
    """`cp -a` of the whole folder (same bytes, new inodes), and a plain copy (new mtimes too)."""
    for name, copy in (("cp-a", shutil.copy2), ("cp", shutil.copyfile)):
        restored = tmp_path / name
        shutil.copytree(db.parent, restored, copy_function=copy)
        new_db = restored / db.name
        assert new_db.stat().st_ino != db.stat().st_ino
        assert main(["ingest", "--source", str(sources[1]), "--db", str(new_db)]) == 0
        assert list(restored.glob("rf.duckdb.changed-*")) == [], name


WRITER = (
    "import duckdb, sys\ncon = duckdb.connect(sys.argv[1])\n"
    "con.execute('CREATE TABLE my_notes AS SELECT 7 AS n')\nprint('wrote', flush=True)\n"
    "sys.stdin.readline()\ncon.execute('INSERT INTO my_notes VALUES (8)')\ncon.close()\n"
    "print('closed', flush=True)\n"
)


def test_what_an_analyst_writes_into_the_analyst_copy_is_never_silently_lost(
    db: Path, sources: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
):
    """The finding: a session opened read-write before a refresh wrote, after it, into a file
    that was no longer there. Now the copy is published read-only (the OS refuses a non-root
    writer); a writer that holds it anyway keeps it from being replaced (exit 3, naming it);
    once it is gone, what it wrote is kept beside the new copy."""
    assert db.stat().st_mode & 0o222 == 0
    db.chmod(0o644)  # an operator (or root, whom the mode does not stop)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "wrote"
        assert main(["ingest", "--source", str(sources[1]), "--db", str(db)]) == 3
        [line] = [x for x in capsys.readouterr().err.splitlines() if "recfusion:" in x]
        assert f"open for writing by process {writer.pid}" in line and "not lost" in line
        assert writer.stdin is not None
        writer.stdin.write("\n")
        writer.stdin.flush()
        assert writer.stdout.readline().strip() == "closed"
    finally:
        writer.kill()
        writer.wait()
    assert main(["ingest", "--source", str(sources[1]), "--db", str(db)]) == 0
    [kept] = db.parent.glob("rf.duckdb.changed-*")
    with duckdb.connect(str(kept), read_only=True) as con:
        assert con.execute("SELECT n FROM my_notes ORDER BY n").fetchall() == [(7,), (8,)]
    assert counts(db) == counts(warehouse_path(db))  # the new copy has the second ingest


def test_a_verified_copy_works_within_its_own_memory_limit(tmp_path: Path) -> None:
    """The copy runs under `COPY_MEMORY_LIMIT` (unset, DuckDB allows 80 % of the machine: a
    50M-event warehouse's copy held 2.7 GB), whatever limit the connection had."""
    from tasks.warehouse.integrity import COPY_MEMORY_LIMIT, copy_verified

    source, target = tmp_path / "w.duckdb", tmp_path / "copy.duckdb"
    with duckdb.connect(str(source)) as con:
        con.execute("CREATE TABLE t AS SELECT range AS i, range::VARCHAR AS s FROM range(50000)")
        con.execute("SET memory_limit = '3GB'")
        before = con.execute("SELECT current_setting('memory_limit')").fetchone()
        limits: list[str] = []

        class Watched:  # the connection, noting the limit each statement runs under
            def execute(self, sql: str) -> duckdb.DuckDBPyConnection:
                if sql.startswith("COPY FROM DATABASE"):
                    limits.append(str(con.execute(
                        "SELECT current_setting('memory_limit')").fetchone()))
                return con.execute(sql)

        copy_verified(Watched(), source, target)  # type: ignore[arg-type]
        with duckdb.connect() as scratch:
            scratch.execute(f"SET memory_limit = '{COPY_MEMORY_LIMIT}'")
            expected = str(scratch.execute("SELECT current_setting('memory_limit')").fetchone())
        assert limits == [expected] and expected != str(before)
    with duckdb.connect(str(target), read_only=True) as con:
        assert con.execute("SELECT count(*), sum(i) FROM t").fetchone() == (50000, 1249975000)
