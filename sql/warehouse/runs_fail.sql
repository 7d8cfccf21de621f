-- A running run failed (a run already published or rejected keeps its status).
UPDATE runs SET status = 'failed', finished_at = $finished_at, message = $message
WHERE run_id = $run_id AND status = 'running';
