"""The "expected finish" every progress line ends with (ingest chunks, evaluation parts, shards)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def expected_finish(done: float, total: float, elapsed: float) -> str:
    """When the rest will be done at the rate so far, as a clock time and a countdown."""
    left = elapsed * max(total - done, 0) / done if done > 0 else 0.0
    finish = datetime.now(UTC) + timedelta(seconds=left)
    return f"expected finish {finish:%H:%M:%S} UTC (in {left:.0f}s)"
