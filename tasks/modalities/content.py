"""Content modality: recommend items whose attributes resemble what the user already consumed.

Item features are built once per fit from whatever `Dataset.items` carries — TF-IDF over
`title`/`text`/`tags`, a one-hot `category` and dense `embedding` vectors. Each block is
L2-normalised and scaled by sqrt(weight) before concatenation, so the cosine of two items is the
weighted mean of the per-block cosines. Because scores come from attributes, not from other users,
this modality reaches *cold* items (nobody interacted with them yet) and users with one interaction.

Two scorers share the features:
- ``profile``: a user's profile is the (confidence × recency)-weighted mean of their items' vectors;
  score = similarity(profile, item).
- ``item_knn``: each history item votes for its top-k content neighbours with their similarity;
  a user's score is the weighted sum of those votes, so separate tastes are not averaged into one
  centroid. On Last.fm it measured below the profile (small k loses signal; k → all items
  converges to the profile's order), so ``profile`` is the default.

The module also holds small helpers shared by the other side-data modalities (`social`,
`popularity`): the `MissingModalityInput` exception and the recency-weighted history matrix.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

import numpy as np
import polars as pl
import scipy.sparse as sp
from pydantic import BaseModel, Field, model_validator
from pydantic_core import PydanticCustomError
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import normalize

from tasks.data.dataset import Dataset
from tasks.kernels.blocks import block_array, parallel_chunks
from tasks.kernels.sparse import (
    add_sparse_dense_product,
    product_to_scores,
    sparse_product_dense,
)
from tasks.modalities.base import Modality
from tasks.parameter_rules import MIN_DAYS, PARAMETER_CONFIG


class MissingModalityInput(Exception):
    """The snapshot lacks the side data a modality needs; the flow skips it with a log line."""


# --------------------------------------------------------------------------- shared helpers


def _epoch_seconds(when: datetime) -> float:
    """Seconds since epoch, reading a naive datetime as UTC (as the warehouse stores it)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def recency_decay(data: Dataset, half_life_days: float | None) -> sp.csr_matrix:
    """users × items factor 0.5 ** (age / half-life) of each pair's latest event, else all ones.

    Age is measured from `Dataset.as_of` (or the newest event), so a snapshot whose timestamps are
    all equal (e.g. Last.fm) gets factor 1 everywhere: recency is then a no-op, as it should be.
    The sparsity pattern equals `data.interactions`.
    """
    ones = data.interactions.copy()
    ones.data = np.ones_like(ones.data)
    if not half_life_days or data.events.height == 0:
        return ones
    pairs, t = _latest_per_pair(data.events, max(1, data.n_items))
    if np.isnan(t).all():
        return ones
    t = np.where(np.isnan(t), np.nanmax(t), t)
    ref = _epoch_seconds(data.as_of) if data.as_of is not None else float(t.max())
    age_days = np.clip(ref - t, 0.0, None) / 86400.0
    decay = np.maximum(0.5 ** (age_days / half_life_days), 1e-12).astype(np.float32)
    users, items = pairs // max(1, data.n_items), pairs % max(1, data.n_items)
    out = sp.csr_matrix(
        (decay, items, np.r_[0, np.cumsum(np.bincount(users, minlength=data.n_users))]),
        shape=data.interactions.shape,
    )
    if out.nnz == ones.nnz and np.array_equal(out.indptr, ones.indptr) \
            and np.array_equal(out.indices, ones.indices):
        return out  # the usual case: every pair with an event is in the matrix
    # Keep exactly the interaction pattern (events dropped from the matrix get no weight).
    return out.multiply(ones).tocsr()


