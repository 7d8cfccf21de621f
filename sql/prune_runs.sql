-- Retention. Recommendations: keep the newest $keep_recommendations finished runs. Candidates are
-- bulkier (N per modality per user): keep the newest $keep_candidates. Metrics, checks and the
-- run records are never pruned, so history stays queryable.
DELETE FROM recommendations
WHERE run_id IN (
    SELECT run_id FROM runs WHERE status <> 'running'
    QUALIFY row_number() OVER (ORDER BY started_at DESC) > $keep_recommendations
);
DELETE FROM candidates
WHERE run_id IN (
    SELECT run_id FROM runs WHERE status <> 'running'
    QUALIFY row_number() OVER (ORDER BY started_at DESC) > $keep_candidates
);
