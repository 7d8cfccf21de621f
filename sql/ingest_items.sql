-- Upsert: the latest file's description of an item replaces the previous one.
DELETE FROM raw.items WHERE item_id IN (SELECT item_id FROM staged_items);
INSERT INTO raw.items
SELECT item_id, title, text, tags, category, embedding, $source_file, $run_id
FROM staged_items;
