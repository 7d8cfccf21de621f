"""The `recfusion` command line: a user's mistake is one stderr line and a non-zero exit code.

Commands run in-process through `flows.cli.main` (exit code, stdout, the single stderr line),
plus a real `recfusion` subprocess to prove no traceback reaches the terminal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import prefect.main  # noqa: F401  (sets up Prefect's console log handler on the sys.stderr of
import pytest  # import time: here, not inside a test whose capsys stderr is gone afterwards)

from flows.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, build_parser, main, run_parameters
from tasks.config import TOP_K_MAX, RunParameters
from tasks.warehouse.connection import apply_schema, connect, run_lock


def fails(argv: list[str], capsys: pytest.CaptureFixture[str], code: int = EXIT_USAGE) -> str:
    """Run the CLI; it must exit `code` with exactly one stderr line, which is returned."""
    assert main(argv) == code
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("recfusion: ") and "Traceback" not in err[0]
    return err[0]


def params_file(tmp_path: Path, content: object, name: str = "p.json") -> str:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


# --------------------------------------------------------------------------- finding 5


@pytest.mark.slow
def test_top_k_zero_reaches_validation(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db = tmp_path / "rf.duckdb"
    line = fails(["run", "--top-k", "0", "--db", str(db)], capsys)
    assert line == "recfusion: invalid parameter top_k: must be >= 1 (got 0 from --top-k)"
    assert not db.exists()  # nothing ran


def test_a_misspelt_params_key_is_an_error_naming_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    p = params_file(tmp_path, {"topk": 20})
    line = fails(["run", "--params", p], capsys)
    assert line == "recfusion: invalid parameter topk: unknown parameter (did you mean top_k?)"


def test_a_flag_and_the_params_file_that_disagree_are_an_error_naming_both(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    p = params_file(tmp_path, {"db": "y.duckdb"})
    line = fails(["run", "--db", "x.duckdb", "--params", p], capsys)
    assert line == f"recfusion: --db x.duckdb and params file {p} key db=y.duckdb disagree"
    p = params_file(tmp_path, {"fusion": {"strategy": "rrf"}, "evaluate": True}, "q.json")
    assert main(["run", "--strategy", "borda", "--no-evaluate", "--params", p]) == EXIT_USAGE
    assert capsys.readouterr().err.splitlines() == [
        f"recfusion: --strategy borda and params file {p} key fusion.strategy=rrf disagree",
        f"recfusion: --no-evaluate and params file {p} key evaluate=true disagree",
    ]


def test_flags_and_the_params_file_merge_where_they_agree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    source = tmp_path / "src"
    source.mkdir()
    p = params_file(tmp_path, {"db": "./rf.duckdb", "top_k": 7, "fusion": {"normalisation": "rank"},
                               "source": "src"})
    args = build_parser().parse_args(
        ["run", "--db", "rf.duckdb", "--source", str(source), "--strategy", "rrf", "--params", p]
    )
    params = run_parameters(args)
    assert (params.db, params.top_k, params.source) == ("rf.duckdb", 7, str(source))
    assert (params.fusion.strategy, params.fusion.normalisation) == ("rrf", "rank")
    assert params.triggered_by is None  # a note only; what started the run comes from Prefect


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([1, 2],
         'must hold a JSON object of run parameters (e.g. {"top_k": 20}), not a JSON list'),
        ('{"top_k": ', "is not valid JSON: Expecting value: line 1 column 11 (char 10)"),
        ('{"top_k": 5, "top_k": 6}', ": key top_k given twice"),
    ],
)
def test_a_params_file_that_is_not_a_json_object_is_one_line_naming_it(
    content: object, message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    p = params_file(tmp_path, content)
    line = fails(["run", "--params", p], capsys)
    assert line.startswith("recfusion: params file " + p) and line.endswith(message), line


def test_an_unreadable_params_file_is_one_line_naming_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "nope.json"
    line = fails(["run", "--params", str(missing)], capsys)
    assert line == f"recfusion: cannot read params file {missing}: No such file or directory"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"modalities": []}, "invalid parameter modalities: List should have at least 1 item"),
        ({"fusion": {"weights": {"behavior": 0, "social": 0}}},
         "invalid parameter fusion.weights: all weights are 0"),
        ({"fusion": {"weights": {"popularty": 1}}},
         "invalid parameter fusion.weights[0].modality: Input should be 'behavior',"),
        ({"event_weights": {"view": -1}},
         "invalid parameter event_weights[0].weight: must be >= 0"),
        ({"evaluation": {"holdout_days": 1e-9}},
         "invalid parameter evaluation.holdout_days: must be >= 0.04167"),
        ({"evaluation": {"holdout_days": 1e6}},
         "invalid parameter evaluation.holdout_days: must be <= 3650"),
    ],
)
def test_what_the_tester_found_accepted_is_one_line_naming_the_parameter(
    content: dict[str, object], expected: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = tmp_path / "rf.duckdb"
    line = fails(["run", "--db", str(db), "--params", params_file(tmp_path, content)], capsys)
    assert line.startswith("recfusion: " + expected), line
    assert not db.exists()


def test_a_bad_flag_value_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    line = fails(["run", "--top-k", "abc"], capsys)
    assert line == (
        "recfusion: argument --top-k: invalid int value: 'abc' (see recfusion run --help)"
    )
    line = fails(["run", "--as-of", "yesterday"], capsys)
    assert line.startswith("recfusion: invalid parameter as_of: Input should be a valid datetime")
    assert line.endswith('(got "yesterday" from --as-of)')
    assert fails(["demo-data", "--out", "x", "--users", "1"], capsys) == (
        "recfusion: argument --users: must be >= 2, got 1 (see recfusion demo-data --help)"
    )


def test_a_source_folder_that_is_not_there_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-source"
    assert fails(["run", "--source", str(missing)], capsys) == (
        f"recfusion: --source {missing}: does not exist"
    )
    assert fails(["ingest", "--source", str(missing)], capsys).endswith("does not exist")


def test_backfill_dates_are_checked_before_any_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    line = fails(["backfill", "--start", "2026-02-01", "--end", "2026-01-01",
                  "--db", str(tmp_path / "b.duckdb")], capsys)
    assert line == (
        'recfusion: invalid parameter end: is before start (2026-02-01) (got "2026-01-01" from '
        "--end)"
    )
    line = fails(["backfill", "--start", "2026-13-01", "--end", "2026-01-01"], capsys)
    assert line.startswith("recfusion: invalid parameter start: Input should be a valid date")


def test_flag_help_names_the_limits_the_model_enforces() -> None:
    top_k = RunParameters.model_fields["top_k"].metadata
    assert [getattr(m, "ge", None) or getattr(m, "le", None) for m in top_k] == [1, TOP_K_MAX]
    run_help = build_parser()._subparsers._group_actions[0].choices["run"].format_help()  # type: ignore[union-attr]
    assert f"1-{TOP_K_MAX}" in " ".join(run_help.split())
    lock = RunParameters.model_fields["lock_timeout_seconds"].metadata
    assert [getattr(m, "ge", None) for m in lock] == [0]
    assert "seconds (>= 0)" in " ".join(run_help.split())


def test_the_run_uses_the_merged_parameters(
    prefect_harness: None, small_source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real run: K from the params file, the rest from flags; what is published says so."""
    db = tmp_path / "rf.duckdb"
    p = params_file(tmp_path, {"top_k": 4, "modalities": ["popularity"]})
    code = main(["run", "--source", str(small_source), "--db", str(db), "--no-evaluate",
                  "--params", p])
    out, err = capsys.readouterr()
    assert code == EXIT_OK, err[-2000:]
    assert "published run" in out
    con = duckdb.connect(str(db), read_only=True)
    try:
        k, modalities = con.execute(
            "SELECT max(rank), (SELECT list(DISTINCT modality) FROM candidates) "
            "FROM recommendations_latest"
        ).fetchone()  # type: ignore[misc]
    finally:
        con.close()
    assert (k, modalities) == (4, ["popularity"])


