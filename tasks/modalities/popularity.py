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

    def fit(self, data: Dataset) -> PopularityModality:
        """Count decayed distinct users per item and, with categories, each user's genre shares."""
        votes = history_weights(data, self.params.half_life_days, "binary")
        pop = np.asarray(votes.sum(axis=0)).ravel().astype(np.float64)
        top = pop.max(initial=0.0)
        self._global = (pop / top if top > 0 else pop).astype(np.float32)
        self._cats = None
        cats = _item_categories(data, self.params) if self.params.category_blend > 0 else None
        if cats is None or not (cats >= 0).any() or top == 0:
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
        return self

    def score_block(self, users: np.ndarray) -> np.ndarray:
        """Same global ranking for everyone, tilted towards each user's categories; 0 → -inf."""
        assert self._global is not None
        users = np.asarray(users, dtype=np.int64)
        if self._cats is None:
            scores = block_array((len(users), len(self._global)))
            scores[...] = self._global
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
                scores = block_array((len(users), self._mix.shape[1]))
                mix = self._mix

                def chunk(a: int, b: int) -> None:
                    np.matmul(coef[a:b], mix, out=scores[a:b])
                    np.copyto(scores[a:b], np.float32(-np.inf), where=scores[a:b] <= 0)

                parallel_chunks(chunk, len(users))
                return scores
            scores = self._gather_scores(pref, empty)
        np.copyto(scores, np.float32(-np.inf), where=scores <= 0)
        return scores

    def _gather_scores(self, pref: np.ndarray, empty: np.ndarray) -> np.ndarray:
        """Many categories: look up each item's category share per user (block-sized passes)."""
        assert self._global is not None and self._within is not None and self._cats is not None
        # Column n_cats is an all-zero "no category" slot for items with code -1.
        pref = np.hstack([pref, np.zeros((len(pref), 1), dtype=np.float32)])
        blend = np.float32(self.params.category_blend)
        scores = pref[:, self._cats]
        scores *= blend
        scores *= self._within
        scores += (1 - blend) * self._global
        scores[empty] = self._global
        return scores.astype(np.float32, copy=False)


def make_popularity(params: PopularityParams | None = None) -> Modality:
    """Factory used by the flow: an unfitted popularity modality."""
    return PopularityModality(params or PopularityParams())
