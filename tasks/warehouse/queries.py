"""Ready-made analyst queries from `sql/queries/`, run by name with named parameters.

Parameters arrive as text (from `--param k=10`); the SQL casts what it needs (`CAST($k AS
INTEGER)`), so each value is checked against that same cast before the database is opened, and a
mistake is one line naming the parameter rather than a DuckDB conversion error.

They read the analyst copy (`db`, outside the run lock), so a query never waits for a run and a
run never waits for a query.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import duckdb
import polars as pl

from tasks.warehouse.connection import connect, read_sql, sql_query_names

PARAM = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
WHOLE = re.compile(r"[+-]?[0-9]+")
INTEGER_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "INT", "BIGINT", "HUGEINT", "UTINYINT",
                 "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT"}
CAST = re.compile(r"CAST\(\s*\$([A-Za-z_][A-Za-z0-9_]*)\s+AS\s+([A-Za-z]+)\s*\)", re.IGNORECASE)


class QueryError(ValueError):
    """Unknown query, wrong parameters or no database; the message says which and what to do."""


def _body(sql: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in sql.splitlines())


def query_parameters(sql: str) -> list[str]:
    """Named parameters ($name) a query needs, ignoring comments."""
    return sorted(set(PARAM.findall(_body(sql))))


def parameter_types(sql: str) -> dict[str, str]:
    """The SQL type each parameter is cast to (e.g. {'k': 'INTEGER'}); others stay text."""
    return {name: kind.upper() for name, kind in CAST.findall(_body(sql))}


def describe(name: str) -> str:
    """The query's first comment line, plus the parameters it takes."""
    sql = read_sql(f"queries/{name}.sql")
    first = sql.splitlines()[0].lstrip("- ")
    needed = query_parameters(sql)
    return first + "".join(f" --param {p}=…" for p in needed)


def _check_types(name: str, sql: str, params: Mapping[str, str]) -> None:
    types = parameter_types(sql)
    with duckdb.connect() as con:  # in memory: the same cast the query applies
        for param, kind in sorted(types.items()):
            value = params[param]
            cast = con.execute(f"SELECT TRY_CAST($v AS {kind})", {"v": value}).fetchone()
            # DuckDB rounds '1.5' to an integer; a whole number was meant, so say so instead.
            fraction = kind in INTEGER_TYPES and not WHOLE.fullmatch(value.strip())
            if cast is None or cast[0] is None or fraction:
                raise QueryError(
                    f"query {name!r}: --param {param}={value} is not a valid {kind}"
                )


def run_query(db: str | Path, name: str, params: Mapping[str, str] | None = None) -> pl.DataFrame:
    names = sql_query_names()
    if name not in names:
        raise QueryError(f"unknown query {name!r}; available: {', '.join(names)}")
    sql = read_sql(f"queries/{name}.sql")
    needed = query_parameters(sql)
    params = dict(params or {})
    unknown = sorted(set(params) - set(needed))
    if unknown:
        takes = f"takes --param {', '.join(needed)}" if needed else "takes no parameters"
        raise QueryError(f"query {name!r} has no parameter {', '.join(unknown)}; it {takes}")
    missing = [p for p in needed if p not in params]
    if missing:
        raise QueryError(
            f"query {name!r} needs --param {' --param '.join(m + '=…' for m in missing)}"
        )
    _check_types(name, sql, params)
    if not Path(db).is_file():  # read-only connect never creates one; say so before trying
        raise QueryError(f"no database file at {db} (give --db, or run `recfusion run` first)")
    with connect(db, read_only=True) as con:
        try:
            return con.sql(sql, params={p: params[p] for p in needed}).pl()
        except duckdb.CatalogException as exc:
            detail = str(exc).splitlines()[0]
            raise QueryError(
                f"database {db} has no recfusion tables yet ({detail}); run `recfusion run` on it"
            ) from None
