-- Users known to the warehouse who have no (or fewer than K) recommendations in the latest run.
-- params: k
WITH known AS (
    SELECT user_id FROM raw.events
    UNION SELECT user_id FROM raw.users
    UNION SELECT user_id FROM raw.social
    UNION SELECT friend_id FROM raw.social
),
got AS (SELECT user_id, count(*) AS n FROM recommendations_latest GROUP BY user_id)
SELECT k.user_id, coalesce(g.n, 0) AS recommendations
FROM known k
LEFT JOIN got g USING (user_id)
WHERE coalesce(g.n, 0) < CAST($k AS INTEGER)
ORDER BY recommendations, k.user_id;
