"""What the adapters share: decoding public files, splitting delimited lines, strict numbers and
times whose errors name the file, line and column, and writing the source folder all at once.

Why strict: a public dataset with a rating that is not a number is a corrupt or wrong file, and
a converted value that silently became null would be ingested as the default (value 1). So a bad
number stops the conversion with one line naming it, and nothing is written.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from tasks.sources.files import TABLES, SourceError

log = logging.getLogger("tasks.sources.adapters")

#: Written into every converted folder: which files a later conversion may replace.
MARKER = ".recfusion-convert.json"
#: The timestamp type of every adapter's output (same as the Last.fm split's).
UTC_TS = pl.Datetime("us", "UTC")
TABLE_FILES = tuple(f"{table}.parquet" for table in TABLES)
LINE = "line"  # 1-based line number in the file, carried so errors can name it
SHOWN_LINES = 3  # line numbers named in an error about many lines


class AdapterError(SourceError):
    """Files in a public format that cannot be converted; the message names the file and line."""


def decode_text(raw: bytes) -> str:
    """UTF-8 when the bytes are valid UTF-8, else Latin-1 line by line (never fails, never drops).

    Per-line fallback keeps a file that mixes encodings readable: valid UTF-8 lines stay UTF-8.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    lines = []
    for line in raw.split(b"\n"):  # per line of a small metadata file, not per event
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            lines.append(line.decode("latin-1"))
    return "\n".join(lines)


