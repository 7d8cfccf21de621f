"""`recfusion restore`: a damaged warehouse rebuilt from the last verified state.

The analyst copy is only ever replaced by a copy that DuckDB read whole, so it is the last
verified state of the warehouse. Restore checks both files by reading them whole, and:

- the warehouse reads whole, the analyst copy not: the analyst copy is made again from it;
- the warehouse is damaged (or gone), the analyst copy reads whole: the warehouse becomes a copy
  of it; what the warehouse gained after that copy (a run that failed to show, rows ingested
  since) is lost, and a re-run or re-ingest brings it back;
- both are damaged: the raw tables come back by ingesting the logged source folders again (or
  the `--source` folders given); published history (runs, lists, candidates, metrics, checks,
  tuning results) cannot come back.

Damaged files are kept beside, renamed `…damaged-<time>`, never deleted.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tasks.warehouse.analyst_copy import (
    refresh_analyst_copy,
    wal_of,
    warehouse_path,
)
from tasks.warehouse.connection import apply_schema, connect, real_path, run_lock
from tasks.warehouse.errors import DatabaseDamaged, DatabaseUnusable
from tasks.warehouse.integrity import copy_verified, fsync_dir
from tasks.warehouse.runs import new_run_id
from tasks.warehouse.source_log import LoggedSource, logged_sources, note_source


class RestoreImpossible(DatabaseUnusable):
    """Nothing verified is left to rebuild from: the operator must name the sources."""


@dataclass
class Restored:
    """What a restore did, as the lines the command prints."""

    action: str  # "none", "analyst copy", "warehouse", "sources"
    lines: list[str] = field(default_factory=list)


def damage_of(path: Path) -> str | None:
    """Why `path` does not read whole, or None when DuckDB read every table of it.

    The proof is a full copy (`copy_verified`) into a temporary file that is then removed.
    """
    if not path.exists():
        return "missing"
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.verifying")
    try:
        with connect(path, read_only=True, retries=1) as con:
            copy_verified(con, path, tmp)
        return None
    except DatabaseDamaged as exc:
        return f"damaged: {exc.detail}"
    except DatabaseUnusable as exc:
        return f"unusable: {exc}"
    finally:
        tmp.unlink(missing_ok=True)
        wal_of(tmp).unlink(missing_ok=True)


def _set_aside(path: Path, stamp: str) -> Path | None:
    """Rename a damaged file (and its WAL) out of the way, keeping it for inspection."""
    if not path.exists():
        return None
    kept = path.with_name(f"{path.name}.damaged-{stamp}")
    os.replace(path, kept)
    if wal_of(path).exists():
        os.replace(wal_of(path), wal_of(kept))
    return kept


def _last_run(path: Path) -> str:
    with connect(path, read_only=True) as con:
        rows = con.execute(
            "SELECT run_id, status, coalesce(finished_at, started_at) FROM runs "
            "ORDER BY started_at DESC LIMIT 1"
        ).fetchall() if con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'runs'"
        ).fetchone() == (1,) else []
    if not rows:
        return "no run yet"
    run_id, status, at = rows[0]
    return f"last run {run_id}, {status}, {at:%Y-%m-%d %H:%M} UTC" if at else f"last run {run_id}"


def _from_analyst_copy(analyst: Path, warehouse: Path) -> None:
    tmp = warehouse.with_name(f"{warehouse.name}.{secrets.token_hex(4)}.restoring")
    try:
        with connect(analyst, read_only=True) as con:
            copy_verified(con, analyst, tmp)
        os.replace(tmp, warehouse)
        fsync_dir(warehouse.parent)
    finally:
        tmp.unlink(missing_ok=True)
        wal_of(tmp).unlink(missing_ok=True)


def _from_sources(db: str | Path, warehouse: Path, sources: list[LoggedSource]) -> list[str]:
    from tasks.sources.ingest import load_source, read_source

    lines = []
    with connect(warehouse) as con:
        apply_schema(con)
        for source in sources:
            if source.mapping:
                from tasks.sources.adapters.mapping import read_map_data, read_mapped_source

                validated = read_mapped_source(source.folder, read_map_data(source.mapping))
            else:
                validated = read_source(source.folder)
            report = load_source(con, validated, new_run_id())
            added = sum(report.added.values())
            lines.append(f"re-ingested {source.folder}: {added:,} rows")
    for source in sources:
        if not source.ingested_at:  # named on the command line: logged from now on
            note_source(db, source.folder)
    return lines


def restore(
    db: str | Path, sources: list[Path] | None = None, lock_timeout: float = 0.0
) -> Restored:
    """Rebuild whichever of the warehouse and the analyst copy is damaged; see the module."""
    analyst, warehouse = real_path(db), warehouse_path(db)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    with run_lock(db, lock_timeout, holder="restore"):
        warehouse.parent.mkdir(parents=True, exist_ok=True)
        warehouse_damage = damage_of(warehouse)
        analyst_damage = damage_of(analyst)
        if warehouse_damage is None and analyst_damage is None:
            return Restored("none", [f"{warehouse} and {analyst} both read whole: nothing to "
                                     "restore"])
        if warehouse_damage is None:
            kept = _set_aside(analyst, stamp)
            refresh_analyst_copy(db)
            return Restored("analyst copy", [
                f"the analyst copy {analyst} was {analyst_damage}; made again from "
                f"the warehouse {warehouse}, which reads whole",
                *([f"the damaged copy is kept as {kept}"] if kept else []),
            ])
        if analyst_damage is None:
            kept = _set_aside(warehouse, stamp)
            _from_analyst_copy(analyst, warehouse)
            return Restored("warehouse", [
                f"the warehouse {warehouse} was {warehouse_damage}; rebuilt from the analyst "
                f"copy {analyst} ({_last_run(analyst)})",
                "lost: what the warehouse gained after that copy was made, if anything (a run "
                "that did not reach the analyst copy, rows ingested since); `recfusion ingest` "
                "or `recfusion run` brings it back",
                *([f"the damaged warehouse is kept as {kept}"] if kept else []),
            ])
        todo = [LoggedSource(Path(s).resolve(), None, "") for s in sources or []] or (
            logged_sources(db)
        )
        missing = [s.folder for s in todo if not s.folder.is_dir()]
        if not todo or missing:
            why = (f"the logged source folder(s) {', '.join(map(str, missing))} are gone"
                   if missing else "no source folder is logged for it")
            raise RestoreImpossible(
                f"the warehouse {warehouse} ({warehouse_damage}) and the analyst copy "
                f"{analyst} ({analyst_damage}) are both unusable, and {why}: name the folders to "
                f"rebuild the raw tables from: recfusion restore --db {db} --source DIR"
            )
        kept_paths = [p for p in (_set_aside(warehouse, stamp), _set_aside(analyst, stamp)) if p]
        lines = _from_sources(db, warehouse, todo)
        refresh_analyst_copy(db)
        return Restored("sources", [
            f"both the warehouse and the analyst copy were damaged: rebuilt {db} by ingesting "
            f"{len(todo)} source folder(s) again, as the files are now",
            *lines,
            "cannot come back: the published history (runs, recommendations, candidates, "
            "metrics, checks, tuning results); `recfusion run --source …` publishes again",
            *(f"the damaged file is kept as {p}" for p in kept_paths),
        ])
