"""The `recfusion` command line: run, ingest, convert, demo-data, evaluate, query, backfill, serve.

A mistake by the user (a flag, a parameter, a params file, a query parameter, a source folder or
database that is not there) is one line on stderr, `recfusion: <what is wrong>`, never a
traceback; `--debug` shows the traceback instead. Exit codes are defined once, below.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

# A cold Prefect home needs time to migrate its SQLite database on first start.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
# No network here or on many production boxes: don't let telemetry add errors to the log.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

if TYPE_CHECKING:
    from pydantic import BaseModel

    from tasks.config import RunParameters
    from tasks.sources.adapters.mapping import ColumnMapping

DEFAULT_DB = "recfusion.duckdb"

#: Exit codes: the run published (or the command did its job) …
EXIT_OK = 0
#: … a run failed or was rejected, a source file is unusable, the database is busy, or an
#: unexpected error (a bug: rerun with --debug) …
EXIT_FAILED = 1
#: … the command line, a parameter, a params file or a query parameter is wrong …
EXIT_USAGE = 2
#: … the run published (or was rejected) in the warehouse, but the analyst copy could not be
#: replaced, so analysts still see the state before it; the next command that changes the
#: warehouse retries. A scheduler may treat it as a warning: the run is not lost …
EXIT_NOT_VISIBLE = 3
#: … stopped by Ctrl-C (SIGINT, 130) or by SIGTERM (143: systemd, Kubernetes, `timeout`), as
#: shells report them (128 + the signal); the run in progress is recorded as failed with it:
#: `flows.signals.EXIT_INTERRUPTED`, `EXIT_TERMINATED`.

PROG = "recfusion"


class UsageError(Exception):
    """A mistake on the command line or in a file it names: one line per problem, exit 2."""

    def __init__(self, *lines: str) -> None:
        super().__init__("; ".join(lines))
        self.lines = list(lines)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line (it prints usage + error)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


# --------------------------------------------------------------------------- run parameters

#: Command-line flags that set a run parameter: argparse dest -> (flag, parameter path).
RUN_FLAGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "source": ("--source", ("source",)),
    "db": ("--db", ("db",)),
    "top_k": ("--top-k", ("top_k",)),
    "as_of": ("--as-of", ("as_of",)),
    "strategy": ("--strategy", ("fusion", "strategy")),
    "evaluate": ("--no-evaluate", ("evaluate",)),
    "allow_regression": ("--allow-regression", ("allow_regression",)),
    "lock_timeout": ("--lock-timeout", ("lock_timeout_seconds",)),
    "workers": ("--workers", ("workers",)),
    "dask_address": ("--dask-address", ("dask_address",)),
}
PATH_PARAMETERS = {("source",), ("db",)}


def read_params_file(path: str) -> dict[str, Any]:
    """A `--params` file's JSON object; anything else is one line naming the file."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise UsageError(f"params file {path}: key {', '.join(repeated)} given twice")
        return dict(pairs)

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(f"cannot read params file {path}: {reason}") from None
    try:
        data = json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as exc:
        raise UsageError(f"params file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(
            f"params file {path} must hold a JSON object of run parameters "
            f'(e.g. {{"top_k": 20}}), not a JSON {type(data).__name__}'
        )
    return data


def _flag_values(args: argparse.Namespace) -> dict[tuple[str, ...], tuple[str, Any]]:
    """Run parameters given as flags on this command line: path -> (flag as typed, value)."""
    out = {}
    for dest, (flag, path) in RUN_FLAGS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if path == ("source",):
            value = str(_resolved(value))
        shown = flag if isinstance(value, bool) else f"{flag} {getattr(args, dest)}"
        out[path] = (shown, value)
    return out


def _resolved(path: str) -> Path:
    return Path(path).expanduser().resolve()


