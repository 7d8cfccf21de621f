-- Upsert per directed edge: the latest weight and ts for (user, friend) replace the stored ones
-- (within a file, the later row wins); an unchanged edge is left as it is.
CREATE OR REPLACE TEMP TABLE ingest_staged AS
WITH latest AS (
    SELECT * FROM staged_social
    QUALIFY row_number() OVER (PARTITION BY user_id, friend_id ORDER BY source_row DESC) = 1
)
SELECT s.*, s.user_id || ' -> ' || s.friend_id AS key,
       CASE WHEN e.user_id IS NULL THEN 'added'
            WHEN e.weight = s.weight AND e.ts IS NOT DISTINCT FROM s.ts THEN 'unchanged'
            ELSE 'updated' END AS change
FROM latest s
LEFT JOIN raw.social e ON e.user_id = s.user_id AND e.friend_id = s.friend_id;
DELETE FROM raw.social USING ingest_staged s
WHERE s.change = 'updated' AND raw.social.user_id = s.user_id
  AND raw.social.friend_id = s.friend_id;
INSERT INTO raw.social
SELECT user_id, friend_id, weight, ts, $source_file, $run_id
FROM ingest_staged
WHERE change <> 'unchanged';
