"""Property-based ingest suite: random mixes of good and bad rows, in every format.

For any file hypothesis builds (CSV, Parquet or JSON Lines; UTF-8, UTF-8 with a BOM, UTF-16,
Latin-1; lists, structs, nulls and huge values; ragged, truncated and blank lines; shuffled and
unknown columns) the invariant holds: every good row lands exactly once (the later of two rows
with one key winning), every bad row is quarantined once at its file and row with a reason naming
its column ("row" when it cannot even be split into fields), the rows already in the warehouse do
not change, ingest never crashes, and ingesting the same file again changes nothing.

Real files and real DuckDB files, through `tasks.sources.ingest.read_source` and `load_source`.
RECFUSION_HYPOTHESIS_EXAMPLES sets the number of examples across the four tests (default 120).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import struct
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.sources.ingest import IngestReport, load_source, read_source
from tasks.warehouse.connection import apply_schema, connect

pytestmark = pytest.mark.slow  # hundreds of generated sources through the real ingest

TOTAL_EXAMPLES = int(os.environ.get("RECFUSION_HYPOTHESIS_EXAMPLES", "120"))
SHARES = {"events": 0.4, "items": 0.25, "users": 0.15, "social": 0.2}
CASES_RUN: Counter[str] = Counter()


def _settings(table: str) -> settings:
    return settings(
        max_examples=max(1, round(TOTAL_EXAMPLES * SHARES[table])),
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --- what a case is ---------------------------------------------------------------------------

#: Latin-1 text, and beyond it: quotes, commas, pipes and newlines exercise CSV quoting.
LATIN1 = "abcxyzAZ09 ,;'\"|-_éèñßÄÿ¿\n"
WIDE = LATIN1 + "€中語😀ł"
ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "latin-1"]
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Row:
    """One generated row: its cells as the format holds them, and what ingest must do with it."""

    cells: dict[str, Any]  # a key missing: the field is absent (JSON Lines)
    problem: str | None = None  # the column the quarantine reason must name
    expect: tuple[Any, ...] | None = None  # the stored row of a good row (before decoding)
    key: Any = None  # rows with one key collapse: the later good row wins
    line: str | None = None  # written verbatim instead of cells (a broken line)
    fields: list[str | None] | None = None  # CSV: written as these fields (a ragged row)


@dataclass
class Case:
    table: str
    fmt: str
    encoding: str
    columns: list[str]
    rows: list[Row]
    schema: dict[str, pl.DataType] = field(default_factory=dict)  # Parquet column types
    blank_after: frozenset[int] = frozenset()
    newline: str = "\n"


def _ids(alphabet: str) -> st.SearchStrategy[str]:
    return st.text(alphabet, min_size=1, max_size=6).filter(lambda s: s == s.strip() and s != "")


def _text(alphabet: str) -> st.SearchStrategy[str]:
    return st.text(alphabet, max_size=8)


def _alphabet(encoding: str) -> str:
    return LATIN1 if encoding == "latin-1" else WIDE


@st.composite
def _format(draw: st.DrawFn) -> tuple[str, str]:
    fmt = draw(st.sampled_from(["csv", "jsonl", "parquet"]))
    return fmt, "utf-8" if fmt == "parquet" else draw(st.sampled_from(ENCODINGS))


def _blank_rows(draw: st.DrawFn, rows: list[Row]) -> frozenset[int]:
    if not rows:
        return frozenset()
    return frozenset(draw(st.sets(st.integers(-1, len(rows) - 1), max_size=2)))


def _broken(draw: st.DrawFn, case_fmt: str, columns: list[str], good: dict[str, str]) -> Row:
    """A row that cannot be split into fields: ragged in CSV, broken or not an object in JSONL."""
    fields: list[str | None] = [good.get(c) for c in columns]
    if case_fmt == "csv":
        if draw(st.booleans()) or len(columns) == 1:
            return Row({}, "row", fields=[*fields, "extra"])
        return Row({}, columns[-1], fields=fields[:-1])
    if draw(st.booleans()):
        return Row({}, "row", line=json.dumps(good, ensure_ascii=False)[:-1])  # truncated
    other = draw(st.sampled_from(["[1, 2]", "42", '"text"', "null", "true"]))
    return Row({}, "row", line=other)


# --- events -----------------------------------------------------------------------------------

TIMES = st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(2025, 12, 31), timezones=st.just(UTC)
)


def _ts_cell(draw: st.DrawFn, fmt: str, ts_type: str) -> tuple[Any, int]:
    """A timestamp as the file writes it, and the epoch microseconds ingest must store."""
    t = draw(TIMES)
    if fmt == "parquet" and ts_type == "datetime":
        return t, _us(t)
    shape = draw(st.sampled_from(["iso", "zulu", "space", "date", "offset", "epoch"]))
    if shape == "iso":
        return t.strftime("%Y-%m-%dT%H:%M:%S.%f"), _us(t)
    if shape == "zulu":
        t = t.replace(microsecond=0)
        return t.strftime("%Y-%m-%dT%H:%M:%SZ"), _us(t)
    if shape == "space":
        t = t.replace(microsecond=0)
        return t.strftime("%Y-%m-%d %H:%M:%S"), _us(t)
    if shape == "date":
        day = t.replace(hour=0, minute=0, second=0, microsecond=0)
        return t.strftime("%Y-%m-%d"), _us(day)
    if shape == "offset":
        t = t.replace(microsecond=0)
        local = t.astimezone(timezone(timedelta(hours=2)))
        return local.strftime("%Y-%m-%dT%H:%M:%S+02:00"), _us(t)
    t = t.replace(microsecond=0)
    seconds = int(t.timestamp())
    return (seconds if fmt == "jsonl" and draw(st.booleans()) else str(seconds)), _us(t)


def _us(t: datetime) -> int:
    return (t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


FINITE = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, 2.5, 1e308, -1e308, 5e-324]),
    st.floats(allow_nan=False, allow_infinity=False),
)


def _value_cell(draw: st.DrawFn, fmt: str) -> tuple[Any, float]:
    if draw(st.integers(0, 4)) == 0:
        return None, 1.0
    v = draw(FINITE)
    if fmt == "csv" or (fmt == "jsonl" and draw(st.booleans())):
        return repr(v), v
    return v, v


@st.composite
def events_case(draw: st.DrawFn) -> Case:
    fmt, encoding = draw(_format())
    alphabet = _alphabet(encoding)
    columns = ["user_id", "item_id", "event_type", "ts"]
    with_value, with_event_id = draw(st.booleans()), draw(st.booleans())
    columns += ["value"] * with_value + ["event_id"] * with_event_id
    extra = draw(st.booleans())
    columns += ["colour"] * extra  # an unknown column: ignored with a warning
    columns = draw(st.permutations(columns))
    ts_type = draw(st.sampled_from(["datetime", "text"])) if fmt == "parquet" else "text"
    schema: dict[str, pl.DataType] = {c: pl.String() for c in columns}
    if fmt == "parquet":
        schema["ts"] = pl.Datetime("us", "UTC") if ts_type == "datetime" else pl.String()
        if with_value:
            schema["value"] = pl.Float64()
        if extra:
            schema["colour"] = pl.List(pl.String())
    problems = ["user_id", "item_id", "event_type", "ts", "ts_future"]
    problems += ["value"] * with_value + ["row"] * (fmt != "parquet")
    problems += ["nested"] * (fmt == "jsonl")
    rows = []
    for _ in range(draw(st.integers(0, 10))):
        cells: dict[str, Any] = {
            "user_id": draw(_ids(alphabet)),
            "item_id": draw(_ids(alphabet)),
            "event_type": draw(st.sampled_from(["view", "click", "purchase", "odd type"])),
        }
        cells["ts"], ts_us = _ts_cell(draw, fmt, ts_type)
        value = 1.0
        if with_value:
            cells["value"], value = _value_cell(draw, fmt)
        event_id = None
        if with_event_id:
            event_id = draw(st.one_of(st.none(), st.integers(0, 6).map(lambda i: f"e{i}")))
            cells["event_id"] = event_id
        if extra:
            cells["colour"] = draw(st.lists(_text(alphabet), max_size=2)) if fmt != "csv" else "red"
            if fmt == "jsonl" and draw(st.booleans()):
                cells["colour"] = {"r": 1, "list": [1.5, None]}
        if draw(st.integers(0, 2)) > 0:  # good
            expect = (cells["user_id"], cells["item_id"], cells["event_type"], value, ts_us)
            key = event_id or (*expect[:3], struct.pack("<d", value), ts_us)
            rows.append(Row(cells, expect=expect, key=key))
            continue
        problem = draw(st.sampled_from(problems))
        if problem == "row":
            rows.append(_broken(draw, fmt, columns, _as_text(cells)))
            continue
        if problem in ("user_id", "item_id", "event_type"):
            cells[problem] = draw(st.sampled_from([None, "", "  "] if fmt != "parquet" else [None]))
        elif problem == "ts":
            bad_ts = [None] if ts_type == "datetime" else [None, "2024-13-99", "yesterday", " "]
            cells["ts"] = draw(st.sampled_from(bad_ts))
        elif problem == "ts_future":
            problem = "ts"
            future = datetime(2999, 1, 1, tzinfo=UTC)
            cells["ts"] = future if ts_type == "datetime" else "2999-01-01"
        elif problem == "value":
            bad_values: list[Any] = [math.nan, math.inf, -math.inf]
            if fmt != "parquet":
                bad_values = ["abc", "NaN", "inf", "-Infinity", "1e999", "1,5"]
            if fmt == "jsonl":
                bad_values += [math.nan, math.inf]
            cells["value"] = draw(st.sampled_from(bad_values))
        elif problem == "nested":
            problem = draw(st.sampled_from(["user_id", "ts", *(["event_id"] * with_event_id)]))
            cells[problem] = draw(st.sampled_from([["x"], {"a": 1}]))
        rows.append(Row(cells, problem))
    return Case("events", fmt, encoding, columns, rows, schema, _blank_rows(draw, rows))


def _as_text(cells: dict[str, Any]) -> dict[str, str]:
    return {k: v if isinstance(v, str) else json.dumps(v, default=str) for k, v in cells.items()}


# --- items ------------------------------------------------------------------------------------


@st.composite
def items_case(draw: st.DrawFn) -> Case:
    fmt, encoding = draw(_format())
    alphabet = _alphabet(encoding)
    optional = draw(st.sets(st.sampled_from(["title", "text", "tags", "category", "embedding"])))
    columns = draw(st.permutations(["item_id", *sorted(optional)]))
    dims = draw(st.integers(1, 3))
    emb_type = draw(st.sampled_from(["list", "list32", "text"])) if fmt == "parquet" else "text"
    schema: dict[str, pl.DataType] = {c: pl.String() for c in columns}
    if fmt == "parquet" and "tags" in columns:
        schema["tags"] = pl.List(pl.String())
    if fmt == "parquet" and "embedding" in columns and emb_type != "text":
        schema["embedding"] = pl.List(pl.Float64() if emb_type == "list" else pl.Float32())
    tag = st.text(alphabet.replace("|", "").replace("\n", ""), max_size=5).filter(
        lambda t: not t.strip().startswith("[")
    )
    problems = ["item_id", "embedding"] * ("embedding" in columns) + ["item_id"]
    problems += ["row"] * (fmt != "parquet") + ["nested"] * (fmt == "jsonl")
    rows = []
    for _ in range(draw(st.integers(0, 8))):
        cells: dict[str, Any] = {"item_id": draw(st.sampled_from(["a", "b", "c", "d", "é", "中"]))}
        if encoding == "latin-1" and cells["item_id"] == "中":
            cells["item_id"] = "ß"
        expect: dict[str, Any] = {"item_id": cells["item_id"]}
        for c in ("title", "text", "category"):
            if c in columns:
                cells[c] = draw(st.one_of(st.none(), _text(alphabet)))
                expect[c] = (cells[c] or "").strip() or None
        if "tags" in columns:
            tags = draw(st.one_of(st.none(), st.lists(tag, max_size=3)))
            cells["tags"], expect["tags"] = _tags_cell(draw, fmt, tags)
        emb: list[float] | None = None
        if "embedding" in columns:
            emb = draw(st.one_of(st.none(), st.lists(_emb_value(), min_size=dims, max_size=dims)))
            cells["embedding"] = _emb_cell(draw, fmt, emb_type, emb)
            expect["embedding"] = emb
        row = Row(cells, key=cells["item_id"])
        if draw(st.integers(0, 2)) == 0:
            problem = draw(st.sampled_from(problems))
            if problem == "row":
                row = _broken(draw, fmt, columns, _as_text(cells))
            elif problem == "item_id":
                cells["item_id"] = None if fmt == "parquet" else draw(st.sampled_from([None, " "]))
                row.problem = "item_id"
            elif problem == "embedding":
                bad = draw(
                    st.sampled_from(
                        [[math.nan] * dims, [math.inf] * dims, [1e39] * dims, [0.5] * (dims + 3)]
                    )
                )
                if emb_type == "list32" and bad[0] == 1e39:
                    bad = [math.inf] * dims
                cells["embedding"] = _emb_cell(draw, fmt, emb_type, bad)
                if emb_type == "text" and draw(st.booleans()):
                    cells["embedding"] = draw(st.sampled_from(["[a, b]", "nope", "[1,,2]", "1, 2"]))
                row.problem = "embedding"
            elif problem == "nested":
                column = draw(st.sampled_from(["item_id", *[c for c in columns if c != "item_id"]]))
                cells[column] = {"not": "a value"}
                row.problem = column
        if row.problem is None:
            row.expect = tuple(expect.get(c) for c in ITEM_COLUMNS)
        rows.append(row)
    return Case("items", fmt, encoding, columns, rows, schema, _blank_rows(draw, rows))


ITEM_COLUMNS = ("item_id", "title", "text", "tags", "category", "embedding")


def _emb_value() -> st.SearchStrategy[float]:
    return st.one_of(st.sampled_from([0.0, 1.0, -0.5]), st.floats(-1e6, 1e6, width=32))


def _emb_cell(draw: st.DrawFn, fmt: str, emb_type: str, emb: list[float] | None) -> Any:
    if emb is None:
        return None
    if fmt == "jsonl" and draw(st.booleans()):
        return emb
    if emb_type != "text":
        return emb
    return "[" + draw(st.sampled_from([",", ", "])).join(repr(v) for v in emb) + "]"


def _tags_cell(draw: st.DrawFn, fmt: str, tags: list[str] | None) -> tuple[Any, Any]:
    if tags is None:
        return None, None
    cleaned = [t.strip() for t in tags if t.strip()]
    if fmt == "parquet":
        return tags, cleaned
    if fmt == "jsonl" and draw(st.booleans()):
        return tags, cleaned
    if draw(st.booleans()):
        return json.dumps(tags, ensure_ascii=False), cleaned
    text = "|".join(tags)
    if text.strip() == "":
        return None, None  # an empty field: no tags at all
    return text, cleaned


# --- users ------------------------------------------------------------------------------------

ATTRIBUTES = ["country", "age", "hobbies", "address", "score", "joined", "Ünï attr"]


@st.composite
def users_case(draw: st.DrawFn) -> Case:
    fmt, encoding = draw(_format())
    alphabet = _alphabet(encoding)
    attributes = sorted(draw(st.sets(st.sampled_from(ATTRIBUTES), max_size=4)))
    columns = draw(st.permutations(["user_id", *attributes]))
    schema: dict[str, pl.DataType] = {c: pl.String() for c in columns}
    if fmt == "parquet":
        schema |= {
            k: v
            for k, v in {
                "age": pl.Int64(),
                "hobbies": pl.List(pl.String()),
                "address": pl.Struct({"city": pl.String(), "zip": pl.Int64()}),
                "score": pl.Float64(),
                "joined": pl.Datetime("us", "UTC"),
            }.items()
            if k in columns
        }
    rows = []
    for _ in range(draw(st.integers(0, 8))):
        cells: dict[str, Any] = {"user_id": draw(_ids(alphabet))}
        for a in attributes:
            cells[a] = draw(_attribute(fmt, a, alphabet))
        row = Row(cells, key=cells["user_id"])
        if draw(st.integers(0, 3)) == 0:
            problem = draw(st.sampled_from(["user_id"] + ["row"] * (fmt != "parquet")))
            if problem == "row":
                row = _broken(draw, fmt, columns, _as_text(cells))
            else:
                missing: list[Any] = [None] if fmt == "parquet" else [None, "", " "]
                if fmt == "jsonl":
                    missing.append(["u1"])
                cells["user_id"] = draw(st.sampled_from(missing))
                row.problem = "user_id"
        if row.problem is None:
            row.expect = (cells["user_id"], {a: _attribute_json(fmt, cells[a]) for a in attributes})
        rows.append(row)
    return Case("users", fmt, encoding, columns, rows, schema, _blank_rows(draw, rows))


ANY = (
    "\x00any"  # an attribute whose stored JSON this suite does not predict (only that it is valid)
)


def _attribute_json(fmt: str, value: Any) -> Any:
    """A user attribute in the stored JSON: text for CSV and JSON Lines, typed for Parquet."""
    if value is None or (fmt == "csv" and value == ""):
        return None
    if fmt == "jsonl":
        return value if isinstance(value, str) else ANY  # numbers and lists: as their JSON text
    if isinstance(value, float) and not math.isfinite(value):
        return {math.inf: "inf", -math.inf: "-inf"}.get(value, "NaN")
    if isinstance(value, datetime):
        return ANY
    return value


def _attribute(fmt: str, name: str, alphabet: str) -> st.SearchStrategy[Any]:
    text = _text(alphabet)
    if fmt == "csv":
        return st.one_of(st.none(), text)
    if fmt == "jsonl":
        json_values = st.recursive(
            st.one_of(
                st.none(),
                st.booleans(),
                st.integers(-(2**70), 2**70),
                FINITE,
                text,
                st.sampled_from([math.nan, math.inf]),
            ),
            lambda inner: st.one_of(
                st.lists(inner, max_size=3), st.dictionaries(text, inner, max_size=2)
            ),
            max_leaves=5,
        )
        return json_values
    typed: dict[str, st.SearchStrategy[Any]] = {
        "age": st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
        "hobbies": st.one_of(st.none(), st.lists(st.one_of(st.none(), text), max_size=3)),
        "address": st.one_of(
            st.none(),
            st.fixed_dictionaries(
                {
                    "city": st.one_of(st.none(), text),
                    "zip": st.one_of(st.none(), st.integers(0, 99999)),
                }
            ),
        ),
        "score": st.one_of(st.none(), FINITE, st.sampled_from([math.nan, math.inf, -math.inf])),
        "joined": st.one_of(st.none(), TIMES),
    }
    return typed.get(name, st.one_of(st.none(), text))


# --- social -----------------------------------------------------------------------------------


@st.composite
def social_case(draw: st.DrawFn) -> Case:
    fmt, encoding = draw(_format())
    optional = draw(st.sets(st.sampled_from(["weight", "ts"])))
    columns = draw(st.permutations(["user_id", "friend_id", *sorted(optional)]))
    schema: dict[str, pl.DataType] = {c: pl.String() for c in columns}
    if fmt == "parquet" and "weight" in columns:
        schema["weight"] = pl.Float64()
    problems = ["user_id", "friend_id", "self"] + ["weight"] * ("weight" in columns)
    problems += ["ts"] * ("ts" in columns) + ["row"] * (fmt != "parquet")
    users = st.sampled_from(["u1", "u2", "ü3", "u 4"])
    rows = []
    for _ in range(draw(st.integers(0, 8))):
        user, friend = draw(users), draw(users)
        if user == friend:
            friend = user + "x"
        cells: dict[str, Any] = {"user_id": user, "friend_id": friend}
        weight, ts_us = 1.0, None
        if "weight" in columns and draw(st.booleans()):
            weight = draw(st.sampled_from([0.0, 0.5, 3.0, 1e308]))
            cells["weight"] = weight if fmt != "csv" else repr(weight)
        if "ts" in columns and draw(st.booleans()):
            cells["ts"], ts_us = _ts_cell(draw, fmt, "text")
        row = Row(cells, key=(user, friend))
        if draw(st.integers(0, 2)) == 0:
            problem = draw(st.sampled_from(problems))
            if problem == "row":
                row = _broken(draw, fmt, columns, _as_text(cells))
            elif problem in ("user_id", "friend_id"):
                cells[problem] = None if fmt == "parquet" else draw(st.sampled_from([None, " "]))
                row.problem = problem
            elif problem == "self":
                cells["friend_id"] = user
                row.problem = "friend_id"
            elif problem == "weight":
                bad: list[Any] = [-1.0, math.nan, math.inf]
                cells["weight"] = draw(st.sampled_from(bad if fmt == "parquet" else [*bad, "x"]))
                if fmt == "csv":
                    cells["weight"] = str(cells["weight"])
                row.problem = "weight"
            else:
                cells["ts"] = "2024-13-99"
                row.problem = "ts"
        if row.problem is None:
            row.expect = (user, friend, weight, ts_us)
        rows.append(row)
    return Case("social", fmt, encoding, columns, rows, schema, _blank_rows(draw, rows))


# --- writing a case ---------------------------------------------------------------------------


def _csv_line(fields: list[Any]) -> str:
    buf = io.StringIO()  # "\r\n" as terminator: a field holding either character is quoted
    csv.writer(buf, lineterminator="\r\n").writerow(["" if f is None else f for f in fields])
    return buf.getvalue().removesuffix("\r\n")


def _csv_cell(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


def write_case(case: Case, folder: Path) -> Path:
    path = folder / f"{case.table}.{case.fmt}"
    if case.fmt == "parquet":
        data = {c: [r.cells.get(c) for r in case.rows] for c in case.columns}
        pl.DataFrame(data, schema=case.schema).write_parquet(path)
        return path
    lines: list[str] = []
    if case.fmt == "csv":
        lines.append(_csv_line(case.columns))
    if -1 in case.blank_after:
        lines.append("")
    for i, row in enumerate(case.rows):
        if row.line is not None:
            lines.append(row.line)
        elif case.fmt == "csv":
            fields = (
                row.fields
                if row.fields is not None
                else [_csv_cell(row.cells.get(c)) for c in case.columns]
            )
            lines.append(_csv_line(fields))
        else:
            escaped = i % 2 == 0 and case.encoding != "latin-1"  # "\u00e9" or é itself
            lines.append(json.dumps(row.cells, ensure_ascii=escaped, default=str))
        if i in case.blank_after:
            lines.append("")
    text = case.newline.join(lines) + case.newline
    path.write_bytes(text.encode(case.encoding))
    return path


def _decoder(case: Case, path: Path) -> Callable[[Any], Any]:
    """How a written string reads back: Latin-1 bytes that happen to be UTF-8 read as UTF-8."""
    if case.encoding != "latin-1":
        return lambda s: s
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return lambda s: s
    return lambda s: s.encode("latin-1").decode("utf-8") if isinstance(s, str) else s


def _row_numbers(case: Case) -> list[int]:
    """The row number ingest gives each generated row (see tasks.sources.files)."""
    numbers, n = [], 0
    blank_is_row = case.fmt == "jsonl" or (case.fmt == "csv" and len(case.columns) == 1)
    if -1 in case.blank_after and blank_is_row:
        n += 1
    for i in range(len(case.rows)):
        n += 1
        numbers.append(n)
        if i in case.blank_after and blank_is_row and case.fmt != "parquet":
            n += 1
    return numbers


def _is_blank_csv_row(case: Case, row: Row) -> bool:
    if case.fmt != "csv" or row.line is not None or row.fields is not None:
        return False
    return all(_csv_cell(row.cells.get(c)) in (None, "") for c in case.columns)


# --- the warehouse before and after -----------------------------------------------------------

SEED = {
    "events.csv": "event_id,user_id,item_id,event_type,ts\n"
    "seed-e1,seed-u1,seed-i1,view,2020-01-01\n"
    "seed-u2,,view,2020-01-01\n",  # a bad row: the seed has quarantine rows too
    "items.csv": "item_id,title\nseed-i1,Seed\n",
    "users.csv": "user_id,country\nseed-u1,NL\n",
    "social.csv": "user_id,friend_id\nseed-u1,seed-u2\n",
}
TABLES = ("events", "items", "users", "social", "quarantine")
EVENTS_ONLY = "user_id,item_id,event_type,ts\nu,i,view,2020-01-01\n"  # beside a side table


@pytest.fixture(scope="module", autouse=True)
def _case_count(request: pytest.FixtureRequest) -> Iterator[None]:
    """Reports how many cases the invariant was checked on (the closing note quotes it)."""
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None and CASES_RUN:
        with capture.global_and_fixture_disabled():
            reporter.write_line(
                f"\ningest invariant checked on {sum(CASES_RUN.values())} cases: {dict(CASES_RUN)}"
            )


@pytest.fixture(scope="module")
def seeded_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A warehouse that already holds rows from another source (which must never change)."""
    folder = tmp_path_factory.mktemp("seed")
    for name, text in SEED.items():
        (folder / name).write_text(text)
    db = folder / "seed.duckdb"
    with connect(db) as con:
        apply_schema(con)
        load_source(con, read_source(folder), "seed")
    return db


