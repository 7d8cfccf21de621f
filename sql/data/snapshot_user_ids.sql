-- The run's user id space, sorted (byte order, as the dataset's codes are): everyone who has an
-- event, a row in raw.users, or a tie (either side) up to the run's as-of time.
SELECT DISTINCT user_id
FROM (
    SELECT user_id FROM raw.events WHERE $as_of IS NULL OR ts <= $as_of
    UNION ALL
    SELECT user_id FROM raw.users
    UNION ALL
    SELECT user_id FROM raw.social WHERE $as_of IS NULL OR ts IS NULL OR ts <= $as_of
    UNION ALL
    SELECT friend_id FROM raw.social WHERE $as_of IS NULL OR ts IS NULL OR ts <= $as_of
)
WHERE user_id IS NOT NULL
ORDER BY user_id;
