-- Runs whose candidate files go: the rule of prune_runs.sql, with $keep_candidates published
-- runs kept (the live one always). Their files are removed once the run that prunes commits.
WITH kept AS (
    SELECT run_id, started_at FROM runs WHERE status = 'published'
    ORDER BY finished_at DESC, started_at DESC
    LIMIT $keep_candidates
)
SELECT run_id FROM runs
WHERE status <> 'running'
  AND run_id NOT IN (SELECT run_id FROM kept)
  AND run_id NOT IN (SELECT run_id FROM last_published_run)
  AND (status = 'published' OR started_at < (SELECT min(started_at) FROM kept))
ORDER BY run_id;
