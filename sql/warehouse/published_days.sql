-- The as-of days already published (backfill skips them unless forced).
SELECT DISTINCT as_of FROM runs WHERE status = 'published' AND as_of IS NOT NULL;
