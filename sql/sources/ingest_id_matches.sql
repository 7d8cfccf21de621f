-- How many events name an item that raw.items knows, and a user that raw.users knows, with an
-- example of each side's ids and files: ids typed differently across files never match.
SELECT
    (SELECT count(*) FROM raw.events) AS events,
    (SELECT count(*) FROM raw.items) AS items,
    (SELECT count(*) FROM raw.users) AS users,
    (SELECT count(*) FROM raw.events WHERE item_id IN (SELECT item_id FROM raw.items))
        AS events_with_item,
    (SELECT count(*) FROM raw.events WHERE user_id IN (SELECT user_id FROM raw.users))
        AS events_with_user,
    (SELECT min(item_id) FROM raw.events WHERE item_id NOT IN (SELECT item_id FROM raw.items))
        AS unmatched_item,
    (SELECT min(user_id) FROM raw.events WHERE user_id NOT IN (SELECT user_id FROM raw.users))
        AS unmatched_user,
    (SELECT min(item_id) FROM raw.items) AS an_item_id,
    (SELECT min(user_id) FROM raw.users) AS a_user_id,
    (SELECT max(source_file) FROM raw.events) AS events_file,
    (SELECT max(source_file) FROM raw.items) AS items_file,
    (SELECT max(source_file) FROM raw.users) AS users_file;
