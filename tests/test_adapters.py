"""Input adapters (issue "Operations as users meet them", finding 7): MovieLens, RecBole and
column mappings, on small real-format samples the tests write, checked table by table and then
ingested through the CLI with nothing quarantined.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest

from flows.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from tasks.sources.adapters import ADAPTERS, detect_formats
from tasks.sources.adapters.common import MARKER, AdapterError
from tasks.sources.adapters.mapping import describe, load_mapping, read_mapped_source
from tasks.sources.ingest import read_source

#: table -> its rows, exactly as converted
Tables = dict[str, list[dict[str, Any]]]


def ts(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def one_error(argv: list[str], capsys: pytest.CaptureFixture[str], code: int) -> str:
    """Run the CLI; it must exit `code` with exactly one stderr line (no traceback)."""
    assert main(argv) == code
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("recfusion: ") and "Traceback" not in err[0]
    return err[0]


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


# --------------------------------------------------------------------------- samples


def flags(*on: int) -> str:
    """ML-100k's 19 genre flags with these positions set."""
    return "|".join("1" if i in on else "0" for i in range(19))


def ml_100k(src: Path) -> None:
    (src / "u.data").write_text("1\t10\t4\t881250949\n2\t10\t5\t891717742\n1\t20\t3\t878887116\n")
    (src / "u.item").write_bytes(
        (
            f"10|Caf\u00e9 Society (1995)|01-Jan-1995||http://us.imdb.com/M/x|{flags(3, 5)}\n"
            f"20|unknown||||{flags(0)}\n"
        ).encode("latin-1")
    )
    (src / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    (src / "u1.base").write_text("1\t10\t4\t881250949\n")  # the release's splits are ignored


ML_100K: Tables = {
    "events": [
        {"user_id": "1", "item_id": "10", "event_type": "rating", "value": 4.0,
         "ts": ts(881250949)},
        {"user_id": "2", "item_id": "10", "event_type": "rating", "value": 5.0,
         "ts": ts(891717742)},
        {"user_id": "1", "item_id": "20", "event_type": "rating", "value": 3.0,
         "ts": ts(878887116)},
    ],
    "items": [
        {"item_id": "10", "title": "Caf\u00e9 Society (1995)", "tags": ["Animation", "Comedy"],
         "category": "Animation"},
        {"item_id": "20", "title": "unknown", "tags": [], "category": None},
    ],
    "users": [
        {"user_id": "1", "age": 24, "gender": "M", "occupation": "technician",
         "zip_code": "85711"},
        {"user_id": "2", "age": 53, "gender": "F", "occupation": "other", "zip_code": "94043"},
    ],
}


def ml_1m(src: Path) -> None:
    (src / "ratings.dat").write_text(
        "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n"
    )
    (src / "movies.dat").write_bytes(
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
        "661::Les Mis\u00e9rables (1995)::Drama|Musical\n"
        "1::Star Wars: Episode IV - A New Hope (1977)::Action|Sci-Fi\n".encode("latin-1")
    )
    (src / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    (src / "tags.dat").write_text(  # ML-10M's: user tags, any case
        "1::661::broadway::978300000\n2::661::Broadway::978300001\n"
        "2::1193::Jack Nicholson::978300002\n3::1193::musical::978300003\n"
    )


ML_1M: Tables = {
    "events": [
        {"user_id": "1", "item_id": "1193", "event_type": "rating", "value": 5.0,
         "ts": ts(978300760)},
        {"user_id": "1", "item_id": "661", "event_type": "rating", "value": 3.0,
         "ts": ts(978302109)},
        {"user_id": "2", "item_id": "1193", "event_type": "rating", "value": 4.0,
         "ts": ts(978298413)},
    ],
    "items": [
        {"item_id": "1193", "title": "One Flew Over the Cuckoo's Nest (1975)",
         "tags": ["Drama", "jack nicholson", "musical"], "category": "Drama"},
        {"item_id": "661", "title": "Les Mis\u00e9rables (1995)",
         "tags": ["Drama", "Musical", "broadway"], "category": "Drama"},
        {"item_id": "1", "title": "Star Wars: Episode IV - A New Hope (1977)",
         "tags": ["Action", "Sci-Fi"], "category": "Action"},
    ],
    "users": [
        {"user_id": "1", "gender": "F", "age": 1, "occupation": "K-12 student",
         "zip_code": "48067"},
        {"user_id": "2", "gender": "M", "age": 56, "occupation": "self-employed",
         "zip_code": "70072"},
    ],
}


def ml_latest(src: Path) -> None:
    (src / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n"
        "2,1,3.5,1139045764\n"
    )
    (src / "movies.csv").write_text(
        "movieId,title,genres\n1,Toy Story (1995),Adventure|Animation|Children\n"
        '3,"American President, The (1995)",(no genres listed)\n'
    )
    (src / "tags.csv").write_text(
        "userId,movieId,tag,timestamp\n2,1,Pixar,1139045764\n3,1,pixar,1139045765\n"
        "4,1,fun,1139045766\n5,1,animation,1139045767\n6,1,  ,1139045768\n"
    )
    (src / "links.csv").write_text("movieId,imdbId,tmdbId\n1,0114709,862\n")  # ignored


ML_LATEST: Tables = {
    "events": [
        {"user_id": "1", "item_id": "1", "event_type": "rating", "value": 4.0,
         "ts": ts(964982703)},
        {"user_id": "1", "item_id": "3", "event_type": "rating", "value": 4.5,
         "ts": ts(964981247)},
        {"user_id": "2", "item_id": "1", "event_type": "rating", "value": 3.5,
         "ts": ts(1139045764)},
    ],
    "items": [
        # genres first, in the file's order; then users' tags, most frequent first, lower case,
        # "animation" only once (it is a genre already)
        {"item_id": "1", "title": "Toy Story (1995)",
         "tags": ["Adventure", "Animation", "Children", "pixar", "fun"], "category": "Adventure"},
        {"item_id": "3", "title": "American President, The (1995)", "tags": [],
         "category": None},
    ],
}


def recbole_ml(src: Path) -> None:
    (src / "ml-100k.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "1\t10\t4\t881250949\n2\t10\t5\t891717742\n"
    )
    (src / "ml-100k.item").write_bytes(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "10\tCaf\u00e9 Society\t1995\tAnimation Comedy\n11\tQuiet\t\t\n".encode("latin-1")
    )
    (src / "ml-100k.user").write_text(
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
        "1\t24\tM\ttechnician\t85711\n2\t53\tF\tother\t94043\n"
    )
    (src / "ml-100k.net").write_text("source_id:token\ttarget_id:token\n1\t2\n2\t1\n")


RECBOLE_ML: Tables = {
    "events": [
        {"user_id": "1", "item_id": "10", "event_type": "rating", "value": 4.0,
         "ts": ts(881250949)},
        {"user_id": "2", "item_id": "10", "event_type": "rating", "value": 5.0,
         "ts": ts(891717742)},
    ],
    "items": [
        {"item_id": "10", "title": "Caf\u00e9 Society", "tags": ["Animation", "Comedy", "1995"],
         "category": "Animation"},
        {"item_id": "11", "title": "Quiet", "tags": [], "category": None},
    ],
    "users": [
        {"user_id": "1", "age": "24", "gender": "M", "occupation": "technician",
         "zip_code": "85711"},
        {"user_id": "2", "age": "53", "gender": "F", "occupation": "other", "zip_code": "94043"},
    ],
    "social": [{"user_id": "1", "friend_id": "2"}, {"user_id": "2", "friend_id": "1"}],
}


def recbole_yelp(src: Path) -> None:
    """Yelp's field names: business_id, stars, date, review_id; float fields to ignore."""
    (src / "yelp.inter").write_text(
        "review_id:token\tuser_id:token\tbusiness_id:token\tstars:float\tuseful:float\t"
        "date:float\nr1\tu1\tb1\t5\t0\t1500000000\nr2\tu2\tb1\t3.5\t2\t1500000100.5\n"
    )
    (src / "yelp.item").write_text(
        "business_id:token\titem_name:token_seq\tcity:token_seq\tlatitude:float\t"
        "categories:token_seq\nb1\tJoe's \"Diner\"\tLas Vegas\t36.1\tDiners Breakfast\n"
    )
    (src / "yelp.user").write_text(
        "user_id:token\tuser_review_count:float\tfans:float_seq\nu1\t12\t1 2\nu2\t\t\n"
    )
    (src / "yelp.net").write_text(
        "source_id:token\ttarget_id:token\tweight:float\nu1\tu2\t0.5\n"
    )


RECBOLE_YELP: Tables = {
    "events": [
        {"event_id": "r1", "user_id": "u1", "item_id": "b1", "event_type": "rating",
         "value": 5.0, "ts": ts(1500000000)},
        {"event_id": "r2", "user_id": "u2", "item_id": "b1", "event_type": "rating",
         "value": 3.5, "ts": datetime(2017, 7, 14, 2, 41, 40, 500000, tzinfo=UTC)},
    ],
    "items": [
        {"item_id": "b1", "title": "Joe's \"Diner\"",
         "tags": ["Diners", "Breakfast", "Las", "Vegas"], "category": "Diners"},
    ],
    "users": [
        {"user_id": "u1", "user_review_count": 12.0, "fans": [1.0, 2.0]},
        {"user_id": "u2", "user_review_count": None, "fans": []},
    ],
    "social": [{"user_id": "u1", "friend_id": "u2", "weight": 0.5}],
}


def lastfm(src: Path) -> None:
    (src / "user_artists.dat").write_text("userID\tartistID\tweight\n1\t10\t5\n2\t10\t7\n")
    (src / "user_friends.dat").write_text("userID\tfriendID\n1\t2\n2\t1\n")
    (src / "artists.dat").write_text("id\tname\turl\tpictureURL\n10\tMot\u00f6rhead\tu\tp\n")
    (src / "tags.dat").write_bytes("tagID\ttagValue\n1\tm\u00e9tal\n".encode("latin-1"))
    (src / "user_taggedartists.dat").write_text(
        "userID\tartistID\ttagID\tday\tmonth\tyear\n1\t10\t1\t1\t1\t2010\n"
    )


LASTFM: Tables = {
    "events": [
        {"user_id": "1", "item_id": "10", "event_type": "listen", "value": 5.0,
         "ts": datetime(2011, 5, 1, tzinfo=UTC)},
        {"user_id": "2", "item_id": "10", "event_type": "listen", "value": 7.0,
         "ts": datetime(2011, 5, 1, tzinfo=UTC)},
    ],
    "social": [{"user_id": "1", "friend_id": "2", "weight": 1.0},
               {"user_id": "2", "friend_id": "1", "weight": 1.0}],
    "items": [{"item_id": "10", "title": "Mot\u00f6rhead", "tags": ["m\u00e9tal"]}],
    "users": [{"user_id": "1"}, {"user_id": "2"}],
}


@dataclass(frozen=True)
class Sample:
    """Files in one format (as the release ships them) and the tables they must become."""

    write: Callable[[Path], None]
    tables: Tables


#: format -> variant -> sample. Every registered format needs at least one.
SAMPLES: dict[str, dict[str, Sample]] = {
    "lastfm": {"hetrec-2011": Sample(lastfm, LASTFM)},
    "movielens": {
        "ml-100k": Sample(ml_100k, ML_100K),
        "ml-1m": Sample(ml_1m, ML_1M),
        "ml-latest": Sample(ml_latest, ML_LATEST),
    },
    "recbole": {
        "ml-100k": Sample(recbole_ml, RECBOLE_ML),
        "yelp": Sample(recbole_yelp, RECBOLE_YELP),
    },
}
CASES = [(name, variant) for name, variants in SAMPLES.items() for variant in variants]


def written(tmp_path: Path, name: str, variant: str) -> Path:
    src = tmp_path / f"{name}-{variant}"
    src.mkdir()
    SAMPLES[name][variant].write(src)
    return src


def test_every_registered_format_has_a_sample() -> None:
    assert set(SAMPLES) == set(ADAPTERS)
    assert all(SAMPLES[name] for name in ADAPTERS)
    for name, adapter in ADAPTERS.items():
        assert adapter.name == name and adapter.description and "\n" not in adapter.description


@pytest.mark.parametrize(("name", "variant"), CASES)
def test_sample_converts_to_exactly_these_tables(tmp_path: Path, name: str, variant: str) -> None:
    src = written(tmp_path, name, variant)
    assert detect_formats(src) == [name]  # and no other format claims it
    out = tmp_path / "out"
    expected = SAMPLES[name][variant].tables
    counts = ADAPTERS[name].convert(src, out)
    assert counts == {table: len(r) for table, r in expected.items()}
    for table, want in expected.items():
        frame = pl.read_parquet(out / f"{table}.parquet")
        assert frame.to_dicts() == want, table
        assert all(frame.schema[c] == pl.String for c in frame.columns if c.endswith("_id"))
        if "ts" in frame.columns:
            assert frame.schema["ts"] == pl.Datetime("us", "UTC")
    validated = read_source(out)
    assert {t: v.good.height for t, v in validated.items()} == counts
    assert {t: v.quarantine.height for t, v in validated.items()} == dict.fromkeys(counts, 0)


@pytest.mark.parametrize(("name", "variant"), CASES)
def test_convert_then_ingest_through_the_cli_quarantines_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, variant: str
) -> None:
    """Finding 7: a user with MovieLens or RecBole files needs no code, only two commands."""
    src, out, db = written(tmp_path, name, variant), tmp_path / "source", tmp_path / "rf.duckdb"
    assert main(["convert", name, "--src", str(src), "--out", str(out)]) == EXIT_OK
    counts = SAMPLES[name][variant].tables
    assert capsys.readouterr().out.strip() == (
        ", ".join(f"{t}: {len(r)}" for t, r in counts.items()) + f" -> {out}"
    )
    assert main(["ingest", "--source", str(out), "--db", str(db)]) == EXIT_OK
    assert sorted(capsys.readouterr().out.splitlines()) == sorted(
        f"{t}: read {len(r)}, added {len(r)}, quarantined 0" for t, r in counts.items()
    )
    assert rows(db, "select count(*) from raw.quarantine") == [(0,)]
    assert rows(db, "select count(*) from raw.events") == [(len(counts["events"]),)]


@pytest.mark.slow
def test_the_installed_command_converts_and_ingests(tmp_path: Path) -> None:
    src, out = written(tmp_path, "movielens", "ml-1m"), tmp_path / "source"
    script = Path(sys.executable).with_name("recfusion")
    cli = [str(script)] if script.exists() else [sys.executable, "-m", "flows.cli"]
    for argv in (
        ["convert", "--src", str(src), "--out", str(out)],  # the format from the file names
        ["ingest", "--source", str(out), "--db", str(tmp_path / "rf.duckdb")],
    ):
        proc = subprocess.run([*cli, *argv], capture_output=True, text=True, timeout=120)
        assert proc.returncode == EXIT_OK, proc.stderr
        assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stdout.splitlines() == [
        "events: read 3, added 3, quarantined 0",
        "items: read 3, added 3, quarantined 0",
        "users: read 2, added 2, quarantined 0",
    ]


def test_convert_lists_the_registry_and_detects_the_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["convert", "--list"]) == EXIT_OK
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == [*ADAPTERS, "mapped"]
    src = written(tmp_path, "recbole", "yelp")
    assert main(["convert", "--src", str(src), "--out", str(tmp_path / "o")]) == EXIT_OK
    assert capsys.readouterr().out.splitlines()[0] == f"{src}: recbole files"
    assert (tmp_path / "o" / "social.parquet").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    line = one_error(["convert", "--src", str(empty), "--out", str(tmp_path / "p")], capsys,
                     EXIT_USAGE)
    assert line.startswith(f"recfusion: --src {empty} holds no known format's files; name the")


