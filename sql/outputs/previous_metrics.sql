-- The last published run's metrics, for the lift and changes in the report.
SELECT model, metric, k, segment, value FROM metrics_latest;
