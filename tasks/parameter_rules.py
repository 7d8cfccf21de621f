"""What every parameter model shares (a modality's, the fusion's, the evaluation's, the run's)."""

from __future__ import annotations

from pydantic import ConfigDict

#: Every parameter model (a modality's, the fusion's, the run's) rejects unknown keys, so a typo
#: is an error rather than a silently ignored setting, and NaN/Infinity, which Python's JSON
#: reader accepts but no parameter means.
PARAMETER_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False)
#: Shortest half-life (and hold-out window), in days: one hour. A shorter half-life rounds every
#: older event's weight to zero.
MIN_DAYS = 1 / 24
