-- Stage a file's events: one row per event key, the later row of the file winning (a correction).
-- The key is the source's event_id, or a stable hash of the row's content, so re-ingesting the
-- same file changes nothing. Each staged event is 'added', 'updated' (same key, new content:
-- the newest ingested row wins) or 'unchanged'.
CREATE OR REPLACE TEMP TABLE ingest_staged AS
WITH keyed AS (
    SELECT coalesce(event_id,
                    md5(concat_ws(chr(31), user_id, item_id, event_type,
                                  CAST(epoch_us(ts) AS VARCHAR), CAST(value AS VARCHAR)))) AS key,
           user_id, item_id, event_type, value, ts, source_row
    FROM staged_events
    QUALIFY row_number() OVER (PARTITION BY key ORDER BY source_row DESC) = 1
)
SELECT k.*,
       CASE WHEN e.event_key IS NULL THEN 'added'
            WHEN e.user_id = k.user_id AND e.item_id = k.item_id AND e.event_type = k.event_type
                 AND e.value = k.value AND e.ts = k.ts THEN 'unchanged'
            ELSE 'updated' END AS change
FROM keyed k
LEFT JOIN raw.events e ON e.event_key = k.key;
DELETE FROM raw.events
WHERE event_key IN (SELECT key FROM ingest_staged WHERE change = 'updated');
INSERT INTO raw.events
SELECT key, user_id, item_id, event_type, value, ts, $source_file, $run_id
FROM ingest_staged
WHERE change <> 'unchanged';
