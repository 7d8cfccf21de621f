-- Upsert: the latest description of an item replaces the stored one (within a file, the later row
-- wins); an item whose description did not change is left as it is.
CREATE OR REPLACE TEMP TABLE ingest_staged AS
WITH latest AS (
    SELECT * FROM staged_items
    QUALIFY row_number() OVER (PARTITION BY item_id ORDER BY source_row DESC) = 1
)
SELECT s.*, s.item_id AS key,
       CASE WHEN i.item_id IS NULL THEN 'added'
            WHEN i.title IS NOT DISTINCT FROM s.title AND i.text IS NOT DISTINCT FROM s.text
                 AND i.tags IS NOT DISTINCT FROM s.tags
                 AND i.category IS NOT DISTINCT FROM s.category
                 AND i.embedding IS NOT DISTINCT FROM s.embedding THEN 'unchanged'
            ELSE 'updated' END AS change
FROM latest s
LEFT JOIN raw.items i ON i.item_id = s.item_id;
DELETE FROM raw.items
WHERE item_id IN (SELECT item_id FROM ingest_staged WHERE change = 'updated');
INSERT INTO raw.items
SELECT item_id, title, text, tags, category, embedding, $source_file, $run_id
FROM ingest_staged
WHERE change <> 'unchanged';
