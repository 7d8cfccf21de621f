-- `candidates`: every run's candidates, kept as Parquet files beside the analyst copy, one folder
-- per run (<db>.runs/run_id=<run>/*.parquet: one file per shard of users; an older run has one
-- candidates.parquet), so copying the database each night never copies
-- them again. Only runs that finished (published or rejected) show: a run killed before its
-- COMMIT may have left its file, which the next run removes. {files} is filled in by
-- tasks/warehouse/connection.py (a quoted path of our own, not user input).
CREATE OR REPLACE VIEW candidates AS
SELECT run_id, modality, user_id, item_id, score, rank
FROM read_parquet({files}, hive_partitioning = true, hive_types = {{'run_id': VARCHAR}})
WHERE run_id IN (SELECT run_id FROM runs WHERE status IN ('published', 'rejected'));
