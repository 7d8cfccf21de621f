-- What was quarantined, per run, file and reason.
SELECT run_id, table_name, source_file, reason, count(*) AS rows
FROM raw.quarantine
GROUP BY ALL
ORDER BY run_id DESC, rows DESC;
