-- The connection's own settings again, once the ingest is done.
RESET preserve_insertion_order;
RESET memory_limit;
