-- Why was an item recommended? Who got it, at which rank, from which modalities, with which reason.
-- params: item_id
SELECT r.user_id, r.rank, round(r.score, 4) AS score, r.reason, r.contributions,
       list(c.modality ORDER BY c.modality) AS proposed_by
FROM recommendations_latest r
LEFT JOIN candidates c
  ON c.run_id = r.run_id AND c.user_id = r.user_id AND c.item_id = r.item_id
WHERE r.item_id = $item_id
GROUP BY ALL
ORDER BY r.rank, r.user_id
LIMIT 100;