def read_text(path: Path, what: str) -> str:
    """A whole file as text (UTF-8, else Latin-1), without a byte-order mark."""
    if not path.is_file():
        raise AdapterError(f"{what} file missing: {path}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise AdapterError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return decode_text(raw).lstrip("\ufeff")


def read_lines(path: Path, what: str, header: bool = False) -> pl.DataFrame:
    """(line, text) for each non-blank line; with `header`, the first line is left out."""
    lines = pl.Series("text", [read_text(path, what)]).str.split("\n").explode()
    frame = pl.DataFrame(
        {LINE: pl.int_range(1, lines.len() + 1, eager=True), "text": lines.str.strip_suffix("\r")}
    )
    if header:
        frame = frame.slice(1)
    return frame.filter(pl.col("text").str.strip_chars() != "")


def lines_named(lines: pl.Series) -> str:
    """'line 7' or 'lines 7, 9, 12 and 4 more': an error names a few, and how many there are."""
    shown = ", ".join(str(n) for n in lines.head(SHOWN_LINES).to_list())
    more = lines.len() - SHOWN_LINES
    plural = "s" if lines.len() > 1 else ""
    return f"line{plural} {shown}" + (f" and {more} more" if more > 0 else "")


def split_fields(
    lines: pl.DataFrame, path: Path, separator: str, names: list[str]
) -> pl.DataFrame:
    """Split each line into exactly len(names) text fields (no quoting in these formats)."""
    parts = pl.col("text").str.split(separator)
    counted = lines.with_columns(parts.alias("\x00parts"), parts.list.len().alias("\x00n"))
    bad = counted.filter(pl.col("\x00n") != len(names))
    if bad.height:
        found = int(bad["\x00n"][0])
        raise AdapterError(
            f"{path} {lines_named(bad[LINE])}: {found} field(s), expected {len(names)} "
            f"({', '.join(names)}) separated by {separator!r}"
        )
    return counted.select(
        LINE, *[pl.col("\x00parts").list.get(i).alias(name) for i, name in enumerate(names)]
    )


def parse_numbers(
    frame: pl.DataFrame,
    path: Path,
    columns: Mapping[str, pl.DataType],
    required: bool = True,
    names: Mapping[str, str] | None = None,
) -> pl.DataFrame:
    """Cast text columns to numbers; a value that is not one (or, if `required`, is empty) is an
    AdapterError naming the file, line, column and value. `names` shows a column as the file
    calls it."""
    casts = {}
    for column, dtype in columns.items():
        text = pl.col(column).cast(pl.String).str.strip_chars()
        value = text.cast(pl.Float64, strict=False)
        ok = value.is_finite() & (value == value.round() if dtype.is_integer() else pl.lit(True))
        blank = text.is_null() | (text == "")
        bad = frame.filter((~blank & ~ok.fill_null(False)) | (blank & pl.lit(required)))
        if bad.height:
            shown = (names or {}).get(column, column)
            first = bad[column][0]
            problem = "is empty" if first is None or not str(first).strip() else (
                f"{str(first).strip()[:40]!r} is not {'a whole' if dtype.is_integer() else 'a'} "
                "number"
            )
            raise AdapterError(f"{path} {lines_named(bad[LINE])}: {shown} {problem}")
        casts[column] = pl.when(blank).then(None).otherwise(value).cast(dtype)
    return frame.with_columns(**casts)


def from_unix_seconds(seconds: pl.Expr) -> pl.Expr:
    """Unix seconds (whole or fractional) as a UTC timestamp."""
    micros = (seconds.cast(pl.Float64) * 1_000_000).round().cast(pl.Int64)
    return pl.from_epoch(micros, "us").dt.replace_time_zone("UTC").cast(UTC_TS)


def ranked_tags(pairs: pl.DataFrame, key: str) -> pl.DataFrame:
    """(key, tag) assignments -> key, tags: distinct tags, most frequent first, ties by text."""
    return (
        pairs.group_by(key, "tag")
        .agg(pl.len().alias("n"))
        .sort([key, "n", "tag"], descending=[False, True, False])
        .group_by(key, maintain_order=True)
        .agg(pl.col("tag").alias("tags"))
    )


# --- the output folder -------------------------------------------------------------------------


def _ours(out: Path) -> set[str]:
    """Files an earlier conversion wrote into `out` (empty if it did not write the folder)."""
    try:
        marker = json.loads((out / MARKER).read_text(encoding="utf-8"))
        return {MARKER, *(str(name) for name in marker["files"])}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def check_output(out: Path, replaced: Iterable[str] = TABLE_FILES) -> None:
    """`out` must be new, empty, or a folder an earlier conversion wrote (it is replaced whole).

    A folder holding only files this conversion writes anyway (`replaced`: say `events.parquet`
    from a convert-lastfm before the marker existed) is replaced too, as it always was.
    `write_source` checks with the exact files; a caller may check first, before a long
    conversion, with the default (any table's Parquet file).
    """
    out = Path(out).expanduser()
    if not out.exists():
        return
    if not out.is_dir():
        raise AdapterError(f"output folder {out}: exists and is not a folder")
    others = sorted(set(os.listdir(out)) - _ours(out) - set(replaced))
    if others:
        shown = ", ".join(others[:SHOWN_LINES]) + (" …" if len(others) > SHOWN_LINES else "")
        raise AdapterError(
            f"output folder {out} already holds {shown}, which recfusion convert did not write; "
            "give a new or empty folder (files from an earlier conversion are replaced)"
        )


def write_source(
    out: Path, tables: Mapping[str, pl.DataFrame], converted_from: Mapping[str, Any]
) -> dict[str, int]:
    """Write the tables as `<table>.parquet` into `out`, all or nothing.

    They are written to a sibling folder first and swapped in by renames, so a conversion that
    fails or is killed never leaves a folder with some tables new and some old or missing.
    """
    out = Path(out).expanduser()
    check_output(out, [f"{name}.parquet" for name in tables])
    counts = {name: frame.height for name, frame in tables.items()}
    parent = out.absolute().parent
    tag = uuid.uuid4().hex[:8]
    staging = parent / f".{out.name}.converting-{tag}"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
        for name, frame in tables.items():
            frame.write_parquet(staging / f"{name}.parquet")
        marker = {
            **converted_from,
            "converted_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "rows": counts,
            "files": [f"{name}.parquet" for name in tables],
        }
        (staging / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            old = parent / f".{out.name}.replaced-{tag}"
            os.rename(out, old)
            try:
                os.rename(staging, out)
            except OSError:
                os.rename(old, out)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, out)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise AdapterError(f"output folder {out}: cannot be written ({reason})") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return counts
