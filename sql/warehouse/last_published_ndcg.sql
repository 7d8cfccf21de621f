-- Fused NDCG@K of the last published run that is comparable (for the regression gate): the same
-- data and the same evaluation protocol (split, hold-out, K, sample; see tasks/protocol.py).
-- A run evaluated another way measured something else, so it is never the baseline.
SELECT m.value, r.run_id
FROM runs r
JOIN run_metrics m USING (run_id)
WHERE r.status = 'published'
  AND r.data_fingerprint = $fingerprint
  AND r.evaluation_protocol = $protocol
  AND m.model = 'fused' AND m.metric = 'ndcg' AND m.k = $k AND m.segment = 'all'
ORDER BY r.finished_at DESC
LIMIT 1;
