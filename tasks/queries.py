"""Ready-made analyst queries from `sql/queries/`, run by name with named parameters."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import polars as pl

from tasks.warehouse import connect, read_sql, sql_query_names

PARAM = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


class QueryError(ValueError):
    """Unknown query or missing parameter; the message says which and what is available."""


def query_parameters(sql: str) -> list[str]:
    """Named parameters ($name) a query needs, ignoring comments."""
    body = "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
    return sorted(set(PARAM.findall(body)))


def run_query(db: str | Path, name: str, params: Mapping[str, str] | None = None) -> pl.DataFrame:
    names = sql_query_names()
    if name not in names:
        raise QueryError(f"unknown query {name!r}; available: {', '.join(names)}")
    sql = read_sql(f"queries/{name}.sql")
    needed = query_parameters(sql)
    params = dict(params or {})
    missing = [p for p in needed if p not in params]
    if missing:
        raise QueryError(
            f"query {name!r} needs --param {' --param '.join(m + '=…' for m in missing)}"
        )
    with connect(db, read_only=True) as con:
        return con.sql(sql, params={p: params[p] for p in needed}).pl()
