-- 'schema.name' and column of every table and view a user (or recfusion) created.
SELECT schema_name || '.' || table_name, column_name
FROM duckdb_columns()
WHERE NOT internal AND database_name = current_database();
