-- What every published table, view and column holds, for analysts' SQL clients (DuckDB keeps
-- these in its catalog: duckdb_tables(), duckdb_views(), duckdb_columns(), and `DESCRIBE`).
-- Applied after schema.sql and views.sql at the start of every run: `CREATE OR REPLACE VIEW`
-- drops a view's comments, and a column added later gets its comment here.
-- tests/test_comments.py fails when a table, view or column has none.

-- ---------------------------------------------------------------- raw: ingested data
COMMENT ON TABLE raw.events IS 'Ingested events, one row per distinct event (re-ingesting the same files adds nothing).';
COMMENT ON COLUMN raw.events.event_key IS 'Dedup key: the source event_id when given, else a hash of the row.';
COMMENT ON COLUMN raw.events.user_id IS 'Who acted (ids are text).';
COMMENT ON COLUMN raw.events.item_id IS 'What they acted on.';
COMMENT ON COLUMN raw.events.event_type IS 'Kind of event (view, click, like, purchase, rating, listen ...); weighted by the run parameter event_weights.';
COMMENT ON COLUMN raw.events.value IS 'Strength of the event (count, plays, stars); 1 when the source has none.';
COMMENT ON COLUMN raw.events.ts IS 'When it happened (UTC).';
COMMENT ON COLUMN raw.events.source_file IS 'Absolute path of the file the row came from.';
COMMENT ON COLUMN raw.events.ingest_run_id IS 'The run (runs.run_id) that first ingested the row.';

COMMENT ON TABLE raw.items IS 'Ingested item attributes, one row per item.';
COMMENT ON COLUMN raw.items.item_id IS 'The item (matches raw.events.item_id).';
COMMENT ON COLUMN raw.items.title IS 'Display title, if the source has one.';
COMMENT ON COLUMN raw.items.text IS 'Free text describing the item (used by the content modality).';
COMMENT ON COLUMN raw.items.tags IS 'Tags of the item (content modality).';
COMMENT ON COLUMN raw.items.category IS 'Category of the item.';
COMMENT ON COLUMN raw.items.embedding IS 'A vector computed elsewhere (image or text embedding), if given.';
COMMENT ON COLUMN raw.items.source_file IS 'Absolute path of the file the row came from.';
COMMENT ON COLUMN raw.items.ingest_run_id IS 'The run (runs.run_id) that last wrote the row.';

COMMENT ON TABLE raw.users IS 'Ingested user attributes, one row per user.';
COMMENT ON COLUMN raw.users.user_id IS 'The user (matches raw.events.user_id).';
COMMENT ON COLUMN raw.users.attributes IS 'Every other column of the source, as one JSON object (sources differ).';
COMMENT ON COLUMN raw.users.source_file IS 'Absolute path of the file the row came from.';
COMMENT ON COLUMN raw.users.ingest_run_id IS 'The run (runs.run_id) that last wrote the row.';

COMMENT ON TABLE raw.social IS 'Ingested social ties, directed (a mutual tie is two rows).';
COMMENT ON COLUMN raw.social.user_id IS 'The user whose tie it is.';
COMMENT ON COLUMN raw.social.friend_id IS 'The user they are tied to.';
COMMENT ON COLUMN raw.social.weight IS 'Strength of the tie; 1 when the source has none.';
COMMENT ON COLUMN raw.social.ts IS 'When the tie was made (UTC), if known.';
COMMENT ON COLUMN raw.social.source_file IS 'Absolute path of the file the row came from.';
COMMENT ON COLUMN raw.social.ingest_run_id IS 'The run (runs.run_id) that first ingested the row.';

COMMENT ON TABLE raw.quarantine IS 'Rows that broke the data contract, kept whole with the reason (the good rows of the file still load).';
COMMENT ON COLUMN raw.quarantine.run_id IS 'The run that first quarantined the row.';
COMMENT ON COLUMN raw.quarantine.table_name IS 'The table the row was meant for (events, items, users, social).';
COMMENT ON COLUMN raw.quarantine.source_file IS 'Absolute path of the file holding the row.';
COMMENT ON COLUMN raw.quarantine.row_number IS '1-based row in the file: CSV data row after the header, JSON Lines line, Parquet row.';
COMMENT ON COLUMN raw.quarantine.reason IS 'What is wrong, as column: problem (several joined by semicolons).';
COMMENT ON COLUMN raw.quarantine.row_data IS 'The row as it was, as JSON ({"_raw": text} for a line that could not be split into fields).';
COMMENT ON COLUMN raw.quarantine.quarantined_at IS 'When it was quarantined (UTC).';

