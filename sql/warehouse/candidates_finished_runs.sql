-- Runs whose candidate files may stay: finished (published or rejected), or still running.
SELECT run_id FROM runs WHERE status IN ('published', 'rejected', 'running');
