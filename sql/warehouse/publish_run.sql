-- Runs inside the publishing transaction, after the run's rows were inserted:
-- flipping the status is what makes recommendations_latest switch to this run. Only an open
-- ('running') run can be published; no row returned means there is nothing to publish into.
UPDATE runs
SET status = $status,
    finished_at = $finished_at,
    n_recommendations = $n_recommendations,
    fusion_strategy = $fusion_strategy,
    evaluation_protocol = $evaluation_protocol,
    timings = CAST($timings AS JSON),
    message = $message
WHERE run_id = $run_id AND status = 'running'
RETURNING run_id;
