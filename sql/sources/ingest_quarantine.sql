-- Quarantine a file's bad rows, each once: a row already quarantined from the same file, at the
-- same row with the same content, is not added again, so re-ingesting a bad file changes nothing.
INSERT INTO raw.quarantine
SELECT $run_id, $table_name, $source_file, q.row_number, q.reason, CAST(q.row_data AS JSON), now()
FROM staged_quarantine q
WHERE NOT EXISTS (
    SELECT 1
    FROM raw.quarantine r
    WHERE r.table_name = $table_name
      AND r.source_file = $source_file
      AND r.row_number IS NOT DISTINCT FROM q.row_number
      AND CAST(r.row_data AS VARCHAR) = CAST(CAST(q.row_data AS JSON) AS VARCHAR)
);