-- ---------------------------------------------------------------- runs and their outputs
COMMENT ON TABLE runs IS 'One row per nightly run: what started it, its parameters, data window, timings and status.';
COMMENT ON COLUMN runs.run_id IS 'The run (time it started, UTC, and a random suffix); every output row carries it.';
COMMENT ON COLUMN runs.flow_name IS 'The Prefect flow (recfusion-nightly).';
COMMENT ON COLUMN runs.flow_run_id IS 'The Prefect flow run (open it in the Prefect UI under Runs).';
COMMENT ON COLUMN runs.triggered_by IS 'What started it, from Prefect: schedule, deployment (UI, CLI or API trigger), cli (recfusion run), backfill (a backfill day) or subflow.';
COMMENT ON COLUMN runs.status IS 'running, failed, rejected (checks or regression gate) or published.';
COMMENT ON COLUMN runs.parameters IS 'The parameters the run applied (a deployment''s saved values merged with the trigger''s), as JSON.';
COMMENT ON COLUMN runs.source IS 'The source folder it ingested (the demo data folder when none was given).';
COMMENT ON COLUMN runs.as_of IS 'The parameter as_of: events after it were ignored (NULL: up to the latest event).';
COMMENT ON COLUMN runs.data_start IS 'Earliest event the run used.';
COMMENT ON COLUMN runs.data_end IS 'Latest event the run used.';
COMMENT ON COLUMN runs.n_users IS 'Users in the run''s data.';
COMMENT ON COLUMN runs.n_items IS 'Items in the run''s data.';
COMMENT ON COLUMN runs.n_events IS 'Events in the run''s data.';
COMMENT ON COLUMN runs.n_recommendations IS 'Recommendations it published (rows in recommendations).';
COMMENT ON COLUMN runs.fusion_strategy IS 'The fusion the run used (auto resolves to the one that won on validation).';
COMMENT ON COLUMN runs.data_fingerprint IS 'Same data gives the same fingerprint; the regression gate compares runs on the same data only.';
COMMENT ON COLUMN runs.timings IS 'Seconds per step (ingest, snapshot_and_checks, evaluate, recommend, explain_and_check, publish), as JSON.';
COMMENT ON COLUMN runs.message IS 'One line on how it ended (why it failed or was rejected, what the regression gate found).';
COMMENT ON COLUMN runs.started_at IS 'When it started (UTC).';
COMMENT ON COLUMN runs.finished_at IS 'When it ended (UTC); NULL while running.';
COMMENT ON COLUMN runs.evaluation_protocol IS 'How its metrics were measured (split, hold-out, K, sample) as canonical JSON: runs compare only under the same protocol.';
COMMENT ON COLUMN runs.evaluation IS 'Its own evaluation: each hold-out''s kind, cutoff, users and events, the chosen plan and the tuning results used.';
COMMENT ON COLUMN runs.deployment_name IS 'The Prefect deployment (flow/deployment) that ran it; for a backfill day, the backfill''s. NULL for recfusion run.';
COMMENT ON COLUMN runs.trigger_detail IS 'Who or what started it, when Prefect says: a user, an automation, the parent flow run.';
COMMENT ON COLUMN runs.trigger_note IS 'The free-text parameter triggered_by (an operator''s note).';
COMMENT ON COLUMN runs.trigger_overrides IS 'What the trigger changed from the deployment''s saved parameters (dotted path to value), as JSON; NULL outside a deployment.';


COMMENT ON TABLE recommendations IS 'Per run: each user''s fused, ranked list (read recommendations_latest for the live one).';
COMMENT ON COLUMN recommendations.run_id IS 'The run (runs.run_id).';
COMMENT ON COLUMN recommendations.user_id IS 'The user.';
COMMENT ON COLUMN recommendations.rank IS '1-based rank (1 = best), at most the run''s top_k.';
COMMENT ON COLUMN recommendations.item_id IS 'The recommended item.';
COMMENT ON COLUMN recommendations.score IS 'Fused score; higher is better, comparable within a run only.';
COMMENT ON COLUMN recommendations.contributions IS 'Modality to its share of the fused score, as JSON.';
COMMENT ON COLUMN recommendations.reason IS 'A short human-readable reason for the recommendation.';
COMMENT ON COLUMN recommendations.segment IS 'cold or warm: which blend served the user.';

