-- Items with at least one ingested event: the denominator of catalog coverage.
SELECT count(DISTINCT item_id) FROM raw.events;
