"""DuckDB access: connections, schema, and the one-writer-at-a-time run lock.

DuckDB lets only one process hold a database file for writing, and while it does no other process
can even read it. So connections here are short-lived (open, write, close), and a separate lock
file serialises whole runs so two runs never interleave their writes.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import duckdb


class RunLockTimeout(RuntimeError):
    """Another run holds the database; raised after waiting `timeout` seconds."""


def read_sql(name: str) -> str:
    """Load a `.sql` file shipped in the `sql` package (e.g. 'schema.sql', 'queries/x.sql')."""
    return resources.files("sql").joinpath(name).read_text(encoding="utf-8")


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


@contextmanager
def connect(
    db_path: str | Path, read_only: bool = False, retries: int = 20, wait_seconds: float = 0.5
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short-lived connection; retries while another process (an analyst) holds the file."""
    db_path = Path(db_path)
    if not read_only:
        db_path.parent.mkdir(parents=True, exist_ok=True)
    last_error: Exception | None = None
    for _ in range(max(1, retries)):
        try:
            con = duckdb.connect(str(db_path), read_only=read_only)
            break
        except duckdb.IOException as exc:  # file locked by another process
            last_error = exc
            time.sleep(wait_seconds)
    else:
        raise RuntimeError(f"cannot open database {db_path}: {last_error}") from last_error
    try:
        yield con
    finally:
        con.close()


def apply_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(read_sql("schema.sql"))
    con.execute(read_sql("views.sql"))


def lock_path(db_path: str | Path) -> Path:
    return Path(f"{db_path}.lock")


@contextmanager
def run_lock(db_path: str | Path, timeout: float = 0.0) -> Iterator[None]:
    """Hold an exclusive OS lock for a whole run; wait up to `timeout` seconds for it.

    An OS lock (flock) is released by the kernel when the process dies, so a killed run never
    leaves a stale lock behind.
    """
    path = lock_path(db_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
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
                        f"another recfusion run is using {db_path} ({holder or 'unknown run'}); "
                        f"waited {timeout:.0f}s — retry later or raise --lock-timeout"
                    ) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
