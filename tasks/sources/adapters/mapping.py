"""Column mappings: read an export whose columns are named differently as if it were the contract.

Why: a CSV/Parquet/JSON Lines export (`customer`, `sku`, `ordered_at`) should not need code. The
mapping renames columns as the files are read, so ingest validates, quarantines (row numbers and
files as in the export) and deduplicates exactly as for a folder in the contract.

Syntax, on the command line (`--map`, repeatable, pairs separated by commas):
- `user_id=customer`: the contract column `user_id` is the file's column `customer`;
- `event_type==purchase`: `event_type` is the constant `purchase` on every row (for a column the
  export lacks);
- `items.title=name`: a column of another table (`items.`, `users.`, `social.`); without a table
  the column is one of `events`.
In a mapping file (`--map-file mapping.json`): `{"events": {"user_id": "customer", "event_type":
"=purchase"}, "items": {"title": "name"}}`, or the flat form `{"user_id": "customer"}` for events
only; a value starting with `=` is a constant there too. Flags and the file merge; where both map
one column they must agree.

A file column whose name the mapping gives to another column (the export's own `user_id` when
`user_id=customer`) is ignored, with a warning. A mapping that names a column the file lacks, or
leaves a required column unmapped, is a `MappingError` naming the file and column.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from tasks.sources.adapters.common import log, write_source
from tasks.sources.contract import (
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    SIDE_TABLE_VALIDATORS,
    Validated,
    validate_events,
)
from tasks.sources.files import (
    ROW,
    TABLES,
    RawTable,
    SourceError,
    find_table_files,
    read_table_file,
    unrecognised_files,
)

EXAMPLE = "user_id=customer"


class MappingError(ValueError):
    """A mapping that is malformed or does not fit the files: one line naming what is wrong."""


@dataclass(frozen=True)
class Constant:
    """A value every row gets, for a column the export lacks."""

    value: str


@dataclass(frozen=True)
class Mapped:
    """Where one contract column comes from, and how the user wrote it (for messages)."""

    source: str | Constant
    origin: str  # e.g. "--map user_id=customer" or "mapping file m.json: events.user_id"

    def shown(self) -> str:
        return f"={self.source.value}" if isinstance(self.source, Constant) else self.source


#: table -> contract column -> where it comes from
ColumnMapping = dict[str, dict[str, Mapped]]


def _target(table: str, column: str, origin: str) -> None:
    """Contract tables take their own columns; users take any attribute name."""
    if not column:
        raise MappingError(f"{origin}: no column name to map to")
    if table == "users":
        return
    known = (*REQUIRED_COLUMNS[table], *OPTIONAL_COLUMNS[table])
    if column not in known:
        hint = "" if table != "events" else "; use TABLE.COLUMN for items, users or social"
        raise MappingError(
            f"{origin}: {column!r} is not a column of {table} ({', '.join(known)}){hint}"
        )


def _source(text: str, origin: str) -> str | Constant:
    if text.startswith("="):
        if text == "=":
            raise MappingError(f"{origin}: the constant after '==' is empty")
        return Constant(text[1:])
    if not text.strip():
        raise MappingError(f"{origin}: no file column after '='")
    return text.strip()


def _add(mapping: ColumnMapping, table: str, column: str, mapped: Mapped) -> None:
    _target(table, column, mapped.origin)
    if column in mapping.setdefault(table, {}):
        raise MappingError(f"{mapped.origin}: {table}.{column} is mapped twice")
    mapping[table][column] = mapped


def parse_map_args(values: Iterable[str]) -> ColumnMapping:
    """`--map` values (each `TARGET=COLUMN,TARGET==VALUE,…`) as a mapping."""
    mapping: ColumnMapping = {}
    for value in values:
        for pair in value.split(","):
            if not pair.strip():
                continue
            origin = f"--map {pair.strip()}"
            target, sep, source = pair.partition("=")
            if not sep:
                raise MappingError(
                    f"{origin}: expected TARGET=COLUMN (e.g. {EXAMPLE}), or TARGET==VALUE for a "
                    "constant"
                )
            table, dot, column = target.strip().partition(".")
            if not dot or table not in TABLES:
                table, column = "events", target.strip()
            _add(mapping, table, column.strip(), Mapped(_source(source, origin), origin))
    return mapping


def read_map_file(path: str | Path) -> ColumnMapping:
    """A mapping file's JSON object (nested by table, or flat for events) as a mapping."""
    shown = f"mapping file {path}"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"), object_pairs_hook=_no_repeats)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise MappingError(f"cannot read {shown}: {reason}") from None
    except json.JSONDecodeError as exc:
        raise MappingError(f"{shown} is not valid JSON: {exc}") from None
    except _Repeated as exc:
        raise MappingError(f"{shown}: key {exc} given twice") from None
    return read_map_data(data, shown)


