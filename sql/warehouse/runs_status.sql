-- One run's status (no row: no such run).
SELECT status FROM runs WHERE run_id = $run_id;
