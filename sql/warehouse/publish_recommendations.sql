-- A run's lists, from the frame registered as staged_output (inside the publish transaction).
INSERT INTO recommendations
SELECT run_id, user_id, rank, item_id, score, CAST(contributions AS JSON), reason, segment
FROM staged_output;
