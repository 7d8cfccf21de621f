-- Text that is a JSON array, as a list of strings (NULL for any other text, which the caller
-- splits on '|' instead). json_valid guards from_json, which raises on malformed input.
SELECT CASE WHEN json_valid(t) AND json_type(t) = 'ARRAY' THEN from_json(t, '["VARCHAR"]') END
       AS tags
FROM texts
ORDER BY i;
