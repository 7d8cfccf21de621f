"""The analyst copy: the file at `--db`, replaced whole after each command that changed the
warehouse, and only by a copy known to read whole.

DuckDB lets only one process hold a database file for writing, and while it does no other
process can even read it. So commands read and write a private warehouse beside the path a user
gives (`<db>.warehouse/warehouse.duckdb`), and at the end of every command that changed it the
analyst copy is replaced by a fresh copy (`refresh_analyst_copy`), made by DuckDB reading every
table of the warehouse (`integrity.copy_verified`): a damaged warehouse fails that read, and the
analyst copy stays as it was — the last verified state, from which `recfusion restore` rebuilds.
A session open on the analyst copy keeps reading the old file (the kernel keeps its inode).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import struct
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from tasks.fault_injection import fault_error, fault_point
from tasks.warehouse.connection import connect, real_path
from tasks.warehouse.errors import (
    ANALYST_COPY_RECORD,
    WAREHOUSE_DIR_SUFFIX,
    WAREHOUSE_FILE,
    AnalystCopyFailed,
    AnalystCopyUnwritable,
    DatabaseDamaged,
    DatabaseUnusable,
)
from tasks.warehouse.integrity import copy_verified, fsync_dir, verify_readable

log = logging.getLogger(__name__)

#: The analyst copies recfusion wrote (size and a digest of DuckDB's headers): anything else
#: was changed by someone. DuckDB rewrites a header at every checkpoint, so a session that wrote
#: into the file changes the digest; a restored copy (`cp -a`: same bytes, new inode) does not.
_WRITTEN = ANALYST_COPY_RECORD
_REFRESHING = ".refreshing"  # `.<db name>.<hex>.refreshing`: a copy on its way to the analyst copy
_ADOPTING = ".adopting"  # `warehouse.duckdb.<hex>.adopting`: an old database on its way in
_HEADER_BYTES = 3 * 4096  # DuckDB's file header and its two database headers
#: Room the disk must have before a command starts: the copy is at most the warehouse's size,
#: and a run adds its outputs to the warehouse on the same disk.
ROOM_FACTOR = 1.25
ROOM_MINIMUM = 16 << 20


@dataclass(frozen=True)
class Refresh:
    """One replacement of the analyst copy, for the log and the cost report."""

    path: Path
    method: str  # how the copy was made: "verified copy" (DuckDB read every table)
    size: int  # bytes of the new analyst copy
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


def wal_of(path: Path) -> Path:
    return Path(f"{path}.wal")


# --------------------------------------------------------------------------- what we wrote


def _identity(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        header = f.read(_HEADER_BYTES)
    return {"size": path.stat().st_size, "header": hashlib.sha256(header).hexdigest()}


def _written(warehouse: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads((warehouse.parent / _WRITTEN).read_text(encoding="utf-8"))
        return [w for w in data["written"] if isinstance(w, dict)]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _set_written(warehouse: Path, identities: list[dict[str, Any]]) -> None:
    """Atomically: a kill leaves the old record or the new one, never half of one."""
    path = warehouse.parent / _WRITTEN
    tmp = path.with_name(f"{_WRITTEN}.{secrets.token_hex(4)}.tmp")
    tmp.write_text(json.dumps({"written": identities}), encoding="utf-8")
    os.replace(tmp, path)


def writer_of(path: Path) -> int | None:
    """The process holding `path` open for writing (DuckDB locks a file it opens read-write),
    or None. A read-only session does not count: it only ever reads the file it opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        layout = "hhxxxxqqixxxx"  # struct flock on Linux: type, whence, start, len, pid
        asked = struct.pack(layout, fcntl.F_RDLCK, os.SEEK_SET, 0, 0, 0)
        kind, _, _, _, pid = struct.unpack(layout, fcntl.fcntl(fd, fcntl.F_GETLK, asked))
        return int(pid) if kind != fcntl.F_UNLCK else None
    except OSError:
        return None
    finally:
        os.close(fd)


def _keep_if_changed(analyst: Path, warehouse: Path) -> Path | None:
    """An analyst copy that someone wrote into (a read-write session, another tool) is kept
    beside it instead of being replaced unseen; its WAL goes with it, because a WAL left beside
    the new copy would make DuckDB refuse to open it ("WAL does not match database file")."""
    exists, wal = analyst.exists(), wal_of(analyst)
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
        os.replace(wal, wal_of(kept))
    log.warning(
        "%s was changed since recfusion last wrote it (a session that wrote into it?): kept "
        "as %s. The analyst copy is replaced by every run; open it read-only, and write "
        "elsewhere", analyst, kept,
    )
    return kept


# --------------------------------------------------------------------------- leftovers, adoption


def _remove_leftovers(analyst: Path, warehouse: Path) -> None:
    """What a refresh or an adoption killed half-way left behind (only under the run lock)."""
    leftovers = [
        *analyst.parent.glob(f".{analyst.name}.*{_REFRESHING}"),
        *warehouse.parent.glob(f"{WAREHOUSE_FILE}.*{_ADOPTING}"),
        *warehouse.parent.glob(f"{_WRITTEN}.*.tmp"),
    ]
    for path in leftovers:
        path.unlink(missing_ok=True)
        wal_of(path).unlink(missing_ok=True)


def _temp_name(folder: Path, prefix: str, suffix: str) -> Path:
    return folder / f"{prefix}{secrets.token_hex(4)}{suffix}"


def _read_only_mode(mode: int) -> int:
    """The analyst copy is published without write permission: a session that opens it for
    writing (the DuckDB CLI's default) is refused by the OS instead of writing into a file the
    next run replaces. (root ignores the mode: `_keep_if_changed` and `writer_of` cover it.)"""
    return mode & ~0o222


