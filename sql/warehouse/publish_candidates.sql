-- The run's candidates, integer-coded in Polars, with their string ids joined on here; written
-- to the run's file (tasks/warehouse/publish.py).
SELECT c.modality, u.user_id, i.item_id, c.score::FLOAT AS score, c.rank::INTEGER AS rank
FROM staged_candidates c
JOIN staged_users u USING (user_idx)
JOIN staged_items i USING (item_idx)