COMMENT ON TABLE run_metrics IS 'Per run: hold-out metrics of every list (each modality, each fusion strategy, fused); never pruned.';
COMMENT ON COLUMN run_metrics.run_id IS 'The run (runs.run_id).';
COMMENT ON COLUMN run_metrics.model IS 'A modality, a fusion strategy, or fused (the published list).';
COMMENT ON COLUMN run_metrics.metric IS 'ndcg, recall, precision, coverage, ...';
COMMENT ON COLUMN run_metrics.k IS 'List length the metric was measured at.';
COMMENT ON COLUMN run_metrics.segment IS 'Users measured: all, cold_pool, cold, warm, with_friends.';
COMMENT ON COLUMN run_metrics.value IS 'The metric''s value (a mean over users for per-user metrics).';
COMMENT ON COLUMN run_metrics.std_error IS 'Standard error of a per-user mean (sd / sqrt(users)); NULL for other metrics.';

COMMENT ON TABLE check_results IS 'Per run: each Great Expectations expectation on the input events and the output lists; never pruned.';
COMMENT ON COLUMN check_results.run_id IS 'The run (runs.run_id).';
COMMENT ON COLUMN check_results.suite IS 'The expectation suite (input events, output recommendations, evaluation alarm).';
COMMENT ON COLUMN check_results.expectation IS 'The expectation checked.';
COMMENT ON COLUMN check_results.column_name IS 'The column it checked, if one.';
COMMENT ON COLUMN check_results.success IS 'Whether it held.';
COMMENT ON COLUMN check_results.observed_value IS 'What was observed, as text.';
COMMENT ON COLUMN check_results.checked_at IS 'When it was checked (UTC).';

COMMENT ON TABLE tuning_results IS 'Hyperparameters found by recfusion tune, per modality and tuning run; a nightly run uses the latest that beat the defaults for its source.';
COMMENT ON COLUMN tuning_results.tuning_id IS 'The tuning run.';
COMMENT ON COLUMN tuning_results.modality IS 'The modality tuned.';
COMMENT ON COLUMN tuning_results.tuned_at IS 'When (UTC).';
COMMENT ON COLUMN tuning_results.source IS 'The source folder it was tuned on (runs use results for their own source).';
COMMENT ON COLUMN tuning_results.data_fingerprint IS 'Fingerprint of the data it was tuned on.';
COMMENT ON COLUMN tuning_results.parameters IS 'The tuned values as a nested run-parameter update, as JSON.';
COMMENT ON COLUMN tuning_results.validation_ndcg IS 'NDCG of the tuned values on validation.';
COMMENT ON COLUMN tuning_results.default_ndcg IS 'NDCG of the default values on the same validation.';
COMMENT ON COLUMN tuning_results.n_trials IS 'Trials run.';
COMMENT ON COLUMN tuning_results.seconds IS 'Wall time of the search.';
COMMENT ON COLUMN tuning_results.protocol IS 'How validation was measured, as JSON.';
COMMENT ON COLUMN tuning_results.flow_run_id IS 'The Prefect flow run of the tuning.';

-- ---------------------------------------------------------------- views for analysts
COMMENT ON VIEW last_published_run IS 'The run_id of the last published run (none before the first).';
COMMENT ON COLUMN last_published_run.run_id IS 'The run (runs.run_id).';

COMMENT ON VIEW recommendations_latest IS 'The live lists: recommendations of the last published run only (a failed or rejected run never changes it).';
COMMENT ON COLUMN recommendations_latest.user_id IS 'The user.';
COMMENT ON COLUMN recommendations_latest.item_id IS 'The recommended item.';
COMMENT ON COLUMN recommendations_latest.rank IS '1-based rank (1 = best).';
COMMENT ON COLUMN recommendations_latest.score IS 'Fused score; higher is better, comparable within a run only.';
COMMENT ON COLUMN recommendations_latest.reason IS 'A short human-readable reason.';
COMMENT ON COLUMN recommendations_latest.contributions IS 'Modality to its share of the fused score, as JSON.';
COMMENT ON COLUMN recommendations_latest.segment IS 'cold or warm: which blend served the user.';
COMMENT ON COLUMN recommendations_latest.run_id IS 'The published run the list is from.';