def _snapshot(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple[Any, ...]]]:
    return {
        t: sorted(
            con.execute(
                f"SELECT * EXCLUDE (quarantined_at) FROM raw.{t}"
                if t == "quarantine"
                else f"SELECT * FROM raw.{t}"
            ).fetchall(),
            key=repr,
        )
        for t in TABLES
    }


@contextmanager
def _workspace(seeded_db: Path) -> Iterator[tuple[Path, Path]]:
    with tempfile.TemporaryDirectory(prefix="recfusion-prop-") as tmp:
        folder = Path(tmp) / "src"
        folder.mkdir()
        db = Path(tmp) / "w.duckdb"
        shutil.copy(seeded_db, db)
        yield folder, db


def _strict_json(text: str) -> Any:
    def reject(token: str) -> Any:
        raise ValueError(f"not strict JSON: {token}")

    return json.loads(text, parse_constant=reject)


def check_invariant(
    case: Case, seeded_db: Path, stored: Callable[[duckdb.DuckDBPyConnection, str], list[Any]]
) -> None:
    """Ingest the case twice and check the invariant; `stored` reads the table's rows back."""
    CASES_RUN[case.table] += 1
    with _workspace(seeded_db) as (folder, db), connect(db) as con:
        path = write_case(case, folder)
        source_file = os.path.abspath(path)
        if case.table != "events":
            (folder / "events.csv").write_text(EVENTS_ONLY)
        before = _snapshot(con)
        report = load_source(con, read_source(folder, now=NOW), "case")
        after = _snapshot(con)
        decode = _decoder(case, path)
        numbers = _row_numbers(case)
        counted = [
            (n, r)
            for n, r in zip(numbers, case.rows, strict=True)
            if not _is_blank_csv_row(case, r)
        ]

        # every bad row quarantined once, at its file and row, with a reason naming its column
        quarantined = con.execute(
            "SELECT row_number, reason, row_data, source_file FROM raw.quarantine "
            "WHERE run_id = 'case' ORDER BY row_number"
        ).fetchall()
        expected_bad = _embedding_dims(case, counted)
        bad_numbers = {n for n, _ in expected_bad}
        assert [q[0] for q in quarantined] == [n for n, _ in expected_bad], (
            quarantined,
            expected_bad,
        )
        for (_, reason, row_data, file), (_, problem) in zip(
            quarantined, expected_bad, strict=True
        ):
            assert f"{problem}:" in reason, (reason, problem)
            assert file == source_file
            assert isinstance(_strict_json(row_data), dict)
        assert report.quarantined[case.table] == len(expected_bad)
        assert report.read[case.table] == len(counted)

        # every good row lands exactly once (the later row of one key wins)
        latest: dict[Any, tuple[Any, ...]] = {}
        for n, r in counted:
            if n not in bad_numbers:
                assert r.expect is not None
                key = _decoded_key(r.key, decode)
                latest.pop(key, None)
                latest[key] = tuple(_decode_deep(v, decode) for v in r.expect)
        rows = _unpredicted(stored(con, source_file), latest)
        assert Counter(map(_freeze, rows)) == Counter(map(_freeze, latest.values()))
        assert report.added[case.table] == len(latest) and report.updated[case.table] == 0

        # nothing else changes: the rows of the source ingested before stay as they were
        seed = str(seeded_db.parent)
        for table in TABLES:
            seed_rows = [r for r in before[table] if seed in repr(r)]
            assert seed_rows and [r for r in after[table] if seed in repr(r)] == seed_rows, table

        # and the same file again changes nothing at all
        again: IngestReport = load_source(con, read_source(folder, now=NOW), "again")
        assert _snapshot(con) == after
        assert sum(again.added.values()) == 0 and sum(again.updated.values()) == 0


