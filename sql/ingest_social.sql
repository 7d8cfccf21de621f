-- Upsert per directed edge: the latest weight for (user, friend) wins.
DELETE FROM raw.social USING staged_social s
WHERE raw.social.user_id = s.user_id AND raw.social.friend_id = s.friend_id;
INSERT INTO raw.social
SELECT user_id, friend_id, weight, ts, $source_file, $run_id
FROM staged_social;