def test_convert_lastfm_stays_an_alias(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = written(tmp_path, "lastfm", "hetrec-2011")
    assert main(["convert-lastfm", "--src", str(src), "--out", str(tmp_path / "a")]) == EXIT_OK
    assert main(["convert", "lastfm", "--src", str(src), "--out", str(tmp_path / "b")]) == EXIT_OK
    for table in LASTFM:
        a, b = (pl.read_parquet(tmp_path / d / f"{table}.parquet") for d in ("a", "b"))
        assert a.equals(b)


# --------------------------------------------------------------------------- bad input


def test_a_rating_that_is_not_a_number_names_file_line_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = written(tmp_path, "movielens", "ml-100k")
    (src / "u.data").write_text("1\t10\t4\t881250949\n2\t10\tfive\t891717742\n")
    out = tmp_path / "out"
    line = one_error(["convert", "movielens", "--src", str(src), "--out", str(out)], capsys,
                     EXIT_FAILED)
    assert line == f"recfusion: {src / 'u.data'} line 2: rating 'five' is not a number"
    assert not out.exists()  # nothing written


def test_a_short_double_colon_line_and_an_empty_timestamp_are_named(tmp_path: Path) -> None:
    src = written(tmp_path, "movielens", "ml-1m")
    (src / "ratings.dat").write_text("1::1193::5::978300760\n\n1::661::3\n2::1::4::9\n1::2::3\n")
    with pytest.raises(AdapterError) as caught:
        ADAPTERS["movielens"].convert(src, tmp_path / "out")
    assert str(caught.value) == (
        f"{src / 'ratings.dat'} lines 3, 5: 3 field(s), expected 4 (user_id, item_id, rating, "
        "timestamp) separated by '::'"
    )
    (src / "ratings.dat").write_text("1::1193::5::\n")
    with pytest.raises(AdapterError, match=r"ratings.dat line 1: timestamp is empty$"):
        ADAPTERS["movielens"].convert(src, tmp_path / "out")


def test_two_movielens_releases_in_one_folder_are_an_error(tmp_path: Path) -> None:
    src = written(tmp_path, "movielens", "ml-100k")
    ml_latest(src)
    with pytest.raises(AdapterError, match="holds both u.data and ratings.csv"):
        ADAPTERS["movielens"].convert(src, tmp_path / "out")


def test_recbole_is_liberal_in_fields_and_strict_in_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "rb"
    src.mkdir()
    (src / "x.inter").write_text(  # no time field, an untyped field, an unknown type
        "user_id:token\titem_id\tlabel:float\tmood:tok\nu1\ti1\t1\thappy\nu2\ti1\t0\tsad\n"
    )
    (src / "x.kg").write_text("head_id:token\trelation_id:token\ttail_id:token\n")
    out = tmp_path / "out"
    assert main(["convert", "recbole", "--src", str(src), "--out", str(out)]) == EXIT_OK
    assert capsys.readouterr().err.splitlines() == [
        f"recfusion: warning: {src / 'x.inter'}: header field 'item_id' has no type; read as a "
        "token",
        f"recfusion: warning: {src / 'x.inter'}: header field 'mood:tok' has type 'tok' "
        "(expected one of token, token_seq, float, float_seq); read as a token",
        f"recfusion: warning: {src / 'x.inter'}: ignoring field(s) mood:token (no place in "
        "events)",
        f"recfusion: warning: {src / 'x.inter'}: no time field (timestamp:float); every event "
        "gets ts 1970-01-01 00:00:00+00:00",
        f"recfusion: warning: {src}: ignoring x.kg (no place in the data contract)",
    ]
    assert pl.read_parquet(out / "events.parquet").to_dicts() == [
        {"user_id": "u1", "item_id": "i1", "event_type": "interaction", "value": 1.0,
         "ts": datetime(1970, 1, 1, tzinfo=UTC)},
        {"user_id": "u2", "item_id": "i1", "event_type": "interaction", "value": 0.0,
         "ts": datetime(1970, 1, 1, tzinfo=UTC)},
    ]
    (src / "x.inter").write_text("user_id:token\titem_id:token\trating:float\nu1\ti1\n")
    line = one_error(["convert", "recbole", "--src", str(src), "--out", str(out)], capsys,
                     EXIT_FAILED)
    assert line == (
        f"recfusion: {src / 'x.inter'} line 2: 2 field(s), expected 3 (user_id:token "
        "item_id:token rating:float) separated by tabs"
    )
    (src / "x.inter").write_text("uid:token\titem_id:token\trating:float\nu1\ti1\tgood\n")
    with pytest.raises(AdapterError, match=r"x.inter line 2: rating:float 'good' is not a number"):
        ADAPTERS["recbole"].convert(src, tmp_path / "other")
    (src / "x.inter").write_text("who:token\titem_id:token\nu1\ti1\n")
    with pytest.raises(AdapterError, match="no user field"):
        ADAPTERS["recbole"].convert(src, tmp_path / "other")


def test_the_output_folder_is_replaced_whole_or_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, ml_100k_src = tmp_path / "source", written(tmp_path, "movielens", "ml-100k")
    movielens = ADAPTERS["movielens"].convert
    movielens(ml_100k_src, out)  # events, items, users
    assert json.loads((out / MARKER).read_text())["variant"] == "ml-100k"
    movielens(written(tmp_path, "movielens", "ml-latest"), out)  # a rerun replaces it ...
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "events.parquet", "items.parquet"]
    bad = written(tmp_path, "movielens", "ml-1m")
    (bad / "movies.dat").write_text("1::no genres field\n")
    with pytest.raises(AdapterError, match="movies.dat line 1"):
        movielens(bad, out)  # ... and a failed one leaves it as it was
    assert pl.read_parquet(out / "events.parquet").to_dicts() == ML_LATEST["events"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "events.csv").write_text("user_id,item_id,event_type,ts\n")
    argv = ["convert", "movielens", "--src", str(ml_100k_src), "--out", str(mine)]
    line = one_error(argv, capsys, EXIT_FAILED)
    assert line == (
        f"recfusion: output folder {mine} already holds events.csv, which recfusion convert did "
        "not write; give a new or empty folder (files from an earlier conversion are replaced)"
    )
    assert [p.name for p in mine.iterdir()] == ["events.csv"]
    # What convert-lastfm wrote before the marker existed: the same files, replaced as before.
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for table in LASTFM:
        pl.DataFrame({"old": [1]}).write_parquet(legacy / f"{table}.parquet")
    ADAPTERS["lastfm"].convert(written(tmp_path, "lastfm", "hetrec-2011"), legacy)
    assert pl.read_parquet(legacy / "items.parquet").to_dicts() == LASTFM["items"]
    (legacy / MARKER).unlink()
    with pytest.raises(AdapterError, match=r"legacy already holds social.parquet, which "):
        movielens(ml_100k_src, legacy)  # it writes no social table: one would be left behind
    assert pl.read_parquet(legacy / "items.parquet").to_dicts() == LASTFM["items"]


