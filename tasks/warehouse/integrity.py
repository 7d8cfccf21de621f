"""Copies of a database that are known to read whole.

DuckDB verifies a block's checksum each time it reads the block, and fails on a block a
truncated file lacks. A byte copy reads nothing, so it carries damage on unseen; DuckDB's own
`COPY FROM DATABASE` reads every table whole (every column of every row group) and writes a
fresh file, so a copy that finishes proves the data read whole, and the new file shares no
damaged block with the old one (indexes are rebuilt, free blocks left behind). It is also
compact: what old runs freed is not copied.
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb

from tasks.warehouse.errors import DatabaseDamaged, damage_detail, is_damage

_COPY_ALIAS = "recfusion_verified_copy"
#: DuckDB's working memory while copying. Unset, it is 80 % of the machine's RAM, and the copy of
#: a 1.2 GB warehouse (50M events) held 2.7 GB; at 1 GB it held 1.15 GB in the same 32 s.
COPY_MEMORY_LIMIT = "1GB"


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    fsync_file(folder)


def _literal(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def copy_verified(con: duckdb.DuckDBPyConnection, source: Path, target: Path) -> None:
    """Write `target` (a new file) with everything in `con`'s database, read whole.

    `source` names that database in the error when a block does not read (`DatabaseDamaged`).
    `con` is a connection opened for the copy: it keeps `COPY_MEMORY_LIMIT` afterwards (DuckDB
    shows a limit rounded, so the caller's could not be given back exactly).
    The new file is checkpointed and flushed to disk before this returns.
    """
    [(name,)] = con.execute("SELECT current_database()").fetchall()
    con.execute(f"SET memory_limit = '{COPY_MEMORY_LIMIT}'")  # for good: a connection of its own
    con.execute(f"ATTACH {_literal(target)} AS {_COPY_ALIAS} (READ_WRITE)")
    try:
        quoted = '"' + str(name).replace('"', '""') + '"'
        con.execute(f"COPY FROM DATABASE {quoted} TO {_COPY_ALIAS}")
        con.execute(f"CHECKPOINT {_COPY_ALIAS}")
    except duckdb.Error as exc:
        if is_damage(exc):
            raise DatabaseDamaged(source, damage_detail(exc)) from exc
        raise
    finally:
        con.execute(f"DETACH {_COPY_ALIAS}")
    fsync_file(target)


def verify_readable(path: Path) -> None:
    """Open `path` read-only and read its catalog: the least a new analyst copy must do."""
    with duckdb.connect(str(path), read_only=True) as con:
        con.execute("SELECT count(*) FROM duckdb_tables()").fetchall()
