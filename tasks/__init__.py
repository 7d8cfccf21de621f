"""recfusion's computing core: plain functions over data; Prefect and the CLI live in `flows/`.

Same input, same output: Polars' streaming engine (its default for lazy queries) adds floats in
an order that depends on how it cut the rows into morsels, so one query on the same rows can
differ in the last bits from run to run, enough to flip a tie between two candidates. Every lazy
query of recfusion runs on the in-memory engine, whose sums follow the rows' order.
"""

import polars as pl

pl.Config.set_engine_affinity("in-memory")