def _latest_per_pair(events: pl.DataFrame, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct (user, item) pairs as codes user × items + item, and each one's latest
    event time in epoch seconds (NaN when none has a time). A pass over the events in their
    (user, item) order instead of a hash group-by (recency decay at 5M events: 0.9 s to 0.3 s)."""
    code = (events["user_idx"].to_numpy().astype(np.int64) * n_items
            + events["item_idx"].to_numpy().astype(np.int64))
    t = events["ts"].cast(pl.Datetime("us")).dt.epoch("s").cast(pl.Float64).to_numpy()
    if len(code) and np.any(code[1:] < code[:-1]):  # not in the Dataset's order: sort here
        order = np.argsort(code, kind="stable")
        code, t = code[order], t[order]
    starts = np.flatnonzero(np.r_[True, code[1:] != code[:-1]]) if len(code) else \
        np.zeros(0, dtype=np.int64)
    latest = np.fmax.reduceat(t, starts) if len(code) else np.zeros(0)
    return code[starts], latest


def history_weights(
    data: Dataset,
    half_life_days: float | None,
    weighting: Literal["confidence", "binary"] = "confidence",
) -> sp.csr_matrix:
    """users × items weight of each past interaction: confidence (or 1) × recency decay."""
    base = data.interactions.copy().astype(np.float32)
    if weighting == "binary":
        base.data = np.ones_like(base.data)
    out = base.multiply(recency_decay(data, half_life_days)).tocsr()
    out.eliminate_zeros()
    return out.astype(np.float32)


_NEG_INF_BITS = np.int32(np.array(-np.inf, dtype=np.float32).view(np.int32))  # 0xFF800000


def zeros_to_neg_inf(scores: np.ndarray, scratch: np.ndarray | None = None) -> None:
    """In place: every ±0 entry of a float32 array becomes -inf (no evidence).

    Done on the bit pattern (OR with -inf's bits where the value is zero) because numpy's masked
    assignment branches per element and, on the ~50 % masks of near-dense scores, mispredicts
    its way to several times the cost of these vectorised passes. `scratch`: an int32 buffer of
    at least `scores.size` entries, reused across calls.
    """
    buf = scratch[: scores.size] if scratch is not None else np.empty(scores.size, np.int32)
    mask = np.equal(scores, 0, out=buf.reshape(scores.shape), casting="unsafe")
    mask *= _NEG_INF_BITS
    bits = scores.view(np.int32)
    bits |= mask


def sparse_to_scores(block: sp.spmatrix, out: np.ndarray | None = None) -> np.ndarray:
    """Dense float32 scores from a sparse block; structural zeros become -inf (no evidence).

    Explicit zeros count as structural (as after `eliminate_zeros`).
    """
    csr = sp.csr_matrix(block, dtype=np.float32)
    if out is None:
        out = np.empty(csr.shape, dtype=np.float32)
    csr.toarray(out=out)
    zeros_to_neg_inf(out)
    return out


def sparse_product_scores(left: sp.csr_matrix, right: sp.csr_matrix) -> np.ndarray:
    """`product_to_scores(left, right)` by row chunks on the shared thread pool."""
    out = block_array((left.shape[0], right.shape[1]))

    def chunk(a: int, b: int) -> None:
        product_to_scores(left[a:b], right, out=out[a:b])

    parallel_chunks(chunk, left.shape[0])
    return out


# --------------------------------------------------------------------------- parameters


class ContentParams(BaseModel):
    """Knobs of the content modality; defaults were tuned on an inner split of Last.fm train."""

    model_config = PARAMETER_CONFIG

    variant: Literal["profile", "item_knn"] = Field(
        default="profile",
        description="'profile': similarity to the user's weighted mean item vector; 'item_knn': "
        "sum of content similarity to each history item over its top-k neighbours.",
    )
    neighbours: int = Field(
        default=1000, ge=1, description="item_knn: content neighbours kept per history item."
    )
    metric: Literal["cosine", "euclidean"] = Field(
        default="cosine",
        description="Similarity: cosine, or 1 / (1 + Euclidean distance) between unit vectors "
        "(same order per item pair, flatter weights). Manhattan is not offered: it needs a "
        "pairwise pass over all features instead of one sparse product.",
    )
    similarity_power: float = Field(
        default=1.0, gt=0.0,
        description="item_knn: sharpen (>1) or flatten (<1) neighbour similarities.",
    )
    title_weight: float = Field(
        default=0.1, ge=0.0,
        description="Weight of the title TF-IDF block.",
    )
    text_weight: float = Field(
        default=1.0, ge=0.0,
        description="Weight of the free-text TF-IDF block.",
    )
    tags_weight: float = Field(default=1.0, ge=0.0, description="Weight of the tags TF-IDF block.")
    category_weight: float = Field(
        default=0.5, ge=0.0,
        description="Weight of the category one-hot.",
    )
    embedding_weight: float = Field(
        default=1.0, ge=0.0,
        description="Weight of the dense embedding.",
    )
    tag_words: bool = Field(
        default=False,
        description="Also split multi-word tags into words ('black metal' -> 'black', 'metal') "
        "so related tags overlap.",
    )
    tag_position_decay: float = Field(
        default=0.25,
        ge=0.0,
        description="Tags are listed most-frequent first; the tag at position p gets "
        "1 / (1 + p) ** decay (0 = all tags equal).",
    )
    max_tags: int | None = Field(
        default=None, ge=1,
        description="Keep only the first max_tags tags of each item (None = all).",
    )
    min_df_share: float = Field(
        default=0.003,
        ge=0.0,
        lt=1.0,
        description="Drop terms/tags found on fewer than this share of items (at least 1 item). "
        "Rare tags make obscure items look alike on noise; ~0.3 % keeps genre-level tags.",
    )
    sublinear_tf: bool = Field(default=True, description="TF-IDF uses 1 + log(tf) for text terms.")
    popularity_prior: float = Field(
        default=0.0,
        ge=0.0,
        description="Multiply positive similarity by (1 + distinct users of the item) ** prior: "
        "similarity says what kind, the prior says which one. 0 = pure content; cold items "
        "keep their bare similarity (factor 1).",
    )
    history_weighting: Literal["confidence", "binary"] = Field(
        default="confidence",
        description="Weight history items by interaction confidence, or count each once.",
    )
    half_life_days: float | None = Field(
        default=30.0,
        ge=MIN_DAYS,
        description="Recency: an interaction's weight halves every half_life_days (at least "
        "1/24 = one hour) before Dataset.as_of (None = no decay; constant timestamps make it a "
        "no-op).",
    )

    @model_validator(mode="after")
    def _some_feature_counts(self) -> ContentParams:
        blocks = (self.title_weight, self.text_weight, self.tags_weight, self.category_weight,
                  self.embedding_weight)
        if not any(w > 0 for w in blocks):
            raise PydanticCustomError(
                "all_zero_weights",
                "title_weight, text_weight, tags_weight, category_weight and embedding_weight are "
                "all 0, so no item would have features; give one of them a positive weight",
            )
        return self


# --------------------------------------------------------------------------- features


def _text_column(items: pl.DataFrame, name: str) -> list[str] | None:
    if name not in items.columns:
        return None
    values = items[name].cast(pl.String).fill_null("")
    return None if (values.str.len_chars() == 0).all() else values.to_list()


def _min_df(params: ContentParams, n_items: int) -> int:
    return max(1, int(round(params.min_df_share * n_items)))


def _tfidf(docs: list[str], params: ContentParams) -> sp.csr_matrix | None:
    vec = TfidfVectorizer(
        min_df=_min_df(params, len(docs)), sublinear_tf=params.sublinear_tf,
        stop_words="english", dtype=np.float32,
    )
    try:
        return sp.csr_matrix(vec.fit_transform(docs))
    except ValueError:  # empty vocabulary after pruning: nothing informative in this column
        return None


def _tag_lists(items: pl.DataFrame) -> pl.Series | None:
    """Tags as list[str] whether stored as a list or a '|'-separated string."""
    if "tags" not in items.columns:
        return None
    tags = items["tags"]
    if tags.dtype == pl.String:
        tags = tags.str.split("|")
    elif not isinstance(tags.dtype, pl.List):
        return None
    tags = tags.cast(pl.List(pl.String)).list.eval(
        pl.element().str.strip_chars().str.to_lowercase().filter(pl.element().str.len_chars() > 0)
    ).fill_null([])
    return None if tags.list.len().sum() == 0 else tags


def _tags_block(items: pl.DataFrame, params: ContentParams) -> sp.csr_matrix | None:
    """TF-IDF over whole tags (each tag one token), damped by the tag's position in the list."""
    tags = _tag_lists(items)
    if tags is None:
        return None
    if params.max_tags is not None:
        tags = tags.list.head(params.max_tags)
    lists: list[list[str]] = tags.to_list()

    def analyzer(doc: list[str]) -> list[str]:
        if not params.tag_words:
            return doc
        return doc + [w for t in doc if " " in t for w in t.split()]

    vec = TfidfVectorizer(
        analyzer=analyzer, min_df=_min_df(params, len(lists)), norm=None, dtype=np.float32
    )
    try:
        mat = sp.csr_matrix(vec.fit_transform(lists))
    except ValueError:
        return None
    if params.tag_position_decay > 0:
        # Same pattern as `mat`: each (item, tag) gets its best (earliest) position's damping.
        vocab = vec.vocabulary_
        flat = (
            pl.DataFrame({"item": np.arange(len(lists)), "tag": tags})
            .explode("tag")
            .drop_nulls("tag")
            .with_columns(pos=pl.int_range(pl.len()).over("item"))
            .with_columns(
                col=pl.col("tag").replace_strict(vocab, default=-1, return_dtype=pl.Int64)
            )
            .filter(pl.col("col") >= 0)
            .group_by("item", "col")
            .agg(pl.col("pos").min())
        )
        damp = (1.0 + flat["pos"].to_numpy()) ** -params.tag_position_decay
        pos_mat = sp.csr_matrix(
            (damp.astype(np.float32), (flat["item"].to_numpy(), flat["col"].to_numpy())),
            shape=mat.shape,
        )
        # Word tokens split from tags keep weight 1 (only whole tags have a list position).
        pattern = mat.copy()
        pattern.data = np.ones_like(pattern.data)
        factor = pattern - pattern.multiply(pos_mat > 0) + pos_mat.multiply(pattern)
        mat = sp.csr_matrix(mat.multiply(factor))
    return mat


def _category_block(items: pl.DataFrame) -> sp.csr_matrix | None:
    if "category" not in items.columns:
        return None
    cats = items["category"].cast(pl.String)
    if cats.null_count() == len(cats):
        return None
    codes = cats.fill_null("").to_frame("c").with_columns(
        code=pl.col("c").rank("dense").cast(pl.Int64) - 1
    )
    present = (codes["c"] != "").to_numpy()
    rows = np.flatnonzero(present)
    cols = codes["code"].to_numpy()[present]
    return sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)),
        shape=(len(cats), int(cols.max()) + 1 if len(cols) else 0),
    )


