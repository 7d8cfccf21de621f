"""Warehouse.

The DuckDB file and what lives in it: connections, the run lock and schema (connection), the
`runs` table (runs), the one publishing transaction (publish) and the analysts' saved queries
(queries).
"""
