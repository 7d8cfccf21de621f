"""Adapter: MovieLens (GroupLens) releases -> a source folder in the data contract.

Three file families, told apart by their file names:
- ML-100k: `u.data` (tab-separated user, item, rating, unix time; no header), `u.item`
  (`|`-separated, Latin-1: id, title, dates, IMDb URL and 19 genre flags), `u.user`
  (`|`: id, age, gender, occupation, zip code).
- ML-1M / ML-10M: `ratings.dat`, `movies.dat` (genres `A|B`), `users.dat`, `tags.dat`, fields
  separated by `::`, Latin-1 where not UTF-8. ML-1M's occupation codes are decoded to its names.
- ML-latest / 20M / 25M / 32M: `ratings.csv`, `movies.csv`, `tags.csv` (UTF-8 CSV, headers).

Output: `events` (event_type `rating`, value = stars, ts from unix seconds, UTC); `items` when a
movies file is there (title; tags = the genres in the file's order, then users' tags lowercased,
most frequent first; category = the first genre; the "unknown" / "(no genres listed)" genre is no
genre); `users` with attributes when a users file is there. Only `u.data`/`ratings.*` is required.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from tasks.sources.adapters.common import (
    LINE,
    AdapterError,
    from_unix_seconds,
    lines_named,
    log,
    parse_numbers,
    ranked_tags,
    read_lines,
    read_text,
    split_fields,
    write_source,
)

WHAT = "MovieLens"
#: The rating files that name each family, in the order they are looked for.
RATINGS = {"ml-100k": "u.data", "ml-1m": "ratings.dat", "ml-latest": "ratings.csv"}
#: u.item's genre flags, in file order (its u.genre lists the same).
GENRES_100K = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)
NO_GENRE = ("unknown", "(no genres listed)")
#: ML-1M users.dat occupation codes, as its README names them.
OCCUPATIONS_1M = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
)
RATING_COLUMNS = {"rating": pl.Float64(), "timestamp": pl.Int64()}


def variant(src_dir: Path) -> str | None:
    """Which family the folder holds (None: none); two families at once is an error."""
    found = [name for name, file in RATINGS.items() if (src_dir / file).is_file()]
    if len(found) > 1:
        files = " and ".join(RATINGS[name] for name in found)
        raise AdapterError(f"{src_dir}: holds both {files}; point it at one MovieLens release")
    return found[0] if found else None


def detect(src_dir: Path) -> bool:
    try:
        return variant(src_dir) is not None
    except AdapterError:
        return True  # it is MovieLens, only ambiguous: converting says so


def _events(ratings: pl.DataFrame, path: Path) -> pl.DataFrame:
    typed = parse_numbers(ratings, path, RATING_COLUMNS)
    return typed.select(
        pl.col("user_id").str.strip_chars(),
        pl.col("item_id").str.strip_chars(),
        pl.lit("rating").alias("event_type"),
        pl.col("rating").alias("value"),
        from_unix_seconds(pl.col("timestamp")).alias("ts"),
    )


def _genre_list(genres: pl.Expr) -> pl.Expr:
    return genres.list.eval(
        pl.element().str.strip_chars().filter(
            (pl.element().str.strip_chars() != "")
            & ~pl.element().str.strip_chars().is_in(list(NO_GENRE))
        )
    )


def _items(movies: pl.DataFrame, user_tags: pl.DataFrame | None) -> pl.DataFrame:
    """movies (item_id, title, genres list) + users' (item_id, tag) -> the items table."""
    items = movies.select(
        pl.col("item_id").str.strip_chars(), "title", _genre_list(pl.col("genres")).alias("genres")
    )
    if user_tags is not None:
        pairs = user_tags.select(
            pl.col("item_id").str.strip_chars(), pl.col("tag").str.strip_chars().str.to_lowercase()
        ).filter(pl.col("tag").is_not_null() & (pl.col("tag") != ""))
        ranked = ranked_tags(pairs, "item_id").rename({"tags": "user_tags"})
        items = items.join(ranked, on="item_id", how="left", maintain_order="left")
    else:
        items = items.with_columns(pl.lit(None, pl.List(pl.String)).alias("user_tags"))
    empty = pl.lit([], dtype=pl.List(pl.String))
    tags = pl.concat_list(pl.col("genres"), pl.col("user_tags").fill_null(empty)).list.eval(
        pl.element().filter(pl.element().str.to_lowercase().is_first_distinct())
    )
    return items.select(
        "item_id",
        "title",
        tags.alias("tags"),
        pl.col("genres").list.first().alias("category"),
    )


