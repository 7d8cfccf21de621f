-- Runs still 'running' while we hold the run lock died mid-way (killed): mark them failed.
UPDATE runs SET status = 'failed', finished_at = now(),
       message = 'abandoned: the process stopped before finishing'
WHERE status = 'running'
RETURNING run_id;
