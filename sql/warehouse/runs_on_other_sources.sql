-- A run on another source than $source (the demo's folder), if any.
SELECT source FROM runs WHERE source IS DISTINCT FROM $source LIMIT 1;
