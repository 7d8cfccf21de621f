"""Which source folders built a warehouse, kept beside it in plain JSON (not inside DuckDB).

When both the warehouse and its analyst copy are damaged, the raw tables can still come back by
ingesting these folders again, in the order they were last ingested (`recfusion restore`).
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tasks.warehouse.analyst_copy import warehouse_path

SOURCE_LOG = "sources.json"


@dataclass(frozen=True)
class LoggedSource:
    folder: Path
    #: A column mapping as a `--map-file` holds it (table -> column -> source or "=constant").
    mapping: dict[str, dict[str, str]] | None
    ingested_at: str


def _path(db: str | Path) -> Path:
    return warehouse_path(db).parent / SOURCE_LOG


def logged_sources(db: str | Path) -> list[LoggedSource]:
    """The folders, oldest ingest first; [] when none were logged (or the log is unreadable)."""
    try:
        entries = json.loads(_path(db).read_text(encoding="utf-8"))["sources"]
        return [LoggedSource(Path(e["folder"]), e.get("mapping"), str(e["ingested_at"]))
                for e in entries]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def mapping_as_json(mapping: Any) -> dict[str, dict[str, str]] | None:
    """A `ColumnMapping` in the `--map-file` form (constants as "=value")."""
    if not mapping:
        return None
    out: dict[str, dict[str, str]] = {}
    for table, columns in mapping.items():
        for column, mapped in columns.items():
            source = mapped.source
            out.setdefault(table, {})[column] = (
                f"={source.value}" if hasattr(source, "value") else str(source)
            )
    return out


def note_source(db: str | Path, folder: Path, mapping: Any = None) -> None:
    """Log an ingest of `folder` (call under the run lock, after its commit); atomic."""
    entry = {"folder": str(Path(folder).resolve()), "mapping": mapping_as_json(mapping),
             "ingested_at": datetime.now(UTC).isoformat(timespec="seconds")}
    kept = [
        {"folder": str(s.folder), "mapping": s.mapping, "ingested_at": s.ingested_at}
        for s in logged_sources(db)
        if (str(s.folder), s.mapping) != (entry["folder"], entry["mapping"])
    ]
    path = _path(db)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{SOURCE_LOG}.{secrets.token_hex(4)}.tmp")
    tmp.write_text(json.dumps({"sources": [*kept, entry]}, indent=1), encoding="utf-8")
    os.replace(tmp, path)