def open_warehouse(db: str | Path) -> Path:
    """The private warehouse, ready to connect to; call under the run lock.

    A database from before the analyst copy existed (the user's path holds the data and there
    is no warehouse yet) is adopted: copied in whole by DuckDB reading every table, so nothing
    in it is lost and damage in it is found, not carried in; from then on that path is the
    analyst copy. Leftovers of a killed refresh or adoption are removed.
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
    tmp = _temp_name(warehouse.parent, f"{WAREHOUSE_FILE}.", _ADOPTING)
    try:
        # Read-write: a WAL a killed process left beside it is replayed into what is copied.
        with connect(analyst) as con:
            copy_verified(con, analyst, tmp)
        _set_written(warehouse, [_identity(analyst)])
        os.replace(tmp, warehouse)
        fsync_dir(warehouse.parent)
    except (OSError, duckdb.Error) as exc:
        tmp.unlink(missing_ok=True)
        raise DatabaseUnusable(
            f"cannot copy database {db} into its warehouse {warehouse}: "
            f"{getattr(exc, 'strerror', None) or exc}"
        ) from exc
    except DatabaseDamaged:
        tmp.unlink(missing_ok=True)
        raise
    log.warning(
        "adopted %s: the data now lives in %s; %s is the analyst copy, replaced by each run",
        db, warehouse, db,
    )
    return warehouse


# --------------------------------------------------------------------------- before and after


def check_room(db: str | Path) -> None:
    """Before a command's long work: can its end replace the analyst copy at all?

    The folder must take a new file (the copy is written beside the analyst copy, then renamed
    over it), and its disk must have room for a copy of the warehouse plus what a run adds:
    `ROOM_FACTOR` × the warehouse's size, at least `ROOM_MINIMUM`. Found here, it costs nothing;
    found at the end, a whole run has published where no analyst can see it.
    """
    analyst, warehouse = real_path(db), warehouse_path(db)
    folder = analyst.parent
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{analyst.name}.probe-"):
            pass
    except OSError as exc:
        raise AnalystCopyUnwritable(
            f"cannot write the analyst copy's folder {folder}: {exc.strerror or exc}; a run there "
            "would publish where no analyst sees it. Make the folder writable, or choose another "
            "--db"
        ) from exc
    size = sum(p.stat().st_size for p in (warehouse, wal_of(warehouse)) if p.exists())
    if not size and analyst.exists():
        size = analyst.stat().st_size  # not adopted yet: the warehouse will be a copy of it
    needed = max(ROOM_MINIMUM, int(size * ROOM_FACTOR))
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise AnalystCopyUnwritable(
            f"not enough disk for the analyst copy in {folder}: {free / 1e6:,.0f} MB free, a "
            f"command on this {size / 1e6:,.0f} MB warehouse needs {needed / 1e6:,.0f} MB "
            f"({ROOM_FACTOR:g} × its size, at least {ROOM_MINIMUM >> 20} MB); free some space"
        )


def refresh_analyst_copy(db: str | Path) -> Refresh:
    """Replace the analyst copy by the warehouse as it is now; call under the run lock.

    DuckDB copies the warehouse into a new file beside the analyst copy, reading every table
    whole (a damaged warehouse raises `DatabaseDamaged` and the analyst copy stays as it was);
    the new file is flushed and renamed over the analyst copy, so a reader sees the old file or
    the new one, whole, and a crash before the rename leaves the analyst copy exactly as it was.
    Sessions open on the old copy keep reading it.
    """
    analyst, warehouse = real_path(db), warehouse_path(db)
    if not warehouse.exists():
        raise AnalystCopyFailed(f"no warehouse at {warehouse} to refresh the analyst copy {db}")
    writer = writer_of(analyst) if analyst.exists() else None
    if writer is not None:
        raise AnalystCopyFailed(
            f"the analyst copy {db} is open for writing by process {writer}: not replaced, so "
            "what it writes is not lost; close that session (open the analyst copy read-only) "
            "and the next command refreshes it"
        )
    started = time.monotonic()
    mode = _read_only_mode(_mode(analyst) or _mode(warehouse) or 0o644)
    tmp: Path | None = _temp_name(analyst.parent, f".{analyst.name}.", _REFRESHING)
    assert tmp is not None
    try:
        fault_error("refresh:copy")
        with connect(warehouse) as con:
            copy_verified(con, warehouse, tmp)
        os.chmod(tmp, mode)
        verify_readable(tmp)
        kept = _keep_if_changed(analyst, warehouse)
        new = _identity(tmp)
        still = [] if kept or not analyst.exists() else [_identity(analyst)]
        _set_written(warehouse, [new, *still])  # a kill around the rename leaves either
        fault_point("refresh:before_rename")
        os.replace(tmp, analyst)
        tmp = None
        fsync_dir(analyst.parent)
        _set_written(warehouse, [new])
    except (OSError, duckdb.Error) as exc:
        raise AnalystCopyFailed(
            f"could not refresh the analyst copy {db} from {warehouse}: "
            f"{getattr(exc, 'strerror', None) or ' '.join(str(exc).split())}"
        ) from exc
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
            wal_of(tmp).unlink(missing_ok=True)
    done = Refresh(analyst, "verified copy", int(new["size"]), time.monotonic() - started, kept)
    log.info(
        "analyst copy %s refreshed: %.1f MB by %s in %.2f s",
        analyst, done.size / 1e6, done.method, done.seconds,
    )
    return done


def _mode(path: Path) -> int | None:
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return None