def _same(path: tuple[str, ...], flag_value: Any, file_value: Any) -> bool:
    """Do a flag and a params-file value mean the same parameter value?"""
    from pydantic import TypeAdapter, ValidationError

    from tasks.config import FusionParams, RunParameters

    if path in PATH_PARAMETERS and isinstance(file_value, str):
        return _resolved(flag_value) == _resolved(file_value)
    fields = FusionParams.model_fields if path[0] == "fusion" else RunParameters.model_fields
    adapter: TypeAdapter[Any] = TypeAdapter(fields[path[-1]].annotation or Any)
    try:
        a, b = adapter.validate_python(flag_value), adapter.validate_python(file_value)
    except ValidationError:
        return False
    if isinstance(a, datetime) and isinstance(b, datetime):  # no zone = UTC, as in the model
        a, b = (t if t.tzinfo else t.replace(tzinfo=UTC) for t in (a, b))
    return bool(a == b)


def _nested(data: Mapping[str, Any], path: tuple[str, ...]) -> tuple[bool, Any]:
    for part in path[:-1]:
        inner = data.get(part)
        if not isinstance(inner, Mapping):
            return False, None
        data = inner
    return (path[-1] in data), data.get(path[-1])


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def validated(model: type[BaseModel], data: Any, origins: Mapping[str, str] | None = None) -> Any:
    """`model` from `data`, or a UsageError with one line per invalid parameter."""
    from pydantic import ValidationError

    from tasks.config import parameter_errors

    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise UsageError(*parameter_errors(exc, model, origins)) from None


def run_parameters(args: argparse.Namespace) -> RunParameters:
    """Run parameters from the flags and `--params`: they merge; where both set one, they agree.

    A flag that disagrees with the params file is an error naming both, not a silent winner.
    """
    from tasks.config import RunParameters

    params_file = getattr(args, "params", None)
    data: dict[str, Any] = read_params_file(params_file) if params_file else {}
    flags = _flag_values(args)
    conflicts = []
    for path, (shown, value) in flags.items():
        present, file_value = _nested(data, path)
        if present and not _same(path, value, file_value):
            conflicts.append(
                f"{shown} and params file {params_file} key {'.'.join(path)}="
                f"{_shown(file_value)} disagree"
            )
    if conflicts:
        raise UsageError(*conflicts)
    for path, (_, value) in flags.items():
        target = data
        for part in path[:-1]:
            inner = target.setdefault(part, {})
            if not isinstance(inner, dict):  # invalid; validation names it
                break
            target = inner
        else:
            target[path[-1]] = value
    origins = {".".join(path): shown.split(" ")[0] for path, (shown, _) in flags.items()}
    params: RunParameters = validated(RunParameters, data, origins)
    return params


def _folder(path: str | None, label: str) -> None:
    """A source folder that is not there is the user's mistake: say so before any run starts."""
    if path is not None and not Path(path).expanduser().is_dir():
        what = "is not a folder" if Path(path).expanduser().exists() else "does not exist"
        raise UsageError(f"{label} {path}: {what}")


def _source_label(args: argparse.Namespace) -> str:
    return "--source" if getattr(args, "source", None) else "source (from --params)"


# --------------------------------------------------------------------------- commands


def _flow_server(*preload: str) -> None:
    """A temporary Prefect server that dies with this process (none when PREFECT_API_URL is set).

    Started only once the command's parameters passed, so a typo is told at once, not after the
    server's start-up. While the server boots in its own process (~5 s), the `preload` modules
    are imported on a thread (~3 s for the nightly flow's libraries); a failed import is left
    for the command's own import to raise, with its traceback.
    """
    import threading

    import prefect.context  # noqa: F401 - all the server start imports, before the thread's
    import prefect.settings  # noqa: F401 - (two threads importing one package can deadlock)

    from flows.prefect_server import start_temporary_server

    loader = threading.Thread(target=_import_all, args=(preload,), daemon=True)
    loader.start()
    try:
        start_temporary_server()
    finally:
        loader.join()


def _import_all(modules: tuple[str, ...]) -> None:
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the caller's own import raises it again
            return


def _engine(params: RunParameters) -> None:
    """`--workers`/`--dask-address` without the Dask extra: one line, before any server starts."""
    from flows.engine import EngineUnavailable, check_available

    try:
        check_available(params)
    except EngineUnavailable as exc:
        raise UsageError(str(exc)) from None


