-- Recommendations with reasons for one user, from the latest published run.
-- params: user_id
SELECT r.rank, r.item_id, i.title, round(r.score, 4) AS score, r.reason, r.segment,
       r.contributions
FROM recommendations_latest r
LEFT JOIN raw.items i USING (item_id)
WHERE r.user_id = $user_id
ORDER BY r.rank;
