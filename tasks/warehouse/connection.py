"""DuckDB access: connections (damage found at open), SQL files, the schema, the run lock.

Commands work on a private warehouse beside the path a user gives; the analyst copy at that
path is `tasks.warehouse.analyst_copy`'s. A separate lock file serialises whole runs so two runs
never interleave their writes. A run's candidates are Parquet files beside the database, read
by the `candidates` view that `apply_schema` makes.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import re
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import duckdb

from tasks.warehouse.errors import (
    DatabaseBusy,
    DatabaseDamaged,
    DatabaseUnusable,
    RunLockTimeout,
    analyst_copy_of,
    damage_detail,
    is_damage,
    is_foreign,
    made_by_us,
)

log = logging.getLogger(__name__)


#: sql/ is grouped as tasks/ is; `queries/` holds the analysts' saved queries.
SQL_GROUPS = ("sources", "data", "warehouse", "evaluation", "outputs", "tuning")


@functools.cache
def _sql_files() -> dict[str, Traversable]:
    files: dict[str, Traversable] = {}
    for group in SQL_GROUPS:
        for path in resources.files("sql").joinpath(group).iterdir():
            if path.name.endswith(".sql"):
                if path.name in files:
                    raise RuntimeError(f"two SQL files named {path.name} in sql/")
                files[path.name] = path
    return files


def read_sql(name: str) -> str:
    """A `.sql` file of the `sql` package by its name ('schema.sql', found in whichever group
    folder holds it: names are unique) or by its path ('queries/x.sql')."""
    path = resources.files("sql").joinpath(name) if "/" in name else _sql_files()[name]
    return path.read_text(encoding="utf-8")


def execute_script(
    con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, object] | None = None
) -> None:
    """Run a multi-statement SQL file; each statement gets just the $parameters it uses.

    DuckDB binds prepared parameters to the last statement only, so files are run one by one.
    Statements are split on ';' at line ends: the project's SQL files keep to that style.
    """

    params = params or {}
    for statement in re.split(r";\s*(?:\n|$)", sql):
        body = "\n".join(line.split("--", 1)[0] for line in statement.splitlines()).strip()
        if not body:
            continue
        used = set(re.findall(r"\$([A-Za-z_]\w*)", body))
        con.execute(statement, {k: v for k, v in params.items() if k in used} or None)


def sql_query_names() -> list[str]:
    folder = resources.files("sql").joinpath("queries")
    return sorted(p.name[:-4] for p in folder.iterdir() if p.name.endswith(".sql"))


#: How long a connection waits for another process (an analyst, a DuckDB client) to release the
#: database file before the step fails as busy; the environment variable overrides it.
BUSY_WAIT_ENV = "RECFUSION_DB_BUSY_SECONDS"
BUSY_WAIT_SECONDS = 10.0
_LOCK_CONFLICT = re.compile(r"Could not set lock on file|Conflicting lock is held")
_HOLDER_PID = re.compile(r"\(PID (\d+)\)")


def _one_line(exc: BaseException) -> str:
    """DuckDB's message without its error-class prefix, on one line."""
    text = " ".join(str(exc).split())
    return re.sub(r"^(IO|Invalid Input|Serialization|Catalog) Error: ", "", text)


def is_lock_conflict(exc: BaseException) -> bool:
    """DuckDB refused the file because another process holds it: the one case worth waiting."""
    return isinstance(exc, duckdb.Error) and bool(_LOCK_CONFLICT.search(str(exc)))


def busy_wait_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get(BUSY_WAIT_ENV, BUSY_WAIT_SECONDS)))
    except ValueError:
        return BUSY_WAIT_SECONDS


