-- The ties a run learns from, with the user codes of both sides (`user_codes`, registered from
-- the sorted user id space, which holds every tie's ids): no id string per tie.
SELECT u.user_idx, f.user_idx AS friend_idx, s.weight, s.ts
FROM raw.social AS s
JOIN user_codes AS u ON u.user_id = s.user_id
JOIN user_codes AS f ON f.user_id = s.friend_id
WHERE $as_of IS NULL OR s.ts IS NULL OR s.ts <= $as_of;
