"""What can be wrong with a database file, as errors an operator reads in one line.

Kept apart from `connection` so the modules that open, copy, verify and restore databases can
all raise and recognise them without importing each other.
"""

from __future__ import annotations

import re
from pathlib import Path


class RunLockTimeout(RuntimeError):
    """Another run holds the database; raised after waiting `timeout` seconds."""


class DatabaseBusy(RuntimeError):
    """Another process holds the DuckDB file (e.g. an analyst's session); may clear by itself."""


class DatabaseUnusable(RuntimeError):
    """The database file cannot be opened at all (not a database, corrupt, no permission, …)."""


class DatabaseDamaged(DatabaseUnusable):
    """A DuckDB file that is not whole: truncated, or a block whose checksum fails when read.

    Waiting or retrying cannot help, and copying it on would spread the damage, so the message
    names the file and the command that recovers (`recfusion restore`).
    """

    def __init__(self, path: Path, detail: str) -> None:
        self.path, self.detail = Path(path), detail
        super().__init__(damage_message(Path(path), detail))


class AnalystCopyFailed(DatabaseUnusable):
    """The analyst copy could not be replaced (disk full, permission); the warehouse is intact,
    analysts keep the previous copy, and the next command that changes the warehouse retries."""


class AnalystCopyUnwritable(DatabaseUnusable):
    """Found before a command starts its work: the analyst copy could not be replaced at its end
    (its folder is not writable, or its disk has no room for the copy)."""


#: What DuckDB says when it reads a file that is not whole. A block's checksum is verified each
#: time the block is read; a truncated file fails to read its missing blocks; damaged metadata
#: fails to deserialise; and after such an error DuckDB may invalidate the database ("FATAL").
_DAMAGE = re.compile(
    r"Corrupt database file|does not match stored checksum|Could not read enough bytes"
    r"|Failed to (?:read|deserialize)|database has been invalidated"
    r"|block .* (?:out of range|not found)|Serialization Error|INTERNAL Error|FATAL Error"
    r"|unexpected end of file|truncated",
    re.IGNORECASE,
)


def is_damage(exc: BaseException) -> bool:
    """Does this DuckDB error mean the file itself is damaged (not busy, not a mistake in SQL)?"""
    return bool(_DAMAGE.search(str(exc)))


def is_foreign(exc: BaseException) -> bool:
    """DuckDB does not recognise the file as a database at all (its header is not DuckDB's)."""
    return "not a valid DuckDB database" in str(exc)


def made_by_us(path: Path) -> bool:
    """A warehouse, or an analyst copy (its warehouse records writing it): a file recfusion
    wrote, so one DuckDB no longer recognises is damaged, not a wrong path."""
    record = path.with_name(path.name + WAREHOUSE_DIR_SUFFIX) / ANALYST_COPY_RECORD
    return analyst_copy_of(path) is not None or record.exists()


def damage_detail(exc: BaseException) -> str:
    """DuckDB's message on one line, without its error-class prefix, shortened."""
    text = " ".join(str(exc).split())
    text = re.sub(r"^(?:[A-Z][A-Za-z ]*Error: )+", "", text)
    return text if len(text) <= 200 else text[:199] + "…"


#: The private warehouse of the analyst copy `<db>` is `<db>.warehouse/warehouse.duckdb`.
WAREHOUSE_DIR_SUFFIX = ".warehouse"
WAREHOUSE_FILE = "warehouse.duckdb"
#: Beside the warehouse: which analyst copies recfusion wrote (`tasks.warehouse.analyst_copy`).
ANALYST_COPY_RECORD = "analyst-copy.json"


def analyst_copy_of(path: Path) -> Path | None:
    """The analyst copy (`--db`) whose private warehouse `path` is; None for any other file."""
    folder = path.parent
    if path.name == WAREHOUSE_FILE and folder.name.endswith(WAREHOUSE_DIR_SUFFIX):
        return folder.with_name(folder.name[: -len(WAREHOUSE_DIR_SUFFIX)])
    return None


def damage_message(path: Path, detail: str) -> str:
    """One line: which file is damaged, how, and what to type."""
    db = analyst_copy_of(path)
    if db is not None:
        return (
            f"the warehouse {path} is damaged ({detail}); the analyst copy {db} was not "
            f"touched. Recover with: recfusion restore --db {db}"
        )
    return (
        f"database {path} is damaged ({detail}). If it is a recfusion analyst copy, recover "
        f"with: recfusion restore --db {path}"
    )
