"""Deterministic synthetic source in the data contract, with honest, partial signal per modality.

Why it exists: fusion is only worth building (and testing) on data where every modality knows
something the others do not. The generated world is therefore layered so that no single view of it
is complete:

- **Topics and hidden sub-topics.** K visible topics, each split into S sub-topics ("clusters");
  every item lives in one cluster. Content (tags, text, category, embedding) reveals the topic well
  and the sub-topic only weakly, always with noise.
- **Users and communities.** Users belong to taste communities. A user's taste over topics is a
  Dirichlet draw around the community profile (with a few off-profile interests), plus a favourite
  sub-topic per topic that is partly inherited from the community. Only behaviour (CF) and friends
  reveal sub-topics.
- **Homophily.** Friends are mostly drawn from the same community (similar taste), partly at
  random (noise). Tie weight is higher inside a community.
- **Three routes to an item.** Each session picks its item by taste (topic → sub-topic → item by
  popularity), by word of mouth (the community's hot list, which only friends' behaviour reveals)
  or by trend (global Zipf-like popularity).
- **Drift over ~8 weeks.** Tastes and item popularity move from an early to a late state (the chance
  of the late state grows linearly in time); some items are released late in the window and are
  boosted after release.
- **Funnel.** A session is a view, possibly followed by click → like → purchase on the same item;
  taste-driven sessions convert more often than trend-driven ones.
- **Cold start.** Some users have friends but no events; some items are in the catalog with no
  events.

Everything is vectorised (weighted draws are cumulative sums + `searchsorted`; per-row mixtures are
flattened with a row offset so one `searchsorted` serves all rows), so the cost is linear in events
with small constants. Events are drawn in blocks of `BLOCK_EVENTS` and written a slice at a time,
so memory is the world (users × topics) plus one block, whatever the number of events. Measured
with `/usr/bin/time -v recfusion demo-data …` on the shared 2-core box (load 6-9 from other jobs):
100k users × 20k items × 5M events in 17.8 s, peak RSS 0.77 GB (1.3 GB before blocks);
1M users × 100k items × 50M events in 5 min 0 s, peak RSS 1.85 GB (9.5 GB before).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

EVENT_TYPES: tuple[str, ...] = ("view", "click", "like", "purchase")
DEFAULT_END = datetime(2025, 6, 30, tzinfo=UTC)
WINDOW_DAYS = 56
EMBED_DIM = 16

_TOPICS: tuple[tuple[str, str], ...] = (  # (topic, category), round-robin over categories so
    # that a small catalog (few topics) still spans many categories.
    ("jazz", "music"), ("hiking", "outdoors"), ("sci-fi", "books"), ("baking", "food"),
    ("gaming", "games"), ("yoga", "wellness"), ("cycling", "sports"), ("gardening", "home"),
    ("photography", "arts"), ("techno", "music"), ("camping", "outdoors"), ("poetry", "books"),
    ("coffee", "food"), ("chess", "games"), ("surfing", "sports"), ("woodwork", "home"),
    ("painting", "arts"), ("opera", "music"), ("fishing", "outdoors"), ("history", "books"),
)
_TAG_SUFFIXES = ("classic", "modern", "indie", "deep", "lofi", "essential", "live", "rare")
_GENERIC_TAGS = (
    "bestseller", "gift idea", "staff pick", "on sale", "new arrival",
    "limited", "bundle", "trending", "budget", "premium",
)
_ADJECTIVES = (
    "Silver", "Quiet", "Bright", "Hidden", "Golden", "Wild", "Little", "Northern", "Electric",
    "Velvet", "Broken", "Crimson", "Lucky", "Ancient", "Endless", "Frozen", "Secret", "Urban",
)
_NOUNS = (
    "Harbor", "Echo", "Garden", "Signal", "Atlas", "Lantern", "River", "Orbit", "Canvas",
    "Compass", "Meadow", "Engine", "Mirror", "Summit", "Voyage", "Anthem", "Falcon", "Ember",
)
_FILLER = (
    "great", "quality", "daily", "simple", "new", "best", "value", "easy", "perfect", "choice",
    "fresh", "favorite", "popular", "classic", "style", "made", "with", "for", "and", "the",
    "every", "home", "gift", "set", "pack", "edition", "original", "smart", "light", "bold",
)
_COUNTRIES = ("US", "GB", "DE", "FR", "BR", "IN", "JP", "ES", "PL", "SE")
_COUNTRY_SHARE = np.array([0.30, 0.12, 0.11, 0.09, 0.09, 0.08, 0.07, 0.06, 0.04, 0.04])
_SYLLABLES = ("ka", "lo", "mi", "zu", "ren", "tor", "vel", "sha", "dri", "qua", "nel", "bor",
              "fi", "gan", "tem", "ux", "pa", "sio", "mar", "kel")
_KEYWORDS_PER_TOPIC = 5

# Session routes and their funnel: P(depth <= 1, 2, 3) for depth = view/+click/+like/+purchase.
_ROUTE_SHARE = np.array([0.70, 0.15, 0.15])  # taste, word of mouth, trend
_FUNNEL_CDF = np.array(
    [
        [0.55, 0.82, 0.93],  # taste: converts most
        [0.60, 0.85, 0.95],  # word of mouth
        [0.75, 0.93, 0.98],  # trend: mostly browsing
    ]
)


@dataclass(frozen=True)
class _World:
    """Latent state shared by all tables (never written; only its noisy traces are)."""

    n_topics: int
    n_sub: int
    item_cluster: np.ndarray  # item -> topic * n_sub + sub
    pop_early: np.ndarray
    pop_late: np.ndarray
    release_s: np.ndarray  # seconds after window start (negative = before the window)
    community: np.ndarray  # user -> community
    comm_profile: np.ndarray  # community × topic
    taste_cdf: tuple[np.ndarray, np.ndarray]  # early, late taste as `_row_cdf`s (user × topic)
    fav_sub: np.ndarray  # user × topic -> favourite sub-topic (int8: at most 5)
    activity: np.ndarray  # user -> relative session rate (0 = cold user)
    hot: np.ndarray  # community × H hot items


def _row_cdf(weights: np.ndarray) -> np.ndarray:
    """Flatten per-row categorical weights into one increasing array: row r spans (r, r + 1].

    In place after the cumulative sum: at a million users a taste matrix is 160 MB a copy."""
    cum = np.cumsum(weights, axis=1)
    cum /= cum[:, -1:]
    cum[:, -1] = 1.0
    cum += np.arange(weights.shape[0])[:, None]
    return cum.ravel()


def _draw_rows(flat_cdf: np.ndarray, rows: np.ndarray, width: int, u: np.ndarray) -> np.ndarray:
    """One categorical draw per entry of `rows` from that row of a `_row_cdf` (column index)."""
    pos = np.searchsorted(flat_cdf, rows + u, side="right")
    return np.minimum(pos - rows * width, width - 1)


@dataclass(frozen=True)
class _SegmentSampler:
    """Weighted draws of an item within a segment (cluster) with one vectorised searchsorted."""

    order: np.ndarray  # item ids sorted by segment
    flat: np.ndarray  # segment + within-segment cdf, increasing
    end: np.ndarray  # exclusive end position of each segment in `order`

    @classmethod
    def build(cls, segment: np.ndarray, weights: np.ndarray, n_segments: int) -> _SegmentSampler:
        order = np.argsort(segment, kind="stable")
        seg_sorted = segment[order]
        w = weights[order].astype(np.float64)
        counts = np.bincount(seg_sorted, minlength=n_segments)
        end = np.cumsum(counts)
        start = end - counts
        cum = np.cumsum(w)
        base = np.concatenate(([0.0], cum))[start]
        totals = cum[end - 1] - base
        within = (cum - base[seg_sorted]) / totals[seg_sorted]
        within[end - 1] = 1.0
        return cls(order=order, flat=seg_sorted + within, end=end)

    def draw(self, segments: np.ndarray, u: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.flat, segments + u, side="right")
        return self.order[np.minimum(pos, self.end[segments] - 1)]


def _cdf_draw(weights: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Vectorised weighted draw (zero-weight entries are never drawn)."""
    cum = np.cumsum(weights, dtype=np.float64)
    return np.minimum(np.searchsorted(cum, u * cum[-1], side="right"), len(weights) - 1)