def read_map_data(data: Any, shown: str = "mapping") -> ColumnMapping:
    """A mapping from its JSON form (a `--map-file`'s content, or one logged beside a warehouse)."""
    if not isinstance(data, dict):
        raise MappingError(
            f'{shown} must hold a JSON object like {{"events": {{"user_id": "customer"}}}}, not a '
            f"JSON {type(data).__name__}"
        )
    nested = {k: v for k, v in data.items() if isinstance(v, dict)}
    if nested and len(nested) < len(data):
        flat = next(k for k in data if k not in nested)
        raise MappingError(
            f"{shown}: mixes tables and columns at the top level ({flat!r}); nest every column "
            f"under its table, e.g. {{\"events\": {{{json.dumps(flat)}: ...}}}}"
        )
    tables: dict[str, Any] = nested if nested else {"events": data}
    mapping: ColumnMapping = {}
    for table, columns in tables.items():
        if table not in TABLES:
            raise MappingError(f"{shown}: {table!r} is not a table ({', '.join(TABLES)})")
        for column, source in columns.items():
            origin = f"{shown}: {table}.{column}"
            if not isinstance(source, str):
                raise MappingError(
                    f"{origin} must be a file column name (or \"=VALUE\" for a constant), not "
                    f"{json.dumps(source)}"
                )
            _add(mapping, table, column.strip(), Mapped(_source(source, origin), origin))
    return mapping


class _Repeated(Exception):
    pass


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise _Repeated(", ".join(repeated))
    return dict(pairs)


def load_mapping(values: Iterable[str] = (), path: str | Path | None = None) -> ColumnMapping:
    """`--map` values and a `--map-file`, merged; a column both map differently is an error."""
    flags = parse_map_args(values)
    if path is None:
        return flags
    merged = read_map_file(path)
    conflicts = []
    for table, columns in flags.items():
        for column, mapped in columns.items():
            other = merged.setdefault(table, {}).get(column)
            if other is not None and other.source != mapped.source:
                conflicts.append(f"{mapped.origin} and {other.origin}={other.shown()} disagree")
            merged[table][column] = mapped
    if conflicts:
        raise MappingError("; ".join(conflicts))
    return merged


def describe(mapping: ColumnMapping) -> dict[str, dict[str, str]]:
    """The mapping in its file form (what `convert mapped` records next to its output)."""
    return {
        table: {column: m.shown() for column, m in columns.items()}
        for table, columns in mapping.items()
    }


# --- applying it -------------------------------------------------------------------------------


