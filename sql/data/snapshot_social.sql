SELECT user_id, friend_id, weight, ts
FROM raw.social
WHERE $as_of IS NULL OR ts IS NULL OR ts <= $as_of;