# --- ML-100k ------------------------------------------------------------------------------------


def _ml_100k(src: Path) -> dict[str, pl.DataFrame]:
    path = src / "u.data"
    ratings = split_fields(
        read_lines(path, WHAT), path, "\t", ["user_id", "item_id", "rating", "timestamp"]
    )
    tables = {"events": _events(ratings, path)}
    if (item_path := src / "u.item").is_file():
        flags = [f"\x00genre{i}" for i in range(len(GENRES_100K))]
        names = ["item_id", "title", "release_date", "video_release_date", "imdb_url", *flags]
        fields = split_fields(read_lines(item_path, WHAT), item_path, "|", names)
        typed = parse_numbers(
            fields, item_path, dict.fromkeys(flags, pl.Int64()),
            names={f: f"genre flag {g!r}" for f, g in zip(flags, GENRES_100K, strict=True)},
        )
        genres = pl.concat_list(
            pl.when(pl.col(flag) == 1).then(pl.lit(genre)).otherwise(None)
            for flag, genre in zip(flags, GENRES_100K, strict=True)
        ).list.drop_nulls()
        tables["items"] = _items(typed.with_columns(genres.alias("genres")), None)
    if (user_path := src / "u.user").is_file():
        names = ["user_id", "age", "gender", "occupation", "zip_code"]
        users = split_fields(read_lines(user_path, WHAT), user_path, "|", names)
        users = parse_numbers(users, user_path, {"age": pl.Int64()}, required=False)
        tables["users"] = users.select(pl.col("user_id").str.strip_chars(), *names[1:])
    return tables


# --- ML-1M / ML-10M -----------------------------------------------------------------------------


def _colon_fields(path: Path, names: list[str], free: str | None = None) -> pl.DataFrame:
    """Split `a::b::c` lines. The `free` field may itself contain `::` (a title or a tag): the
    other fields cannot, so it is what is left between them."""
    lines = read_lines(path, WHAT)
    if free is None:
        return split_fields(lines, path, "::", names)
    pattern = "^" + "::".join("(.*)" if n == free else "([^:]*)" for n in names) + "$"
    parts = lines.with_columns(pl.col("text").str.extract_groups(pattern).alias("\x00parts"))
    bad = parts.filter(pl.col("\x00parts").struct.field("1").is_null())
    if bad.height:
        raise AdapterError(
            f"{path} {lines_named(bad[LINE])}: expected {len(names)} fields "
            f"({', '.join(names)}) separated by '::'"
        )
    return parts.select(
        LINE,
        *[pl.col("\x00parts").struct.field(str(i + 1)).alias(n) for i, n in enumerate(names)],
    )