def apply_mapping(raw: RawTable, table: str, mapping: Mapping[str, Mapped]) -> RawTable:
    """The file's rows with the mapped columns renamed (or added, for constants)."""
    for mapped in mapping.values():
        if isinstance(mapped.source, str) and mapped.source not in raw.columns:
            raise MappingError(
                f"{mapped.origin}: {raw.path} has no column {mapped.source!r} "
                f"(its columns: {', '.join(raw.columns) or 'none'})"
            )
    columns: dict[str, pl.Expr] = {}
    types: dict[str, str] = {}
    shadowed = []
    for name in raw.columns:
        targets = [t for t, m in mapping.items() if m.source == name]
        for target in targets:
            columns[target] = pl.col(name)
            if name in raw.json_types:
                types[target] = raw.json_types[name]
        if not targets and name in mapping:
            shadowed.append(f"{raw.path}: column {name!r} ignored ({mapping[name].origin} "
                            "takes its place)")
        elif not targets:
            columns[name] = pl.col(name)
            if name in raw.json_types:
                types[name] = raw.json_types[name]
    for target, mapped in mapping.items():
        if isinstance(mapped.source, Constant):
            columns[target] = pl.lit(mapped.source.value, pl.String)
    missing = [c for c in REQUIRED_COLUMNS[table] if c not in columns]
    if missing:
        raise MappingError(
            f"{raw.path}: no column {', '.join(repr(c) for c in missing)} after the mapping "
            f"(map it: {missing[0]}=COLUMN, or {missing[0]}==VALUE for a constant; the file has: "
            f"{', '.join(raw.columns) or 'no columns'})"
        )
    helpers = sorted(set(raw.json_types.values()))
    frame = raw.frame.select(
        pl.col(ROW), *[expr.alias(name) for name, expr in columns.items()], *helpers
    )
    return replace(
        raw, frame=frame, columns=list(columns), json_types=types,
        warnings=[*raw.warnings, *shadowed],
    )


def _mapped_tables(source_dir: Path, mapping: ColumnMapping) -> dict[str, RawTable]:
    """Every table file of the folder, read and mapped."""
    files = find_table_files(source_dir)
    for table, columns in mapping.items():
        if table not in files and columns:
            first = next(iter(columns.values()))
            raise MappingError(f"{first.origin}: {source_dir} has no {table} file")
    out = {}
    for table, path in files.items():
        raw = read_table_file(path)
        out[table] = apply_mapping(raw, table, mapping[table]) if mapping.get(table) else raw
    return out


def _validate(table: str, raw: RawTable, now: datetime | None) -> Validated:
    """As `tasks.sources.ingest.read_source` validates a file.

    A validator's bug still names the file.
    """
    try:
        if table == "events":
            return validate_events(raw, now)
        return SIDE_TABLE_VALIDATORS[table](raw)
    except SourceError:
        raise
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise SourceError(
            f"{raw.path}: could not be validated ({type(exc).__name__}: {detail})"
        ) from exc


def read_mapped_source(
    source_dir: Path, mapping: ColumnMapping, now: datetime | None = None
) -> dict[str, Validated]:
    """`tasks.sources.ingest.read_source` for a folder whose columns the mapping renames."""
    source_dir = Path(source_dir)
    raws = _mapped_tables(source_dir, mapping)
    validated = {table: _validate(table, raw, now) for table, raw in raws.items()}
    validated["events"].warnings[:0] = unrecognised_files(
        source_dir, {table: raw.path for table, raw in raws.items()}
    )
    return validated


def convert_mapped(src_dir: Path, out_dir: Path, mapping: ColumnMapping) -> dict[str, int]:
    """Write the mapped tables of `src_dir` as a source folder (values as read, not judged).

    For `recfusion run`, which ingests a folder in the contract. Values are passed through for
    ingest to validate and quarantine; only a row that cannot even be split into fields (a
    ragged CSV line, a JSON line that is not an object) cannot be carried over: it is left out
    with a warning naming its file and rows (`recfusion ingest --map` quarantines those).
    """
    src_dir = Path(src_dir)
    raws = _mapped_tables(src_dir, mapping)
    tables = {}
    for table, raw in raws.items():
        for warning in raw.warnings:
            log.warning(warning)
        if raw.rejected.height:
            rows = raw.rejected["row_number"]
            shown = ", ".join(str(n) for n in rows.head(5).to_list())
            log.warning(
                f"{raw.path}: {rows.len()} row(s) could not be split into fields and are left out "
                f"(row {shown}{' …' if rows.len() > 5 else ''}: {raw.rejected['reason'][0]}); "
                "recfusion ingest --map quarantines them instead"
            )
        tables[table] = raw.frame.select(raw.columns)
    return write_source(
        out_dir, tables, {"format": "mapped", "src": str(src_dir), "mapping": describe(mapping)}
    )
