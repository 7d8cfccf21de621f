-- The rows a run quarantined: per table, file and reason, how many, and the first as an example.
SELECT table_name,
       source_file,
       reason,
       count(*) AS rows,
       min(row_number) AS first_row,
       CAST(arg_min(row_data, coalesce(row_number, 0)) AS VARCHAR) AS example
FROM raw.quarantine
WHERE run_id = $run_id
GROUP BY table_name, source_file, reason
ORDER BY rows DESC, table_name, source_file, reason
LIMIT 50;