def _embedding_block(items: pl.DataFrame) -> np.ndarray | None:
    """Dense item vectors; items without one (or of the wrong length) get a zero row."""
    if "embedding" not in items.columns:
        return None
    emb = items["embedding"]
    if not isinstance(emb.dtype, pl.List | pl.Array):
        return None
    lengths = emb.cast(pl.List(pl.Float64)).list.len().fill_null(0).to_numpy()
    if lengths.max(initial=0) == 0:
        return None
    dim = int(np.bincount(lengths[lengths > 0]).argmax())
    out = np.zeros((len(emb), dim), dtype=np.float32)
    ok = lengths == dim
    if ok.any():
        out[ok] = np.asarray(
            emb.cast(pl.List(pl.Float64)).filter(pl.Series(ok)).to_list(), dtype=np.float32
        )
    return np.nan_to_num(out)


def item_features(items: pl.DataFrame, params: ContentParams) -> tuple[sp.csr_matrix, np.ndarray]:
    """(sparse features, dense embedding) aligned to item_idx, jointly unit-norm per item.

    The sparse part holds the TF-IDF and one-hot blocks; the dense part (possibly 0 columns) the
    embedding block. Kept apart so scoring stays sparse unless embeddings exist.
    """
    n = items.height
    sparse_parts: list[sp.csr_matrix] = []
    weighted: list[tuple[sp.csr_matrix | None, float]] = []
    for col, w in (("title", params.title_weight), ("text", params.text_weight)):
        docs = _text_column(items, col)
        weighted.append((_tfidf(docs, params) if docs and w > 0 else None, w))
    weighted.append((_tags_block(items, params) if params.tags_weight > 0 else None,
                     params.tags_weight))
    weighted.append((_category_block(items) if params.category_weight > 0 else None,
                     params.category_weight))
    for mat, w in weighted:
        if mat is not None and mat.nnz:
            sparse_parts.append(sp.csr_matrix(normalize(mat) * np.float32(np.sqrt(w))))
    sparse_x = (
        sp.hstack(sparse_parts, format="csr", dtype=np.float32)
        if sparse_parts else sp.csr_matrix((n, 0), dtype=np.float32)
    )
    emb = _embedding_block(items) if params.embedding_weight > 0 else None
    dense_x = (
        normalize(emb) * np.float32(np.sqrt(params.embedding_weight))
        if emb is not None else np.zeros((n, 0), dtype=np.float32)
    ).astype(np.float32)
    # Joint unit norm: items missing a block are compared on the blocks they have.
    norms = np.sqrt(
        np.asarray(sparse_x.multiply(sparse_x).sum(axis=1)).ravel() + (dense_x**2).sum(axis=1)
    )
    inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0).astype(np.float32)
    return sp.csr_matrix(sp.diags(inv) @ sparse_x, dtype=np.float32), dense_x * inv[:, None]