def cmd_run(args: argparse.Namespace) -> int:
    params = run_parameters(args)
    _folder(params.source, _source_label(args))
    _engine(params)
    # Great Expectations too (1.5 s to import): the run's first check would import it.
    _flow_server("flows.nightly", "great_expectations")
    from flows.engine import flow_on
    from flows.nightly import RunSummary, nightly

    state = flow_on(nightly, params)(params=params, return_state=True)
    summary = state.result(raise_on_failure=False)
    if not isinstance(summary, RunSummary):
        print(f"{PROG}: run failed: {_one_line(state.message or summary)}", file=sys.stderr)
        return EXIT_FAILED
    if summary.refused:  # nothing started: no run id to look up
        print(f"{PROG}: not started: {_one_line(summary.message)}", file=sys.stderr)
        return EXIT_FAILED
    if summary.analyst_copy_problem:  # finished in the warehouse, but analysts cannot see it
        print(
            f"{PROG}: run {summary.run_id} {summary.status}, but "
            f"{_one_line(summary.analyst_copy_problem)}",
            file=sys.stderr,
        )
        return EXIT_NOT_VISIBLE
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
        return EXIT_OK
    print(
        f"{PROG}: run {summary.run_id} {summary.status}: {_one_line(summary.message)}",
        file=sys.stderr,
    )
    return EXIT_FAILED


def cmd_ingest(args: argparse.Namespace) -> int:
    params = run_parameters(args)  # checks --db and --lock-timeout like a run's
    _folder(params.source, "--source")
    from tasks.sources.ingest import load_source, read_source
    from tasks.warehouse.analyst_copy import check_room, open_warehouse, refresh_analyst_copy
    from tasks.warehouse.connection import apply_schema, connect, run_lock
    from tasks.warehouse.errors import AnalystCopyFailed
    from tasks.warehouse.runs import new_run_id
    from tasks.warehouse.source_log import note_source

    assert params.source is not None  # --source is required
    mapping = _column_mapping(args)
    run_id = new_run_id()
    if mapping:
        from tasks.sources.adapters.mapping import read_mapped_source

        validated_source = read_mapped_source(Path(params.source), mapping)
    else:
        from tasks.sources.ingest import ChunkProgress

        chunks = ChunkProgress()
        validated_source = read_source(
            Path(params.source),
            on_chunk=lambda table, done, total: print(chunks.line(table, done, total),
                                                      file=sys.stderr, flush=True),
        )
    with run_lock(params.db, params.lock_timeout_seconds, holder="ingest"):
        check_room(params.db)
        with connect(open_warehouse(params.db)) as con, _warning_lines("tasks.sources.ingest"):
            apply_schema(con)
            report = load_source(con, validated_source, run_id)
        note_source(params.db, Path(params.source), mapping)
        problem = ""
        try:
            refresh_analyst_copy(params.db)  # analysts see the new rows
        except AnalystCopyFailed as exc:
            problem = _one_line(exc)
    for table in report.read:
        print(
            f"{table}: read {report.read[table]}, added {report.added[table]}, "
            f"quarantined {report.quarantined[table]}"
        )
    if problem:
        print(f"{PROG}: ingested into the warehouse, but {problem}", file=sys.stderr)
        return EXIT_NOT_VISIBLE
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    from tasks.warehouse.restore import restore

    for folder in args.source:
        _folder(folder, "--source")
    done = restore(args.db, [Path(s) for s in args.source] or None, args.lock_timeout)
    for line in done.lines:
        print(line)
    return EXIT_OK


def cmd_demo_data(args: argparse.Namespace) -> int:
    from tasks.sources.demo import generate_demo_source

    counts = generate_demo_source(
        Path(args.out), users=args.users, items=args.items, events=args.events, seed=args.seed
    )
    print(", ".join(f"{table}: {n}" for table, n in counts.items()) + f" -> {args.out}")
    return EXIT_OK


def _column_mapping(args: argparse.Namespace) -> ColumnMapping | None:
    """`--map` and `--map-file` (ingest, convert mapped) merged; None when neither is given."""
    if not args.map and not args.map_file:
        return None
    from tasks.sources.adapters.mapping import load_mapping

    return load_mapping(args.map, args.map_file)