def _ml_1m(src: Path) -> dict[str, pl.DataFrame]:
    path = src / "ratings.dat"
    ratings = _colon_fields(path, ["user_id", "item_id", "rating", "timestamp"])
    tables = {"events": _events(ratings, path)}
    tags = None
    if (tag_path := src / "tags.dat").is_file():
        tags = _colon_fields(tag_path, ["user_id", "item_id", "tag", "timestamp"], free="tag")
    if (movie_path := src / "movies.dat").is_file():
        movies = _colon_fields(movie_path, ["item_id", "title", "genres"], free="title")
        movies = movies.with_columns(pl.col("genres").str.split("|"))
        tables["items"] = _items(movies, tags)
    elif tags is not None:
        log.warning(f"{tag_path}: ignored (tags need movies.dat, which is missing)")
    if (user_path := src / "users.dat").is_file():
        names = ["user_id", "gender", "age", "occupation", "zip_code"]
        users = parse_numbers(
            _colon_fields(user_path, names), user_path,
            {"age": pl.Int64(), "occupation": pl.Int64()}, required=False,
        )
        occupation = pl.col("occupation").replace_strict(
            dict(enumerate(OCCUPATIONS_1M)),
            default=pl.col("occupation").cast(pl.String),
            return_dtype=pl.String,
        )
        tables["users"] = users.select(
            pl.col("user_id").str.strip_chars(), "gender", "age", occupation, "zip_code"
        )
    return tables


# --- ML-latest / 20M / 25M / 32M ----------------------------------------------------------------


def _csv(path: Path, columns: dict[str, str]) -> pl.DataFrame:
    """A MovieLens CSV (header, quoted titles) as text columns renamed file name -> ours.

    UTF-8 files (all of them, as released) are read straight from disk: a 32M-rating file is
    never held as text in Python; anything else is decoded like the other formats first.
    """
    if not path.is_file():
        raise AdapterError(f"{WHAT} file missing: {path}")
    try:
        try:
            frame = pl.read_csv(path, infer_schema=False)
        except pl.exceptions.ComputeError as exc:
            if "utf-8" not in str(exc).lower():
                raise
            frame = pl.read_csv(read_text(path, WHAT).encode(), infer_schema=False)
    except pl.exceptions.PolarsError as exc:
        detail = str(exc).strip().splitlines()[0]
        raise AdapterError(f"{path}: cannot be read as CSV ({detail})") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise AdapterError(
            f"{path}: no column {', '.join(missing)} (found: {', '.join(frame.columns)}); "
            f"expected the MovieLens header {','.join(columns)}"
        )
    return frame.select(
        pl.int_range(2, pl.len() + 2, dtype=pl.Int64).alias(LINE),  # line 1 is the header
        *[pl.col(theirs).alias(ours) for theirs, ours in columns.items()],
    )


def _ml_latest(src: Path) -> dict[str, pl.DataFrame]:
    path = src / "ratings.csv"
    ratings = _csv(
        path,
        {"userId": "user_id", "movieId": "item_id", "rating": "rating", "timestamp": "timestamp"},
    )
    tables = {"events": _events(ratings, path)}
    tags = None
    if (tag_path := src / "tags.csv").is_file():
        tags = _csv(tag_path, {"userId": "user_id", "movieId": "item_id", "tag": "tag"})
    if (movie_path := src / "movies.csv").is_file():
        movies = _csv(movie_path, {"movieId": "item_id", "title": "title", "genres": "genres"})
        movies = movies.with_columns(pl.col("genres").fill_null("").str.split("|"))
        tables["items"] = _items(movies, tags)
    elif tags is not None:
        log.warning(f"{tag_path}: ignored (tags need movies.csv, which is missing)")
    return tables


READERS = {"ml-100k": _ml_100k, "ml-1m": _ml_1m, "ml-latest": _ml_latest}


def convert_movielens(src_dir: Path, out_dir: Path) -> dict[str, int]:
    """Convert a MovieLens release in `src_dir` into Parquet tables in `out_dir`.

    Returns rows per written table (events, then items and users when their files are there).
    """
    found = variant(src_dir)
    if found is None:
        expected = ", ".join(RATINGS.values())
        raise AdapterError(f"{src_dir}: no MovieLens ratings file (expected one of {expected})")
    tables = READERS[found](src_dir)
    return write_source(out_dir, tables, {"format": "movielens", "variant": found,
                                          "src": str(src_dir)})
