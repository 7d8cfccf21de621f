-- What staging one file did: rows per change ('added', 'updated', 'unchanged'), with up to five
-- keys of each as examples for the log.
SELECT change, count(*) AS n, list(key ORDER BY source_row)[1:5] AS examples
FROM ingest_staged
GROUP BY change;