def _ids(prefix: str, n: int) -> pl.Series:
    """Readable, sortable string ids (`u0042`); the contract keeps ids as strings."""
    width = len(str(max(n - 1, 0)))
    digits = pl.Series(np.arange(n, dtype=np.int64)).cast(pl.String).str.zfill(width)
    return pl.select(pl.concat_str(pl.lit(prefix), digits)).to_series()


def _pseudo_words(n: int) -> list[str]:
    """A fixed, seed-independent vocabulary of distinct made-up words for topic keywords."""
    rng = np.random.default_rng(2011)
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < n:  # bounded by the vocabulary size (~100 words), not by data size
        k = int(rng.integers(2, 4))
        w = "".join(_SYLLABLES[i] for i in rng.integers(0, len(_SYLLABLES), k))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


def _build_world(rng: np.random.Generator, users: int, items: int, span_s: float) -> _World:
    n_topics = min(len(_TOPICS), max(2, items // 50))
    n_sub = min(5, max(1, items // (n_topics * 4)))
    n_clusters = n_topics * n_sub

    # Items: every cluster gets at least one item, the rest follow uneven topic sizes.
    topic_share = rng.dirichlet(np.full(n_topics, 3.0))
    cluster_share = (topic_share[:, None] * rng.dirichlet(np.full(n_sub, 4.0), n_topics)).ravel()
    extra = _cdf_draw(cluster_share, rng.random(max(items - n_clusters, 0)))
    item_cluster = rng.permutation(np.concatenate((np.arange(min(n_clusters, items)), extra)))
    item_cluster = item_cluster.astype(np.int64)

    # Zipf-like popularity with per-item drift; some items are released late in the window.
    pop_early = 1.0 / (rng.permutation(items) + 1.0) ** 0.8
    pop_late = pop_early * np.exp(rng.normal(0.0, 0.6, items))
    release_s = -rng.uniform(0.0, 365.0 * 86400.0, items)
    n_new = max(1, round(0.08 * items))
    n_cold = max(1, round(0.03 * items))
    # Cold items never take the most popular slot of a cluster, so every cluster stays drawable.
    top_of_cluster = np.zeros(items, dtype=bool)
    top_of_cluster[np.lexsort((-pop_early, item_cluster))[
        np.concatenate(([0], np.cumsum(np.bincount(item_cluster, minlength=n_clusters))[:-1]))
    ]] = True
    cold = rng.permutation(np.flatnonzero(~top_of_cluster))[:n_cold]
    warm = np.setdiff1d(np.arange(items), cold)
    new = rng.permutation(warm)[:n_new]
    release_s[new] = rng.uniform(0.45, 0.95, len(new)) * span_s
    pop_early[new] *= 0.05
    pop_late[new] *= 3.0
    pop_early[cold] = 0.0
    pop_late[cold] = 0.0

    # Users: communities with peaked topic profiles; personal taste is a noisy mix around them.
    n_comm = max(1, min(users // 2, round(users / 80)))  # communities of >= 2 users
    community = rng.permutation(np.arange(users) % n_comm)
    comm_profile = rng.dirichlet(np.full(n_topics, 0.15), n_comm)
    # Personal taste ~ Dirichlet(4 · community profile + 0.05): near the community, with a few
    # off-profile interests (per-row Dirichlet via normalised gammas).
    gammas = rng.standard_gamma(4.0 * comm_profile[community] + 0.05) + 1e-12
    taste_early = gammas / gammas.sum(axis=1, keepdims=True)
    del gammas
    trend = rng.dirichlet(np.full(n_topics, 0.5))
    taste_late = rng.dirichlet(np.full(n_topics, 0.2), users)
    taste_late *= 0.15  # the same arithmetic as 0.75·early + 0.15·draw + 0.10·trend, in place
    taste_late += 0.75 * taste_early
    taste_late += 0.10 * trend
    taste_cdf = (_row_cdf(taste_early), _row_cdf(taste_late))
    del taste_early, taste_late
    comm_fav = rng.integers(0, n_sub, (n_comm, n_topics))
    inherit = rng.random((users, n_topics)) < 0.5
    fav_sub = np.where(
        inherit, comm_fav[community], rng.integers(0, n_sub, (users, n_topics))
    ).astype(np.int8)
    del inherit

    activity = rng.lognormal(0.0, 1.0, users)
    n_cold_users = max(1, round(0.03 * users))
    activity[rng.permutation(users)[:n_cold_users]] = 0.0

    # Community hot lists (word of mouth): drawn from the community's topics and sub-topics.
    hot_n = 25
    sampler = _SegmentSampler.build(item_cluster, pop_early, n_clusters)
    rows = np.repeat(np.arange(n_comm), hot_n)
    topics = _draw_rows(_row_cdf(comm_profile), rows, n_topics, rng.random(len(rows)))
    clusters = topics * n_sub + comm_fav[rows, topics]
    hot = sampler.draw(clusters, rng.random(len(rows))).reshape(n_comm, hot_n)

    return _World(
        n_topics=n_topics, n_sub=n_sub, item_cluster=item_cluster, pop_early=pop_early,
        pop_late=pop_late, release_s=release_s, community=community, comm_profile=comm_profile,
        taste_cdf=taste_cdf, fav_sub=fav_sub, activity=activity, hot=hot,
    )


@dataclass(frozen=True)
class _EventBlock:
    """One block of events as integer codes, sorted by time within the block."""

    user: np.ndarray
    item: np.ndarray
    step: np.ndarray  # funnel depth: index into EVENT_TYPES
    value: np.ndarray
    ts_us: np.ndarray

    def __len__(self) -> int:
        return len(self.ts_us)


def _event_block(
    rng: np.random.Generator,
    world: _World,
    samplers: tuple[_SegmentSampler, _SegmentSampler],
    events: int,
    start: datetime,
    span_s: float,
) -> _EventBlock:
    """Sessions → funnel events; exactly `events` rows, sorted by time."""
    n_users = len(world.community)
    # Route and funnel depth first (cheap), then cut the session list to hit `events` exactly.
    route = np.searchsorted(np.cumsum(_ROUTE_SHARE)[:-1], rng.random(events), side="right")
    u = rng.random(events)
    depth = np.ones(events, dtype=np.int64)
    for j in range(3):  # three funnel steps, each vectorised over all candidate sessions
        depth += u > _FUNNEL_CDF[route, j]
    del u
    csum = np.cumsum(depth)
    n_sess = int(np.searchsorted(csum, events)) + 1 if events else 0
    overshoot = int(csum[n_sess - 1]) - events if n_sess else 0
    del csum
    route, depth = route[:n_sess].copy(), depth[:n_sess].copy()  # copies free the candidates
    if n_sess:
        depth[-1] -= overshoot

    sess_ts = rng.uniform(0.0, span_s, n_sess)
    late = rng.random(n_sess) < sess_ts / span_s
    # Sessions per user in one multinomial draw; users come out sorted, which keeps the per-user
    # taste lookups below cache-friendly (session order carries no meaning: ts is drawn apart).
    counts = rng.multinomial(n_sess, world.activity / world.activity.sum())
    user = np.repeat(np.arange(n_users), counts)
    del counts
    item = np.empty(n_sess, dtype=np.int64)

    pops = [world.pop_early, world.pop_late]
    for phase in (0, 1):
        in_phase = late == bool(phase)
        idx = np.flatnonzero(in_phase & (route == 0))  # taste route
        if len(idx):
            uu = user[idx]
            topic = _draw_rows(world.taste_cdf[phase], uu, world.n_topics, rng.random(len(idx)))
            sub = np.where(
                rng.random(len(idx)) < 0.75,
                world.fav_sub[uu, topic],
                rng.integers(0, world.n_sub, len(idx)),
            )
            del uu
            item[idx] = samplers[phase].draw(topic * world.n_sub + sub, rng.random(len(idx)))
            del topic, sub
        idx = np.flatnonzero(in_phase & (route == 2))  # trend route
        item[idx] = _cdf_draw(pops[phase], rng.random(len(idx)))
    del late, in_phase
    idx = np.flatnonzero(route == 1)  # word of mouth
    del route
    hot_n = world.hot.shape[1]
    pick = np.minimum((hot_n * rng.random(len(idx)) ** 2).astype(np.int64), hot_n - 1)
    item[idx] = world.hot[world.community[user[idx]], pick]
    del idx, pick

    # Items released late: a session before release happens after it instead.
    release = world.release_s[item]
    early = sess_ts < release
    sess_ts[early] = release[early] + rng.random(int(early.sum())) * (span_s - release[early])
    del release, early

    sess_of = np.repeat(np.arange(n_sess), depth)
    step = np.arange(events) - np.repeat(np.cumsum(depth) - depth, depth)
    gap_s = rng.exponential(90.0, n_sess)
    ts_s = np.minimum(sess_ts[sess_of] + step * gap_s[sess_of], span_s - 1e-3)
    del sess_ts, gap_s
    value = np.ones(events)
    buys = step == 3
    value[buys] += (rng.random(int(buys.sum())) < 0.15) + (rng.random(int(buys.sum())) < 0.05)
    del buys

    ts_us = np.int64(start.timestamp() * 1_000_000) + (ts_s * 1_000_000).astype(np.int64)
    del ts_s
    order = np.argsort(ts_us, kind="stable")
    return _EventBlock(
        user=user[sess_of[order]].astype(np.int32),
        item=item[sess_of[order]].astype(np.int32),
        step=step[order].astype(np.int8),
        value=value[order],
        ts_us=ts_us[order],
    )


class _EventWriter:
    """Events appended to one Parquet file a slice at a time (one row group per slice), so only
    one slice's text ids are ever built: the file stays one table file of the contract."""

    def __init__(self, path: Path, world: _World, events: int, rows: int) -> None:
        self.path, self.rows, self.written = path, rows, 0
        self.id_width = len(str(max(events - 1, 0)))
        self.user_ids = _ids("u", len(world.community))
        self.item_ids = _ids("i", len(world.item_cluster))
        self.types = pl.Series(EVENT_TYPES, dtype=pl.String)
        self.writer: pq.ParquetWriter | None = None

    def write(self, block: _EventBlock) -> None:
        for lo in range(0, max(len(block), 1), self.rows):
            hi = min(lo + self.rows, len(block))
            first = self.written + lo
            digits = pl.Series(np.arange(first, first + hi - lo, dtype=np.int64))
            frame = pl.DataFrame(
                {
                    "event_id": pl.select(
                        pl.concat_str(pl.lit("e"), digits.cast(pl.String).str.zfill(self.id_width))
                    ).to_series(),
                    "user_id": self.user_ids.gather(block.user[lo:hi]),
                    "item_id": self.item_ids.gather(block.item[lo:hi]),
                    "event_type": self.types.gather(block.step[lo:hi]),
                    "value": block.value[lo:hi],
                    "ts": pl.Series(block.ts_us[lo:hi]).cast(pl.Datetime("us", "UTC")),
                }
            )
            table = frame.to_arrow()
            if self.writer is None:
                self.writer = pq.ParquetWriter(self.path, table.schema, compression="zstd")
            self.writer.write_table(table.cast(self.writer.schema))
        self.written += len(block)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _list_column(
    values: np.ndarray, mask: np.ndarray, vocab: list[str], unique: bool = True
) -> pl.Series:
    """Rows of codes (masked) → list[str] column; `unique` drops repeats keeping first ones."""
    offsets = np.concatenate(([0], np.cumsum(mask.sum(axis=1)))).astype(np.int32)
    flat = pa.array(np.asarray(vocab, dtype=object)[values[mask]], type=pa.string())
    lists = pa.ListArray.from_arrays(pa.array(offsets), flat)
    series = pl.Series(pl.from_arrow(lists))
    return series.list.unique(maintain_order=True) if unique else series


def _items_frame(rng: np.random.Generator, world: _World) -> pl.DataFrame:
    """Catalog whose content reflects topic strongly and sub-topic weakly, both noisily."""
    n_items, k, s = len(world.item_cluster), world.n_topics, world.n_sub
    topic, sub = world.item_cluster // s, world.item_cluster % s
    names = [t for t, _ in _TOPICS[:k]]

    # Tags: 8 per topic (the topic itself + suffixed variants) and shared generic tags.
    n_suffix = len(_TAG_SUFFIXES)
    vocab = [
        name if j == 0 else f"{_TAG_SUFFIXES[j]} {name}" for name in names for j in range(n_suffix)
    ] + list(_GENERIC_TAGS)
    max_tags = 6
    slot = rng.random((n_items, max_tags))
    own = np.where(
        rng.random((n_items, max_tags)) < 0.35,
        (sub % n_suffix)[:, None],
        rng.integers(0, n_suffix, (n_items, max_tags)),
    )
    codes = np.where(
        slot < 0.62,
        topic[:, None] * n_suffix + own,
        np.where(
            slot < 0.80,
            rng.integers(0, k, (n_items, max_tags)) * n_suffix + own,
            k * n_suffix + rng.integers(0, len(_GENERIC_TAGS), (n_items, max_tags)),
        ),
    )
    mask = np.arange(max_tags)[None, :] < rng.integers(2, max_tags + 1, n_items)[:, None]
    tags = _list_column(codes, mask, vocab)

    # Text: title plus a bag of topic keywords (partly sub-topic specific) and filler words.
    words = _pseudo_words(len(_TOPICS) * _KEYWORDS_PER_TOPIC)
    text_vocab = words[: k * _KEYWORDS_PER_TOPIC] + list(_FILLER)
    n_tok = 12
    kw = np.where(
        rng.random((n_items, n_tok)) < 0.4,
        (sub % _KEYWORDS_PER_TOPIC)[:, None],
        rng.integers(0, _KEYWORDS_PER_TOPIC, (n_items, n_tok)),
    )
    roll = rng.random((n_items, n_tok))
    tok = np.where(
        roll < 0.30,
        topic[:, None] * _KEYWORDS_PER_TOPIC + kw,
        np.where(
            roll < 0.38,
            rng.integers(0, k, (n_items, n_tok)) * _KEYWORDS_PER_TOPIC + kw,
            k * _KEYWORDS_PER_TOPIC + rng.integers(0, len(_FILLER), (n_items, n_tok)),
        ),
    )
    body = _list_column(tok, np.ones_like(tok, dtype=bool), text_vocab, unique=False)

    adj = pl.Series(_ADJECTIVES).gather(rng.integers(0, len(_ADJECTIVES), n_items))
    noun = pl.Series(_NOUNS).gather(rng.integers(0, len(_NOUNS), n_items))
    number = pl.Series(rng.integers(1, 100, n_items))

    # Category: the topic's category, sometimes mislabelled.
    cat_names = sorted({c for _, c in _TOPICS[:k]})
    cat_of_topic = np.array([cat_names.index(c) for _, c in _TOPICS[:k]])
    category = np.where(
        rng.random(n_items) < 0.85, cat_of_topic[topic], rng.integers(0, len(cat_names), n_items)
    )

    # Embedding: topic centroid + weaker sub-topic offset + noise, unit length.
    centroid = rng.normal(0.0, 1.0, (k, EMBED_DIM))
    offset = rng.normal(0.0, 0.6, (k, s, EMBED_DIM))
    emb = centroid[topic] + offset[topic, sub] + rng.normal(0.0, 1.0, (n_items, EMBED_DIM))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)

    frame = pl.DataFrame(
        {
            "item_id": _ids("i", n_items),
            "adj": adj,
            "noun": noun,
            "number": number,
            "body": body,
            "tags": tags,
            "category": pl.Series(cat_names).gather(category),
            "embedding": pl.Series(emb.astype(np.float32)).cast(pl.List(pl.Float32)),
        }
    )
    title = pl.format("{} {} {}", "adj", "noun", "number")
    return frame.select(
        "item_id",
        title.alias("title"),
        pl.concat_str(title, pl.lit(". "), pl.col("body").list.join(" ")).alias("text"),
        "tags",
        "category",
        "embedding",
    )


def _users_frame(rng: np.random.Generator, world: _World, start: datetime) -> pl.DataFrame:
    """User attributes: country leans on the community (weak signal), signup before the window."""
    n_users = len(world.community)
    n_comm = int(world.comm_profile.shape[0])
    home = _cdf_draw(_COUNTRY_SHARE, rng.random(n_comm))
    own = _cdf_draw(_COUNTRY_SHARE, rng.random(n_users))
    country = np.where(rng.random(n_users) < 0.6, home[world.community], own)
    start_us = np.int64(start.timestamp() * 1_000_000)
    signup_us = start_us - (rng.uniform(1.0, 730.0, n_users) * 86400e6).astype(np.int64)
    return pl.DataFrame(
        {
            "user_id": _ids("u", n_users),
            "country": pl.Series(_COUNTRIES).gather(country),
            "signup_ts": pl.Series(signup_us).cast(pl.Datetime("us", "UTC")),
        }
    )


def _social_frame(rng: np.random.Generator, world: _World) -> pl.DataFrame:
    """Undirected ties, mostly within a community, written in both directions."""
    n_users = len(world.community)
    order = np.argsort(world.community, kind="stable")
    pos_of = np.empty(n_users, dtype=np.int64)
    pos_of[order] = np.arange(n_users)
    sizes = np.bincount(world.community)
    starts = np.cumsum(sizes) - sizes

    stubs = rng.geometric(1.0 / 5.0, n_users)
    src = np.repeat(np.arange(n_users), stubs)
    comm = world.community[src]
    same = rng.random(len(src)) < 0.7
    in_comm = order[starts[comm] + (rng.random(len(src)) * sizes[comm]).astype(np.int64)]
    dst = np.where(same, in_comm, rng.integers(0, n_users, len(src)))
    # Cold users (no activity) always get one tie to a community neighbour, never themselves.
    cold = np.flatnonzero(world.activity == 0)
    c = world.community[cold]
    nxt = order[starts[c] + (pos_of[cold] - starts[c] + 1) % sizes[c]]
    src = np.concatenate((src, cold))
    dst = np.concatenate((dst, nxt))
    same_comm = world.community[src] == world.community[dst]
    weight = np.round(
        np.where(same_comm, rng.uniform(0.5, 1.0, len(src)), rng.uniform(0.05, 0.5, len(src))), 3
    )
    keep = src != dst
    lo, hi = np.minimum(src, dst)[keep], np.maximum(src, dst)[keep]
    edges = (
        pl.DataFrame({"a": lo, "b": hi, "weight": weight[keep]})
        .group_by("a", "b", maintain_order=True)
        .agg(pl.col("weight").max())
    )
    both = pl.concat(
        [edges, edges.select(pl.col("b").alias("a"), pl.col("a").alias("b"), "weight")]
    ).sort("a", "b")
    user_ids = _ids("u", n_users)
    return pl.DataFrame(
        {
            "user_id": user_ids.gather(both["a"]),
            "friend_id": user_ids.gather(both["b"]),
            "weight": both["weight"],
        }
    )


#: Events drawn at once. The first block continues the seed's generator, every later one has
#: its own generator seeded by (seed, block), so a source of up to this many events is the same as
#: before blocks existed, and a bigger one needs memory for one block, not for all events.
BLOCK_EVENTS = 5_000_000
#: Rows per Parquet row group of the events file (the text ids of one slice are built at once).
WRITE_ROWS = 1_000_000


def generate_demo_source(
    out_dir: Path,
    users: int = 2000,
    items: int = 1500,
    events: int = 120_000,
    seed: int = 42,
    *,
    end: datetime = DEFAULT_END,
    write_rows: int = WRITE_ROWS,
) -> dict[str, int]:
    """Write events/items/users/social Parquet files to `out_dir`; return rows per table.

    Same arguments → the same data, whatever `write_rows` (only the Parquet row groups differ).
    `end` is the exclusive end of the 8-week event window (a fixed date by default so runs are
    reproducible). Events are sorted by time within each block of `BLOCK_EVENTS`.
    """
    if users < 2 or items < 2:
        raise ValueError(f"need at least 2 users and 2 items, got users={users}, items={items}")
    if events < 0:
        raise ValueError(f"events must be >= 0, got {events}")
    if write_rows < 1:
        raise ValueError(f"write_rows must be >= 1, got {write_rows}")
    if end.tzinfo is None:
        raise ValueError("end must be timezone-aware")
    rng = np.random.default_rng(seed)
    start = end - timedelta(days=WINDOW_DAYS)
    span_s = WINDOW_DAYS * 86400.0
    world = _build_world(rng, users, items, span_s)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    side_tables: list[tuple[str, Callable[[], pl.DataFrame]]] = [
        ("items", lambda: _items_frame(rng, world)),
        ("users", lambda: _users_frame(rng, world, start)),
        ("social", lambda: _social_frame(rng, world)),
    ]
    for name, make in side_tables:  # in this order: they share the seed's generator
        frame = make()
        frame.write_parquet(out_dir / f"{name}.parquet")
        counts[name] = frame.height
        del frame

    n_clusters = world.n_topics * world.n_sub
    samplers = (
        _SegmentSampler.build(world.item_cluster, world.pop_early, n_clusters),
        _SegmentSampler.build(world.item_cluster, world.pop_late, n_clusters),
    )
    writer = _EventWriter(out_dir / "events.parquet", world, events, write_rows)
    try:
        for block, lo in enumerate(range(0, max(events, 1), BLOCK_EVENTS)):
            block_rng = rng if block == 0 else np.random.default_rng([seed, block])
            size = min(BLOCK_EVENTS, events - lo)
            writer.write(_event_block(block_rng, world, samplers, size, start, span_s))
    finally:
        writer.close()
    counts["events"] = events
    return counts
