"""Popularity modality: what many people engaged with lately, optionally within the user's genres.

It is the fallback that serves *every* user, including ones with no history and no friends, so it
never needs side data: item popularity is the number of distinct users per item, each counted with
a recency decay (half-life relative to `Dataset.as_of`, else the newest event). When items carry a
`category`, the score blends in popularity inside the categories the user prefers.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import scipy.sparse as sp
from pydantic import BaseModel, Field
from sklearn.preprocessing import normalize

from tasks.data.dataset import Dataset
from tasks.kernels.blocks import block_array, parallel_chunks
from tasks.modalities.base import Modality
from tasks.modalities.content import history_weights
from tasks.parameter_rules import MIN_DAYS, PARAMETER_CONFIG

# Up to this many categories a block is one BLAS product (cost ∝ categories); beyond, a gather.
_MAX_MIX_CATEGORIES = 64


class PopularityParams(BaseModel):
    """Knobs of the popularity modality; defaults tuned on an inner split of Last.fm train."""

    model_config = PARAMETER_CONFIG

    half_life_days: float | None = Field(
        default=14.0,
        ge=MIN_DAYS,
        description="A user's vote for an item halves every half_life_days (at least 1/24 = "
        "one hour) before as_of, so trends beat evergreens (None = plain distinct-user counts).",
    )
    category_blend: float = Field(
        default=0.9,
        ge=0.0,
        le=1.0,
        description="Share of the score from popularity within the user's preferred categories "
        "(0 = global popularity only; users without history always get global popularity). "
        "Used only when items have a category. Below 1 so global hits still fill the list.",
    )
    category_from_first_tag: bool = Field(
        default=False,
        description="Without a category column, use each item's first (most frequent) tag as "
        "its category.",
    )


def _item_categories(data: Dataset, params: PopularityParams) -> np.ndarray | None:
    """Category code per item_idx (-1 = none), or None when items carry no category."""
    items = data.items
    if items is None:
        return None
    if "category" in items.columns:
        cats = items["category"].cast(pl.String)
    elif params.category_from_first_tag and "tags" in items.columns:
        tags = items["tags"]
        if tags.dtype == pl.String:
            tags = tags.str.split("|")
        if not isinstance(tags.dtype, pl.List):
            return None
        cats = tags.list.first().cast(pl.String).str.strip_chars().str.to_lowercase()
    else:
        return None
    if cats.null_count() == len(cats):
        return None
    codes = cats.to_frame("c").with_columns(code=pl.col("c").rank("dense").cast(pl.Int64) - 1)
    return codes["code"].fill_null(-1).to_numpy()


class PopularityModality:
    """Decayed distinct-user popularity, blended with per-category popularity for the user."""

    name = "popularity"

    def __init__(self, params: PopularityParams) -> None:
        self.params = params
        self._global: np.ndarray | None = None
        self._within: np.ndarray | None = None
        self._cats: np.ndarray | None = None
        self._prefs: sp.csr_matrix | None = None
        self._mix: np.ndarray | None = None
        self._order: np.ndarray | None = None  # items by group, then popularity desc, item asc
        self._group: np.ndarray | None = None  # item -> group (a category, or "none")
        self._group_start: np.ndarray | None = None  # where each group starts in _order

    def fit(self, data: Dataset) -> PopularityModality:
        """Count decayed distinct users per item and, with categories, each user's genre shares."""
        votes = history_weights(data, self.params.half_life_days, "binary")
        pop = np.asarray(votes.sum(axis=0)).ravel().astype(np.float64)
        top = pop.max(initial=0.0)
        self._global = (pop / top if top > 0 else pop).astype(np.float32)
        self._cats = None
        cats = _item_categories(data, self.params) if self.params.category_blend > 0 else None
        if cats is None or not (cats >= 0).any() or top == 0:
            self._set_groups(pop, np.zeros(data.n_items, dtype=np.int64))
            return self
        n_cats = int(cats.max()) + 1
        has = cats >= 0
        onehot = sp.csr_matrix(
            (np.ones(int(has.sum()), dtype=np.float32), (np.flatnonzero(has), cats[has])),
            shape=(data.n_items, n_cats),
        )
        # Normalise within the category so a niche genre's top item scores like a global hit.
        cat_max = np.zeros(n_cats)
        np.maximum.at(cat_max, cats[has], pop[has])
        within = np.zeros_like(pop)
        within[has] = np.divide(pop[has], cat_max[cats[has]], out=np.zeros(int(has.sum())),
                                where=cat_max[cats[has]] > 0)
        weights = history_weights(data, self.params.half_life_days, "confidence")
        self._prefs = sp.csr_matrix(normalize(weights @ onehot, norm="l1"), dtype=np.float32)
        self._within, self._cats = within.astype(np.float32), cats
        self._mix = None
        if n_cats <= _MAX_MIX_CATEGORIES:
            # Rows: blend × within-category popularity per category, (1 - blend) × global, global.
            # A block is then one BLAS product of [preferences | 1 | 0] (or [0 | 0 | 1] without
            # preferences) with this matrix instead of a gather plus several block-sized passes.
            blend = np.float32(self.params.category_blend)
            mix = np.zeros((n_cats + 2, data.n_items), dtype=np.float32)
            mix[cats[has], np.flatnonzero(has)] = blend * self._within[has]
            mix[n_cats] = (1 - blend) * self._global
            mix[n_cats + 1] = self._global
            self._mix = mix
        self._set_groups(pop, np.where(cats >= 0, cats, n_cats))
        return self

    def _set_groups(self, pop: np.ndarray, group: np.ndarray) -> None:
        """Within a group (one category, or the items without one) every user's score rises
        with the item's popularity: each term does, and float rounding keeps that order."""
        self._group = group.astype(np.int64)
        self._order = np.lexsort((np.arange(len(pop)), -pop, self._group))
        self._group_start = np.searchsorted(self._group[self._order],
                                            np.arange(int(self._group.max(initial=0)) + 2))

    def shortlist(
        self, users: np.ndarray, n: int, seen: sp.csr_matrix | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Items that hold every one of `users`' top n, and a bound for the rest of the catalogue.

        Per group, its most popular n + (most items any of these users has seen in it): the
        popularity ranking is the same for everyone, only the mix of categories differs. The
        bound is each user's score of the first item left out of each group (no item left out
        scores more, by the order above); `top_n` scores the whole catalogue for a user whose
        n-th candidate does not beat it.
        """
        assert self._group is not None and self._order is not None
        assert self._group_start is not None
        sizes = np.diff(self._group_start)
        most_seen = np.zeros(len(sizes), dtype=np.int64)
        if seen is not None and seen.nnz:
            rows = np.repeat(np.arange(seen.shape[0]), np.diff(seen.indptr))
            per_user = sp.csr_matrix((np.ones(seen.nnz, dtype=np.int64),
                                      (rows, self._group[seen.indices])),
                                     shape=(seen.shape[0], len(sizes)))
            most_seen = per_user.max(axis=0).toarray().ravel()
        keep = np.minimum(sizes, n + most_seen)
        starts = self._group_start[:-1]
        taken = np.concatenate([self._order[a:a + k] for a, k in zip(starts, keep, strict=True)])
        left_out = self._order[(starts + keep)[keep < sizes]]
        bound = np.full(len(users), -np.inf, dtype=np.float32)
        if len(left_out):
            bound = self.score_columns(users, np.sort(left_out)).max(axis=1)
        return np.sort(taken), bound

    def score_columns(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """`score_block(users)[:, items]`, the same bits, for a few columns."""
        return self._scores(np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64))

    def score_block(self, users: np.ndarray) -> np.ndarray:
        """Same global ranking for everyone, tilted towards each user's categories; 0 → -inf."""
        return self._scores(np.asarray(users, dtype=np.int64), None)

    def _scores(self, users: np.ndarray, items: np.ndarray | None) -> np.ndarray:
        """Scores of `items` (None: every item). Each entry is its own few products, the same
        bits whichever columns are asked for: within a category's column only two terms are
        not 0 (the user's share × the item's, then the global term), summed in that order."""
        assert self._global is not None
        glob = self._global if items is None else self._global[items]
        width = len(glob)
        if self._cats is None:
            scores = block_array((len(users), width)) if items is None else \
                np.empty((len(users), width), dtype=np.float32)
            scores[...] = glob
        else:
            assert self._prefs is not None and self._within is not None
            pref = self._prefs[users].toarray()
            # No category preference (no history): plain global popularity, the cold fallback.
            empty = pref.sum(axis=1) == 0
            if self._mix is not None:
                coef = np.zeros((len(users), self._mix.shape[0]), dtype=np.float32)
                coef[:, : pref.shape[1]] = pref
                coef[~empty, -2] = 1.0
                coef[empty, -1] = 1.0
                if items is None:
                    scores, mix = block_array((len(users), width)), self._mix
                else:
                    scores = np.empty((len(users), width), dtype=np.float32)
                    mix = np.ascontiguousarray(self._mix[:, items])

                def chunk(a: int, b: int) -> None:
                    np.matmul(coef[a:b], mix, out=scores[a:b])
                    np.copyto(scores[a:b], np.float32(-np.inf), where=scores[a:b] <= 0)

                parallel_chunks(chunk, len(users))
                return scores
            scores = self._gather_scores(pref, empty, items)
        np.copyto(scores, np.float32(-np.inf), where=scores <= 0)
        return scores

    def _gather_scores(
        self, pref: np.ndarray, empty: np.ndarray, items: np.ndarray | None
    ) -> np.ndarray:
        """Many categories: look up each item's category share per user (block-sized passes)."""
        assert self._global is not None and self._within is not None and self._cats is not None
        cats, within, glob = self._cats, self._within, self._global
        if items is not None:
            cats, within, glob = cats[items], within[items], glob[items]
        # Column n_cats is an all-zero "no category" slot for items with code -1.
        pref = np.hstack([pref, np.zeros((len(pref), 1), dtype=np.float32)])
        blend = np.float32(self.params.category_blend)
        scores = pref[:, cats]
        scores *= blend
        scores *= within
        scores += (1 - blend) * glob
        scores[empty] = glob
        return scores.astype(np.float32, copy=False)


def make_popularity(params: PopularityParams | None = None) -> Modality:
    """Factory used by the flow: an unfitted popularity modality."""
    return PopularityModality(params or PopularityParams())
