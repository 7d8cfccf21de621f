-- A database from before run files keeps its candidates in a table (moved out on first use).
SELECT count(*) FROM duckdb_tables()
WHERE database_name = current_database() AND schema_name = 'main' AND table_name = 'candidates';
