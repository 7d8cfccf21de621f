"""Adapter: HetRec 2011 Last.fm (`lastfm-2k`) → a source folder in the data contract.

Why: it is the real public dataset the product is measured on, and its files need care — they are
tab-separated with literal `"` inside artist names (no quoting), `tags.dat` is Latin-1 while
`artists.dat` is UTF-8, and the data has no listen times.

Output (Parquet, ids as strings, same schema as `lastfm-2k-split/train`):
- `events`: user_id, item_id, event_type `listen`, value = play count, ts fixed 2011-05-01 UTC.
- `social`: user_id, friend_id, weight 1.0 (friendships already appear in both directions).
- `items`: item_id, title (artist name), tags (distinct tag values, most frequent first, ties by
  tag text; empty list when nobody tagged the artist).
- `users`: user_id of every user seen in events or social.

Only aggregated tags leave this module: per-user tag assignments would reveal who listened to what.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from tasks.sources.adapters.common import AdapterError, read_text, write_source

LISTEN_TS = datetime(2011, 5, 1, tzinfo=UTC)


def read_dat(path: Path, columns: dict[str, type[pl.DataType]]) -> pl.DataFrame:
    """Read a HetRec tab-separated file with a header; `columns` picks and types the columns."""
    text = read_text(path, "HetRec Last.fm")
    frame = pl.read_csv(
        io.StringIO(text),
        separator="\t",
        quote_char=None,  # artist names contain bare double quotes
        infer_schema=False,
        truncate_ragged_lines=True,
    )
    missing = set(columns) - set(frame.columns)
    if missing:
        raise AdapterError(f"{path}: missing columns {sorted(missing)}; found {frame.columns}")
    try:
        return frame.select(
            pl.col(name).str.strip_chars("\r").cast(dtype, strict=True)
            for name, dtype in columns.items()
        )
    except pl.exceptions.InvalidOperationError as exc:
        detail = str(exc).strip().splitlines()[0]
        raise AdapterError(f"{path}: a value is not a number ({detail})") from None


def detect(src_dir: Path) -> bool:
    """The listening counts are the one file no other format has."""
    return (src_dir / "user_artists.dat").is_file()


def convert_hetrec_lastfm(src_dir: Path, out_dir: Path) -> dict[str, int]:
    """Convert the HetRec Last.fm .dat files in `src_dir` into Parquet tables in `out_dir`.

    Returns rows per written table (events, social, items, users).
    """
    listens = read_dat(
        src_dir / "user_artists.dat",
        {"userID": pl.String, "artistID": pl.String, "weight": pl.Float64},
    )
    friends = read_dat(src_dir / "user_friends.dat", {"userID": pl.String, "friendID": pl.String})
    artists = read_dat(src_dir / "artists.dat", {"id": pl.Int64, "name": pl.String})
    tags = read_dat(src_dir / "tags.dat", {"tagID": pl.String, "tagValue": pl.String})
    tagged = read_dat(
        src_dir / "user_taggedartists.dat", {"artistID": pl.Int64, "tagID": pl.String}
    )

    events = listens.select(
        pl.col("userID").alias("user_id"),
        pl.col("artistID").alias("item_id"),
        pl.lit("listen").alias("event_type"),
        pl.col("weight").alias("value"),
        pl.lit(LISTEN_TS).cast(pl.Datetime("us", "UTC")).alias("ts"),
    )
    social = friends.select(
        pl.col("userID").alias("user_id"),
        pl.col("friendID").alias("friend_id"),
        pl.lit(1.0).alias("weight"),
    )

    tag_lists = (
        tagged.join(tags, on="tagID", how="inner")
        .group_by("artistID", "tagValue")
        .agg(pl.len().alias("n"))
        .sort(["artistID", "n", "tagValue"], descending=[False, True, False])
        .group_by("artistID", maintain_order=True)
        .agg(pl.col("tagValue").alias("tags"))
    )
    items = (
        artists.sort("id")
        .join(tag_lists, left_on="id", right_on="artistID", how="left", maintain_order="left")
        .select(
            pl.col("id").cast(pl.String).alias("item_id"),
            pl.col("name").alias("title"),
            pl.col("tags").fill_null(pl.lit([], dtype=pl.List(pl.String))),
        )
    )

    users = (
        pl.concat([events["user_id"], social["user_id"], social["friend_id"]])
        .unique()
        .to_frame("user_id")
        .sort(pl.col("user_id").cast(pl.Int64, strict=False), "user_id")
    )

    tables = {"events": events, "social": social, "items": items, "users": users}
    return write_source(out_dir, tables, {"format": "lastfm", "src": str(src_dir)})
