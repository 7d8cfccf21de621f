-- Retention: the runs whose recommendations (or candidate files) go, keeping those of the newest
-- $keep published runs. Slots count published runs only, so the live list (the newest published
-- run) is never pruned, whatever failed or was rejected since. A rejected or failed run's rows
-- stay for debugging until it is older than the oldest published run kept. Metrics, checks and
-- the run records are never pruned.
WITH kept AS (
    SELECT run_id, started_at FROM runs WHERE status = 'published'
    ORDER BY finished_at DESC, started_at DESC
    LIMIT $keep
)
SELECT run_id FROM runs
WHERE status <> 'running'
  AND run_id NOT IN (SELECT run_id FROM kept)
  AND run_id NOT IN (SELECT run_id FROM last_published_run)
  AND (status = 'published' OR started_at < (SELECT min(started_at) FROM kept))
ORDER BY run_id
