-- The run's candidates, integer-coded in Polars, with their string ids joined on here.
INSERT INTO candidates
SELECT $run_id, c.modality, u.user_id, i.item_id, c.score, c.rank
FROM staged_candidates c
JOIN staged_users u USING (user_idx)
JOIN staged_items i USING (item_idx);
