"""The input data contract, as code: normalise each table and split good rows from bad ones.

Pure functions over Polars frames. A row that breaks the contract is never dropped silently: it
goes to quarantine with every reason that applies and its original content. A file that cannot
be used at all (a required column is missing) raises `SourceError` naming the file and column.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from tasks.source_files import SourceError

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
QUARANTINE_SCHEMA = {"row_number": pl.Int64, "reason": pl.String, "row_data": pl.String}
ROW = "__row_number"
FUTURE_TOLERANCE = timedelta(days=1)


@dataclass
class Validated:
    """The outcome of validating one file: rows to load, rows to quarantine, warnings to log."""

    table: str
    source_file: str
    good: pl.DataFrame
    quarantine: pl.DataFrame
    warnings: list[str] = field(default_factory=list)


def _text(name: str) -> pl.Expr:
    """A column as trimmed text, with empty strings treated as missing."""
    col = pl.col(name).cast(pl.String).str.strip_chars()
    return pl.when(col == "").then(None).otherwise(col)


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


def _number(name: str, dtype: pl.DataType) -> pl.Expr:
    if dtype.is_numeric():
        return pl.col(name).cast(pl.Float64)
    return pl.col(name).cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)


def _check_columns(frame: pl.DataFrame, table: str, path: Path) -> list[str]:
    missing = [c for c in REQUIRED_COLUMNS[table] if c not in frame.columns]
    if missing:
        raise SourceError(
            f"{path}: required column {', '.join(repr(c) for c in missing)} is missing "
            f"(found: {', '.join(frame.columns) or 'no columns'})"
        )
    if table == "users":
        return []
    known = set(REQUIRED_COLUMNS[table]) | set(OPTIONAL_COLUMNS[table])
    unknown = [c for c in frame.columns if c not in known]
    return [f"{path}: ignoring unknown column(s) {', '.join(unknown)}"] if unknown else []


def _split(
    frame: pl.DataFrame,
    reasons: list[pl.Expr],
    original: list[str],
    table: str,
    path: Path,
    keep: list[pl.Expr],
    warnings: list[str],
) -> Validated:
    """Rows with no reason are good; the others are quarantined with all their reasons."""
    checked = frame.with_columns(
        pl.concat_list([r.cast(pl.String) for r in reasons])
        .list.drop_nulls()
        .list.join("; ")
        .alias("__reason")
    )
    bad = checked.filter(pl.col("__reason") != "")
    quarantine = bad.select(
        pl.col(ROW).cast(pl.Int64).alias("row_number"),
        pl.col("__reason").alias("reason"),
        pl.struct([pl.col(c).cast(pl.String) for c in original])
        .struct.json_encode()
        .alias("row_data"),
    )
    good = checked.filter(pl.col("__reason") == "").select(keep)
    return Validated(table, str(path), good, quarantine, warnings)


def _reason(condition: pl.Expr, message: pl.Expr | str) -> pl.Expr:
    msg = pl.lit(message) if isinstance(message, str) else message
    return pl.when(condition).then(msg).otherwise(None)


def _quoted(name: str) -> pl.Expr:
    return pl.lit("'") + pl.col(name).cast(pl.String).str.slice(0, 40) + pl.lit("'")


def validate_events(frame: pl.DataFrame, path: Path, now: datetime | None = None) -> Validated:
    warnings = _check_columns(frame, "events", path)
    now = now or datetime.now(UTC)
    original = frame.columns
    value_dtype = frame.schema["value"] if "value" in frame.columns else pl.Float64()
    df = frame.with_row_index(ROW, offset=1).with_columns(
        _text("user_id").alias("__user_id"),
        _text("item_id").alias("__item_id"),
        _text("event_type").alias("__event_type"),
        parse_timestamp("ts", frame.schema["ts"]).alias("__ts"),
        (
            _number("value", value_dtype) if "value" in frame.columns else pl.lit(None, pl.Float64)
        ).alias("__value"),
        (_text("event_id") if "event_id" in frame.columns else pl.lit(None, pl.String)).alias(
            "__event_id"
        ),
    )
    raw_value_present = pl.col("value").is_not_null() if "value" in frame.columns else pl.lit(False)
    reasons = [
        _reason(pl.col("__user_id").is_null(), "missing user_id"),
        _reason(pl.col("__item_id").is_null(), "missing item_id"),
        _reason(pl.col("__event_type").is_null(), "missing event_type"),
        _reason(pl.col("ts").is_null(), "missing ts"),
        _reason(
            pl.col("ts").is_not_null() & pl.col("__ts").is_null(),
            pl.lit("unparseable ts ") + _quoted("ts"),
        ),
        _reason(pl.col("__ts") > pl.lit(now + FUTURE_TOLERANCE), "ts is in the future"),
        _reason(
            raw_value_present & pl.col("__value").is_null(),
            pl.lit("non-numeric value ") + _quoted("value") if "value" in frame.columns else "",
        ),
        _reason(
            pl.col("__value").is_not_null() & ~pl.col("__value").is_finite(), "value is not finite"
        ),
    ]
    keep = [
        pl.col("__event_id").alias("event_id"),
        pl.col("__user_id").alias("user_id"),
        pl.col("__item_id").alias("item_id"),
        pl.col("__event_type").alias("event_type"),
        pl.col("__value").fill_null(1.0).alias("value"),
        pl.col("__ts").alias("ts"),
    ]
    return _split(df, reasons, original, "events", path, keep, warnings)


def _tags(frame: pl.DataFrame) -> pl.Expr:
    if "tags" not in frame.columns:
        return pl.lit(None, pl.List(pl.String))
    dtype = frame.schema["tags"]
    if isinstance(dtype, pl.List):
        tags = pl.col("tags").cast(pl.List(pl.String))
    else:
        tags = pl.col("tags").cast(pl.String).str.split("|")
    return tags.list.eval(pl.element().str.strip_chars()).list.eval(
        pl.element().filter(pl.element() != "")
    )


def _embedding(frame: pl.DataFrame) -> pl.Expr:
    if "embedding" not in frame.columns:
        return pl.lit(None, pl.List(pl.Float32))
    dtype = frame.schema["embedding"]
    if isinstance(dtype, pl.List | pl.Array):
        return pl.col("embedding").cast(pl.List(pl.Float32), strict=False)
    return (
        pl.col("embedding")
        .cast(pl.String)
        .str.json_decode(pl.List(pl.Float64))
        .cast(pl.List(pl.Float32), strict=False)
    )


def validate_items(frame: pl.DataFrame, path: Path) -> Validated:
    warnings = _check_columns(frame, "items", path)
    original = frame.columns
    if "embedding" in frame.columns and not isinstance(
        frame.schema["embedding"], pl.List | pl.Array
    ):
        # json_decode raises on malformed text; mark such rows instead of failing the file.
        frame = frame.with_columns(
            pl.col("embedding")
            .cast(pl.String)
            .map_elements(_valid_json_list, return_dtype=pl.String)
            .alias("__embedding_text")
        )
    df = frame.with_row_index(ROW, offset=1).with_columns(
        _text("item_id").alias("__item_id"),
        *[
            (_text(c) if c in frame.columns else pl.lit(None, pl.String)).alias(f"__{c}")
            for c in ("title", "text", "category")
        ],
        _tags(frame).alias("__tags"),
    )
    if "__embedding_text" in df.columns:
        df = df.with_columns(
            pl.col("__embedding_text")
            .str.json_decode(pl.List(pl.Float64))
            .cast(pl.List(pl.Float32))
            .alias("__embedding")
        )
    else:
        df = df.with_columns(_embedding(frame).alias("__embedding"))
    dims = df["__embedding"].list.len().drop_nulls()
    expected_dim = int(dims.mode().sort()[0]) if dims.len() else 0
    raw_emb = pl.col("embedding").is_not_null() if "embedding" in frame.columns else pl.lit(False)
    reasons = [
        _reason(pl.col("__item_id").is_null(), "missing item_id"),
        _reason(raw_emb & pl.col("__embedding").is_null(), "embedding is not a list of numbers"),
        _reason(
            pl.col("__embedding").is_not_null()
            & (pl.col("__embedding").list.len() != expected_dim),
            pl.format(
                "embedding has {} dims, expected {}",
                pl.col("__embedding").list.len(),
                pl.lit(expected_dim),
            ),
        ),
        _reason(
            pl.col("__embedding").is_not_null()
            & ~pl.col("__embedding").list.eval(pl.element().is_finite()).list.all(),
            "embedding has non-finite values",
        ),
    ]
    keep = [
        pl.col(f"__{c}").alias(c)
        for c in ("item_id", "title", "text", "tags", "category", "embedding")
    ]
    return _split(df, reasons, original, "items", path, keep, warnings)


def _valid_json_list(text: str | None) -> str | None:
    import json

    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    if isinstance(value, list) and all(isinstance(v, int | float) for v in value):
        return text
    return None


def validate_users(frame: pl.DataFrame, path: Path) -> Validated:
    _check_columns(frame, "users", path)
    original = frame.columns
    attributes = [c for c in frame.columns if c != "user_id"]
    df = frame.with_row_index(ROW, offset=1).with_columns(
        _text("user_id").alias("__user_id"),
        (
            pl.struct([pl.col(c).cast(pl.String) for c in attributes]).struct.json_encode()
            if attributes
            else pl.lit("{}")
        ).alias("__attributes"),
    )
    reasons = [_reason(pl.col("__user_id").is_null(), "missing user_id")]
    keep = [pl.col("__user_id").alias("user_id"), pl.col("__attributes").alias("attributes")]
    return _split(df, reasons, original, "users", path, keep, [])


def validate_social(frame: pl.DataFrame, path: Path) -> Validated:
    warnings = _check_columns(frame, "social", path)
    original = frame.columns
    weight_dtype = frame.schema["weight"] if "weight" in frame.columns else pl.Float64()
    df = frame.with_row_index(ROW, offset=1).with_columns(
        _text("user_id").alias("__user_id"),
        _text("friend_id").alias("__friend_id"),
        (
            _number("weight", weight_dtype)
            if "weight" in frame.columns
            else pl.lit(None, pl.Float64)
        ).alias("__weight"),
        (
            parse_timestamp("ts", frame.schema["ts"])
            if "ts" in frame.columns
            else pl.lit(None, pl.Datetime("us", "UTC"))
        ).alias("__ts"),
    )
    raw_weight = pl.col("weight").is_not_null() if "weight" in frame.columns else pl.lit(False)
    raw_ts = pl.col("ts").is_not_null() if "ts" in frame.columns else pl.lit(False)
    reasons = [
        _reason(pl.col("__user_id").is_null(), "missing user_id"),
        _reason(pl.col("__friend_id").is_null(), "missing friend_id"),
        _reason(pl.col("__user_id") == pl.col("__friend_id"), "user is their own friend"),
        _reason(raw_weight & pl.col("__weight").is_null(), "non-numeric weight"),
        _reason(
            pl.col("__weight").is_not_null()
            & (~pl.col("__weight").is_finite() | (pl.col("__weight") < 0)),
            "weight must be a finite number >= 0",
        ),
        _reason(raw_ts & pl.col("__ts").is_null(), "unparseable ts"),
    ]
    keep = [
        pl.col("__user_id").alias("user_id"),
        pl.col("__friend_id").alias("friend_id"),
        pl.col("__weight").fill_null(1.0).alias("weight"),
        pl.col("__ts").alias("ts"),
    ]
    return _split(df, reasons, original, "social", path, keep, warnings)


#: Validators of the optional tables; events have their own (they need the clock).
SIDE_TABLE_VALIDATORS: dict[str, Callable[[pl.DataFrame, Path], Validated]] = {
    "items": validate_items,
    "users": validate_users,
    "social": validate_social,
}
