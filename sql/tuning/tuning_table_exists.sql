-- 1 when the database has a tuning_results table (a database from before `tune` has none).
SELECT count(*) FROM duckdb_tables() WHERE table_name = 'tuning_results';
