"""The honest alarm: a run whose own evaluation says its lists are not worth publishing.

Three blocking rules, each one row of the `evaluation` suite in `check_results`:
- the headline metrics rest on at least `min_eval_users` users;
- on validation, the chosen plan is not significantly below the best single source, nor below
  popularity (a fixed strategy or weights can make it so; `auto` cannot);
- on the test split, the fused list is not significantly below popularity (a useless list).
"Significantly" is `alarm_z` standard errors of the paired per-user difference, so noise on a
small sample does not stop a good run. The fused list against the best single source on the
test split is reported too, as a warning: the plan was chosen before that split was seen.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl

from tasks.fusion.plan import FusionPlan
from tasks.fusion.selection import Paired
from tasks.modalities.registry import FLOOR_BASELINE, FLOOR_MODALITY
from tasks.outputs.checks import CHECK_SCHEMA, CheckOutcome

SUITE = "evaluation"
ALARM_Z = 2.0
POPULARITY = (FLOOR_MODALITY, FLOOR_BASELINE)


def _row(expectation: str, column: str, success: bool, observed: str, blocking: bool
         ) -> dict[str, Any]:
    return {"suite": SUITE, "expectation": expectation, "column_name": column,
            "success": success, "observed_value": observed, "blocking": blocking}


def _fmt(p: Paired, name: str) -> str:
    se = f" ± {p.std_error:.4f}" if math.isfinite(p.std_error) else ""
    return f"{p.gain:+.4f}{se} NDCG vs {name} over {p.n} users"


def _below(p: Paired, z: float) -> bool:
    return p.gain < 0 and (not math.isfinite(p.std_error) or -p.gain > z * p.std_error)


def _validation_rows(plan: FusionPlan, stage: str, z: float) -> list[dict[str, Any]]:
    """From the plan's own selection table: default recipe vs best single and popularity."""
    main = [r for r in plan.selection if r.get("segment") == "main"]
    default = next((r for r in main if r.get("role") == "default"), None)
    if default is None:
        return []
    rows = []
    best = str(default["vs"])
    if best != default["recipe"]:
        p = Paired(float(default["gain"]), float(default["std_error"] or math.inf),
                   int(default["n_users"]))
        rows.append(_row(f"expect_{stage}_plan_not_below_best_single_source", best,
                         not _below(p, z), _fmt(p, best), True))
    if "gain_vs_popularity" in default and default["recipe"] not in POPULARITY:
        p = Paired(float(default["gain_vs_popularity"]),
                   float(default["se_vs_popularity"] or math.inf), int(default["n_users"]))
        rows.append(_row(f"expect_{stage}_plan_not_below_popularity", FLOOR_MODALITY,
                         not _below(p, z), _fmt(p, FLOOR_MODALITY), True))
    return rows


def evaluation_checks(
    per_user: dict[str, np.ndarray] | None,
    n_users: int,
    eval_plan: FusionPlan | None,
    plan: FusionPlan | None,
    min_eval_users: int,
    z: float = ALARM_Z,
) -> CheckOutcome:
    """The alarm's rows for one run (`per_user`: test NDCG@K per main user, by list name)."""
    rows = [_row("expect_evaluation_users_at_least", "n_users", n_users >= min_eval_users,
                 f"{n_users} users (at least {min_eval_users} needed)", True)]
    for stage, p in (("validation", eval_plan), ("latest", plan)):
        if p is not None:
            rows += _validation_rows(p, stage, z)
    if per_user and "fused" in per_user:
        fused = per_user["fused"]
        pop = next((per_user[n] for n in POPULARITY if n in per_user), None)
        if pop is not None:
            d = Paired.of(fused, pop)
            rows.append(_row("expect_fused_not_below_popularity", FLOOR_MODALITY,
                             not _below(d, z), _fmt(d, FLOOR_MODALITY), True))
        sources = {n: v for n, v in per_user.items() if n in (eval_plan.sources if eval_plan
                                                               else ())}
        if sources:
            best = max(sources, key=lambda n: float(sources[n].mean()))
            d = Paired.of(fused, sources[best])
            rows.append(_row("expect_fused_not_below_best_single_source", best,
                             not _below(d, z), _fmt(d, best), False))
    return CheckOutcome(SUITE, pl.DataFrame(rows, schema=CHECK_SCHEMA))
