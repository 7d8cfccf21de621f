-- The event types of the run's events (a handful): the snapshot reads the events' type as an ENUM
-- of these, one byte a row in DuckDB and a categorical in Polars, not a string per event.
SELECT DISTINCT event_type
FROM raw.events
WHERE ($as_of IS NULL OR ts <= $as_of) AND event_type IS NOT NULL
ORDER BY event_type;
