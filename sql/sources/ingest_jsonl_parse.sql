-- Which lines are JSON objects; json_valid guards the other JSON functions (they raise on bad
-- input), so kind is NULL for a line that is not JSON at all.
SELECT row_number, line, CASE WHEN json_valid(line) THEN json_type(line) END AS kind
FROM lines
ORDER BY row_number;
