"""Great Expectations suites on real (small) frames: each rule can fail on its own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from tasks.outputs.checks import check_events, check_recommendations

GOOD = pl.DataFrame(
    {
        "user_id": ["a", "a", "a", "b"],
        "item_id": ["x", "y", "z", "x"],
        "rank": [1, 2, 3, 1],
        "score": [3.0, 2.0, 2.0, 1.0],
    }
)
SEEN = pl.DataFrame({"user_id": ["a", "b"], "item_id": ["w", "y"]})


def failed(outcome) -> set[str]:
    return set(outcome.results.filter(~pl.col("success"))["expectation"].to_list())


def test_good_recommendations_pass():
    outcome = check_recommendations(GOOD, SEEN, k=3)
    assert outcome.passed, outcome.failures()
    assert outcome.results.height == 6


@pytest.mark.parametrize(
    ("broken", "k", "rule"),
    [
        (
            GOOD.with_columns(pl.Series("item_id", ["x", "x", "z", "x"])),
            3,
            "items_unique",
        ),
        (
            GOOD.with_columns(pl.Series("rank", [1, 2, 4, 1])),
            3,
            "ranks_in_order",
        ),
        (GOOD, 2, "list_length"),  # list of 3 > K
        (
            GOOD.with_columns(pl.Series("score", [3.0, float("nan"), 1.0, 1.0])),
            3,
            "scores_finite",
        ),
        (
            GOOD.with_columns(pl.Series("score", [1.0, 2.0, 3.0, 1.0])),
            3,
            "score_rise",
        ),  # score rises with rank
        (
            GOOD.with_columns(pl.Series("item_id", ["x", "y", "w", "x"])),
            3,
            "already_seen",
        ),  # 'w' already seen by a
    ],
)
@pytest.mark.parametrize("coded", [False, True], ids=["ids", "codes"])
def test_each_output_rule_fails_on_its_own(
    broken: pl.DataFrame, k: int, rule: str, coded: bool
):
    recs, seen = (_coded(broken), _coded(SEEN)) if coded else (broken, SEEN)
    outcome = check_recommendations(recs, seen, k=k)
    assert not outcome.passed
    failures = outcome.results.filter(~pl.col("success"))
    assert failures["column_name"].to_list() == [rule]  # this rule alone
    assert failures["observed_value"].item().startswith("1 unexpected")  # one list breaks it


def _coded(frame: pl.DataFrame) -> pl.DataFrame:
    """The frame keyed as a run checks its lists: integer codes, one per id."""
    codes = {"a": 0, "b": 1, "w": 0, "x": 1, "y": 2, "z": 3}
    return frame.with_columns(
        pl.col("user_id").replace_strict(codes, return_dtype=pl.Int32).alias("user_idx"),
        pl.col("item_id").replace_strict(codes, return_dtype=pl.Int32).alias("item_idx"),
    ).drop("user_id", "item_id")


def test_lists_keyed_by_codes_are_checked_like_lists_keyed_by_ids():
    by_codes = check_recommendations(_coded(GOOD), _coded(SEEN), k=3)
    assert by_codes.passed, by_codes.failures()
    assert by_codes.results.equals(check_recommendations(GOOD, SEEN, k=3).results)


def test_events_suite_blocks_future_and_non_finite_but_only_warns_on_unknown_types():
    now = datetime(2024, 6, 1, tzinfo=UTC)
    events = pl.DataFrame(
        {
            "user_id": ["a", "b"],
            "item_id": ["x", "y"],
            "event_type": ["view", "share"],
            "value": [1.0, 2.0],
            "ts": [now - timedelta(days=1), now - timedelta(days=2)],
        }
    )
    ok = check_events(events, ["view", "like"], now=now)
    assert ok.passed and failed(ok) == {"expect_column_values_to_be_in_set"}
    bad = events.with_columns(
        pl.Series("ts", [now + timedelta(days=30), now]), pl.Series("value", [1.0, float("inf")])
    )
    outcome = check_events(bad, ["view", "share"], now=now)
    assert not outcome.passed
    assert {
        r["column_name"] for r in outcome.results.filter(~pl.col("success")).iter_rows(named=True)
    } == {"ts_epoch", "value_is_finite"}


# --- the file context beside the database (finding 4 of the operations issue) ---------------

NOW = datetime(2024, 6, 1, tzinfo=UTC)
EVENTS = pl.DataFrame(
    {
        "user_id": ["a", "b"],
        "item_id": ["x", "y"],
        "event_type": ["view", "like"],
        "value": [1.0, 2.0],
        "ts": [NOW - timedelta(days=1), NOW - timedelta(days=2)],
    }
)


def _ids(root) -> dict[str, str]:
    """Ids of the stored checkpoint, validation definition and suite of `events_input`."""
    import json

    return {
        kind: json.loads((root / kind / "events_input.json").read_text())["id"]
        for kind in ("checkpoints", "validation_definitions", "expectations")
    }


def test_checks_go_to_a_file_context_beside_the_database_created_once_and_reused(tmp_path):
    from tasks.outputs.checks import GxRun, gx_dir

    db = tmp_path / "warehouse" / "rf.duckdb"
    first = check_events(EVENTS, ["view", "like"], now=NOW, gx_run=GxRun.for_db(db, "run-1"))
    root = gx_dir(db)
    assert root == tmp_path / "warehouse" / "recfusion-gx" / "rf.duckdb"
    assert (root / "great_expectations.yml").exists()
    ids = _ids(root)
    second = check_events(EVENTS, ["view"], now=NOW, gx_run=GxRun.for_db(db, "run-2"))
    assert _ids(root) == ids  # the same suite, definition and checkpoint, not new ones
    # Same stored suite, this run's parameters: 'like' is unknown to run-2 only (non-blocking).
    assert first.results["success"].all() and second.passed
    assert failed(second) == {"expect_column_values_to_be_in_set"}
    assert first.results.drop("observed_value").equals(
        second.results.drop("observed_value").with_columns(pl.lit(True).alias("success"))
    )
    for outcome, run_id in ((first, "run-1"), (second, "run-2")):
        page = outcome.docs_page
        assert page is not None and page.exists()
        assert page.parent.parent.name == run_id  # validations/<suite>/<run name>/<time>/
        text = page.read_text()
        assert "Data asset: events" in text and "__none__" not in text
    index = (root / "uncommitted" / "data_docs" / "local_site" / "index.html").read_text()
    assert first.docs_index is not None and first.docs_index.read_text() == index
    assert "run-1" in index and "run-2" in index
    assert "Calculating Metrics" not in (root / "great_expectations.yml").read_text()


@pytest.mark.parametrize("in_file", [False, True], ids=["in memory", "file context"])
def test_a_checked_frame_is_not_kept_by_great_expectations_after_its_check(tmp_path, in_file):
    """GX's context lives as long as the process; its batch cache held the pandas copy of the
    last frame checked (the whole events at 5M rows), and its metric cache a column per
    expectation, through the rest of the run."""
    import gc

    import pandas as pd
    from great_expectations.execution_engine.pandas_batch_data import PandasBatchData

    from tasks.outputs.checks import GxRun

    rows = 4_321  # a length nothing else in the process has
    events = EVENTS.sample(rows, with_replacement=True, seed=1)
    run = GxRun.for_db(tmp_path / "rf.duckdb", "run-1") if in_file else None
    assert check_events(events, ["view", "like"], now=NOW, gx_run=run).passed
    gc.collect()
    assert not [o for o in gc.get_objects() if isinstance(o, PandasBatchData)]
    assert not [
        o for o in gc.get_objects() if isinstance(o, pd.Series | pd.DataFrame) and len(o) == rows
    ]


def test_output_suite_in_a_file_context_takes_each_runs_k(tmp_path):
    from tasks.outputs.checks import GxRun

    db = tmp_path / "rf.duckdb"
    assert check_recommendations(GOOD, SEEN, k=3, gx_run=GxRun.for_db(db, "k3")).passed
    at_2 = check_recommendations(GOOD, SEEN, k=2, gx_run=GxRun.for_db(db, "k2"))
    assert not at_2.passed and failed(at_2) == {"expect_column_values_to_be_between"}
    assert "Data asset: recommendations" in at_2.docs_page.read_text()  # type: ignore[union-attr]


def test_databases_in_one_folder_keep_their_own_context(tmp_path):
    from tasks.outputs.checks import GxRun

    a = check_events(
        EVENTS, ["view", "like"], now=NOW, gx_run=GxRun.for_db(tmp_path / "a.duckdb", "run-of-a")
    )
    b = check_events(
        EVENTS, ["view", "like"], now=NOW, gx_run=GxRun.for_db(tmp_path / "b.duckdb", "run-of-b")
    )
    assert a.docs_index != b.docs_index
    index_a, index_b = a.docs_index.read_text(), b.docs_index.read_text()  # type: ignore[union-attr]
    assert "run-of-a" in index_a and "run-of-b" not in index_a
    assert "run-of-b" in index_b and "run-of-a" not in index_b


_CONCURRENT = """
import sys
from datetime import UTC, datetime, timedelta
import polars as pl
from tasks.outputs.checks import GxRun, check_events, check_recommendations
now = datetime(2024, 6, 1, tzinfo=UTC)
events = pl.DataFrame({"user_id": ["a"], "item_id": ["x"], "event_type": ["view"],
                       "value": [1.0], "ts": [now - timedelta(days=1)]})
