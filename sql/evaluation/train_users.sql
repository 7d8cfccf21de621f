-- Users with at least one ingested event: only they are scored offline.
SELECT DISTINCT user_id FROM raw.events;
