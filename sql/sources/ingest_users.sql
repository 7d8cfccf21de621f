-- Upsert: the latest attributes of a user replace the stored ones (within a file, the later row
-- wins); a user whose attributes did not change is left as they are.
CREATE OR REPLACE TEMP TABLE ingest_staged AS
WITH latest AS (
    SELECT user_id, CAST(attributes AS JSON) AS attributes, source_row FROM staged_users
    QUALIFY row_number() OVER (PARTITION BY user_id ORDER BY source_row DESC) = 1
)
SELECT s.*, s.user_id AS key,
       CASE WHEN u.user_id IS NULL THEN 'added'
            WHEN CAST(u.attributes AS VARCHAR) IS NOT DISTINCT FROM CAST(s.attributes AS VARCHAR)
                 THEN 'unchanged'
            ELSE 'updated' END AS change
FROM latest s
LEFT JOIN raw.users u ON u.user_id = s.user_id;
DELETE FROM raw.users
WHERE user_id IN (SELECT user_id FROM ingest_staged WHERE change = 'updated');
INSERT INTO raw.users
SELECT user_id, attributes, $source_file, $run_id
FROM ingest_staged
WHERE change <> 'unchanged';
