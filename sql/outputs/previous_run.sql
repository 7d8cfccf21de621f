-- The last published run's id (none before the first publish).
SELECT run_id FROM last_published_run;
