"""Find the files of a source folder and split each into rows and fields (Parquet, CSV, JSON Lines).

Reading never judges values: that is `tasks.sources.contract`.
It does split a file into rows, and a row
that cannot be split (a ragged CSV line, a JSON line that is not an object) comes back rejected
with its text, so one bad line never costs the rest of its file. A file or folder that cannot be
used at all raises `SourceError` naming it and the problem, so a run stops before it changes
anything.

Row numbers are 1-based data rows: for CSV the records after the header (a quoted value spanning
lines is one row; blank lines are not rows, except in a one-column file, where a blank line is an
empty row), for JSON Lines the line number in the file, for Parquet the row's position in the
file. A CSV row whose fields are all empty carries nothing and is skipped like a blank line.

Text files are decoded per file and never lossily: UTF-8 (with or without a byte-order mark),
UTF-16 with a byte-order mark, and anything else as Latin-1, a bijection, so distinct ids stay
distinct; the Latin-1 fallback is reported as a warning naming the file.
"""

from __future__ import annotations

import codecs
import csv
import errno
import io
import os
import re
import stat
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import polars as pl

from tasks.warehouse.connection import read_sql

TABLES = ("events", "items", "users", "social")
EXTENSIONS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
QUARANTINE_SCHEMA = pl.Schema(
    {"row_number": pl.Int64(), "reason": pl.String(), "row_data": pl.String()}
)
#: Helper columns start with a NUL, which no real column name contains.
ROW = "\x00row"
CHUNK_BYTES = 16 << 20
#: DuckDB's JSON types, as a person reading the reason calls them.
JSON_KINDS = {
    "VARCHAR": "string",
    "BIGINT": "number",
    "UBIGINT": "number",
    "DOUBLE": "number",
    "BOOLEAN": "boolean",
    "NULL": "null",
    "ARRAY": "list",
    "OBJECT": "object",
}
BLANK_LINE = re.compile(rb"\n\r?\n[\r\n]*[^\r\n]")  # a blank line with data after it


_SCRATCH: duckdb.DuckDBPyConnection | None = None
_SCRATCH_LOCK = threading.Lock()


@contextmanager
def scratch_duckdb() -> Iterator[duckdb.DuckDBPyConnection]:
    """A fresh connection to one in-memory DuckDB per process (opening a database costs ~60 ms,
    a connection to it well under one); its temporary tables and views die with it."""
    global _SCRATCH
    with _SCRATCH_LOCK:
        if _SCRATCH is None:
            _SCRATCH = duckdb.connect(":memory:")
        con = _SCRATCH.cursor()
    try:
        yield con
    finally:
        con.close()


class SourceError(ValueError):
    """A source file or folder that is unusable as a whole; the message names it and the problem."""


@dataclass
class RawTable:
    """One file split into rows: its fields as read, and the rows that could not be split."""

    path: Path
    frame: pl.DataFrame  # ROW, then the file's columns (text for CSV/JSON Lines, typed for Parquet)
    columns: list[str]  # the file's own columns, in file order (frame also has helper columns)
    rejected: pl.DataFrame  # QUARANTINE_SCHEMA: rows that could not be split into fields
    json_types: dict[str, str] = field(default_factory=dict)  # column -> helper: JSON type
    encoding: str | None = None
    warnings: list[str] = field(default_factory=list)


def _rejected(rows: pl.DataFrame | None = None) -> pl.DataFrame:
    return pl.DataFrame(schema=QUARANTINE_SCHEMA) if rows is None else rows.cast(QUARANTINE_SCHEMA)


def _raw_row_data(text: pl.Expr) -> pl.Expr:
    """row_data of a row that has no fields: its text, as a JSON object {"_raw": text}."""
    return pl.struct(text.alias("_raw")).struct.json_encode()


# --- the folder -------------------------------------------------------------------------------


