-- DuckDB's working memory while ingesting: past it, staging and joins spill to disk. Row order in
-- the raw tables does not matter, and not keeping it lets DuckDB stream the inserts.
SET preserve_insertion_order = false;
SET memory_limit = '1GB';
