-- Latest tuning result per modality that beat the defaults on validation ($source: the run's
-- source folder; a result tuned on another source is not used).
SELECT modality, parameters, tuning_id, validation_ndcg, default_ndcg, tuned_at
FROM tuning_results
WHERE validation_ndcg > default_ndcg
  AND (source IS NOT DISTINCT FROM $source)
QUALIFY row_number() OVER (PARTITION BY modality ORDER BY tuned_at DESC) = 1
ORDER BY modality;