def _embedding_dims(case: Case, counted: list[tuple[int, Row]]) -> list[tuple[int, str]]:
    """The bad rows: a good row whose embedding has other dims than most rows' is bad too."""
    expected_bad = [(n, r.problem) for n, r in counted if r.problem is not None]
    if case.table != "items" or "embedding" not in case.columns:
        return expected_bad
    dims = [
        len(r.expect[5]) for _, r in counted if r.expect is not None and r.expect[5] is not None
    ]
    dims += [
        len(r.cells["embedding"])
        for _, r in counted
        if r.problem is not None
        and isinstance(r.cells.get("embedding"), list)
        and all(isinstance(v, float) for v in r.cells["embedding"])
    ] + [
        len(v.strip("[]").split(","))
        for _, r in counted
        if r.problem is not None and isinstance(v := r.cells.get("embedding"), str) and _parses(v)
    ]
    if not dims:
        return expected_bad
    counts = Counter(dims)
    mode = min(d for d, c in counts.items() if c == max(counts.values()))
    out = dict(expected_bad)
    for n, r in counted:
        if r.expect is not None and r.expect[5] is not None and len(r.expect[5]) != mode:
            out.setdefault(n, "embedding")
            r.problem = "embedding"
    return sorted(out.items())


def _parses(text: str) -> bool:
    body = text.strip()
    if not (body.startswith("[") and body.endswith("]")):
        return False
    inner = body[1:-1].strip()
    if not inner:
        return True
    try:
        [float(x) for x in inner.split(",")]
    except ValueError:
        return False
    return True