@contextmanager
def connect(
    db_path: str | Path,
    read_only: bool = False,
    retries: int | None = None,
    wait_seconds: float = 0.5,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short-lived connection; waits (bounded) only while another process holds the file.

    Every other failure to open (not a database, a directory, no permission, missing when
    reading) is `DatabaseUnusable` at once: waiting cannot fix it. A file that is not whole
    (shorter than its own header says, or a block that fails its checksum when a query reads
    it) is `DatabaseDamaged`, naming the recovery. `retries` defaults to the busy wait
    (RECFUSION_DB_BUSY_SECONDS, 10 s) in steps of `wait_seconds`.
    """
    db_path = Path(db_path)
    if retries is None:
        retries = max(1, round(busy_wait_seconds() / wait_seconds) + 1)
    started = time.monotonic()
    last_error: Exception | None = None
    for attempt in range(max(1, retries)):
        if attempt:
            time.sleep(wait_seconds)
        try:
            if not read_only:
                db_path.parent.mkdir(parents=True, exist_ok=True)
            con = duckdb.connect(str(db_path), read_only=read_only)
            break
        except duckdb.Error as exc:
            if db_path.exists() and (is_damage(exc) or (is_foreign(exc) and made_by_us(db_path))):
                raise DatabaseDamaged(db_path, damage_detail(exc)) from exc
            if not is_lock_conflict(exc):
                raise DatabaseUnusable(f"cannot open database {db_path}: {_one_line(exc)}") from exc
            last_error = exc
        except OSError as exc:  # the folder cannot be created or reached
            raise DatabaseUnusable(f"cannot open database {db_path}: {exc}") from exc
    else:
        holder = _HOLDER_PID.search(str(last_error))
        raise DatabaseBusy(
            f"database {db_path} held by another process "
            f"({'PID ' + holder.group(1) if holder else 'unknown PID'}) "
            f"for {time.monotonic() - started:.0f} s"
        ) from last_error
    try:
        missing = missing_bytes(db_path)
        if missing:
            raise DatabaseDamaged(db_path, f"truncated: {missing:,} bytes of its blocks missing")
        yield con
    except duckdb.Error as exc:
        if is_damage(exc):
            raise DatabaseDamaged(db_path, damage_detail(exc)) from exc
        raise
    finally:
        con.close()


#: DuckDB's file starts with a 4 KiB file header ("DUCK" at byte 8) and two 4 KiB database
#: headers; each database header is an 8-byte checksum, then iteration, meta block, free list,
#: block count and block size (little-endian 64-bit). Whole blocks follow the three headers.
_HEADERS_BYTES = 3 * 4096
_HEADER = struct.Struct("<QQqqQQ")


def missing_bytes(path: Path) -> int:
    """How many bytes of its counted blocks a file cut short mid-block lacks (0 when none).

    DuckDB opens a truncated file without complaint and fails only when a query reaches a
    missing block, perhaps months later in an analyst's session. DuckDB itself shortens its
    file only in whole blocks (its header may still count free blocks past the end), and a
    write that failed (a full disk) leaves a partial block only past the counted ones; so a
    file that ends mid-block inside the blocks its header counts was cut by something else,
    found at once. A cut on a block boundary is found when its blocks are read (every refresh
    of the analyst copy reads every table). A header this does not recognise is not judged.
    """
    try:
        with path.open("rb") as f:
            head = f.read(_HEADERS_BYTES)
        size = path.stat().st_size
    except OSError:
        return 0
    if len(head) < 12 or head[8:12] != b"DUCK":
        return 0
    if len(head) < _HEADERS_BYTES:
        return _HEADERS_BYTES - len(head)
    headers = [_HEADER.unpack_from(head, offset) for offset in (4096, 8192)]
    _, iteration, _, _, blocks, block_size = max(headers, key=lambda h: h[1])
    if iteration == 0 or block_size < 4096 or block_size & (block_size - 1) or blocks > 1 << 40:
        return 0
    counted = _HEADERS_BYTES + blocks * block_size
    mid_block = (size - _HEADERS_BYTES) % block_size != 0
    return counted - size if mid_block and size < counted else 0


def apply_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(read_sql("schema.sql"))
    candidates_view(con)
    con.execute(read_sql("views.sql"))
    con.execute(read_sql("comments.sql"))  # after views.sql: replacing a view drops its comments
    con.execute(read_sql("candidates_comments.sql"))


# --------------------------------------------------------------------------- run files

#: A run's candidates (its bulkiest output) live in `<db>.runs/run_id=<run>/*.parquet` (one file
#: per shard; `CANDIDATES_FILE` when published from memory, and in databases from before)
#: beside the analyst copy `<db>`: written once, read by the `candidates` view, never copied.
RUNS_SUFFIX = ".runs"
CANDIDATES_FILE = "candidates.parquet"
#: An empty file of the right schema, so the view's file pattern always matches one.
_NO_RUN = "run_id=_none"


def database_file(con: duckdb.DuckDBPyConnection) -> Path | None:
    """The file of the connection's database; None in memory."""
    rows = con.execute(read_sql("database_file.sql")).fetchall()
    return Path(rows[0][0]) if rows and rows[0][0] else None


def runs_folder(db: str | Path) -> Path:
    """`<db>.runs` beside the analyst copy `db` (or beside any database file used directly)."""
    path = real_path(db)
    analyst = analyst_copy_of(path) or path
    return analyst.with_name(analyst.name + RUNS_SUFFIX)


def run_candidates_folder(db: str | Path, run_id: str) -> Path:
    return runs_folder(db) / f"run_id={run_id}"


def _quoted(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _candidates_is_table(con: duckdb.DuckDBPyConnection) -> bool:
    return con.execute(read_sql("candidates_is_table.sql")).fetchall() == [(1,)]


def candidates_view(con: duckdb.DuckDBPyConnection) -> None:
    """The `candidates` view over the run files beside this database (an empty view in memory).

    A database from before run files kept its candidates in a table: each run's rows are
    written to its file first (nothing lost; again after a kill, files are overwritten whole),
    then the table goes. The view is made anew each time, so a moved database finds its files.
    """
    file = database_file(con)
    if file is None:
        con.execute("CREATE OR REPLACE VIEW candidates AS SELECT NULL::VARCHAR AS run_id, * FROM ("
                    + read_sql("candidates_empty.sql") + ")")
        return
    folder = runs_folder(file)
    empty = folder / _NO_RUN / CANDIDATES_FILE
    if not empty.exists():
        empty.parent.mkdir(parents=True, exist_ok=True)
        con.execute(f"COPY ({read_sql('candidates_empty.sql')}) TO {_quoted(empty)} "
                    "(FORMAT parquet)")
    if _candidates_is_table(con):
        con.execute(
            "COPY (SELECT run_id, modality, user_id, item_id, score, rank FROM candidates) TO "
            f"{_quoted(folder)} (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (run_id), "
            "OVERWRITE_OR_IGNORE, FILENAME_PATTERN 'candidates_{i}')"
        )
        con.execute("DROP TABLE candidates")
        log.warning("moved the candidates of every run into %s (one file per run)", folder)
    files = _quoted(folder / "*" / "*.parquet")
    con.execute(read_sql("candidates_view.sql").format(files=files))


def _relations(con: duckdb.DuckDBPyConnection) -> dict[str, set[str]]:
    """'schema.name' -> column names, for every table and view a user (or we) created."""
    rows = con.execute(read_sql("user_relations.sql")).fetchall()
    found: dict[str, set[str]] = {}
    for relation, column in rows:
        found.setdefault(str(relation), set()).add(str(column))
    return found


def non_demo_contents(con: duckdb.DuckDBPyConnection, demo_folder: Path) -> str | None:
    """What in this database did not come from the demo source in `demo_folder`; None if nothing.

    A table or view recfusion does not create, a row whose `source_file` lies outside the demo
    folder (or is unknown), a run on another source: any of these means the database holds real
    data, and demo data must not be mixed into it.
    """
    with duckdb.connect(":memory:") as blank:
        apply_schema(blank)
        ours = _relations(blank)
    present = _relations(con)
    foreign = sorted(set(present) - set(ours))
    if foreign:
        return f"tables not made by recfusion: {', '.join(foreign[:5])}"
    prefix = str(demo_folder) + os.sep
    for relation in sorted(r for r, cols in present.items() if "source_file" in cols):
        rows = con.execute(
            f"SELECT source_file FROM {relation} "  # names from our own schema, not user input
            "WHERE source_file IS NULL OR NOT starts_with(source_file, ?) LIMIT 1",
            [prefix],
        ).fetchall()
        if rows:
            return f"{relation} rows from {rows[0][0] or 'an unknown source'}"
    if "main.runs" in present:
        rows = con.execute(
            read_sql("runs_on_other_sources.sql"), {"source": str(demo_folder)}
        ).fetchall()
        if rows:
            return f"runs on {rows[0][0] or 'an unknown source'}"
    return None


def real_path(db_path: str | Path) -> Path:
    """The file a database path names, with symlinks and relative parts resolved.

    Two names for one file (a symlink, `./x` and `/abs/x`) must share one lock and one sidecar.
    A dangling symlink resolves to the file DuckDB would create through it.
    """
    return Path(os.path.realpath(db_path))


def lock_path(db_path: str | Path) -> Path:
    return Path(f"{real_path(db_path)}.lock")


@contextmanager
def run_lock(db_path: str | Path, timeout: float = 0.0, holder: str = "") -> Iterator[None]:
    """Hold an exclusive OS lock for a whole run; wait up to `timeout` seconds for it.

    An OS lock (flock) is released by the kernel when the process dies, so a killed run never
    leaves a stale lock behind. The lock belongs to the real file, not to the name it was given.
    `holder` (e.g. "run 20260101T020000-ab12cd34", "ingest") is written into the lock file, so
    a command refused names the one that holds it, an id that `runs` knows.
    """
    path, real = lock_path(db_path), real_path(db_path)
    named = str(db_path) if os.path.abspath(db_path) == str(real) else f"{db_path} (= {real})"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise DatabaseUnusable(f"cannot create the run lock {path}: {exc.strerror}") from exc
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    held_by = os.pread(fd, 200, 0).decode(errors="replace").strip()
                    raise RunLockTimeout(
                        f"another recfusion command ({held_by or 'unknown'}) is using {named}; "
                        f"waited {timeout:.0f}s — retry later or raise --lock-timeout"
                    ) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}{', ' + holder if holder else ''}".encode(), 0)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
