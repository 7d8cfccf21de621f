-- Every list of the latest published run, in one shape: the fused list and each modality's top-K.
SELECT 'fused' AS list, user_id, item_id, rank
FROM recommendations_latest
WHERE rank <= $k
UNION ALL
SELECT c.modality AS list, c.user_id, c.item_id, c.rank
FROM candidates c
JOIN last_published_run p USING (run_id)
WHERE c.rank <= $k;