def _decode_deep(value: Any, decode: Callable[[Any], Any]) -> Any:
    if isinstance(value, list):
        return [_decode_deep(v, decode) for v in value]
    if isinstance(value, dict):
        return {decode(k): _decode_deep(v, decode) for k, v in value.items()}
    return value if value == ANY else decode(value)


def _unpredicted(rows: list[Any], latest: dict[Any, tuple[Any, ...]]) -> list[Any]:
    """Stored user attributes, with ANY wherever the expected row has ANY."""
    expected = {row[0]: row[1] for row in latest.values() if len(row) == 2}
    out = []
    for row in rows:
        if len(row) == 2 and isinstance(row[1], dict) and row[0] in expected:
            want = expected[row[0]]
            row = (row[0], {k: ANY if want.get(k) == ANY else v for k, v in row[1].items()})
        out.append(row)
    return out


def _decoded_key(key: Any, decode: Callable[[Any], Any]) -> Any:
    return tuple(decode(k) for k in key) if isinstance(key, tuple) else decode(key)


def _freeze(row: Any) -> Any:
    if isinstance(row, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in row.items()))
    if isinstance(row, list | tuple):
        return tuple(_freeze(v) for v in row)
    if isinstance(row, float):
        return struct.pack("<d", row)
    return row


# --- the four properties ----------------------------------------------------------------------


