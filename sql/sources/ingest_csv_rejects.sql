-- The rows the last CSV scan rejected. `line` counts the header as 1 and a quoted value spanning
-- lines as one line, but also counts blank lines (which are not rows). csv_line is cut at
-- 10,000 bytes; line_byte_position is the row's start, give or take a byte.
SELECT line, line_byte_position, column_name, error_type, csv_line, error_message
FROM reject_errors
ORDER BY line, byte_position;
