"""recfusion's computing core: plain functions over data; Prefect and the CLI live in `flows/`.

Same input, same output: Polars' streaming engine (its default for lazy queries) adds floats in
an order that depends on how it cut the rows into morsels, so one query on the same rows can
differ in the last bits from run to run, enough to flip a tie between two candidates. Every lazy
query of recfusion runs on the in-memory engine, whose sums follow the rows' order.

Peak memory: the allocators are tuned before Polars loads (`tasks/memory.py`).
"""

from tasks.memory import tune_allocators

tune_allocators()

import polars as pl  # noqa: E402  (after the allocators' settings, read when it loads)

pl.Config.set_engine_affinity("in-memory")
