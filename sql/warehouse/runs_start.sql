-- A new run's row, with what started it.
INSERT INTO runs (run_id, flow_name, flow_run_id, triggered_by, status, parameters, source,
                  started_at, deployment_name, trigger_detail, trigger_note, trigger_overrides)
VALUES ($run_id, $flow_name, $flow_run_id, $triggered_by, 'running', CAST($parameters AS JSON),
        $source, $started_at, $deployment_name, $trigger_detail, $trigger_note,
        CAST($trigger_overrides AS JSON));
