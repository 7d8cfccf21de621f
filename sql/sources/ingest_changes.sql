-- What staging one file did: rows per change ('added', 'updated', 'unchanged').
SELECT change, count(*) AS n
FROM ingest_staged
GROUP BY change;
