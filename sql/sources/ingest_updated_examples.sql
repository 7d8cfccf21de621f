-- A few keys of the rows an ingest replaced, for the log.
SELECT key
FROM ingest_staged
WHERE change = 'updated'
ORDER BY source_row
LIMIT 5;
