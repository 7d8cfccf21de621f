-- Coverage and popularity skew of the latest published run: how much of the catalog is shown,
-- and how concentrated the shown items are (share of slots taken by the top 1% of items, Gini).
WITH recs AS (SELECT item_id FROM recommendations_latest),
per_item AS (SELECT item_id, count(*) AS slots FROM recs GROUP BY item_id),
ranked AS (
    SELECT slots, row_number() OVER (ORDER BY slots) AS i, count(*) OVER () AS n,
           sum(slots) OVER () AS total
    FROM per_item
)
SELECT
    (SELECT count(*) FROM per_item) AS items_recommended,
    (SELECT count(*) FROM raw.items) AS items_in_catalog,
    (SELECT count(DISTINCT item_id) FROM raw.events) AS items_with_events,
    round((SELECT count(*) FROM per_item) / greatest(1, (SELECT count(DISTINCT item_id) FROM raw.events)), 4)
        AS coverage_of_interacted_items,
    round((SELECT sum(slots) FROM (SELECT slots FROM per_item ORDER BY slots DESC
            LIMIT greatest(1, CAST(ceil((SELECT count(*) FROM per_item) * 0.01) AS BIGINT))))
          / greatest(1, (SELECT count(*) FROM recs)), 4) AS top_1pct_share_of_slots,
    round((SELECT 1 - 2 * sum((n - i + 0.5) * slots) / (max(n) * max(total)) FROM ranked), 4)
        AS gini_of_slots;
