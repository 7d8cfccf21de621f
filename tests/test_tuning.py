"""Self-tuning: seeded and reproducible, never worse than the current values on validation,
stored in the warehouse, and used by the next nightly for the same source."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
from support import query, run_nightly

from flows.tune import TuneParameters, tune
from tasks.config import RunParameters
from tasks.data.snapshot import load_snapshot
from tasks.tuning.search import apply_tuning, tune_modalities


def _snapshot(db: Path):  # type: ignore[no-untyped-def]
    con = duckdb.connect(str(db), read_only=True)
    try:
        return load_snapshot(con, None, coded=False)  # tuning cuts id strings, as flows/tune.py
    finally:
        con.close()


def test_same_data_and_seed_give_the_same_result_never_below_the_defaults(
    published_db: Path,
) -> None:
    snapshot = _snapshot(published_db)
    params = RunParameters(db=str(published_db))
    runs = [tune_modalities(snapshot, params, ["popularity", "behavior"], 4, 600.0, 100)
            for _ in range(2)]
    assert set(runs[0]) == {"popularity", "behavior"}
    for name, result in runs[0].items():
        again = runs[1][name]
        assert (result.update, result.validation_ndcg) == (again.update, again.validation_ndcg)
        assert result.n_trials == 4
        # The first trial is the current values, so the best is never below them.
        assert result.validation_ndcg >= result.default_ndcg
        assert result.trials[0]["ndcg"] == result.default_ndcg


def test_a_result_changes_only_the_tuned_modalitys_values() -> None:
    params = RunParameters()
    tuned = apply_tuning(params, {"hybrid_features": {"hybrid": {"features_l2": 80.0}}})
    assert tuned.hybrid.features_l2 == 80.0
    assert tuned.model_copy(update={"hybrid": params.hybrid}) == params


def test_tune_flow_stores_its_result_and_the_next_nightly_uses_it(
    published_db: Path, small_source: Path, tmp_path: Path
) -> None:
    db = tmp_path / "tuned.duckdb"
    shutil.copy(published_db, db)
    run = RunParameters(source=str(small_source), db=str(db))
    summary = tune(params=TuneParameters(run=run, modalities=["popularity"], trials=3,
                                         max_users=100))
    rows = query(db, "SELECT tuning_id, modality, source, data_fingerprint, n_trials, "
                     "validation_ndcg >= default_ndcg FROM tuning_results")
    assert rows and {r[0] for r in rows} == {summary.tuning_id}
    assert rows[0][1:3] == ("popularity", str(small_source))
    assert rows[0][3] and rows[0][4] == 3 and rows[0][5]

    used = run_nightly(small_source, db)
    plain = run_nightly(small_source, db, use_tuned=False)
    assert used.status == plain.status == "published"
    described = {r[0]: json.loads(r[1]) for r in query(
        db, f"SELECT run_id, evaluation FROM runs WHERE run_id IN "
            f"('{used.run_id}', '{plain.run_id}')")}
    tuning_used = described[used.run_id]["tuning"]
    # Used only when it beat the defaults (else the defaults are the best known values).
    improved = query(db, "SELECT validation_ndcg > default_ndcg FROM tuning_results")[0][0]
    assert tuning_used == ({"popularity": summary.tuning_id} if improved else {})
    assert described[plain.run_id]["tuning"] == {}
