-- A run's metrics, from the frame registered as staged_output (inside the publish transaction).
INSERT INTO run_metrics (run_id, model, metric, k, segment, value, std_error)
SELECT run_id, model, metric, k, segment, value, std_error
FROM staged_output;
