-- The events a run learns from: everything up to the run's as-of time.
SELECT user_id, item_id, event_type, value, ts
FROM raw.events
WHERE $as_of IS NULL OR ts <= $as_of;
