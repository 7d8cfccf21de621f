-- The schema of a run's candidates file: what an empty file (and an in-memory schema) holds.
SELECT NULL::VARCHAR AS modality, NULL::VARCHAR AS user_id, NULL::VARCHAR AS item_id,
       NULL::FLOAT AS score, NULL::INTEGER AS rank
WHERE false
