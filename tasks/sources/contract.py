"""The input data contract, as code: normalise each table and split good rows from bad ones.

Pure functions over the rows `tasks.sources.files` read. A row that breaks the contract is never
dropped silently: it goes to quarantine with every reason that applies, each naming its column
("ts: unparseable '2024-13-99'"), and its fields as a JSON object (`row_data`; a row that could
not even be split into fields is `{"_raw": "<its text>"}`). A file that cannot be used at all (a
required column is missing, or a Parquet column holds lists where one value is expected) raises
`SourceError` naming the file and column.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
from polars.datatypes import DataTypeClass

from tasks.sources.files import QUARANTINE_SCHEMA, ROW, RawTable, SourceError, scratch_duckdb
from tasks.warehouse.connection import read_sql

REQUIRED_COLUMNS = {
    "events": ("user_id", "item_id", "event_type", "ts"),
    "items": ("item_id",),
    "users": ("user_id",),
    "social": ("user_id", "friend_id"),
}
OPTIONAL_COLUMNS = {
    "events": ("value", "event_id"),
    "items": ("title", "text", "tags", "category", "embedding"),
    "users": (),  # every other column is a user attribute
    "social": ("weight", "ts"),
}
#: Columns that may hold a list; every other contract column holds one value per row.
LIST_COLUMNS = ("tags", "embedding")
FUTURE_TOLERANCE = timedelta(days=1)
FLOAT32_MAX = float(np.finfo(np.float32).max)
CHUNK_ROWS = 1_000_000  # rows validated at once (events, users, social)
BAD = "\x00bad"


@dataclass
class Validated:
    """The outcome of validating one file: rows to load, rows to quarantine, warnings to log."""

    table: str
    source_file: str
    good: pl.DataFrame  # the table's columns, plus source_row (the later of two rows wins)
    quarantine: pl.DataFrame  # QUARANTINE_SCHEMA
    warnings: list[str] = field(default_factory=list)
    encoding: str | None = None
    #: A big file's good rows, written to this Parquet file a chunk at a time instead of being
    #: held in `good` (then empty, with the columns); the folder goes when this object does.
    spill: Path | None = None
    spilled_rows: int = 0
    _spill_dir: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    @property
    def good_rows(self) -> int:
        return self.spilled_rows if self.spill is not None else self.good.height

    @property
    def read(self) -> int:
        return self.good_rows + self.quarantine.height

    def good_frame(self) -> pl.DataFrame:
        """All good rows in memory (a spilled file read back: for small data and tests)."""
        return pl.read_parquet(self.spill) if self.spill is not None else self.good


# --- JSON for row_data and user attributes ----------------------------------------------------


def _json_string(text: pl.Expr) -> pl.Expr:
    """Text as a JSON string literal (Polars' encoder does the escaping)."""
    encoded = pl.struct(text.alias("v")).struct.json_encode()
    return encoded.str.strip_prefix('{"v":').str.strip_suffix("}")


def json_value(expr: pl.Expr, dtype: pl.DataType | DataTypeClass) -> pl.Expr:
    """A value as JSON text, valid for any dtype: NaN and ±inf become strings, bytes base64."""
    dtype = dtype() if isinstance(dtype, type) else dtype
    if dtype == pl.Null:
        return pl.lit("null")
    out: pl.Expr
    if isinstance(dtype, pl.List | pl.Array):
        inner = dtype.inner
        items = expr.cast(pl.List(inner)) if isinstance(dtype, pl.Array) else expr
        body = items.list.eval(json_value(pl.element(), inner)).list.join(",")
        out = pl.lit("[") + body + pl.lit("]")
    elif isinstance(dtype, pl.Struct):
        parts = [
            pl.lit(json.dumps(f.name) + ":") + json_value(expr.struct.field(f.name), f.dtype)
            for f in dtype.fields
        ]
        out = (
            pl.lit("{") + pl.concat_str(parts, separator=",") + pl.lit("}")
            if parts
            else pl.lit("{}")
        )
    elif dtype.is_float():
        out = (
            pl.when(expr.is_finite())
            .then(expr.cast(pl.String))
            .otherwise(_json_string(expr.cast(pl.String)))
        )
    elif dtype.is_integer() or dtype == pl.Boolean or isinstance(dtype, pl.Decimal):
        out = expr.cast(pl.String)
    elif dtype == pl.Binary:
        out = _json_string(expr.bin.encode("base64"))
    else:
        out = _json_string(expr.cast(pl.String))
    return pl.when(expr.is_null()).then(pl.lit("null")).otherwise(out)


def json_object(columns: list[str], schema: pl.Schema) -> pl.Expr:
    """The named columns of a row as one JSON object (always valid JSON)."""
    if not columns:
        return pl.lit("{}")
    parts = [pl.lit(json.dumps(c) + ":") + json_value(pl.col(c), schema[c]) for c in columns]
    return pl.lit("{") + pl.concat_str(parts, separator=",") + pl.lit("}")


# --- column checks and parsers ----------------------------------------------------------------


def _without_objects(raw: RawTable, table: str) -> RawTable:
    """A JSON Lines file without a single object has no columns: it has no rows to check either."""
    if raw.columns or raw.frame.height:
        return raw
    required = list(REQUIRED_COLUMNS[table])
    frame = raw.frame.with_columns(pl.lit(None, pl.String).alias(c) for c in required)
    return replace(raw, frame=frame, columns=required)


def _check_columns(raw: RawTable, table: str) -> list[str]:
    missing = [c for c in REQUIRED_COLUMNS[table] if c not in raw.columns]
    if missing:
        found = ", ".join(raw.columns) or "no columns"
        raise SourceError(
            f"{raw.path}: required column {', '.join(repr(c) for c in missing)} is missing "
            f"(found: {found})"
        )
    for name in raw.columns:
        dtype = raw.frame.schema[name]
        known = name in REQUIRED_COLUMNS[table] or name in OPTIONAL_COLUMNS[table]
        lists = isinstance(dtype, pl.List | pl.Array) and name in LIST_COLUMNS
        nested = isinstance(dtype, pl.List | pl.Array | pl.Struct) or dtype == pl.Binary
        if known and nested and not lists:
            expected = "a list or text" if name in LIST_COLUMNS else "one value per row"
            raise SourceError(f"{raw.path}: column '{name}' holds {dtype}; expected {expected}")
    if table == "users":
        return []
    known_columns = set(REQUIRED_COLUMNS[table]) | set(OPTIONAL_COLUMNS[table])
    unknown = [c for c in raw.columns if c not in known_columns]
    return [f"{raw.path}: ignoring unknown column(s) {', '.join(unknown)}"] if unknown else []


def _column(raw: RawTable, name: str) -> pl.Expr:
    return pl.col(name) if name in raw.columns else pl.lit(None, pl.String)


def _text(raw: RawTable, name: str) -> pl.Expr:
    """A column as trimmed text, with empty strings treated as missing."""
    col = _column(raw, name).cast(pl.String).str.strip_chars()
    return pl.when(col == "").then(None).otherwise(col)


def _id_text(raw: RawTable, name: str) -> pl.Expr:
    """An id as text. Ids are keys of other systems and stay byte-exact, except a number stored
    as a float: `2.0` (a Parquet double, a JSON number, a pandas column that once held a null)
    is the id `2`, as it is where the same id was stored as an integer. A float id that is not
    a whole number keeps its text; NaN and infinity are no id (missing)."""
    dtype = raw.frame.schema[name] if name in raw.columns else pl.String()
    if dtype.is_float():
        value = pl.col(name)
        whole = value.is_finite() & (value == value.floor()) & (value.abs() < 2.0**63)
        return (
            pl.when(whole).then(value.cast(pl.Int64, strict=False).cast(pl.String))
            .when(value.is_finite()).then(value.cast(pl.String))
            .otherwise(None)
        )
    text = _text(raw, name)
    if name not in raw.json_types:
        return text
    number = text.cast(pl.Float64, strict=False)  # JSON Lines: a number arrives as its text
    whole = (_json_type(raw, name) == "DOUBLE") & number.is_finite() & (number == number.floor())
    whole = whole & (number.abs() < 2.0**63)
    return pl.when(whole).then(number.cast(pl.Int64, strict=False).cast(pl.String)).otherwise(text)


def _blank(raw: RawTable, name: str) -> pl.Expr:
    """A value that is not there: null, or (text) empty; typed values are not cast to tell."""
    dtype = raw.frame.schema[name] if name in raw.columns else pl.String()
    if dtype == pl.String or isinstance(dtype, pl.Categorical | pl.Enum):
        return _text(raw, name).is_null()
    return _column(raw, name).is_null()


def _json_type(raw: RawTable, name: str) -> pl.Expr:
    """The JSON type of each value (JSON Lines only; null elsewhere)."""
    helper = raw.json_types.get(name)
    return pl.col(helper) if helper else pl.lit(None, pl.String)


def _nested(raw: RawTable, name: str) -> pl.Expr:
    return _json_type(raw, name).is_in(["ARRAY", "OBJECT"]).fill_null(False)


def _quoted(raw: RawTable, name: str) -> pl.Expr:
    text = _column(raw, name).cast(pl.String)
    return pl.lit("'") + text.str.slice(0, 40) + pl.lit("'")


@dataclass(frozen=True)
class Check:
    """A rule a row can break: a cheap condition for every row, a message for the rows that do."""

    condition: pl.Expr
    message: pl.Expr


def _reason(condition: pl.Expr, message: pl.Expr | str) -> Check:
    return Check(condition, pl.lit(message) if isinstance(message, str) else message)


def _one_value(raw: RawTable, name: str) -> Check:
    """JSON Lines: a list or object where the contract wants one value."""
    return _reason(
        _nested(raw, name),
        pl.format(
            "{}: a JSON {}, expected one value",
            pl.lit(name),
            _json_type(raw, name).replace({"ARRAY": "list", "OBJECT": "object"}),
        ),
    )


def _present(raw: RawTable, name: str) -> pl.Expr:
    return _column(raw, name).is_not_null() if name in raw.columns else pl.lit(False)


def parse_timestamp(name: str, dtype: pl.DataType) -> pl.Expr:
    """Parse a timestamp column of any common shape into UTC; unparseable values become null."""
    col = pl.col(name)
    if isinstance(dtype, pl.Datetime):
        return (
            col.dt.convert_time_zone("UTC") if dtype.time_zone else col.dt.replace_time_zone("UTC")
        )
    if dtype == pl.Date:
        return col.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    if dtype.is_numeric():
        return _from_epoch(col.cast(pl.Float64))
    text = col.cast(pl.String).str.strip_chars()

    def fmt(pattern: str, with_zone: bool) -> pl.Expr:
        if with_zone:
            return text.str.strptime(pl.Datetime("us", "UTC"), pattern, strict=False)
        return text.str.strptime(pl.Datetime("us"), pattern, strict=False).dt.replace_time_zone(
            "UTC"
        )

    return pl.coalesce(
        fmt("%Y-%m-%dT%H:%M:%S%.f%#z", True),
        fmt("%Y-%m-%d %H:%M:%S%.f%#z", True),
        fmt("%Y-%m-%dT%H:%M:%S%.f", False),
        fmt("%Y-%m-%d %H:%M:%S%.f", False),
        fmt("%Y-%m-%d", False),
        _from_epoch(text.cast(pl.Float64, strict=False)),
    )


def _from_epoch(seconds: pl.Expr) -> pl.Expr:
    """Epoch numbers: seconds, or milliseconds when too large to be seconds."""
    scaled = pl.when(seconds.abs() > 1e11).then(seconds * 1e3).otherwise(seconds * 1e6)
    return pl.from_epoch(scaled.cast(pl.Int64, strict=False), "us").dt.replace_time_zone("UTC")


def _number(raw: RawTable, name: str) -> pl.Expr:
    if name not in raw.columns:
        return pl.lit(None, pl.Float64)
    dtype = raw.frame.schema[name]
    if dtype.is_numeric() or dtype == pl.Boolean:
        return pl.col(name).cast(pl.Float64)
    return pl.col(name).cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)