recs = pl.DataFrame({"user_id": ["a"], "item_id": ["y"], "rank": [1], "score": [1.0]})
for i in range(2):
    run = GxRun.for_db(sys.argv[1], f"{sys.argv[2]}-{i}")
    assert check_events(events, ["view"], now=now, gx_run=run).passed
    assert check_recommendations(recs, events, 10, gx_run=run).passed
"""


@pytest.mark.slow
def test_two_processes_on_one_database_do_not_conflict(tmp_path):
    """Both create the context at once on first use, then keep updating the same site."""
    import subprocess
    import sys
    from pathlib import Path

    from tasks.outputs.checks import gx_dir

    db = tmp_path / "rf.duckdb"
    repo = Path(__file__).resolve().parents[1]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CONCURRENT, str(db), name],
            cwd=repo,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("p", "q")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    site = gx_dir(db) / "uncommitted" / "data_docs" / "local_site"
    index = (site / "index.html").read_text()
    for suite in ("events_input", "recommendations_output"):
        runs = {p.name for p in (site / "validations" / suite).iterdir()}
        assert runs == {f"{n}-{i}" for n in "pq" for i in range(2)}
    assert all(f"{n}-{i}" in index for n in "pq" for i in range(2))


def test_a_damaged_context_costs_the_data_docs_page_not_the_checks(tmp_path, caplog):
    from tasks.outputs.checks import GxRun, gx_dir

    db = tmp_path / "rf.duckdb"
    assert check_events(EVENTS, ["view", "like"], now=NOW, gx_run=GxRun.for_db(db, "r1")).passed
    (gx_dir(db) / "great_expectations.yml").write_text("stores: [unclosed\n")
    bad = EVENTS.with_columns(pl.Series("value", [1.0, float("inf")]))
    outcome = check_events(bad, ["view", "like"], now=NOW, gx_run=GxRun.for_db(db, "r2"))
    assert not outcome.passed and failed(outcome) == {"expect_column_values_to_be_in_set"}
    assert outcome.results.height == 7
    assert outcome.docs_page is None and outcome.docs_problem
    assert any("could not be used" in r.getMessage() for r in caplog.records)