# --------------------------------------------------------------------------- finding 7b


def test_ingest_takes_a_lock_timeout_and_reports_it_in_one_line(
    capsys: pytest.CaptureFixture[str], small_source: Path, tmp_path: Path
) -> None:
    db = tmp_path / "rf.duckdb"
    with run_lock(db):  # another run holds the database
        line = fails(["ingest", "--source", str(small_source), "--db", str(db),
                      "--lock-timeout", "0.3"], capsys, code=EXIT_FAILED)
    assert line.startswith(
        f"recfusion: another recfusion command (pid {os.getpid()}) is using {db}"
    )
    assert not db.exists()  # nothing written while locked
    assert fails(["ingest", "--source", str(small_source), "--db", str(db),
                  "--lock-timeout", "-1"], capsys).startswith(
        "recfusion: invalid parameter lock_timeout_seconds: must be >= 0 (got -1.0 from "
        "--lock-timeout)"
    )
    assert main(["ingest", "--source", str(small_source), "--db", str(db),
                 "--lock-timeout", "1"]) == EXIT_OK
    assert capsys.readouterr().out.startswith("events: read 8000, added 8000")


# --------------------------------------------------------------------------- finding 8 (query)


@pytest.fixture()
def empty_warehouse(tmp_path: Path) -> Path:
    db = tmp_path / "wh.duckdb"
    with connect(db) as con:
        apply_schema(con)
    return db


