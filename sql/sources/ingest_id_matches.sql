-- How many events name an item that raw.items knows, and a user that raw.users knows, with an
-- example of each side's ids and files: ids typed differently across files never match.
-- One scan of the events marks both sides (five scans took twice as long at 50M events).
WITH marked AS (
    SELECT item_id, user_id, source_file,
           item_id IN (SELECT item_id FROM raw.items) AS has_item,
           user_id IN (SELECT user_id FROM raw.users) AS has_user
    FROM raw.events
)
SELECT
    count(*) AS events,
    (SELECT count(*) FROM raw.items) AS items,
    (SELECT count(*) FROM raw.users) AS users,
    count(*) FILTER (WHERE has_item) AS events_with_item,
    count(*) FILTER (WHERE has_user) AS events_with_user,
    min(item_id) FILTER (WHERE NOT has_item) AS unmatched_item,
    min(user_id) FILTER (WHERE NOT has_user) AS unmatched_user,
    (SELECT min(item_id) FROM raw.items) AS an_item_id,
    (SELECT min(user_id) FROM raw.users) AS a_user_id,
    max(source_file) AS events_file,
    (SELECT max(source_file) FROM raw.items) AS items_file,
    (SELECT max(source_file) FROM raw.users) AS users_file
FROM marked;
