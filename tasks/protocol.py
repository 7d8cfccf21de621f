"""How a run's metrics were measured: the evaluation protocol, as one canonical JSON string.

The regression gate compares a run only with published runs on the same data AND the same
protocol: a score measured on a one-second hold-out, at another K or on another user sample is a
different number, not a better or worse model. `protocol_key` is the one place that says what
belongs to the protocol; when the evaluation code changes what its numbers mean, add the new
setting here or bump `PROTOCOL_VERSION`, and older runs simply stop being comparable.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

from tasks.holdout import random_split
from tasks.parameters import RunParameters

PROTOCOL_VERSION = 1
#: The per-user random split's minimum history (a default of `random_split`, not a parameter).
RANDOM_SPLIT_MIN_ITEMS: int = inspect.signature(random_split).parameters["min_items"].default


def protocol_key(params: RunParameters, split_kind: str) -> str:
    """Canonical JSON (sorted keys, no spaces) of everything that defines the metrics' meaning.

    `split_kind` is the split the evaluation actually used ('temporal' falls back to 'random'
    when the data's time span is too short), so only the settings of that split count. Model
    settings (modalities, fusion, weights) are not part of it: judging them is the gate's job.
    """
    split: dict[str, Any] = {"kind": split_kind}
    if split_kind == "temporal":
        split["holdout_days"] = params.holdout_days
    else:
        split |= {
            "holdout_fraction": params.holdout_fraction,
            "min_items": RANDOM_SPLIT_MIN_ITEMS,
            "seed": params.seed,
        }
    protocol: dict[str, Any] = {
        "version": PROTOCOL_VERSION,
        "split": split,
        "k": params.top_k,
        "sample": {"max_users": params.max_eval_users, "seed": params.seed},
        "score": {"list": "fused", "metric": "ndcg", "segment": "all"},
    }
    return json.dumps(protocol, sort_keys=True, separators=(",", ":"))