def _number_reasons(raw: RawTable, name: str, parsed: str) -> list[Check]:
    blank = _blank(raw, name)
    return [
        _one_value(raw, name),
        _reason(
            _present(raw, name) & ~blank & ~_nested(raw, name) & pl.col(parsed).is_null(),
            pl.lit(f"{name}: not a number ") + _quoted(raw, name),
        ),
        _reason(
            pl.col(parsed).is_not_null() & ~pl.col(parsed).is_finite(),
            pl.lit(f"{name}: not finite ") + _quoted(raw, name),
        ),
    ]


def _id_reasons(raw: RawTable, name: str, parsed: str) -> list[Check]:
    return [_reason(pl.col(parsed).is_null(), f"{name}: missing"), _one_value(raw, name)]


def _split(
    raw: RawTable,
    df: pl.DataFrame,
    checks: Sequence[Check | None],
    table: str,
    keep: list[pl.Expr],
    warnings: list[str],
) -> Validated:
    """Rows that break no check are good; the others are quarantined with every reason that
    applies. Messages (text built from the values) are made for the bad rows only."""
    rules = [c for c in checks if c is not None]
    flagged = df.with_columns(
        pl.any_horizontal([c.condition.fill_null(False) for c in rules]).alias(BAD)
    )
    reasons = pl.concat_list(
        [pl.when(c.condition).then(c.message.cast(pl.String)) for c in rules]
    ).list.drop_nulls()
    bad = flagged.filter(pl.col(BAD)).select(
        pl.col(ROW).alias("row_number"),
        reasons.list.join("; ").alias("reason"),
        json_object(raw.columns, raw.frame.schema).alias("row_data"),
    )
    good = flagged.filter(~pl.col(BAD)).select(*keep, pl.col(ROW).alias("source_row"))
    quarantine = pl.concat([raw.rejected, bad.cast(QUARANTINE_SCHEMA)]).sort("row_number")
    return Validated(table, str(raw.path), good, quarantine, raw.warnings + warnings, raw.encoding)


