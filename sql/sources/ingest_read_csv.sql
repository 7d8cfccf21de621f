-- One CSV file, every field as text, in file order (RFC 4180 quoting, the header row skipped).
-- A row that cannot be split into the header's fields goes to DuckDB's reject tables
-- (ingest_csv_rejects.sql) with its line number and text, and the scan goes on.
SELECT *
FROM read_csv($path, columns = $columns, auto_detect = false, header = true,
              delim = ',', quote = '"', escape = '"', strict_mode = true, store_rejects = true);
