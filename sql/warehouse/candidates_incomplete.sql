-- Staged candidates a file must not hold: no score, rank or modality.
SELECT count(*) FROM staged_candidates WHERE score IS NULL OR rank IS NULL OR modality IS NULL;
