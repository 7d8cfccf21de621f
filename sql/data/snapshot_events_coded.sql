-- The events a run learns from, with integer codes instead of id strings: a code is the id's
-- place in the sorted id space (`user_codes`, `item_codes`, registered from the id lists read
-- just before). Rows come in no fixed order; the dataset sorts them.
SELECT u.user_idx, i.item_idx, e.event_type, e.value, e.ts
FROM raw.events AS e
JOIN user_codes AS u ON u.user_id = e.user_id
JOIN item_codes AS i ON i.item_id = e.item_id
WHERE $as_of IS NULL OR e.ts <= $as_of;
