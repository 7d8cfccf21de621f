"""Every published table, view and column says what it holds (COMMENT ON, sql/comments.sql).

Analysts' SQL clients show these comments; a table or column added without one fails here.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
from support import query

from tasks.warehouse.connection import apply_schema


def undescribed(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Every table, view and column of the database without a comment."""
    rows = con.execute(
        """
        SELECT 'table ' || schema_name || '.' || table_name FROM duckdb_tables()
        WHERE NOT internal AND database_name = current_database() AND coalesce(comment, '') = ''
        UNION ALL
        SELECT 'view ' || schema_name || '.' || view_name FROM duckdb_views()
        WHERE NOT internal AND database_name = current_database() AND coalesce(comment, '') = ''
        UNION ALL
        SELECT 'column ' || schema_name || '.' || table_name || '.' || column_name
        FROM duckdb_columns()
        WHERE NOT internal AND database_name = current_database() AND coalesce(comment, '') = ''
        ORDER BY 1
        """
    ).fetchall()
    return [r[0] for r in rows]


def test_every_table_view_and_column_of_the_schema_has_a_comment(tmp_path: Path) -> None:
    with duckdb.connect(str(tmp_path / "rf.duckdb")) as con:
        apply_schema(con)
        relations = con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE NOT internal"
        ).fetchone()
        assert relations is not None and relations[0] >= 10  # the schema is really there
        assert undescribed(con) == []
        apply_schema(con)  # the next run replaces the views: their comments come back with them
        assert undescribed(con) == []


def test_a_database_from_before_the_new_columns_gets_them_with_comments(tmp_path: Path) -> None:
    db = tmp_path / "old.duckdb"
    with duckdb.connect(str(db)) as con:
        apply_schema(con)
        con.execute("DROP VIEW run_history")
        for column in ("deployment_name", "trigger_detail", "trigger_note", "trigger_overrides"):
            con.execute(f"ALTER TABLE runs DROP COLUMN {column}")
        apply_schema(con)
        assert undescribed(con) == []
    comments = dict(query(db, "SELECT column_name, comment FROM duckdb_columns() "
                              "WHERE table_name = 'runs'"))
    assert "Prefect" in comments["triggered_by"]


def test_a_published_database_is_described(published_db: Path) -> None:
    with duckdb.connect(str(published_db), read_only=True) as con:
        assert undescribed(con) == []
