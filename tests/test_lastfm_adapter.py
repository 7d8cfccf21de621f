"""The Last.fm adapter on the real HetRec files: counts, encodings, tag order, split schema."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from flows.cli import EXIT_FAILED, main
from tasks.sources.adapters.common import AdapterError, decode_text
from tasks.sources.adapters.hetrec_lastfm import LISTEN_TS, convert_hetrec_lastfm

SRC = Path("/work/shared/data/lastfm-2k")
SPLIT_TRAIN = Path("/work/shared/data/lastfm-2k-split/train")

needs_data = pytest.mark.skipif(not SRC.is_dir(), reason="HetRec Last.fm data not present")


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, int], Path]:
    out = tmp_path_factory.mktemp("lastfm")
    return convert_hetrec_lastfm(SRC, out), out


@needs_data
def test_row_counts_match_the_published_statistics(
    converted: tuple[dict[str, int], Path],
) -> None:
    counts, out = converted
    assert counts == {"events": 92_834, "social": 25_434, "items": 17_632, "users": 1_892}
    for name, n in counts.items():
        assert pl.read_parquet(out / f"{name}.parquet").height == n


@needs_data
def test_schema_matches_the_fixed_split(converted: tuple[dict[str, int], Path]) -> None:
    _, out = converted
    for name in ("events", "social", "items"):
        ours = pl.read_parquet(out / f"{name}.parquet")
        reference = pl.read_parquet(SPLIT_TRAIN / f"{name}.parquet")
        assert ours.schema == reference.schema, name
    events = pl.read_parquet(out / "events.parquet")
    assert events["event_type"].unique().to_list() == ["listen"]
    assert events["ts"].unique().to_list() == [LISTEN_TS]
    assert events.filter(user_id="2", item_id="51")["value"].to_list() == [13883.0]
    social = pl.read_parquet(out / "social.parquet")
    assert social["weight"].unique().to_list() == [1.0]
    # Friendships are listed in both directions in the source; the adapter keeps that.
    reverse = social.select(
        pl.col("friend_id").alias("user_id"), pl.col("user_id").alias("friend_id")
    )
    assert reverse.join(social, on=["user_id", "friend_id"], how="anti").height == 0


@needs_data
def test_items_equal_the_split_catalog(converted: tuple[dict[str, int], Path]) -> None:
    """The split's train items were built with the same rules; any drift here is a bug."""
    _, out = converted
    assert pl.read_parquet(out / "items.parquet").equals(
        pl.read_parquet(SPLIT_TRAIN / "items.parquet")
    )


@needs_data
def test_latin1_tags_and_utf8_names_both_decode(converted: tuple[dict[str, int], Path]) -> None:
    _, out = converted
    items = pl.read_parquet(out / "items.parquet")
    legiao = items.filter(item_id="714").row(0, named=True)
    assert legiao["title"] == "Legião Urbana"  # artists.dat is UTF-8
    assert "legião urbana" in legiao["tags"]  # tags.dat is Latin-1
    assert "tropicália" in items.filter(item_id="5750")["tags"][0].to_list()
    assert items.filter(item_id="1686")["title"][0] == '"Weird Al" Yankovic'  # bare quotes
    all_tags = items["tags"].explode().drop_nulls()
    assert not all_tags.str.contains("\ufffd|Ã").any()  # no mojibake or replacement chars


@needs_data
def test_tags_are_distinct_and_most_frequent_first(converted: tuple[dict[str, int], Path]) -> None:
    """Recount tag assignments with plain Python and compare the order of every item."""
    _, out = converted
    tag_text = dict(
        line.split("\t", 1)
        for line in (SRC / "tags.dat").read_bytes().decode("latin-1").splitlines()[1:]
    )
    counts: dict[str, Counter[str]] = {}
    for line in (SRC / "user_taggedartists.dat").read_text().splitlines()[1:]:
        _, artist, tag, *_ = line.split("\t")
        counts.setdefault(artist, Counter())[tag_text[tag]] += 1
    items = pl.read_parquet(out / "items.parquet")
    got = dict(zip(items["item_id"].to_list(), items["tags"].to_list(), strict=True))
    for artist, counter in counts.items():
        if artist not in got:  # tag assignments for artists absent from artists.dat
            continue
        expected = [t for t, _ in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))]
        assert got[artist] == expected, artist
    assert got["1"][:2] == ["j-rock", "visual kei"]
    untagged = [k for k in got if k not in counts]
    assert untagged and all(got[k] == [] for k in untagged)


def test_decode_text_falls_back_per_line() -> None:
    mixed = "caf\u00e9\n".encode() + "na\u00efve\n".encode("latin-1")
    assert decode_text(mixed) == "caf\u00e9\nna\u00efve\n"
    assert decode_text("Ärzte".encode()) == "Ärzte"


def test_small_synthetic_source_converts(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "user_artists.dat").write_text("userID\tartistID\tweight\n1\t10\t5\n2\t10\t7\n")
    (src / "user_friends.dat").write_text("userID\tfriendID\n1\t3\n3\t1\n")
    (src / "artists.dat").write_bytes(
        'id\tname\turl\tpictureURL\n10\tMot\u00f6rhead "Live"\tu\tp\n11\tQuiet\tu\tp\n'.encode()
    )
    (src / "tags.dat").write_bytes("tagID\ttagValue\n1\tm\u00e9tal\n2\trock\n".encode("latin-1"))
    (src / "user_taggedartists.dat").write_text(
        "userID\tartistID\ttagID\tday\tmonth\tyear\n"
        "1\t10\t2\t1\t1\t2010\n2\t10\t1\t1\t1\t2010\n3\t10\t1\t1\t1\t2010\n"
    )
    counts = convert_hetrec_lastfm(src, tmp_path / "out")
    assert counts == {"events": 2, "social": 2, "items": 2, "users": 3}
    items = pl.read_parquet(tmp_path / "out" / "items.parquet")
    assert items.to_dicts() == [
        {"item_id": "10", "title": 'Mot\u00f6rhead "Live"', "tags": ["m\u00e9tal", "rock"]},
        {"item_id": "11", "title": "Quiet", "tags": []},
    ]


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="user_artists.dat"):
        convert_hetrec_lastfm(tmp_path, tmp_path / "out")


def test_a_missing_or_bad_file_is_one_line_not_an_unexpected_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It was `unexpected error: FileNotFoundError … (run again with --debug …)`, as for a bug."""
    out = tmp_path / "out"
    for command in (["convert-lastfm"], ["convert", "lastfm"]):
        assert main([*command, "--src", str(tmp_path), "--out", str(out)]) == EXIT_FAILED
        assert capsys.readouterr().err.splitlines() == [
            f"recfusion: HetRec Last.fm file missing: {tmp_path / 'user_artists.dat'}"
        ]
    src = tmp_path / "src"
    src.mkdir()
    (src / "user_artists.dat").write_text("userID\tartistID\tweight\n1\t10\tmany\n")
    assert main(["convert-lastfm", "--src", str(src), "--out", str(out)]) == EXIT_FAILED
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"recfusion: {src / 'user_artists.dat'}: a value is not a number ("
    ), err
    assert "many" in err[0] and not out.exists()
