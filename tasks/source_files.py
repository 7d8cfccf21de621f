"""Find and read the files of a source folder (Parquet, CSV or JSON Lines, one file per table).

Reading never validates rows: that is `tasks.contract`. A file that cannot be read at all raises
`SourceError` naming the file, so a run stops before it changes anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

TABLES = ("events", "items", "users", "social")
EXTENSIONS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


class SourceError(ValueError):
    """A source file or folder that is unusable as a whole; the message names it and the problem."""


def find_table_files(source_dir: Path) -> dict[str, Path]:
    """Map table name -> file for the tables present; `events` is required."""
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise SourceError(f"source folder {source_dir} does not exist")
    found: dict[str, Path] = {}
    for table in TABLES:
        matches = [
            source_dir / f"{table}{ext}"
            for ext in EXTENSIONS
            if (source_dir / f"{table}{ext}").is_file()
        ]
        if len(matches) > 1:
            names = ", ".join(m.name for m in matches)
            raise SourceError(f"{source_dir}: table '{table}' is given twice ({names}); keep one")
        if matches:
            found[table] = matches[0]
    if "events" not in found:
        raise SourceError(
            f"{source_dir}: no events file (expected events.parquet, events.csv or events.jsonl)"
        )
    return found


def _read_jsonl_as_text(path: Path) -> pl.DataFrame:
    """Fallback for JSON Lines whose columns mix types: every scalar becomes text for validation."""
    rows = []
    with path.open(encoding="utf-8") as fh:
        for line_number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SourceError(
                    f"{path}: line {line_number} is not valid JSON ({exc.msg})"
                ) from exc
            if not isinstance(obj, dict):
                raise SourceError(f"{path}: line {line_number} is not a JSON object")
            rows.append(
                {k: v if isinstance(v, list) or v is None else str(v) for k, v in obj.items()}
            )
    return pl.DataFrame(rows, infer_schema_length=None)


def read_table_file(path: Path) -> pl.DataFrame:
    """Read one table file; CSV is read as text so bad values are quarantined, not guessed."""
    kind = EXTENSIONS.get(path.suffix.lower())
    try:
        if kind == "parquet":
            return pl.read_parquet(path)
        if kind == "csv":
            return pl.read_csv(path, infer_schema=False, encoding="utf8-lossy")
        if kind == "jsonl":
            try:
                return pl.read_ndjson(path, infer_schema_length=None)
            except (
                pl.exceptions.ComputeError,
                pl.exceptions.SchemaError,
                pl.exceptions.InvalidOperationError,
            ):
                return _read_jsonl_as_text(path)
    except SourceError:
        raise
    except Exception as exc:  # any reader failure makes the file unusable as a whole
        raise SourceError(
            f"{path}: cannot be read as {kind} ({type(exc).__name__}: {exc})"
        ) from exc
    raise SourceError(f"{path}: unsupported file type (use .parquet, .csv or .jsonl)")