def _events_stored(con: duckdb.DuckDBPyConnection, source_file: str) -> list[Any]:
    return con.execute(
        "SELECT user_id, item_id, event_type, value, epoch_us(ts) FROM raw.events "
        "WHERE source_file = ?",
        [source_file],
    ).fetchall()


def _items_stored(con: duckdb.DuckDBPyConnection, source_file: str) -> list[Any]:
    rows = con.execute(
        "SELECT item_id, title, text, tags, category, embedding FROM raw.items "
        "WHERE source_file = ?",
        [source_file],
    ).fetchall()
    return [(*r[:5], None if r[5] is None else _f32(r[5])) for r in rows]


def _f32(values: list[float]) -> list[float]:
    """As FLOAT[] stores them (+ 0.0: an embedding's -0.0 may come back as 0.0, equal anyway)."""
    return [float(np.float32(v)) + 0.0 for v in values]


def _users_stored(con: duckdb.DuckDBPyConnection, source_file: str) -> list[Any]:
    rows = con.execute(
        "SELECT user_id, attributes FROM raw.users WHERE source_file = ?", [source_file]
    ).fetchall()
    return [(user_id, _strict_json(attributes)) for user_id, attributes in rows]


def _social_stored(con: duckdb.DuckDBPyConnection, source_file: str) -> list[Any]:
    return con.execute(
        "SELECT user_id, friend_id, weight, epoch_us(ts) FROM raw.social WHERE source_file = ?",
        [source_file],
    ).fetchall()


