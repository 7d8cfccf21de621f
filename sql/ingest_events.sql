-- Insert staged events that are not in raw.events yet. The key is the source's event_id, or a
-- stable hash of the row's content, so re-ingesting the same file adds nothing.
INSERT INTO raw.events
SELECT event_key, user_id, item_id, event_type, value, ts, $source_file, $run_id
FROM (
    SELECT coalesce(event_id,
                    md5(concat_ws(chr(31), user_id, item_id, event_type,
                                  CAST(epoch_us(ts) AS VARCHAR), CAST(value AS VARCHAR)))) AS event_key,
           *
    FROM staged_events
) s
WHERE NOT EXISTS (SELECT 1 FROM raw.events e WHERE e.event_key = s.event_key)
QUALIFY row_number() OVER (PARTITION BY event_key ORDER BY ts) = 1;
