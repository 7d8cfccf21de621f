-- Each key's value as text (a string unquoted, a number or list as its JSON text) and its JSON
-- type, so the contract can tell the list ["a"] from the text '["a"]'.
SELECT row_number, json_extract_string(line, $paths) AS vals, json_type(line, $paths) AS types
FROM parsed
ORDER BY row_number;
