-- Whole `runs` rows of the given runs, for the report's comparison with the previous run: whole,
-- so columns a newer schema adds (e.g. evaluation_protocol) are there when they exist.
SELECT *
FROM runs
WHERE list_contains($run_ids, run_id);
