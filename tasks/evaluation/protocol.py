"""How a run's metrics were measured: the evaluation protocol, as one canonical JSON string.

The regression gate compares a run only with published runs on the same data AND the same
protocol: a score measured on a one-second hold-out, at another K or on another user sample is a
different number, not a better or worse model. `protocol_key` is the one place that says what
belongs to the protocol; when the evaluation code changes what its numbers mean, add the new
setting here or bump `PROTOCOL_VERSION`, and older runs simply stop being comparable.
"""

from __future__ import annotations

import json
from typing import Any

from tasks.config import RunParameters

PROTOCOL_VERSION = 2  # 2: per-user temporal/random with a cold pool, paired selection


def protocol_key(params: RunParameters, split_kind: str) -> str:
    """Canonical JSON (sorted keys, no spaces) of everything that defines the metrics' meaning.

    `split_kind` is the split the evaluation actually used (what `auto` resolved to), so only
    the settings of that split count. Model settings (modalities, fusion, weights) are not part
    of it: judging them is the gate's job.
    """
    ev = params.evaluation
    split: dict[str, Any] = {"kind": split_kind}
    if split_kind == "global_time":
        split["holdout_days"] = ev.holdout_days
    else:
        split |= {"holdout_fraction": ev.holdout_fraction, "min_history": ev.min_history,
                  "cold_pool": ev.cold_pool}
        if split_kind == "user_random":
            split["seed"] = params.seed
    protocol: dict[str, Any] = {
        "version": PROTOCOL_VERSION,
        "split": split,
        "k": params.top_k,
        "sample": {"max_users": ev.max_users, "seed": params.seed},
        "score": {"list": "fused", "metric": "ndcg", "segment": "all"},
    }
    return json.dumps(protocol, sort_keys=True, separators=(",", ":"))
