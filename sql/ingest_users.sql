-- Upsert: the latest attributes of a user replace the previous ones.
DELETE FROM raw.users WHERE user_id IN (SELECT user_id FROM staged_users);
INSERT INTO raw.users
SELECT user_id, CAST(attributes AS JSON), $source_file, $run_id
FROM staged_users;
