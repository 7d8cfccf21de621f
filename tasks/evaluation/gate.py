"""The regression gate: a run whose fused NDCG@K fell too far below the last comparable
published run is not published.

Comparable means the same data (fingerprint) evaluated the same way (protocol): a score measured
another way (a one-second hold-out, another K) says nothing about this one.
"""

from __future__ import annotations

import polars as pl

NO_COMPARABLE_RUN = "no comparable published run"


def regression_gate(
    metrics: pl.DataFrame | None,
    k: int,
    baseline: tuple[float, str] | None,
    *,
    allow_regression: bool,
    tolerance: float,
) -> tuple[bool, str]:
    """(may publish, what the gate found: the run's message).

    `metrics`: the run's own evaluation (None: not evaluated); `baseline`: fused NDCG@K and run
    id of the last comparable published run (None: there is none).
    """
    if metrics is None:
        return True, "regression gate not applied: the run was not evaluated"
    if allow_regression:
        return True, "regression gate not applied: allow_regression is set"
    fused = metrics.filter(
        (pl.col("model") == "fused") & (pl.col("metric") == "ndcg") & (pl.col("segment") == "all")
    )
    if fused.height == 0:
        return True, f"regression gate not applied: no fused ndcg@{k} was measured"
    if baseline is None:
        return True, (
            f"regression gate: {NO_COMPARABLE_RUN} (same data and evaluation protocol), "
            "nothing to compare with"
        )
    now_value, (before, before_run) = float(fused["value"][0]), baseline
    if now_value < before * (1 - tolerance):
        return False, (
            f"regression gate: fused ndcg@{k} {now_value:.4f} is more than "
            f"{tolerance:.0%} below {before:.4f} of published run {before_run}"
        )
    return True, (
        f"regression gate passed: fused ndcg@{k} {now_value:.4f} vs {before:.4f} of published "
        f"run {before_run}"
    )
