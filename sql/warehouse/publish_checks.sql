-- A run's check results, from the frame registered as staged_output (inside the publish
-- transaction).
INSERT INTO check_results
SELECT run_id, suite, expectation, column_name, success, observed_value, checked_at
FROM staged_output;