@contextmanager
def _warning_lines(name: str = "tasks.sources.adapters") -> Iterator[None]:
    """A module's warnings (a field an adapter ignores, ids that do not match) as stderr lines."""
    logger = logging.getLogger(name)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: warning: %(message)s"))
    propagate, logger.propagate = logger.propagate, False
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def cmd_convert(args: argparse.Namespace) -> int:
    from tasks.sources.adapters import ADAPTERS, MAPPED, MAPPED_DESCRIPTION, detect_formats

    if args.list:
        for name, adapter in ADAPTERS.items():
            print(f"{name:10s} {adapter.description}")
        print(f"{MAPPED:10s} {MAPPED_DESCRIPTION}")
        return EXIT_OK
    missing = [flag for flag, value in (("--src", args.src), ("--out", args.out)) if not value]
    if missing:
        raise UsageError(f"convert needs {' and '.join(missing)} (or --list to see the formats)")
    _folder(args.src, "--src")
    src, out = Path(args.src).expanduser(), Path(args.out).expanduser()
    mapping = _column_mapping(args)
    name = args.format
    if name != MAPPED and mapping is not None:
        raise UsageError(
            f"--map and --map-file rename the columns of your own export: use "
            f"`{PROG} convert {MAPPED}` (a {name or 'public'} format needs no mapping)"
        )
    if name is None:
        found = detect_formats(src)
        if len(found) != 1:
            what = f"looks like {' and '.join(found)}" if found else "holds no known format's files"
            raise UsageError(
                f"--src {args.src} {what}; name the format: {PROG} convert "
                f"{{{','.join([*ADAPTERS, MAPPED])}}} (see {PROG} convert --list)"
            )
        name = found[0]
        print(f"{args.src}: {name} files")
    from tasks.sources.adapters.common import check_output

    check_output(out)  # before a conversion that may take minutes, not after
    with _warning_lines():
        if name == MAPPED:
            if mapping is None:
                raise UsageError(
                    f"convert {MAPPED} needs --map or --map-file, e.g. --map user_id=customer"
                )
            from tasks.sources.adapters.mapping import convert_mapped

            counts = convert_mapped(src, out, mapping)
        else:
            counts = ADAPTERS[name].convert(src, out)
    print(", ".join(f"{table}: {n}" for table, n in counts.items()) + f" -> {args.out}")
    return EXIT_OK


