-- Candidates a run's file must not hold: no score, rank, modality or id. The relation is filled
-- in by tasks/warehouse/publish.py: the staged frame, or read_parquet of our own staged files.
SELECT count(*) FROM {relation}
WHERE score IS NULL OR rank IS NULL OR modality IS NULL OR user_id IS NULL OR item_id IS NULL;
