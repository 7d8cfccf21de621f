-- The run's item id space, sorted (byte order): every item with an event up to the as-of time,
-- and every item of the catalogue.
SELECT DISTINCT item_id
FROM (
    SELECT item_id FROM raw.events WHERE $as_of IS NULL OR ts <= $as_of
    UNION ALL
    SELECT item_id FROM raw.items
)
WHERE item_id IS NOT NULL
ORDER BY item_id;