COMMENT ON VIEW run_history IS 'Every run, newest first: what started it, on what data and database, with which K and strategy, and how it ended.';
COMMENT ON COLUMN run_history.run_id IS 'The run (runs.run_id).';
COMMENT ON COLUMN run_history.status IS 'running, failed, rejected or published.';
COMMENT ON COLUMN run_history.triggered_by IS 'schedule, deployment (UI, CLI or API trigger), cli (recfusion run), backfill or subflow.';
COMMENT ON COLUMN run_history.trigger_detail IS 'Who or what started it, when Prefect says (a user, an automation, the parent flow run).';
COMMENT ON COLUMN run_history.trigger_note IS 'The free-text parameter triggered_by.';
COMMENT ON COLUMN run_history.deployment_name IS 'The Prefect deployment (flow/deployment) that ran it.';
COMMENT ON COLUMN run_history.flow_run_id IS 'The Prefect flow run (find it in the Prefect UI).';
COMMENT ON COLUMN run_history.source IS 'The source folder it ingested.';
COMMENT ON COLUMN run_history.db IS 'The parameter db: the database file it published to, as given.';
COMMENT ON COLUMN run_history.top_k IS 'The parameter top_k: length of each published list.';
COMMENT ON COLUMN run_history.requested_strategy IS 'The parameter fusion.strategy (auto: chosen on validation).';
COMMENT ON COLUMN run_history.fusion_strategy IS 'The fusion the run used.';
COMMENT ON COLUMN run_history.evaluate IS 'The parameter evaluate: whether the run scored itself on a hold-out.';
COMMENT ON COLUMN run_history.trigger_overrides IS 'What the trigger changed from the deployment''s saved parameters, as JSON.';
COMMENT ON COLUMN run_history.as_of IS 'The parameter as_of (NULL: up to the latest event).';
COMMENT ON COLUMN run_history.started_at IS 'When it started (UTC).';
COMMENT ON COLUMN run_history.finished_at IS 'When it ended (UTC).';
COMMENT ON COLUMN run_history.seconds IS 'Wall time of the run.';
COMMENT ON COLUMN run_history.n_users IS 'Users in the run''s data.';
COMMENT ON COLUMN run_history.n_items IS 'Items in the run''s data.';
COMMENT ON COLUMN run_history.n_events IS 'Events in the run''s data.';
COMMENT ON COLUMN run_history.n_recommendations IS 'Recommendations it published.';
COMMENT ON COLUMN run_history.message IS 'One line on how it ended.';
COMMENT ON COLUMN run_history.evaluation_protocol IS 'How its metrics were measured (runs compare only under the same protocol).';

COMMENT ON VIEW metrics_latest IS 'Metrics of the last published run.';
COMMENT ON COLUMN metrics_latest.model IS 'A modality, a fusion strategy, or fused.';
COMMENT ON COLUMN metrics_latest.metric IS 'ndcg, recall, precision, coverage, ...';
COMMENT ON COLUMN metrics_latest.k IS 'List length the metric was measured at.';
COMMENT ON COLUMN metrics_latest.segment IS 'Users measured: all, cold_pool, cold, warm, with_friends.';
COMMENT ON COLUMN metrics_latest.value IS 'The metric''s value.';
COMMENT ON COLUMN metrics_latest.run_id IS 'The published run.';

COMMENT ON VIEW metrics_history IS 'Metrics of every run, oldest first, with the run''s status and end time.';
COMMENT ON COLUMN metrics_history.finished_at IS 'When the run ended (UTC).';
COMMENT ON COLUMN metrics_history.status IS 'The run''s status.';
COMMENT ON COLUMN metrics_history.run_id IS 'The run.';
COMMENT ON COLUMN metrics_history.model IS 'A modality, a fusion strategy, or fused.';
COMMENT ON COLUMN metrics_history.metric IS 'ndcg, recall, precision, coverage, ...';
COMMENT ON COLUMN metrics_history.k IS 'List length the metric was measured at.';
COMMENT ON COLUMN metrics_history.segment IS 'Users measured.';
COMMENT ON COLUMN metrics_history.value IS 'The metric''s value.';

COMMENT ON VIEW modality_lift IS 'Per run and metric: how much better the fused list is than each single modality.';
COMMENT ON COLUMN modality_lift.run_id IS 'The run.';
COMMENT ON COLUMN modality_lift.metric IS 'The metric compared.';
COMMENT ON COLUMN modality_lift.k IS 'List length it was measured at.';
COMMENT ON COLUMN modality_lift.segment IS 'Users measured.';
COMMENT ON COLUMN modality_lift.modality IS 'The single modality compared with the fused list.';
COMMENT ON COLUMN modality_lift.fused_value IS 'The fused list''s value.';
COMMENT ON COLUMN modality_lift.modality_value IS 'The modality''s value.';
COMMENT ON COLUMN modality_lift.relative_lift IS 'fused_value / modality_value - 1 (0.1 = 10% better); NULL when the modality scored 0.';
