-- The staged rows of one file are done with once counted.
DROP TABLE ingest_staged;
