-- Views for analysts. Recreated at the start of every run (cheap, and keeps them in step with code).
CREATE OR REPLACE VIEW last_published_run AS
SELECT run_id FROM runs
WHERE status = 'published'
ORDER BY finished_at DESC, started_at DESC
LIMIT 1;

CREATE OR REPLACE VIEW recommendations_latest AS
SELECT r.user_id, r.item_id, r.rank, r.score, r.reason, r.contributions, r.segment, r.run_id
FROM recommendations r
JOIN last_published_run p USING (run_id);

-- Every run, newest first: what started it (Prefect's flow run and deployment), on what
-- (source, database, K, strategy asked for, evaluated or not), and how it ended.
CREATE OR REPLACE VIEW run_history AS
SELECT run_id, status, triggered_by, trigger_detail, trigger_note, deployment_name, flow_run_id,
       source, parameters ->> 'db' AS db,
       TRY_CAST(parameters ->> 'top_k' AS INTEGER) AS top_k,
       parameters -> 'fusion' ->> 'strategy' AS requested_strategy,
       fusion_strategy,
       TRY_CAST(parameters ->> 'evaluate' AS BOOLEAN) AS evaluate,
       trigger_overrides,
       as_of, started_at, finished_at,
       date_diff('millisecond', started_at, finished_at) / 1000.0 AS seconds,
       n_users, n_items, n_events, n_recommendations, message, evaluation_protocol
FROM runs
ORDER BY started_at DESC;

CREATE OR REPLACE VIEW metrics_latest AS
SELECT m.model, m.metric, m.k, m.segment, m.value, m.run_id
FROM run_metrics m
JOIN last_published_run p USING (run_id);

CREATE OR REPLACE VIEW metrics_history AS
SELECT r.finished_at, r.status, m.run_id, m.model, m.metric, m.k, m.segment, m.value
FROM run_metrics m
JOIN runs r USING (run_id)
ORDER BY r.started_at, m.model, m.metric;

-- Relative lift of the fused list over each single modality, per run and metric.
CREATE OR REPLACE VIEW modality_lift AS
SELECT f.run_id, f.metric, f.k, f.segment, m.model AS modality,
       f.value AS fused_value, m.value AS modality_value,
       CASE WHEN m.value > 0 THEN f.value / m.value - 1 END AS relative_lift
FROM run_metrics f
JOIN run_metrics m
  ON m.run_id = f.run_id AND m.metric = f.metric AND m.k = f.k AND m.segment = f.segment
WHERE f.model = 'fused'
  AND m.model IN ('behavior', 'content', 'social', 'popularity', 'hybrid_features', 'hybrid_samples');
