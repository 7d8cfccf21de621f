-- Fused NDCG@K of the last published run on the same data (for the regression gate).
SELECT m.value, r.run_id
FROM runs r
JOIN run_metrics m USING (run_id)
WHERE r.status = 'published'
  AND r.data_fingerprint = $fingerprint
  AND m.model = 'fused' AND m.metric = 'ndcg' AND m.k = $k AND m.segment = 'all'
ORDER BY r.finished_at DESC
LIMIT 1;
