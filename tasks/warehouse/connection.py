"""DuckDB access: connections, schema, the run lock, and the analyst copy.

DuckDB lets only one process hold a database file for writing, and while it does no other process
can even read it. So the path a user gives (`--db recfusion.duckdb`) is the **analyst copy**:
commands read and write a private warehouse beside it (`<db>.warehouse/warehouse.duckdb`), and
at the end of every command that changed the warehouse the analyst copy is replaced whole by a
fresh copy (`refresh_analyst_copy`). A session open on the analyst copy keeps reading the old
file (the kernel keeps its inode) and never blocks a run; a new session sees the new run.
A separate lock file serialises whole runs so two runs never interleave their writes.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import duckdb

from tasks.fault_injection import fault_point

log = logging.getLogger(__name__)


class RunLockTimeout(RuntimeError):
    """Another run holds the database; raised after waiting `timeout` seconds."""


class DatabaseBusy(RuntimeError):
    """Another process holds the DuckDB file (e.g. an analyst's session); may clear by itself."""


class DatabaseUnusable(RuntimeError):
    """The database file cannot be opened at all (not a database, corrupt, no permission, …)."""


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
class AnalystCopyFailed(DatabaseUnusable):
    """The analyst copy could not be replaced (disk full, permission); the warehouse is intact,
    analysts keep the previous copy, and the next command that changes the warehouse retries."""


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

    Every other failure to open (not a database, truncated, a directory, no permission, missing
    when reading) is `DatabaseUnusable` at once: waiting cannot fix it. `retries` defaults to
    the busy wait (RECFUSION_DB_BUSY_SECONDS, 10 s) in steps of `wait_seconds`.
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
        yield con
    finally:
        con.close()


def apply_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(read_sql("schema.sql"))
    con.execute(read_sql("views.sql"))
    con.execute(read_sql("comments.sql"))  # after views.sql: replacing a view drops its comments


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
def run_lock(db_path: str | Path, timeout: float = 0.0) -> Iterator[None]:
    """Hold an exclusive OS lock for a whole run; wait up to `timeout` seconds for it.

    An OS lock (flock) is released by the kernel when the process dies, so a killed run never
    leaves a stale lock behind. The lock belongs to the real file, not to the name it was given.
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
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                    raise RunLockTimeout(
                        f"another recfusion run is using {named} ({holder or 'unknown run'}); "
                        f"waited {timeout:.0f}s — retry later or raise --lock-timeout"
                    ) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# --------------------------------------------------------------------------- the analyst copy

#: The private warehouse of the analyst copy `<db>` is `<db>.warehouse/warehouse.duckdb`.
WAREHOUSE_DIR_SUFFIX = ".warehouse"
WAREHOUSE_FILE = "warehouse.duckdb"
#: The analyst copy as recfusion last wrote it (inode, size, mtime): anything else was changed.
_WRITTEN = "analyst-copy.json"
_REFRESHING = ".refreshing"  # `.<db name>.<hex>.refreshing`: a copy on its way to the analyst copy
_ADOPTING = ".adopting"  # `warehouse.duckdb.<hex>.adopting`: an old database on its way in
#: linux/fs.h FICLONE: the new file shares the old one's blocks (btrfs, XFS, bcachefs, …).
_FICLONE = 0x40049409
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM}


@dataclass(frozen=True)
class Refresh:
    """One replacement of the analyst copy, for the log and the cost report."""

    path: Path
    method: str  # "reflink" (blocks shared, no extra disk) or "copy"
    size: int  # bytes
    seconds: float
    kept: Path | None = None  # where an analyst copy changed by someone else was kept


def warehouse_path(db: str | Path) -> Path:
    """The private warehouse behind the analyst copy `db` (both names of one file share it)."""
    analyst = real_path(db)
    return analyst.with_name(analyst.name + WAREHOUSE_DIR_SUFFIX) / WAREHOUSE_FILE


def database_to_read(db: str | Path) -> Path:
    """What a command under the run lock reads before `open_warehouse`: the warehouse, or, not
    yet adopted, a database from before the analyst copy existed (the user's path itself)."""
    warehouse = warehouse_path(db)
    return warehouse if warehouse.exists() else real_path(db)


def _wal(path: Path) -> Path:
    return Path(f"{path}.wal")


def _identity(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _written(warehouse: Path) -> list[list[int]]:
    try:
        data = json.loads((warehouse.parent / _WRITTEN).read_text(encoding="utf-8"))
        return [list(map(int, x)) for x in data["written"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _set_written(warehouse: Path, identities: list[list[int]]) -> None:
    """Atomically: a kill leaves the old record or the new one, never half of one."""
    path = warehouse.parent / _WRITTEN
    tmp = path.with_name(f"{_WRITTEN}.{secrets.token_hex(4)}.tmp")
    tmp.write_text(json.dumps({"written": identities}), encoding="utf-8")
    os.replace(tmp, path)


def _clone(src: int, dst: int) -> str:
    """Copy one open file into another: a reflink where the filesystem shares blocks, else a
    copy done by the kernel (no round trip through Python), else a plain read/write loop."""
    try:
        fcntl.ioctl(dst, _FICLONE, src)
        return "reflink"
    except OSError:
        pass
    size, copied = os.fstat(src).st_size, 0
    kernel_copy = getattr(os, "copy_file_range", None)
    try:
        while kernel_copy is not None and copied < size:
            step = kernel_copy(src, dst, min(size - copied, 1 << 30))
            if step == 0:
                break
            copied += step
    except OSError as exc:
        if exc.errno not in _NO_KERNEL_COPY:
            raise
    os.lseek(src, copied, os.SEEK_SET)
    os.lseek(dst, copied, os.SEEK_SET)
    while chunk := os.read(src, 8 << 20):
        os.write(dst, chunk)
    return "copy"


def _copy_to_temp(src: Path, folder: Path, prefix: str, suffix: str, mode: int) -> tuple[Path, str]:
    """`src` copied to a new temporary file in `folder` (flushed to disk), and how."""
    tmp = folder / f"{prefix}{secrets.token_hex(4)}{suffix}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, mode)
        src_fd = os.open(src, os.O_RDONLY)
        try:
            method = _clone(src_fd, fd)
        finally:
            os.close(src_fd)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp, method


def _mode(path: Path) -> int | None:
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return None


def _remove_leftovers(analyst: Path, warehouse: Path) -> None:
    """What a refresh or an adoption killed half-way left behind (only under the run lock)."""
    leftovers = [
        *analyst.parent.glob(f".{analyst.name}.*{_REFRESHING}"),
        *warehouse.parent.glob(f"{WAREHOUSE_FILE}.*{_ADOPTING}"),
        *warehouse.parent.glob(f"{_WRITTEN}.*.tmp"),
    ]
    for path in leftovers:
        path.unlink(missing_ok=True)


def open_warehouse(db: str | Path) -> Path:
    """The private warehouse, ready to connect to; call under the run lock.

    A database from before the analyst copy existed (the user's path holds the data and there
    is no warehouse yet) is adopted: copied in whole, so nothing in it is lost; from then on
    that path is the analyst copy. Leftovers of a killed refresh or adoption are removed.
    """
    analyst, warehouse = real_path(db), warehouse_path(db)
    if analyst.is_dir():
        raise DatabaseUnusable(f"cannot open database {db}: it is a directory, not a DuckDB file")
    try:
        warehouse.parent.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(analyst, warehouse)
    except OSError as exc:
        raise DatabaseUnusable(
            f"cannot create the warehouse folder {warehouse.parent}: {exc.strerror or exc}"
        ) from exc
    if warehouse.exists() or not analyst.exists():
        return warehouse
    try:
        # Opening it checks that it is a database (one line naming it if not) and replays a WAL
        # a killed run left beside it; CHECKPOINT writes that into the file that is copied.
        with connect(db) as con:
            con.execute("CHECKPOINT")
            tmp, _ = _copy_to_temp(
                analyst, warehouse.parent, f"{WAREHOUSE_FILE}.", _ADOPTING,
                _mode(analyst) or 0o644,
            )
        _set_written(warehouse, [_identity(analyst)])
        os.replace(tmp, warehouse)
        _fsync_dir(warehouse.parent)
    except OSError as exc:
        raise DatabaseUnusable(
            f"cannot copy database {db} into its warehouse {warehouse}: {exc.strerror or exc}"
        ) from exc
    log.warning(
        "adopted %s: the data now lives in %s; %s is the analyst copy, replaced by each run",
        db, warehouse, db,
    )
    return warehouse


def _keep_if_changed(analyst: Path, warehouse: Path) -> Path | None:
    """An analyst copy that someone wrote into (a read-write session, another tool) is kept
    beside it instead of being replaced unseen; its WAL goes with it, because a WAL left beside
    the new copy would make DuckDB refuse to open it ("WAL does not match database file")."""
    exists, wal = analyst.exists(), _wal(analyst)
    if not wal.exists() and (not exists or _identity(analyst) in _written(warehouse)):
        return None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    kept = analyst.with_name(f"{analyst.name}.changed-{stamp}-{secrets.token_hex(2)}")
    if exists:
        try:
            os.link(analyst, kept)  # the same file under a second name: no copy
        except OSError:
            shutil.copy2(analyst, kept)
    if wal.exists():
        os.replace(wal, _wal(kept))
    log.warning(
        "%s was changed since recfusion last wrote it (a session that wrote into it?): kept "
        "as %s. The analyst copy is replaced by every run; open it read-only, and write "
        "elsewhere", analyst, kept,
    )
    return kept


def _check_opens(path: Path) -> None:
    try:
        with duckdb.connect(str(path), read_only=True) as con:
            con.execute("SELECT count(*) FROM duckdb_tables()").fetchall()
    except duckdb.Error as exc:
        raise AnalystCopyFailed(
            f"the new analyst copy {path} does not open: {_one_line(exc)}"
        ) from exc


def refresh_analyst_copy(db: str | Path) -> Refresh:
    """Replace the analyst copy by the warehouse as it is now; call under the run lock.

    CHECKPOINT puts every commit into the warehouse file, which is copied while our connection
    keeps any other writer out; the copy is flushed and renamed over the analyst copy, so a
    reader sees the old file or the new one, whole, and a crash before the rename leaves the
    analyst copy exactly as it was. Sessions open on the old copy keep reading it.
    """
    analyst, warehouse = real_path(db), warehouse_path(db)
    if not warehouse.exists():
        raise AnalystCopyFailed(f"no warehouse at {warehouse} to refresh the analyst copy {db}")
    started = time.monotonic()
    mode = _mode(analyst) or _mode(warehouse) or 0o644
    tmp: Path | None = None
    try:
        with connect(warehouse) as con:
            con.execute("CHECKPOINT")
            tmp, method = _copy_to_temp(
                warehouse, analyst.parent, f".{analyst.name}.", _REFRESHING, mode
            )
        _check_opens(tmp)
        kept = _keep_if_changed(analyst, warehouse)
        new = _identity(tmp)
        still = [] if kept or not analyst.exists() else [_identity(analyst)]
        _set_written(warehouse, [new, *still])  # a kill around the rename leaves either
        fault_point("refresh:before_rename")
        os.replace(tmp, analyst)
        tmp = None
        _fsync_dir(analyst.parent)
        _set_written(warehouse, [new])
    except OSError as exc:
        raise AnalystCopyFailed(
            f"could not refresh the analyst copy {db} from {warehouse}: {exc.strerror or exc}"
        ) from exc
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    done = Refresh(analyst, method, new[1], time.monotonic() - started, kept)
    log.info(
        "analyst copy %s refreshed: %.1f MB by %s in %.2f s",
        analyst, done.size / 1e6, done.method, done.seconds,
    )
    return done
