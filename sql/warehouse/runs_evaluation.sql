-- How the run evaluated itself (splits, plan, tuning used), as JSON.
UPDATE runs SET evaluation = CAST($evaluation AS JSON) WHERE run_id = $run_id;
