"""Input adapters: public formats -> a source folder in the data contract, and column mappings.

One registry, `ADAPTERS`, which the CLI reads for `recfusion convert FORMAT` (its choices, help
and `--list`): adding a format is one module with `detect` and `convert`, plus one entry here.
Every adapter writes Parquet tables (ids as text, UTC timestamps) that
`tasks.sources.ingest.read_source`
accepts, all at once (a failed conversion leaves the output folder as it was); a file it cannot
convert raises
`tasks.sources.adapters.common.AdapterError` (a `SourceError`) naming the file, line and
column. Importing this registry is cheap: a format's module loads when it is first used.

A CSV/Parquet/JSON Lines export whose columns are named differently needs no adapter: see
`tasks.sources.adapters.mapping` (`recfusion ingest --map …`, `recfusion convert mapped …`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Adapter:
    """One public format: what it is, whether a folder holds it, and how to convert it."""

    name: str
    description: str  # one line, shown by `recfusion convert --list`
    detect: Callable[[Path], bool]  # does this folder look like that format?
    convert: Callable[[Path, Path], dict[str, int]]  # (src, out) -> rows per written table


def _lazy(module: str, function: str) -> Callable[..., Any]:
    """A format module's function, imported at its first call: listing the formats (the CLI
    builds its parser for every command) does not load Polars and DuckDB."""

    def call(*args: Any) -> Any:
        return getattr(import_module(f"{__name__}.{module}"), function)(*args)

    call.__name__ = call.__qualname__ = f"{module}.{function}"
    return call


ADAPTERS: dict[str, Adapter] = {
    adapter.name: adapter
    for adapter in (
        Adapter(
            "lastfm",
            "HetRec 2011 Last.fm (user_artists.dat, user_friends.dat, artists.dat, tags.dat, "
            "user_taggedartists.dat)",
            _lazy("hetrec_lastfm", "detect"),
            _lazy("hetrec_lastfm", "convert_hetrec_lastfm"),
        ),
        Adapter(
            "movielens",
            "MovieLens: ML-100k (u.data, u.item, u.user), ML-1M/10M (ratings.dat, movies.dat, "
            "users.dat, tags.dat) or ML-latest/25M/32M (ratings.csv, movies.csv, tags.csv)",
            _lazy("movielens", "detect"),
            _lazy("movielens", "convert_movielens"),
        ),
        Adapter(
            "recbole",
            "RecBole atomic files (<name>.inter, .item, .user, .net with typed headers like "
            "user_id:token)",
            _lazy("recbole", "detect"),
            _lazy("recbole", "convert_recbole"),
        ),
    )
}


#: Not a format but a column mapping (`tasks.sources.adapters.mapping`): `recfusion convert mapped`.
MAPPED = "mapped"
MAPPED_DESCRIPTION = (
    "your own CSV/Parquet/JSON Lines export with other column names, renamed by --map or "
    "--map-file (for recfusion run; recfusion ingest takes --map itself)"
)


def detect_formats(src: Path) -> list[str]:
    """The registered formats a folder looks like (none, one, or several if it is ambiguous)."""
    return [name for name, adapter in ADAPTERS.items() if adapter.detect(Path(src))]


__all__ = ["ADAPTERS", "MAPPED", "MAPPED_DESCRIPTION", "Adapter", "detect_formats"]