def _float32_embeddings(case: Case) -> Case:
    for r in case.rows:
        if r.expect is not None and r.expect[5] is not None:
            r.expect = (*r.expect[:5], _f32(r.expect[5]))
    return case


@_settings("events")
@given(case=events_case(), newline=st.sampled_from(["\n", "\r\n"]))
def test_every_good_event_lands_once_and_every_bad_one_is_quarantined(
    seeded_db: Path, case: Case, newline: str
):
    case.newline = newline
    check_invariant(case, seeded_db, _events_stored)


@_settings("items")
@given(case=items_case())
def test_every_good_item_lands_once_and_every_bad_one_is_quarantined(seeded_db: Path, case: Case):
    check_invariant(_float32_embeddings(case), seeded_db, _items_stored)


@_settings("users")
@given(case=users_case())
def test_every_good_user_lands_once_and_every_bad_one_is_quarantined(seeded_db: Path, case: Case):
    check_invariant(case, seeded_db, _users_stored)


@_settings("social")
@given(case=social_case(), newline=st.sampled_from(["\n", "\r\n"]))
def test_every_good_tie_lands_once_and_every_bad_one_is_quarantined(
    seeded_db: Path, case: Case, newline: str
):
    case.newline = newline
    check_invariant(case, seeded_db, _social_stored)
