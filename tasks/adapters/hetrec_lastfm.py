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

LISTEN_TS = datetime(2011, 5, 1, tzinfo=UTC)


def decode_text(raw: bytes) -> str:
    """UTF-8 when the bytes are valid UTF-8, else Latin-1 line by line (never fails, never drops).

    Per-line fallback keeps a file that mixes encodings readable: valid UTF-8 lines stay UTF-8.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    lines = []
    for line in raw.split(b"\n"):  # per line of a small metadata file, not per event
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            lines.append(line.decode("latin-1"))
    return "\n".join(lines)


def read_dat(path: Path, columns: dict[str, type[pl.DataType]]) -> pl.DataFrame:
    """Read a HetRec tab-separated file with a header; `columns` picks and types the columns."""
    if not path.is_file():
        raise FileNotFoundError(f"HetRec Last.fm file missing: {path}")
    text = decode_text(path.read_bytes()).lstrip("\ufeff")
    frame = pl.read_csv(
        io.StringIO(text),
        separator="\t",
        quote_char=None,  # artist names contain bare double quotes
        infer_schema=False,
        truncate_ragged_lines=True,
    )
    missing = set(columns) - set(frame.columns)
    if missing:
        raise ValueError(f"{path.name}: missing columns {sorted(missing)}; found {frame.columns}")
    return frame.select(
        pl.col(name).str.strip_chars("\r").cast(dtype, strict=True)
        for name, dtype in columns.items()
    )


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
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        frame.write_parquet(out_dir / f"{name}.parquet")
    return {name: frame.height for name, frame in tables.items()}
