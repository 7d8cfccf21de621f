"""The `recfusion` command line: run, ingest, demo-data, evaluate, query, backfill, serve."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

# A cold Prefect home needs time to migrate its SQLite database on first start.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
# No network here or on many production boxes: don't let telemetry add errors to the log.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

DEFAULT_DB = "recfusion.duckdb"


def _params(args: argparse.Namespace) -> Any:
    from tasks.parameters import RunParameters

    overrides: dict[str, Any] = {"db": args.db, "triggered_by": "cli"}
    if getattr(args, "source", None):
        overrides["source"] = str(Path(args.source).resolve())
    if getattr(args, "top_k", None):
        overrides["top_k"] = args.top_k
    if getattr(args, "as_of", None):
        overrides["as_of"] = datetime.fromisoformat(args.as_of)
    if getattr(args, "strategy", None):
        overrides["fusion"] = {"strategy": args.strategy}
    if getattr(args, "no_evaluate", False):
        overrides["evaluate"] = False
    if getattr(args, "allow_regression", False):
        overrides["allow_regression"] = True
    if getattr(args, "lock_timeout", None) is not None:
        overrides["lock_timeout_seconds"] = args.lock_timeout
    if getattr(args, "params", None):
        overrides.update(json.loads(Path(args.params).read_text()))
    return RunParameters(**overrides)


def cmd_run(args: argparse.Namespace) -> int:
    from flows.nightly import RunSummary, nightly

    params = _params(args)
    state = nightly(params=params, return_state=True)
    summary = state.result(raise_on_failure=False)
    if not isinstance(summary, RunSummary):
        print(f"recfusion: run failed: {state.message or summary}", file=sys.stderr)
        return 1
    if summary.status == "published":
        metrics = ", ".join(
            f"{k}={v:.4f}"
            for k, v in summary.metrics.items()
            if k in ("ndcg", "recall", "precision")
        )
        print(
            f"published run {summary.run_id}: {summary.n_recommendations} recommendations "
            f"(fusion {summary.fusion_strategy}{'; ' + metrics if metrics else ''}) -> {params.db}"
        )
        return 0
    print(f"recfusion: run {summary.run_id} {summary.status}: {summary.message}", file=sys.stderr)
    return 1


def cmd_ingest(args: argparse.Namespace) -> int:
    from tasks.ingest import load_source, read_source
    from tasks.runs import new_run_id
    from tasks.source_files import SourceError
    from tasks.warehouse import apply_schema, connect, run_lock

    run_id = new_run_id()
    try:
        validated = read_source(Path(args.source))
        with run_lock(args.db), connect(args.db) as con:
            apply_schema(con)
            report = load_source(con, validated, run_id)
    except SourceError as exc:
        print(f"recfusion: ingest failed: {exc}", file=sys.stderr)
        return 1
    for table in report.read:
        print(
            f"{table}: read {report.read[table]}, added {report.added[table]}, "
            f"quarantined {report.quarantined[table]}"
        )
    return 0


def cmd_demo_data(args: argparse.Namespace) -> int:
    from tasks.demo_data import generate_demo_source

    counts = generate_demo_source(
        Path(args.out), users=args.users, items=args.items, events=args.events, seed=args.seed
    )
    print(", ".join(f"{table}: {n}" for table, n in counts.items()) + f" -> {args.out}")
    return 0


def cmd_lastfm(args: argparse.Namespace) -> int:
    from tasks.lastfm_adapter import convert_hetrec_lastfm

    counts = convert_hetrec_lastfm(Path(args.src), Path(args.out))
    print(", ".join(f"{table}: {n}" for table, n in counts.items()) + f" -> {args.out}")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    import polars as pl

    from tasks.queries import QueryError, run_query
    from tasks.warehouse import read_sql, sql_query_names

    if args.list or not args.name:
        for name in sql_query_names():
            first = read_sql(f"queries/{name}.sql").splitlines()[0].lstrip("- ")
            print(f"{name:32s} {first}")
        return 0
    params = dict(p.split("=", 1) for p in args.param)
    try:
        frame = run_query(args.db, args.name, params)
    except QueryError as exc:
        print(f"recfusion: {exc}", file=sys.stderr)
        return 2
    with pl.Config(tbl_rows=args.limit, tbl_cols=-1, fmt_str_lengths=60, tbl_width_chars=200):
        print(frame)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import polars as pl

    from tasks.offline_evaluation import evaluate_published, read_truth

    try:
        truth = read_truth(Path(args.test))
    except (ValueError, OSError) as exc:
        print(f"recfusion: {exc}", file=sys.stderr)
        return 2
    results = evaluate_published(args.db, truth, args.k)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    table = pl.DataFrame([{"list": name, **values} for name, values in results.items()])
    with pl.Config(tbl_rows=-1, tbl_cols=-1, float_precision=4, tbl_width_chars=200):
        print(table)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from flows.serve import serve_all

    source = str(Path(args.source).resolve()) if args.source else None
    serve_all(str(Path(args.db).resolve()), source, args.cron, args.timezone)
    return 0


def cmd_backfill(args: argparse.Namespace) -> int:
    from datetime import date

    from flows.backfill import BackfillParameters, backfill

    params = BackfillParameters(
        start=date.fromisoformat(args.start),
        end=date.fromisoformat(args.end),
        force=args.force,
        run=_params(args),
    )
    summaries = backfill(params=params)
    failed = [s for s in summaries if s.status != "published"]
    for s in summaries:
        print(f"{s.run_id}: {s.status} {s.message}")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recfusion", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the nightly flow once (ingest → … → publish)")
    run.add_argument("--source", help="source folder in the data contract (default: demo data)")
    run.add_argument("--db", default=DEFAULT_DB, help=f"DuckDB file (default: {DEFAULT_DB})")
    run.add_argument("--top-k", type=int, help="list length K (default 10)")
    run.add_argument("--as-of", help="build the data as of this ISO timestamp")
    run.add_argument(
        "--strategy",
        help="fusion strategy (auto, weighted, rrf, combsum, combmnz, borda, stacking)",
    )
    run.add_argument("--no-evaluate", action="store_true", help="skip the hold-out evaluation")
    run.add_argument(
        "--allow-regression", action="store_true", help="publish even if the regression gate fails"
    )
    run.add_argument("--lock-timeout", type=float, help="seconds to wait for a running run")
    run.add_argument("--params", help="JSON file with more run parameters")
    run.set_defaults(func=cmd_run)

    ing = sub.add_parser("ingest", help="ingest a source folder only")
    ing.add_argument("--source", required=True)
    ing.add_argument("--db", default=DEFAULT_DB)
    ing.set_defaults(func=cmd_ingest)

    demo = sub.add_parser("demo-data", help="write a synthetic source in the data contract")
    demo.add_argument("--out", required=True)
    demo.add_argument("--users", type=int, default=2000)
    demo.add_argument("--items", type=int, default=1500)
    demo.add_argument("--events", type=int, default=120_000)
    demo.add_argument("--seed", type=int, default=42)
    demo.set_defaults(func=cmd_demo_data)

    lfm = sub.add_parser("convert-lastfm", help="convert HetRec 2011 Last.fm files to a source")
    lfm.add_argument("--src", required=True)
    lfm.add_argument("--out", required=True)
    lfm.set_defaults(func=cmd_lastfm)
    ev = sub.add_parser("evaluate", help="score the published lists against a held-out file")
    ev.add_argument("--db", default=DEFAULT_DB)
    ev.add_argument("--test", required=True, help="Parquet or CSV with user_id, item_id")
    ev.add_argument("--k", type=int, default=10)
    ev.add_argument("--json", action="store_true", help="one JSON object: list -> metric -> value")
    ev.set_defaults(func=cmd_evaluate)

    srv = sub.add_parser("serve", help="serve the nightly schedule and manual deployments")
    srv.add_argument("--db", default=DEFAULT_DB)
    srv.add_argument("--source", help="source folder (default: demo data)")
    srv.add_argument("--cron", default="0 2 * * *", help="nightly schedule (default 02:00)")
    srv.add_argument("--timezone", default="UTC")
    srv.set_defaults(func=cmd_serve)

    bf = sub.add_parser("backfill", help="run the nightly flow as of each day in a range")
    bf.add_argument("--start", required=True, help="first day, YYYY-MM-DD")
    bf.add_argument("--end", required=True, help="last day, YYYY-MM-DD")
    bf.add_argument("--force", action="store_true", help="rerun days already published")
    bf.add_argument("--source")
    bf.add_argument("--db", default=DEFAULT_DB)
    bf.add_argument("--no-evaluate", action="store_true")
    bf.set_defaults(func=cmd_backfill)

    qry = sub.add_parser("query", help="run a ready-made analyst query from sql/queries/")
    qry.add_argument("name", nargs="?", help="query name (omit or --list to see them)")
    qry.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    qry.add_argument("--db", default=DEFAULT_DB)
    qry.add_argument("--limit", type=int, default=50, help="rows to print")
    qry.add_argument("--list", action="store_true")
    qry.set_defaults(func=cmd_query)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("run", "backfill", "serve"):  # its temporary Prefect server dies with it
        from flows.prefect_server import start_temporary_server
        start_temporary_server()
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
