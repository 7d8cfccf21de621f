"""Adapter: RecBole atomic files (`<name>.inter`, `.item`, `.user`, `.net`) -> a source folder.

Each file is tab-separated with a typed header, `user_id:token	item_id:token	rating:float`;
types are `token` (one value), `token_seq` (space-separated values), `float` and `float_seq`.
Field names follow RecBole's defaults (`user_id`, `item_id`, `rating`/`label`, `timestamp`,
`source_id`/`target_id`), with the usual variants of the published datasets (Yelp's
`business_id`, `stars`, `date`, `review_id`). Liberal in what it accepts: a field with no place
in the contract is ignored (or, in `.user`, kept as an attribute) with a warning naming it.

- `events`: user, item; value = rating/stars/score (event_type `rating`) or label (event_type
  `interaction`, value 1 when neither); ts from unix seconds (no time field: all at 1970-01-01,
  with a warning); event_id from `review_id`/`event_id` when there is one.
- `items`: the first title-like field -> title, a description-like one -> text, a class-like
  one's first token -> category; tags = the class-like field's tokens, then every other token /
  token_seq value (distinct, in field order); float fields are ignored.
- `users`: every field except the id, typed (token_seq/float_seq as lists) -> attributes.
- `social`: the two user fields (`source_id`, `target_id`, else the first two tokens) -> user_id,
  friend_id as given (directed); a float weight-like field -> weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from tasks.sources.adapters.common import (
    LINE,
    UTC_TS,
    AdapterError,
    from_unix_seconds,
    lines_named,
    log,
    parse_numbers,
    read_lines,
    write_source,
)

WHAT = "RecBole"
TYPES = ("token", "token_seq", "float", "float_seq")
NO_TIME = datetime(1970, 1, 1, tzinfo=UTC)
#: Field names, most specific first, that mean one contract column (compared in lower case).
USER_FIELDS = ("user_id", "uid", "user")
ITEM_FIELDS = ("item_id", "iid", "item", "business_id", "movie_id", "book_id", "product_id")
RATING_FIELDS = ("rating", "stars", "score")
LABEL_FIELDS = ("label",)
TIME_FIELDS = ("timestamp", "time", "date", "ts")
EVENT_ID_FIELDS = ("event_id", "review_id", "interaction_id")
TITLE_FIELDS = ("title", "movie_title", "item_name", "name", "book_title", "track_name")
TEXT_FIELDS = ("text", "description", "overview", "summary", "plot", "abstract")
CATEGORY_FIELDS = ("category", "categories", "class", "genre", "genres", "cate")
SOURCE_FIELDS = ("source_id", "user_id", "uid")
TARGET_FIELDS = ("target_id", "friend_id", "fid")
WEIGHT_FIELDS = ("weight", "trust", "value", "strength")


@dataclass(frozen=True)
class Field:
    """One header field: `name:type`."""

    name: str
    kind: str

    @property
    def shown(self) -> str:
        return f"{self.name}:{self.kind}"


@dataclass(frozen=True)
class Atomic:
    """One atomic file: its path, header fields and rows (text, with the line each came from)."""

    path: Path
    fields: list[Field]
    rows: pl.DataFrame

    def find(self, names: tuple[str, ...], kinds: tuple[str, ...] = TYPES) -> Field | None:
        """The first field named like one of `names` (in that order of preference)."""
        by_name = {f.name.lower(): f for f in reversed(self.fields) if f.kind in kinds}
        return next((by_name[n] for n in names if n in by_name), None)

    def text(self, field: Field) -> pl.Expr:
        return pl.col(field.name).str.strip_chars()

    def tokens(self, field: Field) -> pl.Expr:
        """A token_seq as a list of its (non-empty) tokens; a token as a one-element list."""
        text = self.text(field).fill_null("")
        parts = text.str.split(" ") if field.kind.endswith("_seq") else pl.concat_list(text)
        return parts.list.eval(pl.element().filter(pl.element() != ""))

    def numbers(self, fields: list[Field], required: bool) -> pl.DataFrame:
        """The rows with these float fields parsed (an error names the line and field)."""
        return parse_numbers(
            self.rows, self.path, {f.name: pl.Float64() for f in fields}, required=required,
            names={f.name: f.shown for f in fields},
        )

    def float_seq(self, field: Field) -> pl.Expr:
        return self.tokens(field).list.eval(pl.element().cast(pl.Float64, strict=False))

    def check_float_seqs(self, fields: list[Field]) -> None:
        for field in fields:
            values = self.rows.select(LINE, self.float_seq(field).alias("v"))
            bad = values.filter(pl.col("v").list.eval(pl.element().is_null()).list.any())
            if bad.height:
                raise AdapterError(
                    f"{self.path} {lines_named(bad[LINE])}: {field.shown} holds a value that is "
                    "not a number"
                )

    def ignore(self, fields: list[Field], why: str) -> None:
        if fields:
            names = ", ".join(f.shown for f in fields)
            log.warning(f"{self.path}: ignoring field(s) {names} ({why})")


def _header(path: Path, text: str) -> list[Field]:
    fields = []
    for position, raw in enumerate(text.split("\t"), start=1):
        name, sep, kind = raw.strip().rpartition(":")
        if not sep:
            name, kind = kind, "token"
            log.warning(f"{path}: header field {raw.strip()!r} has no type; read as a token")
        elif kind not in TYPES:
            log.warning(
                f"{path}: header field {raw.strip()!r} has type {kind!r} (expected one of "
                f"{', '.join(TYPES)}); read as a token"
            )
            kind = "token"
        if not name:
            raise AdapterError(f"{path}: header field {position} has no name")
        fields.append(Field(name, kind))
    names = [f.name for f in fields]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise AdapterError(f"{path}: header field {', '.join(repeated)} appears twice")
    return fields


def read_atomic(path: Path) -> Atomic:
    """Read one atomic file; its first non-blank line is the typed header."""
    lines = read_lines(path, WHAT)
    if lines.height == 0:
        raise AdapterError(f"{path}: is empty (expected a header like user_id:token)")
    fields = _header(path, str(lines["text"][0]))
    parts = pl.col("text").str.split("\t")
    body = lines.slice(1).with_columns(parts.alias("\x00parts"), parts.list.len().alias("\x00n"))
    bad = body.filter(pl.col("\x00n") != len(fields))
    if bad.height:
        found = int(bad["\x00n"][0])
        raise AdapterError(
            f"{path} {lines_named(bad[LINE])}: {found} field(s), expected "
            f"{len(fields)} ({' '.join(f.shown for f in fields)}) separated by tabs"
        )
    rows = body.select(
        LINE, *[pl.col("\x00parts").list.get(i).alias(f.name) for i, f in enumerate(fields)]
    )
    return Atomic(path, fields, rows)


def _dataset_name(src_dir: Path) -> str:
    names = sorted(p.stem for p in src_dir.glob("*.inter") if p.is_file())
    if not names:
        raise AdapterError(f"{src_dir}: no RecBole interaction file (expected <name>.inter)")
    if len(names) > 1:
        raise AdapterError(
            f"{src_dir}: holds several RecBole datasets "
            f"({', '.join(n + '.inter' for n in names)}); point it at a folder with one"
        )
    return names[0]


def detect(src_dir: Path) -> bool:
    return any(p.is_file() for p in src_dir.glob("*.inter"))


def _required(atomic: Atomic, names: tuple[str, ...], what: str) -> Field:
    field = atomic.find(names, ("token",)) or atomic.find(names)
    if field is None:
        raise AdapterError(
            f"{atomic.path}: no {what} field (expected one of "
            f"{', '.join(n + ':token' for n in names)}; "
            f"found {' '.join(f.shown for f in atomic.fields)})"
        )
    return field


def _events(inter: Atomic, item_names: tuple[str, ...]) -> pl.DataFrame:
    user = _required(inter, USER_FIELDS, "user")
    item = _required(inter, item_names, "item")
    rating = inter.find(RATING_FIELDS, ("float",))
    value = rating or inter.find(LABEL_FIELDS, ("float",))
    time = inter.find(TIME_FIELDS, ("float",))
    event_id = inter.find(EVENT_ID_FIELDS, ("token",))
    used = [f for f in (user, item, value, time, event_id) if f is not None]
    inter.ignore([f for f in inter.fields if f not in used], "no place in events")
    if time is None:
        log.warning(f"{inter.path}: no time field (timestamp:float); every event gets ts {NO_TIME}")
    rows = inter.numbers([f for f in (value, time) if f is not None], required=True)
    ts = from_unix_seconds(pl.col(time.name)) if time else pl.lit(NO_TIME).cast(UTC_TS)
    return rows.select(
        *([inter.text(event_id).alias("event_id")] if event_id else []),
        inter.text(user).alias("user_id"),
        inter.text(item).alias("item_id"),
        pl.lit("rating" if rating is not None else "interaction").alias("event_type"),
        (pl.col(value.name) if value else pl.lit(1.0)).alias("value"),
        ts.alias("ts"),
    )


def _items(items: Atomic) -> pl.DataFrame:
    item = _required(items, ITEM_FIELDS, "item") if items.find(ITEM_FIELDS) else items.fields[0]
    rest = [f for f in items.fields if f != item]
    words = [f for f in rest if f.kind in ("token", "token_seq")]
    titled = [f for f in words if f.name.lower().endswith(("title", "name"))]  # artist_name, …
    title = next(iter(_ordered(words, TITLE_FIELDS) or titled), None)
    text = next(iter(_ordered(words, TEXT_FIELDS)), None)
    category = next(iter(_ordered(words, CATEGORY_FIELDS)), None)
    # The class-like field leads: the content modality weighs a tag by its place in the list.
    tag_fields = sorted((f for f in words if f not in (title, text)), key=lambda f: f != category)
    items.ignore([f for f in rest if f not in words], "numbers have no place in items")
    tags = (
        pl.concat_list([items.tokens(f) for f in tag_fields]).list.unique(maintain_order=True)
        if tag_fields
        else pl.lit([], pl.List(pl.String))
    )
    return items.rows.select(
        items.text(item).alias("item_id"),
        *([items.text(title).alias("title")] if title else []),
        *([items.text(text).alias("text")] if text else []),
        tags.alias("tags"),
        *([items.tokens(category).list.first().alias("category")] if category else []),
    )


def _ordered(fields: list[Field], names: tuple[str, ...]) -> list[Field]:
    """The fields named like one of `names`, in that order of preference."""
    by_name = {f.name.lower(): f for f in fields}
    return [by_name[n] for n in names if n in by_name]


def _users(users: Atomic) -> pl.DataFrame:
    user = _required(users, USER_FIELDS, "user") if users.find(USER_FIELDS) else users.fields[0]
    rest = [f for f in users.fields if f != user]
    users.check_float_seqs([f for f in rest if f.kind == "float_seq"])
    rows = users.numbers([f for f in rest if f.kind == "float"], required=False)
    typed = {
        "token": lambda f: users.text(f),
        "token_seq": lambda f: users.tokens(f),
        "float": lambda f: pl.col(f.name),
        "float_seq": lambda f: users.float_seq(f),
    }
    return rows.select(
        users.text(user).alias("user_id"), *[typed[f.kind](f).alias(f.name) for f in rest]
    )


def _social(net: Atomic) -> pl.DataFrame:
    tokens = [f for f in net.fields if f.kind == "token"]
    source = net.find(SOURCE_FIELDS, ("token",))
    target = net.find(TARGET_FIELDS, ("token",))
    if source is None or target is None or source == target:
        if len(tokens) < 2:
            raise AdapterError(
                f"{net.path}: expected two user fields (source_id:token target_id:token); "
                f"found {' '.join(f.shown for f in net.fields)}"
            )
        source, target = tokens[0], tokens[1]
    weight = net.find(WEIGHT_FIELDS, ("float",))
    time = net.find(TIME_FIELDS, ("float",))
    used = [f for f in (source, target, weight, time) if f is not None]
    net.ignore([f for f in net.fields if f not in used], "no place in social")
    rows = net.numbers([f for f in (weight, time) if f is not None], required=True)
    return rows.select(
        net.text(source).alias("user_id"),
        net.text(target).alias("friend_id"),
        *([pl.col(weight.name).alias("weight")] if weight else []),
        *([from_unix_seconds(pl.col(time.name)).alias("ts")] if time else []),
    )


def convert_recbole(src_dir: Path, out_dir: Path) -> dict[str, int]:
    """Convert the RecBole atomic files of one dataset in `src_dir` into Parquet tables.

    Returns rows per written table (events, then items, users and social when their files are).
    """
    name = _dataset_name(src_dir)
    files = {kind: src_dir / f"{name}.{kind}" for kind in ("inter", "item", "user", "net")}
    items = read_atomic(files["item"]) if files["item"].is_file() else None
    item_names: tuple[str, ...] = ITEM_FIELDS
    if items is not None and not items.find(ITEM_FIELDS):
        item_names = (items.fields[0].name.lower(), *ITEM_FIELDS)  # e.g. Yelp's business_id
    tables = {"events": _events(read_atomic(files["inter"]), item_names)}
    if items is not None:
        tables["items"] = _items(items)
    if files["user"].is_file():
        tables["users"] = _users(read_atomic(files["user"]))
    if files["net"].is_file():
        tables["social"] = _social(read_atomic(files["net"]))
    ignored = sorted(
        p.name for p in src_dir.glob(f"{name}.*") if p.suffix[1:] not in files and p.is_file()
    )
    if ignored:
        log.warning(f"{src_dir}: ignoring {', '.join(ignored)} (no place in the data contract)")
    return write_source(out_dir, tables, {"format": "recbole", "dataset": name,
                                          "src": str(src_dir)})
