-- The data a run was built on: its time window, sizes and fingerprint.
UPDATE runs SET as_of = $as_of, data_start = $data_start, data_end = $data_end,
       n_users = $n_users, n_items = $n_items, n_events = $n_events,
       data_fingerprint = $fingerprint
WHERE run_id = $run_id;