def _query_params(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--param {pair}: expected KEY=VALUE, e.g. --param user_id=u0001")
        if key in out:
            raise UsageError(f"--param {key} given twice")
        out[key] = value
    return out


def cmd_query(args: argparse.Namespace) -> int:
    from tasks.warehouse.connection import sql_query_names

    if args.list or not args.name:
        from tasks.warehouse.queries import describe

        for name in sql_query_names():
            print(f"{name:32s} {describe(name)}")
        return EXIT_OK
    params = _query_params(args.param)
    import polars as pl

    from tasks.warehouse.queries import run_query

    frame = run_query(args.db, args.name, params)
    with pl.Config(tbl_rows=args.limit, tbl_cols=-1, fmt_str_lengths=60, tbl_width_chars=200):
        print(frame)
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    if not Path(args.db).is_file():
        raise UsageError(f"--db {args.db}: no database file there")
    import polars as pl

    from tasks.evaluation.published import evaluate_published, read_truth

    try:
        truth = read_truth(Path(args.test))
    except (ValueError, OSError) as exc:
        raise UsageError(f"--test {args.test}: {_one_line(exc)}") from None
    results = evaluate_published(args.db, truth, args.k)
    if args.json:
        print(json.dumps(results, indent=2))
        return EXIT_OK
    table = pl.DataFrame([{"list": name, **values} for name, values in results.items()])
    with pl.Config(tbl_rows=-1, tbl_cols=-1, float_precision=4, tbl_width_chars=200):
        print(table)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    _folder(args.source, "--source")
    _flow_server()
    from flows.serve import serve_all

    source = str(Path(args.source).resolve()) if args.source else None
    serve_all(str(Path(args.db).resolve()), source, args.cron, args.timezone)
    return EXIT_OK


def cmd_backfill(args: argparse.Namespace) -> int:
    run = run_parameters(args)
    _folder(run.source, _source_label(args))
    _engine(run)
    from flows.backfill import BackfillParameters, backfill

    params = validated(
        BackfillParameters,
        {"start": args.start, "end": args.end, "force": args.force, "run": run},
        {"start": "--start", "end": "--end"},
    )
    _flow_server()
    summaries = backfill(params=params)
    failed = [s for s in summaries if s.status != "published"]
    for s in summaries:
        print(f"{s.run_id}: {s.status} {s.message}")
    return EXIT_FAILED if failed else EXIT_OK


def cmd_tune(args: argparse.Namespace) -> int:
    run = run_parameters(args)
    from flows.tune import TuneParameters, tune

    data: dict[str, Any] = {"run": run, "trials": args.trials, "budget_seconds": args.budget,
                            "max_users": args.max_users}
    if args.modalities:
        data["modalities"] = [m.strip() for m in args.modalities.split(",") if m.strip()]
    params = validated(TuneParameters, data, {"trials": "--trials", "budget_seconds": "--budget",
                                              "max_users": "--max-users",
                                              "modalities": "--modalities"})
    _flow_server()
    summary = tune(params=params)
    if not summary.improved:
        print(f"tuning {summary.tuning_id}: the current values are the best found")
    for name, (before, after) in summary.improved.items():
        print(f"{name}: validation ndcg@{run.top_k} {before:.4f} -> {after:.4f}")
    print(f"stored as tuning {summary.tuning_id} in {run.db}; the next run uses it")
    return EXIT_OK


# --------------------------------------------------------------------------- parser


def _at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def _add_run_flags(parser: argparse.ArgumentParser, as_of: bool = True) -> None:
    """The run-parameter flags; their help names the limits RunParameters enforces."""
    parser.add_argument("--source", help="source folder in the data contract (default: demo data)")
    parser.add_argument("--db", help=f"DuckDB file (default: {DEFAULT_DB})")
    parser.add_argument("--top-k", type=int, help="list length K, 1-1000 (default 10)")
    if as_of:
        parser.add_argument(
            "--as-of", help="build the data as of this ISO timestamp (no zone = UTC)"
        )
    parser.add_argument(
        "--strategy",
        help="fusion strategy: auto, weighted, rrf, combsum, combmnz, borda, stacking "
        "(stacking needs evaluation; default auto)",
    )
    parser.add_argument(
        "--no-evaluate",
        dest="evaluate",
        action="store_false",
        default=None,
        help="skip the hold-out evaluation",
    )
    parser.add_argument(
        "--allow-regression",
        action="store_true",
        default=None,
        help="publish even if the regression gate fails",
    )
    parser.add_argument(
        "--lock-timeout",
        type=float,
        help="seconds (>= 0) to wait for a run holding the database (default 0)",
    )
    parser.add_argument(
        "--params",
        help="JSON file with an object of more run parameters (see tasks/config.py); "
        "a flag and the file may not disagree",
    )


def _add_engine_flags(parser: argparse.ArgumentParser) -> None:
    """Where the per-user work runs (`flows/engine.py`); without either, in this process."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help='score users on a local Dask cluster of N (>= 1) worker processes '
        '(needs pip install -e ".[dask]")',
    )
    where.add_argument(
        "--dask-address",
        metavar="ADDR",
        help="score users on the running Dask scheduler at ADDR (tcp://HOST:PORT)",
    )


def _add_map_flags(parser: argparse.ArgumentParser, only: str = "") -> None:
    """`--map` / `--map-file`: the column mapping of `tasks.sources.adapters.mapping`."""
    when = f" ({only})" if only else ""
    parser.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="TARGET=COLUMN,...",
        help=f"read the files' COLUMN as the contract's TARGET{when}: user_id=customer,"
        "item_id=sku,ts=ordered_at; TARGET==VALUE for a constant (event_type==purchase); "
        "TABLE.TARGET for items, users, social (items.title=name)",
    )
    parser.add_argument(
        "--map-file",
        help='JSON mapping file: {"events": {"user_id": "customer", "event_type": "=purchase"}, '
        '"items": {...}}, or a flat object for events',
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__.split("\n\n")[0] if __doc__ else None)
    debug_help = "show the traceback of an error instead of one line"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    # --debug is also accepted after the command; SUPPRESS keeps the global one when absent.
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)

    run = command("run", help="run the nightly flow once (ingest → … → publish)")
    _add_run_flags(run)
    _add_engine_flags(run)
    run.set_defaults(func=cmd_run)

    ing = command("ingest", help="ingest a source folder only")
    ing.add_argument("--source", required=True, help="source folder in the data contract")
    ing.add_argument("--db", help=f"DuckDB file (default: {DEFAULT_DB})")
    ing.add_argument(
        "--lock-timeout",
        type=float,
        help="seconds (>= 0) to wait for a run holding the database (default 0)",
    )
    _add_map_flags(ing)
    ing.set_defaults(func=cmd_ingest)

    demo = command("demo-data", help="write a synthetic source in the data contract")
    demo.add_argument("--out", required=True)
    demo.add_argument("--users", type=_at_least(2), default=2000, help=">= 2 (default 2000)")
    demo.add_argument("--items", type=_at_least(2), default=1500, help=">= 2 (default 1500)")
    demo.add_argument("--events", type=_at_least(0), default=120_000, help=">= 0")
    demo.add_argument("--seed", type=_at_least(0), default=42, help=">= 0 (default 42)")
    demo.set_defaults(func=cmd_demo_data)

    from tasks.sources.adapters import ADAPTERS, MAPPED, MAPPED_DESCRIPTION

    formats = "\n".join(
        f"  {name:10s} {text}"
        for name, text in [*((n, a.description) for n, a in ADAPTERS.items()),
                           (MAPPED, MAPPED_DESCRIPTION)]
    )
    conv = command(
        "convert",
        help="convert a public format (or a mapped export) to a source folder",
        description=f"Write a source folder in the data contract from:\n{formats}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    conv.add_argument(
        "format", nargs="?", choices=[*ADAPTERS, MAPPED],
        help="the format of --src (omit it to detect the format from the file names)",
    )
    conv.add_argument("--src", help="folder with the files in that format")
    conv.add_argument(
        "--out", help="new or empty folder (or one an earlier convert wrote: it is replaced)"
    )
    conv.add_argument("--list", action="store_true", help="list the formats and exit")
    _add_map_flags(conv, only=f"with {MAPPED}")
    conv.set_defaults(func=cmd_convert)

    lfm = command("convert-lastfm", help="the same as `convert lastfm`")
    lfm.add_argument("--src", required=True)
    lfm.add_argument("--out", required=True)
    lfm.set_defaults(func=cmd_convert, format="lastfm", list=False, map=[], map_file=None)

    ev = command("evaluate", help="score the published lists against a held-out file")
    ev.add_argument("--db", default=DEFAULT_DB)
    ev.add_argument("--test", required=True, help="Parquet or CSV with user_id, item_id")
    ev.add_argument("--k", type=_at_least(1), default=10, help="list length, >= 1 (default 10)")
    ev.add_argument("--json", action="store_true", help="one JSON object: list -> metric -> value")
    ev.set_defaults(func=cmd_evaluate)

    srv = command("serve", help="serve the nightly schedule and manual deployments")
    srv.add_argument("--db", default=DEFAULT_DB)
    srv.add_argument("--source", help="source folder (default: demo data)")
    srv.add_argument("--cron", default="0 2 * * *", help="nightly schedule (default 02:00)")
    srv.add_argument("--timezone", default="UTC")
    srv.set_defaults(func=cmd_serve)

    bf = command("backfill", help="run the nightly flow as of each day in a range")
    bf.add_argument("--start", required=True, help="first day, YYYY-MM-DD")
    bf.add_argument("--end", required=True, help="last day, YYYY-MM-DD (>= --start)")
    bf.add_argument("--force", action="store_true", help="rerun days already published")
    _add_run_flags(bf, as_of=False)
    _add_engine_flags(bf)
    bf.set_defaults(func=cmd_backfill)

    tn = command("tune", help="search each modality's hyperparameters on this database's data")
    tn.add_argument("--trials", type=_at_least(1), default=30,
                    help="trials per modality, 1-1000 (default 30)")
    tn.add_argument("--budget", type=float, default=1800.0,
                    help="seconds for the whole search, > 0 (default 1800)")
    tn.add_argument("--max-users", type=_at_least(100), default=2000,
                    help="validation users per trial, >= 100 (default 2000)")
    tn.add_argument("--modalities", help="comma-separated modalities (default: the run's)")
    _add_run_flags(tn, as_of=False)
    tn.set_defaults(func=cmd_tune)

    rst = command(
        "restore",
        help="rebuild a damaged warehouse from the analyst copy (or the sources)",
        description="Check the warehouse and the analyst copy by reading them whole; rebuild "
        "the damaged one from the other, or, when both are damaged, the raw tables from the "
        "source folders (published history cannot come back). Damaged files are kept beside.",
    )
    rst.add_argument("--db", default=DEFAULT_DB, help=f"the analyst copy (default: {DEFAULT_DB})")
    rst.add_argument(
        "--source", action="append", default=[], metavar="DIR",
        help="source folder to re-ingest when both copies are damaged (repeatable; default: "
        "the folders logged beside the warehouse)",
    )
    rst.add_argument("--lock-timeout", type=float, default=0.0,
                     help="seconds (>= 0) to wait for a run holding the database (default 0)")
    rst.set_defaults(func=cmd_restore)

    qry = command("query", help="run a ready-made analyst query from sql/queries/")
    qry.add_argument("name", nargs="?", help="query name (omit or --list to see them)")
    qry.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    qry.add_argument("--db", default=DEFAULT_DB)
    qry.add_argument("--limit", type=int, default=50, help="rows to print (-1 = all)")
    qry.add_argument("--list", action="store_true")
    qry.set_defaults(func=cmd_query)
    return parser


# --------------------------------------------------------------------------- errors


def _one_line(value: object, limit: int = 1000) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


#: The product's own errors for a user's situation (module, class): one line and EXIT_FAILED.
#: Looked up only if their module is loaded: an error cannot come from a module never imported.
FAILURES = (
    ("tasks.sources.files", "SourceError"),
    ("tasks.warehouse.errors", "RunLockTimeout"),
    ("flows.nightly", "RunFailed"),
    ("tasks.warehouse.errors", "DatabaseBusy"),
    ("tasks.warehouse.errors", "DatabaseUnusable"),
    ("flows.prefect_server", "PrefectApiUnreachable"),
)
#: … and those that mean the request itself is wrong: EXIT_USAGE.
USAGE = (
    ("tasks.warehouse.queries", "QueryError"),
    ("tasks.sources.adapters.mapping", "MappingError"),
)


def _is(exc: BaseException, kinds: tuple[tuple[str, str], ...]) -> bool:
    for module, name in kinds:
        kind = getattr(sys.modules.get(module), name, None)
        if isinstance(kind, type) and isinstance(exc, kind):
            return True
    return False


def explain(exc: BaseException) -> tuple[list[str], int]:
    """The lines to print and the exit code for an error that reached `main`."""
    from pydantic import ValidationError

    if isinstance(exc, UsageError):
        return exc.lines, EXIT_USAGE
    if isinstance(exc, ValidationError):  # a model validated outside `validated`
        from tasks.config import parameter_errors

        return parameter_errors(exc), EXIT_USAGE
    if _is(exc, USAGE):
        return [_one_line(exc)], EXIT_USAGE
    if _is(exc, FAILURES):
        return [_one_line(exc)], EXIT_FAILED
    return [
        f"unexpected error: {type(exc).__name__}: {_one_line(exc)} "
        "(run again with --debug for the traceback)"
    ], EXIT_FAILED


#: Commands that run a Prefect flow (and so may need a temporary Prefect server).
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv  # known even when parsing fails
    from flows import signals

    previous = signals.install()
    try:
        args = build_parser().parse_args(argv)
        debug = bool(getattr(args, "debug", False))
        return int(args.func(args))
    except (KeyboardInterrupt, signals.Stopped) as exc:
        if debug:
            raise
        runs = signals.stopped_runs()
        recorded = f"; run {', '.join(runs)} recorded as failed" if runs else ""
        print(f"{PROG}: {signals.stop_reason(exc)}{recorded}", file=sys.stderr)
        return signals.exit_code(exc)
    except Exception as exc:
        if debug:
            raise
        lines, code = explain(exc)
        for line in lines:
            print(f"{PROG}: {line}", file=sys.stderr)
        return code
    finally:
        signals.restore(previous)


if __name__ == "__main__":
    sys.exit(main())
