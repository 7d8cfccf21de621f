-- The keys of the objects in order of first appearance (a later line may bring a new key).
SELECT key
FROM (
    SELECT row_number, unnest(json_keys(line)) AS key,
           generate_subscripts(json_keys(line), 1) AS position
    FROM parsed
)
GROUP BY key
ORDER BY min([row_number, position]);