def _in_chunks(raw: RawTable, validate: Callable[[RawTable], Validated]) -> Validated:
    """Validate a big file a slice of rows at a time, so only one slice's derived columns (trimmed
    ids, parsed times, reasons) are in memory at once; the outcome is the same as in one go."""
    if raw.frame.height <= CHUNK_ROWS:
        return validate(raw)
    parts = [
        validate(
            replace(
                raw,
                frame=raw.frame.slice(offset, CHUNK_ROWS),
                rejected=raw.rejected if offset == 0 else raw.rejected.clear(),
            )
        )
        for offset in range(0, raw.frame.height, CHUNK_ROWS)
    ]
    first = parts[0]
    good = pl.concat([p.good for p in parts], rechunk=False)
    quarantine = pl.concat([p.quarantine for p in parts]).sort("row_number")
    return replace(first, good=good, quarantine=quarantine)


SPILL_PREFIX = "recfusion-spill-"


def _remove_stale_spills(parent: Path) -> None:
    """Spill folders of ingests that were killed (their process is gone): GBs at scale."""
    for folder in parent.glob(f"{SPILL_PREFIX}*-*"):
        pid = folder.name.removeprefix(SPILL_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(folder, ignore_errors=True)


def validate_spilled(
    chunks: Iterable[RawTable],
    validate: Callable[[RawTable], Validated],
    on_rows: Callable[[int], None] | None = None,
) -> Validated:
    """Validate a file given as chunks, writing each chunk's good rows to a Parquet file in a
    temporary folder as it goes: memory holds one chunk and the (few) quarantined rows, never
    the file's good rows. The rows and their order are those of validating it in one go.
    `on_rows` is told each chunk's row count once it is validated (progress)."""
    if Path("/proc/self").exists():  # Linux: process ids tell a killed ingest's leftovers
        _remove_stale_spills(Path(tempfile.gettempdir()))
    folder = tempfile.TemporaryDirectory(prefix=f"{SPILL_PREFIX}{os.getpid()}-")
    spill = Path(folder.name) / "good.parquet"
    writer: pq.ParquetWriter | None = None
    first: Validated | None = None
    quarantines: list[pl.DataFrame] = []
    rows = 0
    try:
        for part in chunks:
            outcome = validate(part)
            first = first or outcome
            quarantines.append(outcome.quarantine)
            table = outcome.good.to_arrow()
            if writer is None:
                # A temporary file, read once: lz4 without dictionaries or statistics writes
                # in 0.6× zstd's time (10M events: 1.4 s, not 2.4 s) and reads back as fast.
                writer = pq.ParquetWriter(spill, table.schema, compression="lz4",
                                          use_dictionary=False, write_statistics=False)
            writer.write_table(table.cast(writer.schema))
            rows += outcome.good.height
            if on_rows is not None:
                on_rows(outcome.good.height + outcome.quarantine.height)
    except BaseException:
        folder.cleanup()
        raise
    finally:
        if writer is not None:
            writer.close()
    assert first is not None, "a file gives at least one chunk"
    return replace(
        first,
        good=first.good.clear(),
        quarantine=pl.concat(quarantines).sort("row_number"),
        spill=spill,
        spilled_rows=rows,
        _spill_dir=folder,
    )


# --- tables -----------------------------------------------------------------------------------


def validate_events(raw: RawTable, now: datetime | None = None) -> Validated:
    now = now or datetime.now(UTC)
    return _in_chunks(_without_objects(raw, "events"), lambda part: _validate_events(part, now))


def _validate_events(raw: RawTable, now: datetime) -> Validated:
    warnings = _check_columns(raw, "events")
    ts_dtype = raw.frame.schema["ts"]
    df = raw.frame.with_columns(
        _id_text(raw, "user_id").alias("\x00user_id"),
        _id_text(raw, "item_id").alias("\x00item_id"),
        _text(raw, "event_type").alias("\x00event_type"),
        _id_text(raw, "event_id").alias("\x00event_id"),
        parse_timestamp("ts", ts_dtype).alias("\x00ts"),
        _number(raw, "value").alias("\x00value"),
    )
    ts_given = ~_blank(raw, "ts") & ~_nested(raw, "ts")
    reasons = [
        *_id_reasons(raw, "user_id", "\x00user_id"),
        *_id_reasons(raw, "item_id", "\x00item_id"),
        *_id_reasons(raw, "event_type", "\x00event_type"),
        _reason(_blank(raw, "ts"), "ts: missing"),
        _one_value(raw, "ts"),
        _reason(
            ts_given & pl.col("\x00ts").is_null(),
            pl.lit("ts: unparseable ") + _quoted(raw, "ts"),
        ),
        _reason(
            pl.col("\x00ts") > pl.lit(now + FUTURE_TOLERANCE),
            pl.lit("ts: in the future ") + _quoted(raw, "ts"),
        ),
        *_number_reasons(raw, "value", "\x00value"),
        _one_value(raw, "event_id"),
    ]
    keep = [
        pl.col("\x00event_id").alias("event_id"),
        pl.col("\x00user_id").alias("user_id"),
        pl.col("\x00item_id").alias("item_id"),
        pl.col("\x00event_type").alias("event_type"),
        pl.col("\x00value").fill_null(1.0).alias("value"),
        pl.col("\x00ts").alias("ts"),
    ]
    return _split(raw, df, reasons, "events", keep, warnings)


def _json_string_lists(text: pl.Series) -> pl.Series:
    """Each text that is a JSON array as a list of strings, else null (DuckDB parses per row)."""
    with scratch_duckdb() as con:
        con.register("texts", pl.DataFrame({"t": text}).with_row_index("i").to_arrow())
        return con.sql(read_sql("ingest_json_lists.sql")).pl().to_series()


def _tags(raw: RawTable) -> tuple[pl.Series | pl.Expr, Check | None]:
    """Tags as a list of trimmed, non-empty strings, and the reason a row's tags are unusable."""
    if "tags" not in raw.columns:
        return pl.lit(None, pl.List(pl.String)), None
    dtype = raw.frame.schema["tags"]
    if isinstance(dtype, pl.List | pl.Array):
        if isinstance(dtype.inner, pl.List | pl.Array | pl.Struct):
            raise SourceError(f"{raw.path}: column 'tags' holds {dtype}; expected a list of text")
        tags: pl.Series | pl.Expr = pl.col("tags").cast(pl.List(pl.String))
        problem: Check | None = None
    else:
        text = raw.frame.select(_text(raw, "tags")).to_series()
        as_json = _json_string_lists(text)
        split = text.str.split("|")
        tags = pl.Series("tags", as_json).fill_null(split)
        problem = _reason(
            _json_type(raw, "tags") == "OBJECT", "tags: a JSON object, expected a list or a|b|c"
        )
    cleaned = (
        (pl.lit(tags) if isinstance(tags, pl.Series) else tags)
        .list.eval(pl.element().str.strip_chars())
        .list.eval(pl.element().filter(pl.element().is_not_null() & (pl.element() != "")))
    )
    return cleaned, problem


def _embedding(raw: RawTable) -> pl.Expr:
    """Embeddings as lists of Float64 (null: not a list of numbers); text like "[0.1, 2e-3]" too."""
    if "embedding" not in raw.columns:
        return pl.lit(None, pl.List(pl.Float64))
    dtype = raw.frame.schema["embedding"]
    if isinstance(dtype, pl.List | pl.Array):
        inner = dtype.inner
        if not (inner.is_numeric() or inner in (pl.String, pl.Null, pl.Boolean)):
            raise SourceError(
                f"{raw.path}: column 'embedding' holds {dtype}; expected a list of numbers"
            )
        values = pl.col("embedding").cast(pl.List(inner))
        numbers = (
            values.cast(pl.List(pl.Float64))
            if inner.is_numeric()
            else values.list.eval(
                pl.element().cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)
            )
        )
        has_bad = numbers.list.eval(pl.element().is_null()).list.any()
        return pl.when(has_bad).then(None).otherwise(numbers)
    text = pl.col("embedding").cast(pl.String).str.strip_chars()
    bracketed = text.str.starts_with("[") & text.str.ends_with("]")
    body = text.str.strip_prefix("[").str.strip_suffix("]").str.strip_chars()
    empty = pl.lit([], pl.List(pl.String))
    elements = pl.when(body == "").then(empty).otherwise(body.str.split(","))
    numbers = elements.list.eval(pl.element().str.strip_chars().cast(pl.Float64, strict=False))
    has_bad = numbers.list.eval(pl.element().is_null()).list.any().fill_null(True)
    return pl.when(bracketed & ~has_bad).then(numbers).otherwise(None)


