-- Is the run open (still 'running')? Only an open run is published.
SELECT count(*) FROM runs WHERE run_id = $run_id AND status = 'running';