def _os_problem(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "is a symlink loop"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "cannot be read: permission denied"
    return f"cannot be read: {exc.strerror or exc}"


def _check_table_file(path: Path) -> None:
    """A table file must be a readable regular file; anything else stops the run, never a skip."""
    try:
        st = path.stat()
    except FileNotFoundError:
        if not path.is_symlink():
            raise SourceError(f"{path}: disappeared while the folder was read") from None
        target = os.readlink(path)
        raise SourceError(f"{path}: is a symlink to {target}, which does not exist") from None
    except OSError as exc:
        raise SourceError(f"{path}: {_os_problem(exc)}") from None
    if stat.S_ISDIR(st.st_mode):
        raise SourceError(f"{path}: is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise SourceError(f"{path}: is not a regular file")
    try:
        with path.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise SourceError(f"{path}: {_os_problem(exc)}") from None


def _folder_entries(source_dir: Path) -> list[str]:
    try:
        if not source_dir.exists():
            raise SourceError(f"source folder {source_dir} does not exist")
        if not source_dir.is_dir():
            raise SourceError(f"source folder {source_dir} is not a folder")
        return sorted(os.listdir(source_dir))
    except OSError as exc:
        raise SourceError(f"source folder {source_dir} {_os_problem(exc)}") from None


def find_table_files(source_dir: Path) -> dict[str, Path]:
    """Map table name -> file for the tables present; `events` is required."""
    source_dir = Path(source_dir)
    entries = set(_folder_entries(source_dir))
    found: dict[str, Path] = {}
    for table in TABLES:
        matches = [source_dir / f"{table}{ext}" for ext in EXTENSIONS if f"{table}{ext}" in entries]
        if len(matches) > 1:
            names = ", ".join(m.name for m in matches)
            raise SourceError(f"{source_dir}: table '{table}' is given twice ({names}); keep one")
        if matches:
            _check_table_file(matches[0])
            found[table] = matches[0]
    if "events" not in found:
        raise SourceError(
            f"{source_dir}: no events file (expected events.parquet, events.csv or events.jsonl)"
        )
    return found


def unrecognised_files(source_dir: Path, found: dict[str, Path]) -> list[str]:
    """Warnings for files that look like a table but are not read (`Items.CSV`, `users.json`)."""
    used = {p.name for p in found.values()}
    warnings = []
    for name in _folder_entries(Path(source_dir)):
        stem = name.split(".", 1)[0].lower()
        if stem in TABLES and name not in used:
            warnings.append(
                f"{Path(source_dir) / name}: ignored (a table file is named {stem}.parquet, "
                f"{stem}.csv or {stem}.jsonl)"
            )
    return warnings


# --- encodings --------------------------------------------------------------------------------


def detect_encoding(path: Path) -> str:
    """UTF-8 (BOM or not) or UTF-16 with a BOM as such; a file that is not valid UTF-8: Latin-1."""
    with path.open("rb") as fh:
        head = fh.read(4)
        if head.startswith(codecs.BOM_UTF8):
            return "utf-8-sig"
        if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            return "utf-16"
        fh.seek(0)
        decoder = codecs.getincrementaldecoder("utf-8")()
        try:
            while chunk := fh.read(CHUNK_BYTES):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return "latin-1"
    return "utf-8"


def _encoding_warnings(path: Path, encoding: str) -> list[str]:
    if encoding == "latin-1":
        return [f"{path}: not valid UTF-8; read as Latin-1 (each byte one character)"]
    return []


def _text_chunks(path: Path, encoding: str) -> Iterator[str]:
    """The file as text, a chunk at a time (the decoder carries characters split across chunks)."""
    decoder = codecs.getincrementaldecoder(encoding)()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            yield decoder.decode(chunk)
    yield decoder.decode(b"", final=True)


@contextmanager
def _as_utf8(path: Path, encoding: str) -> Iterator[Path]:
    """The file itself when it is UTF-8, else a UTF-8 copy in a temporary folder (streamed)."""
    if encoding in ("utf-8", "utf-8-sig"):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="recfusion-ingest-") as folder:
        copy = Path(folder) / path.name
        with copy.open("w", encoding="utf-8", newline="") as out:
            for text in _text_chunks(path, encoding):
                out.write(text)
        yield copy


# --- CSV --------------------------------------------------------------------------------------


def _csv_header(path: Path, shown: Path) -> list[str]:
    """The header record's column names (trimmed); a missing or unusable header is fatal."""
    with path.open("r", encoding="utf-8-sig", newline="") as fh:
        head = fh.read(1 << 20)
    try:
        header = next(csv.reader(io.StringIO(head)), None)
    except csv.Error as exc:
        raise SourceError(f"{shown}: the header row cannot be parsed ({exc})") from None
    if not header:
        raise SourceError(f"{shown}: is empty or starts with a blank line (expected a header row)")
    names = [name.strip() for name in header]
    for position, name in enumerate(names, start=1):
        if not name:
            raise SourceError(f"{shown}: column {position} of the header has no name")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SourceError(
            f"{shown}: column {', '.join(repr(d) for d in duplicates)} appears twice in the header"
        )
    return names


def _csv_scan(path: Path, width: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """DuckDB's CSV reader, every field as text: good rows in file order, and its rejects."""
    columns = {f"c{i}": "VARCHAR" for i in range(width)}
    with scratch_duckdb() as con:
        params = {"path": str(path), "columns": columns}
        rows = con.sql(read_sql("ingest_read_csv.sql"), params=params).pl()
        rejects = con.sql(read_sql("ingest_csv_rejects.sql")).pl()
    return rows, rejects.unique("line", keep="first", maintain_order=True)


def _has_blank_lines(path: Path) -> bool:
    """Whether a blank line precedes data (DuckDB counts those lines in its reject line numbers)."""
    tail = b""
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            data = tail + chunk
            if BLANK_LINE.search(data):
                return True
            stripped = data.rstrip(b"\r\n")  # keep the newlines at the end and one byte before
            tail = data[max(len(stripped) - 1, 0) :]
    return False


def _row_numbers(reject_lines: np.ndarray, good: int) -> tuple[np.ndarray, np.ndarray]:
    """Data-row numbers of the good rows and the rejected ones, from DuckDB's reject lines.

    With no blank line before a reject, DuckDB's line is the data row + 1 (the header), and the
    k-th good row is the k-th number that is not a rejected row's.
    """
    reject_rows = reject_lines - 1
    before = reject_rows - np.arange(1, len(reject_rows) + 1)  # good rows before each reject
    k = np.arange(1, good + 1)
    return k + np.searchsorted(before, k, side="left"), reject_rows


def _record_numbers(
    path: Path, width: int, reject_lines: np.ndarray, good: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """The same when blank lines (which DuckDB counts as lines) precede a reject.

    A second scan with one column more rejects every record the first scan kept; together the two
    scans' reject lines are the line numbers of all records, so a record's data-row number is its
    rank among them. None if the scans disagree.
    """
    _, extra = _csv_scan(path, width + 1)
    lines = np.union1d(reject_lines, extra["line"].to_numpy())
    good_lines = np.setdiff1d(lines, reject_lines, assume_unique=True)
    if len(good_lines) != good:
        return None
    return np.searchsorted(lines, good_lines) + 1, np.searchsorted(lines, reject_lines) + 1


def _reject_reasons(rejects: pl.DataFrame, header: list[str]) -> pl.Expr:
    """Why DuckDB rejected each row, naming the column(s) where it can."""
    width = len(header)
    fields = pl.col("error_message").str.extract(r"Found: (\d+)").cast(pl.Int64)
    missing = pl.lit(pl.Series([", ".join(header[i:]) for i in range(width + 1)]))
    column = pl.col("column_name").replace_strict(
        {f"c{i}": name for i, name in enumerate(header)}, default="row", return_dtype=pl.String
    )
    first_line = pl.col("error_message").str.strip_chars().str.split("\n").list.first()
    kind = pl.col("error_type")
    return (
        pl.when((kind == "MISSING COLUMNS") & fields.is_between(0, width - 1))
        .then(
            pl.format(
                "{}: no field (the row has {} of {} fields)",
                missing.gather(fields.clip(0, width).fill_null(width)),  # evaluated on every row
                fields,
                pl.lit(width),
            )
        )
        .when(kind == "TOO MANY COLUMNS")
        .then(pl.format("row: {} fields, the header has {}", fields, pl.lit(width)))
        .when(kind == "UNQUOTED VALUE")
        .then(
            pl.format(
                "{}: bad quoting (a quoted value must end with a quote followed by a comma or "
                "the end of the row; an unclosed quote takes the rest of the file)",
                column,
            )
        )
        .when(kind == "LINE SIZE OVER MAXIMUM")
        .then(pl.lit("row: longer than the 2,000,000-byte limit of a CSV row"))
        .otherwise(pl.format("{}: {}", column, pl.coalesce(first_line, kind)))
    )


CSV_LINE_CUT = 10_000  # DuckDB keeps this many bytes of a rejected row's text


def _whole_row(path: Path, near: int) -> str:
    """The full text of the CSV row that starts at byte `near` (give or take a byte): from the
    newline before it to the first newline outside quotes. For the few rejected rows whose text
    DuckDB cut short."""
    with path.open("rb") as fh:
        low = max(near - 4, 0)
        fh.seek(low)
        head = fh.read(near - low)
        start = low + head.rfind(b"\n") + 1
        fh.seek(start)
        parts, quotes = [], 0
        while chunk := fh.read(1 << 20):
            data = np.frombuffer(chunk, dtype=np.uint8)
            parity = (quotes + np.cumsum(data == ord('"'))) % 2
            ends = np.flatnonzero((data == ord("\n")) & (parity == 0))
            if len(ends):
                parts.append(chunk[: ends[0]])
                break
            parts.append(chunk)
            quotes += int((data == ord('"')).sum())
    return b"".join(parts).decode("utf-8").removesuffix("\r")


def _read_csv(path: Path) -> RawTable:
    encoding = detect_encoding(path)
    warnings = _encoding_warnings(path, encoding)
    with _as_utf8(path, encoding) as utf8:
        header = _csv_header(utf8, path)
        frame, rejects = _csv_scan(utf8, len(header))
        reject_lines = rejects["line"].to_numpy().astype(np.int64)
        numbers = _row_numbers(reject_lines, frame.height)
        # One column: DuckDB keeps blank lines as (empty) rows, so its line count is exact.
        if len(reject_lines) and len(header) > 1 and _has_blank_lines(utf8):
            exact = _record_numbers(utf8, len(header), reject_lines, frame.height)
            if exact is None:
                warnings.append(f"{path}: row numbers after a blank line may be off by one or more")
            numbers = exact or numbers
        cut = (rejects["csv_line"].str.len_bytes() >= CSV_LINE_CUT - 4).arg_true()
        if len(cut):  # rows over 10 kB: rare, so one at a time
            starts = rejects["line_byte_position"].gather(cut).to_list()
            whole = [_whole_row(utf8, int(start)) for start in starts]
            rejects = rejects.with_columns(rejects["csv_line"].scatter(cut, whole))
    good_rows, reject_rows = numbers
    frame = frame.rename({f"c{i}": name for i, name in enumerate(header)}).select(
        pl.Series(ROW, good_rows, dtype=pl.Int64), *header
    )
    blank = pl.all_horizontal(pl.col(header).is_null())  # a row with no field at all
    if frame.select(blank.any()).item():
        frame = frame.filter(~blank)
    rejected = rejects.select(
        pl.Series("row_number", reject_rows, dtype=pl.Int64),
        _reject_reasons(rejects, header).alias("reason"),
        _raw_row_data(pl.col("csv_line").str.strip_chars("\r\n")).alias("row_data"),
    )
    return RawTable(path, frame, header, _rejected(rejected), encoding=encoding, warnings=warnings)


def _csv_spill(path: Path, width: int, spill: Path) -> pl.DataFrame:
    """`_csv_scan` with the good rows written to a Parquet file by DuckDB instead of returned."""
    columns = {f"c{i}": "VARCHAR" for i in range(width)}
    with scratch_duckdb() as con:
        params = {"path": str(path), "columns": columns}
        con.sql(read_sql("ingest_read_csv.sql"), params=params).to_parquet(str(spill))
        rejects = con.sql(read_sql("ingest_csv_rejects.sql")).pl()
    return rejects.unique("line", keep="first", maintain_order=True)


def csv_chunks(path: Path, rows: int) -> Iterator[RawTable] | None:
    try:
        return _csv_chunks(path, rows)
    except SourceError:
        raise
    except Exception as exc:  # as `read_table_file`: the file is unusable as a whole
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise SourceError(
            f"{path}: cannot be read as csv ({type(exc).__name__}: {detail})"
        ) from exc


def _csv_chunks(path: Path, rows: int) -> Iterator[RawTable] | None:
    """A big CSV file as `RawTable`s of at most `rows` rows, the same rows, numbers and rejects
    as `read_table_file` gives in one go: DuckDB splits the file into a temporary Parquet file,
    read back a slice at a time. None when a blank line precedes a rejected row (exact row
    numbers then need a second scan over every record: read it in one go instead)."""
    encoding = detect_encoding(path)
    warnings = _encoding_warnings(path, encoding)
    with _as_utf8(path, encoding) as utf8:
        header = _csv_header(utf8, path)
        folder = tempfile.TemporaryDirectory(prefix="recfusion-csv-")
        spill = Path(folder.name) / "rows.parquet"
        try:
            rejects = _csv_spill(utf8, len(header), spill)
            reject_lines = rejects["line"].to_numpy().astype(np.int64)
            if len(reject_lines) and len(header) > 1 and _has_blank_lines(utf8):
                folder.cleanup()
                return None
            cut = (rejects["csv_line"].str.len_bytes() >= CSV_LINE_CUT - 4).arg_true()
            if len(cut):
                starts = rejects["line_byte_position"].gather(cut).to_list()
                whole = [_whole_row(utf8, int(start)) for start in starts]
                rejects = rejects.with_columns(rejects["csv_line"].scatter(cut, whole))
        except BaseException:
            folder.cleanup()
            raise
    rejected = _rejected(
        rejects.select(
            pl.Series("row_number", reject_lines - 1, dtype=pl.Int64),
            _reject_reasons(rejects, header).alias("reason"),
            _raw_row_data(pl.col("csv_line").str.strip_chars("\r\n")).alias("row_data"),
        )
    )
    return _csv_slices(
        path, header, rows, spill, folder, reject_lines, rejected, encoding, warnings
    )


def _csv_slices(
    path: Path,
    header: list[str],
    rows: int,
    spill: Path,
    folder: tempfile.TemporaryDirectory[str],
    reject_lines: np.ndarray,
    rejected: pl.DataFrame,
    encoding: str,
    warnings: list[str],
) -> Iterator[RawTable]:
    """The slices of a spilled CSV; the first carries the rejects and warnings."""
    # As in `_row_numbers`: the k-th good row is the k-th number that is not a rejected row's.
    before = (reject_lines - 1) - np.arange(1, len(reject_lines) + 1)
    blank = pl.all_horizontal(pl.col(header).is_null())
    try:
        for i, part in enumerate(parquet_chunks(spill, rows)):
            k = part.frame[ROW].to_numpy()  # 1-based position among the good rows
            numbers = k + np.searchsorted(before, k, side="left")
            frame = part.frame.rename({f"c{j}": name for j, name in enumerate(header)}).select(
                pl.Series(ROW, numbers, dtype=pl.Int64), *header
            )
            if frame.select(blank.any()).item():
                frame = frame.filter(~blank)
            first = i == 0
            yield RawTable(
                path,
                frame,
                header,
                rejected if first else rejected.clear(),
                encoding=encoding,
                warnings=warnings if first else [],
            )
    finally:
        folder.cleanup()


# --- JSON Lines -------------------------------------------------------------------------------


def _json_lines(path: Path, encoding: str) -> pl.DataFrame:
    """(ROW, line) for every non-blank line; split a chunk at a time, carrying partial lines."""
    parts, carry, offset = [], "", 0
    for text in _text_chunks(path, encoding):
        text = carry + text
        cut = text.rfind("\n")
        if cut < 0:
            carry = text
            continue
        carry = text[cut + 1 :]
        lines = pl.Series("line", [text[:cut]]).str.split("\n").explode()
        parts.append(
            pl.DataFrame({ROW: np.arange(offset + 1, offset + len(lines) + 1)}).with_columns(lines)
        )
        offset += len(lines)
    if carry:
        parts.append(pl.DataFrame({ROW: [offset + 1], "line": [carry]}))
    if not parts:
        return pl.DataFrame(schema={ROW: pl.Int64, "line": pl.String})
    return (
        pl.concat(parts)
        .with_columns(pl.col(ROW).cast(pl.Int64), pl.col("line").str.strip_suffix("\r"))
        .filter(pl.col("line").str.strip_chars() != "")
    )


def _json_pointer(key: str) -> str:
    return "/" + key.replace("~", "~0").replace("/", "~1")


def _read_jsonl(path: Path) -> RawTable:
    encoding = detect_encoding(path)
    lines = _json_lines(path, encoding).rename({ROW: "row_number"})
    with scratch_duckdb() as con:
        con.register("lines", lines.to_arrow())
        parsed = con.sql(read_sql("ingest_jsonl_parse.sql")).pl()
        con.register("parsed", parsed.filter(pl.col("kind") == "OBJECT").to_arrow())
        keys = [k for (k,) in con.execute(read_sql("ingest_jsonl_keys.sql")).fetchall()]
        paths = [_json_pointer(k) for k in keys] or ["/"]
        values = con.sql(read_sql("ingest_jsonl_values.sql"), params={"paths": paths}).pl()
    types = {key: f"\x00type:{key}" for key in keys}
    frame = values.select(
        pl.col("row_number").alias(ROW),
        *[pl.col("vals").list.get(i).alias(key) for i, key in enumerate(keys)],
        *[pl.col("types").list.get(i).alias(types[key]) for i, key in enumerate(keys)],
    )
    bad = parsed.filter(pl.col("kind").is_null() | (pl.col("kind") != "OBJECT"))
    rejected = bad.select(
        pl.col("row_number"),
        pl.when(pl.col("kind").is_null())
        .then(pl.lit("row: not valid JSON (a truncated or malformed line)"))
        .otherwise(pl.format("row: a JSON {}, not an object", pl.col("kind").replace(JSON_KINDS)))
        .alias("reason"),
        _raw_row_data(pl.col("line")).alias("row_data"),
    )
    return RawTable(
        path, frame, keys, _rejected(rejected), types, encoding, _encoding_warnings(path, encoding)
    )


# --- Parquet ----------------------------------------------------------------------------------


def _read_parquet(path: Path) -> RawTable:
    frame = pl.read_parquet(path)
    columns = frame.columns
    frame = frame.select(pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias(ROW), *columns)
    return RawTable(path, frame, columns, _rejected())


def parquet_rows(path: Path) -> int:
    """Rows of a Parquet file from its footer alone (nothing is decoded)."""
    try:
        return int(pl.scan_parquet(path).select(pl.len()).collect().item())
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise SourceError(
            f"{path}: cannot be read as parquet ({type(exc).__name__}: {detail})"
        ) from exc


def parquet_chunks(path: Path, rows: int) -> Iterator[RawTable]:
    """A big Parquet file as `RawTable`s of at most `rows` rows, with their file row numbers, so
    only one slice is decoded at a time (50M events as one frame held over 10 GB)."""
    total = parquet_rows(path)
    scan = pl.scan_parquet(path)
    for offset in range(0, max(total, 1), rows):
        try:
            frame = scan.slice(offset, rows).collect()
        except Exception as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise SourceError(
                f"{path}: cannot be read as parquet ({type(exc).__name__}: {detail})"
            ) from exc
        columns = frame.columns
        frame = frame.select(
            pl.int_range(offset + 1, offset + frame.height + 1, dtype=pl.Int64).alias(ROW),
            *columns,
        )
        yield RawTable(path, frame, columns, _rejected())


READERS = {"parquet": _read_parquet, "csv": _read_csv, "jsonl": _read_jsonl}


def read_table_file(path: Path) -> RawTable:
    """Split one table file into rows; SourceError names the file when it cannot be read at all."""
    kind = EXTENSIONS.get(path.suffix.lower())
    if kind is None:
        raise SourceError(f"{path}: unsupported file type (use .parquet, .csv or .jsonl)")
    try:
        return READERS[kind](path)
    except SourceError:
        raise
    except Exception as exc:  # any reader failure makes the file unusable as a whole
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise SourceError(
            f"{path}: cannot be read as {kind} ({type(exc).__name__}: {detail})"
        ) from exc