def validate_items(raw: RawTable) -> Validated:
    raw = _without_objects(raw, "items")
    warnings = _check_columns(raw, "items")
    tags, tags_problem = _tags(raw)
    df = raw.frame.with_columns(
        _id_text(raw, "item_id").alias("\x00item_id"),
        *[_text(raw, c).alias(f"\x00{c}") for c in ("title", "text", "category")],
        tags.alias("\x00tags"),
        _embedding(raw).alias("\x00embedding"),
    )
    emb = pl.col("\x00embedding")
    dims = df["\x00embedding"].list.len().drop_nulls()
    expected_dim = int(dims.mode().sort()[0]) if dims.len() else 0
    reasons = [
        *_id_reasons(raw, "item_id", "\x00item_id"),
        *[_one_value(raw, c) for c in ("title", "text", "category")],
        tags_problem,
        _reason(
            _present(raw, "embedding") & _text_or_list(raw, "embedding") & emb.is_null(),
            "embedding: not a list of numbers",
        ),
        _reason(
            emb.is_not_null() & (emb.list.len() != expected_dim),
            pl.format("embedding: {} dims, expected {}", emb.list.len(), pl.lit(expected_dim)),
        ),
        _reason(
            emb.is_not_null() & ~emb.list.eval(pl.element().is_finite()).list.all(),
            "embedding: non-finite values",
        ),
        _reason(
            emb.is_not_null()
            & emb.list.eval(
                pl.element().is_finite() & (pl.element().abs() > FLOAT32_MAX)
            ).list.any(),
            "embedding: values beyond the float32 range",
        ),
    ]
    keep = [
        pl.col("\x00item_id").alias("item_id"),
        pl.col("\x00title").alias("title"),
        pl.col("\x00text").alias("text"),
        pl.col("\x00tags").alias("tags"),
        pl.col("\x00category").alias("category"),
        emb.cast(pl.List(pl.Float32)).alias("embedding"),
    ]
    return _split(raw, df, reasons, "items", keep, warnings)


