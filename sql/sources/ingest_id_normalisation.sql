-- Ids that differ only by Unicode normalisation (NFC "é" vs NFD "e" + combining accent): two
-- keys for what a person reads as one id. Only ids with non-ASCII characters can differ so.
WITH ids AS (
    SELECT DISTINCT 'item' AS kind, item_id AS id FROM raw.events
    UNION SELECT 'item', item_id FROM raw.items
    UNION SELECT DISTINCT 'user', user_id FROM raw.events
    UNION SELECT 'user', user_id FROM raw.users
    UNION SELECT DISTINCT 'user', user_id FROM raw.social
    UNION SELECT DISTINCT 'user', friend_id FROM raw.social
)
SELECT kind, count(*) AS groups, min(first_id) AS example_a, min(second_id) AS example_b
FROM (
    SELECT kind, min(id) AS first_id, max(id) AS second_id
    FROM ids
    WHERE NOT regexp_full_match(id, '[[:ascii:]]*')
    GROUP BY kind, nfc_normalize(id)
    HAVING count(*) > 1
)
GROUP BY kind
ORDER BY kind;