def test_query_param_without_equals_is_one_line(
    capsys: pytest.CaptureFixture[str], empty_warehouse: Path
) -> None:
    line = fails(["query", "recommendations_for_user", "--param", "user_id",
                  "--db", str(empty_warehouse)], capsys)
    assert line == "recfusion: --param user_id: expected KEY=VALUE, e.g. --param user_id=u0001"


def test_query_values_are_type_checked_like_the_sql_casts_them(
    capsys: pytest.CaptureFixture[str], empty_warehouse: Path
) -> None:
    db = str(empty_warehouse)
    for bad in ("abc", "1.5", "99999999999"):
        line = fails(["query", "users_without_recommendations", "--param", f"k={bad}",
                      "--db", db], capsys)
        assert line == (
            f"recfusion: query 'users_without_recommendations': --param k={bad} is not a valid "
            "INTEGER"
        )
    assert main(["query", "users_without_recommendations", "--param", "k=10", "--db", db]) == 0
    assert "recommendations" in capsys.readouterr().out


def test_unknown_query_parameters_are_an_error_listing_the_ones_it_takes(
    capsys: pytest.CaptureFixture[str], empty_warehouse: Path
) -> None:
    line = fails(["query", "recommendations_for_user", "--param", "user_id=u1",
                  "--param", "usr=u1", "--db", str(empty_warehouse)], capsys)
    assert line == (
        "recfusion: query 'recommendations_for_user' has no parameter usr; "
        "it takes --param user_id"
    )
    line = fails(["query", "quarantine_summary", "--param", "k=1", "--db", str(empty_warehouse)],
                 capsys)
    assert line.endswith("has no parameter k; it takes no parameters")


def test_query_on_a_missing_database_is_one_line_and_creates_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = tmp_path / "missing.duckdb"
    line = fails(["query", "quarantine_summary", "--db", str(db)], capsys)
    assert line == f"recfusion: no database file at {db} (give --db, or run `recfusion run` first)"
    assert list(tmp_path.iterdir()) == []


def test_query_on_a_database_that_is_not_recfusions_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = tmp_path / "other.duckdb"
    duckdb.connect(str(db)).close()
    line = fails(["query", "quarantine_summary", "--db", str(db)], capsys)
    assert line.startswith(f"recfusion: database {db} has no recfusion tables yet")


# --------------------------------------------------------------------------- no tracebacks


def test_an_unexpected_error_is_one_line_with_a_debug_hint_and_debug_raises(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    out = str(a_file / "demo")  # a folder inside a file: the OS refuses
    line = fails(["demo-data", "--out", out, "--users", "3", "--items", "3", "--events", "5"],
                 capsys, code=EXIT_FAILED)
    assert line.startswith("recfusion: unexpected error: ")
    assert line.endswith("(run again with --debug for the traceback)")
    with pytest.raises(OSError):
        main(["--debug", "demo-data", "--out", out, "--users", "3", "--items", "3"])
    with pytest.raises(OSError):  # also accepted after the command
        main(["demo-data", "--out", out, "--users", "3", "--items", "3", "--debug"])


def _recfusion() -> list[str]:
    script = Path(sys.executable).with_name("recfusion")
    return [str(script)] if script.exists() else [sys.executable, "-m", "flows.cli"]


@pytest.mark.slow
def test_the_installed_command_prints_no_traceback_for_user_errors(tmp_path: Path) -> None:
    typo = params_file(tmp_path, {"topk": 20, "fusion": {"weights": {"behavior": 0}}})
    cases = [
        (["run", "--params", typo, "--db", str(tmp_path / "rf.duckdb")],
         ["recfusion: invalid parameter topk: unknown parameter (did you mean top_k?)",
          "recfusion: invalid parameter fusion.weights: all weights are 0, so every fused score "
          "would be 0; give at least one modality a positive weight, or leave weights empty to "
          "tune them"]),
        (["query", "why_item", "--param", "item_id", "--db", str(tmp_path / "none.duckdb")],
         ["recfusion: --param item_id: expected KEY=VALUE, e.g. --param user_id=u0001"]),
    ]
    for argv, lines in cases:
        proc = subprocess.run([*_recfusion(), *argv], capture_output=True, text=True, timeout=120,
                              cwd=tmp_path)
        assert proc.returncode == EXIT_USAGE, proc.stderr
        assert sorted(proc.stderr.splitlines()) == sorted(lines)
        assert "Traceback" not in proc.stderr + proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json"]  # no database, no lock file