# --------------------------------------------------------------------------- column mapping


def export(folder: Path) -> Path:
    """A shop's export: its own column names, no event_type, a bad row and a ragged one."""
    folder.mkdir()
    (folder / "events.csv").write_text(
        "customer,sku,ordered_at,qty,user_id\n"
        "c1,s1,2024-01-02T03:04:05Z,2,legacy\n"
        "c2,s2,2024-01-03,1,legacy\n"
        "c3,,2024-01-04,1,legacy\n"
        "c4,s1,2024-01-05\n"
    )
    (folder / "items.csv").write_bytes("sku,name\ns1,Chaussure \u00e9t\u00e9\ns2,Sock\n"
                                       .encode("latin-1"))
    return folder


MAP = ["user_id=customer,item_id=sku,ts=ordered_at,event_type==purchase,value=qty",
       "items.item_id=sku,items.title=name"]
GOOD_EVENTS = [
    ("c1", "s1", "purchase", 2.0, datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ("c2", "s2", "purchase", 1.0, datetime(2024, 1, 3, tzinfo=UTC)),
]
EVENTS_SQL = "select user_id, item_id, event_type, value, ts from raw.events order by user_id"


def test_ingest_map_renames_columns_and_fills_a_constant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, db = export(tmp_path / "export"), tmp_path / "rf.duckdb"
    argv = ["ingest", "--source", str(src), "--db", str(db)]
    assert main([*argv, *(a for m in MAP for a in ("--map", m))]) == EXIT_OK
    assert capsys.readouterr().out.splitlines() == [
        "events: read 4, added 2, quarantined 2",
        "items: read 2, added 2, quarantined 0",
    ]
    assert rows(db, EVENTS_SQL) == GOOD_EVENTS
    # Bad rows are quarantined as without a mapping: the export's file and row numbers.
    assert rows(db, "select source_file, row_number, reason from raw.quarantine order by 2") == [
        (str(src / "events.csv"), 3, "item_id: missing"),
        (str(src / "events.csv"), 4, "qty, user_id: no field (the row has 3 of 5 fields)"),
    ]
    assert rows(db, "select item_id, title from raw.items order by 1") == [
        ("s1", "Chaussure \u00e9t\u00e9"), ("s2", "Sock")
    ]


def test_a_mapping_file_nested_or_flat_means_the_same(tmp_path: Path) -> None:
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps({
        "events": {"user_id": "customer", "item_id": "sku", "ts": "ordered_at",
                   "event_type": "=purchase", "value": "qty"},
        "items": {"item_id": "sku", "title": "name"},
    }))
    assert describe(load_mapping(path=nested)) == describe(load_mapping(MAP))
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"user_id": "customer", "event_type": "=purchase"}))
    assert describe(load_mapping(path=flat)) == {
        "events": {"user_id": "customer", "event_type": "=purchase"}
    }
    # Flags and the file merge where they agree.
    merged = load_mapping(["item_id=sku,user_id=customer"], flat)
    assert describe(merged)["events"] == {
        "user_id": "customer", "event_type": "=purchase", "item_id": "sku"
    }
    validated = read_mapped_source(export(tmp_path / "export"), load_mapping(path=nested))
    assert validated["events"].good.height == 2


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--map", "user_id=customer,item_id=sku,ts=ordered_at,event_type==x,value=amount"],
         "recfusion: --map value=amount: {src}/events.csv has no column 'amount' (its columns: "
         "customer, sku, ordered_at, qty, user_id)"),
        (["--map", "user_id=customer,item_id=sku,ts=ordered_at"],
         "recfusion: {src}/events.csv: no column 'event_type' after the mapping (map it: "
         "event_type=COLUMN, or event_type==VALUE for a constant; the file has: customer, sku, "
         "ordered_at, qty, user_id)"),
        (["--map", "usr_id=customer"],
         "recfusion: --map usr_id=customer: 'usr_id' is not a column of events (user_id, "
         "item_id, event_type, ts, value, event_id); use TABLE.COLUMN for items, users or social"),
        (["--map", "customer"],
         "recfusion: --map customer: expected TARGET=COLUMN (e.g. user_id=customer), or "
         "TARGET==VALUE for a constant"),
        (["--map", "user_id=customer", "--map", "user_id=sku"],
         "recfusion: --map user_id=sku: events.user_id is mapped twice"),
        (["--map", "social.user_id=customer"],
         "recfusion: --map social.user_id=customer: {src} has no social file"),
        (["--map", "user_id=customer", "--map-file", "{tmp}/m.json"],
         "recfusion: --map user_id=customer and mapping file {tmp}/m.json: events.user_id=cust "
         "disagree"),
        (["--map-file", "{tmp}/none.json"],
         "recfusion: cannot read mapping file {tmp}/none.json: No such file or directory"),
        (["--map-file", "{tmp}/list.json"],
         'recfusion: mapping file {tmp}/list.json must hold a JSON object like {{"events": '
         '{{"user_id": "customer"}}}}, not a JSON list'),
    ],
)
def test_a_mapping_that_does_not_fit_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], line: str
) -> None:
    src, db = export(tmp_path / "export"), tmp_path / "rf.duckdb"
    (tmp_path / "m.json").write_text(json.dumps({"user_id": "cust"}))
    (tmp_path / "list.json").write_text("[]")
    argv = [a.format(tmp=tmp_path) for a in argv]
    got = one_error(["ingest", "--source", str(src), "--db", str(db), *argv], capsys, EXIT_USAGE)
    assert got == line.format(src=src, tmp=tmp_path)
    assert not db.exists()  # checked before the database is touched


