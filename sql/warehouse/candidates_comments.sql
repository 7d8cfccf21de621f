COMMENT ON VIEW candidates IS 'Per run and modality: each user''s top candidates before fusion, Parquet files in one folder per run in <db>.runs/ (kept for the newest candidate_retention_runs published runs).';
COMMENT ON COLUMN candidates.run_id IS 'The run (runs.run_id).';
COMMENT ON COLUMN candidates.modality IS 'The candidate source: behavior, content, social, popularity, hybrid_features, hybrid_samples.';
COMMENT ON COLUMN candidates.user_id IS 'The user.';
COMMENT ON COLUMN candidates.item_id IS 'The candidate item.';
COMMENT ON COLUMN candidates.score IS 'The modality''s own score (scales differ between modalities).';
COMMENT ON COLUMN candidates.rank IS '1-based rank within the user''s list of this modality.';
