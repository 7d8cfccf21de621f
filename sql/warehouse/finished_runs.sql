-- Which of these run ids ($run_ids) are over (any status but running): their staging folders
-- are leftovers of a run killed before its own cleanup.
SELECT run_id FROM runs WHERE status <> 'running' AND list_contains($run_ids, run_id);