# --------------------------------------------------------------------------- modality


def _to_similarity(cos: np.ndarray, metric: str) -> np.ndarray:
    """Cosine between unit vectors → chosen similarity (Euclidean: 1 / (1 + ||a - b||))."""
    if metric == "euclidean":
        return (1.0 / (1.0 + np.sqrt(np.clip(2.0 - 2.0 * cos, 0.0, None)))).astype(np.float32)
    return cos


# A dense column costs n_items multiply-adds per user in BLAS, a sparse one its nonzeros in the
# compiled sparse × dense kernel, about 2.5x slower per multiply-add; on the 100k-user demo
# (555 TF-IDF/one-hot columns, the densest on 22 % of items) only the embedding then pays off
# dense: block time 37 -> 31 ms against a 10 % threshold (`_profile_scores`, 2048 users).
_DENSE_COLUMN_SHARE = 0.3
_DENSE_FEATURE_BYTES = 256 * 2**20  # cap on the dense copy of the item features
_ITEM_CHUNK = 128  # items per pool task: each task's slice of the block stays in L2


def split_features(
    x: sp.csr_matrix, dense: np.ndarray
) -> tuple[np.ndarray, sp.csr_matrix]:
    """[x | dense] as (frequent columns + embedding as a C-ordered array, rare columns as CSR).

    Same vectors up to a column permutation, so dot products (and norms) are unchanged; the split
    only decides which kernel computes each part.
    """
    n_items = x.shape[0]
    df = np.diff(sp.csc_matrix(x).indptr)
    order = np.argsort(-df, kind="stable")
    budget = max(0, _DENSE_FEATURE_BYTES // (4 * max(n_items, 1)) - dense.shape[1])
    frequent = order[: min(budget, int((df >= _DENSE_COLUMN_SHARE * n_items).sum()))]
    rare = np.setdiff1d(np.arange(x.shape[1]), frequent)
    xd = np.ascontiguousarray(
        np.hstack([x[:, np.sort(frequent)].toarray(), dense]), dtype=np.float32
    )
    return xd, sp.csr_matrix(x[:, rare], dtype=np.float32)


class ContentModality:
    """Attribute-similarity scorer; see the module docstring for the two variants."""

    name = "content"

    def __init__(self, params: ContentParams) -> None:
        self.params = params
        self._x: sp.csr_matrix | None = None
        self._dense: np.ndarray | None = None
        self._xd: np.ndarray | None = None
        self._xs: sp.csr_matrix | None = None
        self._history: sp.csr_matrix | None = None
        self._neighbours: sp.csr_matrix | None = None
        self._has_feature: np.ndarray | None = None
        self._prior: np.ndarray | None = None

    def fit(self, data: Dataset) -> ContentModality:
        """Build item features (and, for item_knn, the top-k neighbour graph of history items)."""
        if data.items is None or data.items.height == 0:
            raise MissingModalityInput("content needs Dataset.items (item attributes)")
        x, dense = item_features(data.items, self.params)
        self._has_feature = (np.diff(x.indptr) > 0) | (np.abs(dense).sum(axis=1) > 0)
        if not self._has_feature.any():
            raise MissingModalityInput("items carry no title/text/tags/category/embedding")
        self._x, self._dense = x, dense
        history = history_weights(data, self.params.half_life_days, self.params.history_weighting)
        # L1 per user: profile = weighted mean; knn votes = weighted share of the history.
        self._history = sp.csr_matrix(normalize(history, norm="l1"), dtype=np.float32)
        users_per_item = np.diff(sp.csc_matrix(data.interactions).indptr).astype(np.float64)
        self._prior = ((1.0 + users_per_item) ** self.params.popularity_prior).astype(np.float32)
        if self.params.variant == "item_knn":
            self._neighbours = self._neighbour_graph(np.unique(history.indices))
        else:
            self._xd, self._xs = split_features(x, dense)
        return self

    def _item_cosine(self, rows: np.ndarray) -> np.ndarray:
        assert self._x is not None and self._dense is not None
        cos = (self._x[rows] @ self._x.T).toarray()
        if self._dense.shape[1]:
            cos += self._dense[rows] @ self._dense.T
        return cos.astype(np.float32)

    def _neighbour_graph(self, rows: np.ndarray, block: int = 1024) -> sp.csr_matrix:
        """items × items: for each history item, its top-k most similar other items."""
        assert self._has_feature is not None
        n = len(self._has_feature)
        k = min(self.params.neighbours, n - 1)
        parts_r, parts_c, parts_v = [], [], []
        for start in range(0, len(rows), block):
            r = rows[start : start + block]
            cos = self._item_cosine(r)
            cos[np.arange(len(r)), r] = -np.inf  # an item is not its own neighbour
            cos[:, ~self._has_feature] = -np.inf
            if k <= 0:
                continue
            top = np.argpartition(-cos, k - 1, axis=1)[:, :k]
            vals = np.take_along_axis(cos, top, axis=1)
            keep = np.isfinite(vals) & (vals > 0)
            sim = _to_similarity(vals[keep], self.params.metric) ** self.params.similarity_power
            parts_r.append(np.repeat(r, k).reshape(len(r), k)[keep])
            parts_c.append(top[keep])
            parts_v.append(sim.astype(np.float32))
        if not parts_r:
            return sp.csr_matrix((n, n), dtype=np.float32)
        return sp.csr_matrix(
            (np.concatenate(parts_v), (np.concatenate(parts_r), np.concatenate(parts_c))),
            shape=(n, n), dtype=np.float32,
        )

    def score_block(self, users: np.ndarray) -> np.ndarray:
        """Scores for a block of users; users without history and featureless items get -inf.

        The profile variant computes items × users and returns its transpose (an F-ordered
        users × items array): every product then writes contiguous memory, and `top_n` reads
        either order.
        """
        assert self._history is not None and self._prior is not None
        users = np.asarray(users, dtype=np.int64)
        if self.params.variant != "item_knn":
            return self._profile_scores(users).T
        assert self._neighbours is not None
        scores = sparse_product_scores(self._history[users], self._neighbours)
        if self.params.popularity_prior > 0:
            scores[:] = np.where(scores > 0, scores * self._prior, scores / self._prior)
        return scores

    def _profile_scores(self, users: np.ndarray) -> np.ndarray:
        """items × users similarity of each item to each user's (unit) profile.

        profile = history @ features. Per item chunk, on the thread pool: a BLAS product for the
        frequent features (and embedding), plus the compiled sparse × dense kernel for the rare
        ones, which also writes the -inf of items and users without evidence.
        """
        assert self._xd is not None and self._xs is not None and self._history is not None
        assert self._has_feature is not None and self._prior is not None
        hist = self._history[users]
        dense_profile = np.asarray(hist @ self._xd, dtype=np.float32)
        sparse_profile = sparse_product_dense(hist, self._xs)  # users × rare features
        norms = np.sqrt(
            np.einsum("ij,ij->i", dense_profile, dense_profile)
            + np.einsum("ij,ij->i", sparse_profile, sparse_profile)
        )
        inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0).astype(np.float32)
        dense_profile *= inv[:, None]
        sparse_profile *= inv[:, None]
        rare_t = np.ascontiguousarray(sparse_profile.T)  # rare features × users
        out = block_array((self._xd.shape[0], len(users)))
        no_profile = np.flatnonzero(norms == 0)
        featureless = ~self._has_feature
        embedding = self._dense is not None and self._dense.shape[1] > 0
        metric, prior = self.params.metric, self.params.popularity_prior
        xd, xs, has_feature, item_prior = self._xd, self._xs, self._has_feature, self._prior

        def chunk(a: int, b: int) -> None:
            view = out[a:b]
            if xd.shape[1]:
                np.matmul(xd[a:b], dense_profile.T, out=view)
            else:
                view.fill(0.0)
            if not embedding:
                add_sparse_dense_product(xs, rare_t, view, start=a)
                # Sparse features only: exact zero = no shared attribute = no evidence.
                zeros_to_neg_inf(view)
                if metric != "cosine":
                    finite = np.isfinite(view)
                    view[finite] = _to_similarity(view[finite], metric)
            else:
                if metric != "cosine":
                    add_sparse_dense_product(xs, rare_t, view, start=a)
                    view[:] = _to_similarity(view, metric)
                    view[~has_feature[a:b]] = -np.inf
                    view[:, no_profile] = -np.inf
                else:  # masks applied by the kernel, row by row while in cache
                    add_sparse_dense_product(xs, rare_t, view, start=a, blank_rows=featureless,
                                             blank_columns=no_profile)
            if prior > 0:
                p = item_prior[a:b, None]
                view[:] = np.where(view > 0, view * p, view / p)

        parallel_chunks(chunk, out.shape[0], _ITEM_CHUNK)
        return out


def make_content(params: ContentParams | None = None) -> Modality:
    """Factory used by the flow: an unfitted content modality."""
    return ContentModality(params or ContentParams())
