-- One tuned modality's result under its tuning id.
INSERT INTO tuning_results
VALUES ($tuning_id, $modality, $tuned_at, $source, $fingerprint, CAST($parameters AS JSON),
        $validation_ndcg, $default_ndcg, $n_trials, $seconds, CAST($protocol AS JSON),
        $flow_run_id);