def test_convert_mapped_writes_a_source_for_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`recfusion run` ingests a contract folder: `convert mapped` writes one from the export."""
    src, out, db = export(tmp_path / "export"), tmp_path / "source", tmp_path / "rf.duckdb"
    argv = ["convert", "mapped", "--src", str(src), "--out", str(out)]
    assert main([*argv, *(a for m in MAP for a in ("--map", m))]) == EXIT_OK
    captured = capsys.readouterr()
    assert captured.out.strip() == f"events: 3, items: 2 -> {out}"
    assert captured.err.splitlines() == [
        f"recfusion: warning: {src / 'events.csv'}: column 'user_id' ignored (--map "
        "user_id=customer takes its place)",
        f"recfusion: warning: {src / 'events.csv'}: 1 row(s) could not be split into fields and "
        "are left out (row 4: qty, user_id: no field (the row has 3 of 5 fields)); recfusion "
        "ingest --map quarantines them instead",
        f"recfusion: warning: {src / 'items.csv'}: not valid UTF-8; read as Latin-1 (each byte "
        "one character)",
    ]
    assert json.loads((out / MARKER).read_text())["mapping"]["events"]["event_type"] == "=purchase"
    assert main(["ingest", "--source", str(out), "--db", str(db)]) == EXIT_OK
    assert capsys.readouterr().out.splitlines() == [
        "events: read 3, added 2, quarantined 1",  # the row without an item, judged by ingest
        "items: read 2, added 2, quarantined 0",
    ]
    assert rows(db, EVENTS_SQL) == GOOD_EVENTS
    line = one_error(["convert", "mapped", "--src", str(src), "--out", str(tmp_path / "x")],
                     capsys, EXIT_USAGE)
    assert line == (
        "recfusion: convert mapped needs --map or --map-file, e.g. --map user_id=customer"
    )


def test_mapping_keeps_parquet_types_and_json_lines_checks(tmp_path: Path) -> None:
    src = tmp_path / "export"
    src.mkdir()
    pl.DataFrame({
        "item": [1, 2], "person": [7, 8],  # ids swap names: person is the user
        "when": [datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 5, 2, tzinfo=UTC)],
    }).write_parquet(src / "events.parquet")
    (src / "social.jsonl").write_text(
        '{"a": "7", "b": "8"}\n{"a": "8", "b": {"nested": 1}}\n'
    )
    mapping = load_mapping(["user_id=person,item_id=item,ts=when,event_type==view",
                            "social.user_id=a,social.friend_id=b"])
    validated = read_mapped_source(src, mapping)
    assert validated["events"].good.select("user_id", "item_id", "ts").to_dicts() == [
        {"user_id": "7", "item_id": "1", "ts": datetime(2024, 5, 1, tzinfo=UTC)},
        {"user_id": "8", "item_id": "2", "ts": datetime(2024, 5, 2, tzinfo=UTC)},
    ]
    social = validated["social"]
    assert social.good.select("user_id", "friend_id").rows() == [("7", "8")]
    assert social.quarantine.select("row_number", "reason").rows() == [
        (2, "friend_id: a JSON object, expected one value")
    ]
