-- Retention. Slots count published runs only: the rows of the newest $keep_recommendations
-- published runs stay, so the live list (the newest published run) is never pruned, whatever
-- failed or was rejected since. A rejected or failed run's rows stay for debugging until it is
-- older than the oldest published run kept. Candidates (files beside the database) follow the
-- same rule with their own count (candidates_pruned.sql). Metrics, checks and the run records
-- are never pruned.
DELETE FROM recommendations
WHERE run_id IN (
    WITH kept AS (
        SELECT run_id, started_at FROM runs WHERE status = 'published'
        ORDER BY finished_at DESC, started_at DESC
        LIMIT $keep_recommendations
    )
    SELECT run_id FROM runs
    WHERE status <> 'running'
      AND run_id NOT IN (SELECT run_id FROM kept)
      AND run_id NOT IN (SELECT run_id FROM last_published_run)
      AND (status = 'published' OR started_at < (SELECT min(started_at) FROM kept))
);