def _text_or_list(raw: RawTable, name: str) -> pl.Expr:
    """A value that is there at all: a non-blank text, or any list (an empty one included)."""
    dtype = raw.frame.schema[name] if name in raw.columns else pl.String()
    if isinstance(dtype, pl.List | pl.Array):
        return pl.col(name).is_not_null()
    return _text(raw, name).is_not_null()


def validate_users(raw: RawTable) -> Validated:
    return _in_chunks(_without_objects(raw, "users"), _validate_users)


def _validate_users(raw: RawTable) -> Validated:
    _check_columns(raw, "users")
    attributes = [c for c in raw.columns if c != "user_id"]
    df = raw.frame.with_columns(
        _id_text(raw, "user_id").alias("\x00user_id"),
        json_object(attributes, raw.frame.schema).alias("\x00attributes"),
    )
    reasons = _id_reasons(raw, "user_id", "\x00user_id")
    keep = [pl.col("\x00user_id").alias("user_id"), pl.col("\x00attributes").alias("attributes")]
    return _split(raw, df, reasons, "users", keep, [])


def validate_social(raw: RawTable) -> Validated:
    return _in_chunks(_without_objects(raw, "social"), _validate_social)


def _validate_social(raw: RawTable) -> Validated:
    warnings = _check_columns(raw, "social")
    df = raw.frame.with_columns(
        _id_text(raw, "user_id").alias("\x00user_id"),
        _id_text(raw, "friend_id").alias("\x00friend_id"),
        _number(raw, "weight").alias("\x00weight"),
        (
            parse_timestamp("ts", raw.frame.schema["ts"])
            if "ts" in raw.columns
            else pl.lit(None, pl.Datetime("us", "UTC"))
        ).alias("\x00ts"),
    )
    weight = pl.col("\x00weight")
    reasons = [
        *_id_reasons(raw, "user_id", "\x00user_id"),
        *_id_reasons(raw, "friend_id", "\x00friend_id"),
        _reason(pl.col("\x00user_id") == pl.col("\x00friend_id"), "friend_id: same as user_id"),
        *_number_reasons(raw, "weight", "\x00weight"),
        _reason(
            weight.is_finite() & (weight < 0),
            pl.lit("weight: negative ") + _quoted(raw, "weight"),
        ),
        _one_value(raw, "ts"),
        _reason(
            ~_blank(raw, "ts") & ~_nested(raw, "ts") & pl.col("\x00ts").is_null(),
            pl.lit("ts: unparseable ") + _quoted(raw, "ts"),
        ),
    ]
    keep = [
        pl.col("\x00user_id").alias("user_id"),
        pl.col("\x00friend_id").alias("friend_id"),
        weight.fill_null(1.0).alias("weight"),
        pl.col("\x00ts").alias("ts"),
    ]
    return _split(raw, df, reasons, "social", keep, warnings)


#: Validators of the optional tables; events have their own (they need the clock).
SIDE_TABLE_VALIDATORS: dict[str, Callable[[RawTable], Validated]] = {
    "items": validate_items,
    "users": validate_users,
    "social": validate_social,
}
