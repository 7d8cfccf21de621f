-- A run refused for its parameters: recorded as rejected, with the reason, and nothing else.
UPDATE runs SET status = 'rejected', finished_at = $finished_at, message = $message
WHERE run_id = $run_id AND status = 'running';
