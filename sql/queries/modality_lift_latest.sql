-- How much the fused list beats each single modality in the latest published run.
SELECT l.metric, l.k, l.segment, l.modality, round(l.fused_value, 4) AS fused_value,
       round(l.modality_value, 4) AS modality_value, round(l.relative_lift, 4) AS relative_lift
FROM modality_lift l
JOIN last_published_run p USING (run_id)
WHERE l.metric IN ('ndcg', 'recall', 'precision')
ORDER BY l.metric, l.segment, l.modality;
