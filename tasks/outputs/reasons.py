"""A short human-readable reason per recommendation, from its strongest modality's evidence."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl
import scipy.sparse as sp

from tasks.data.dataset import Dataset
from tasks.data.segments import EXACT_AUDIENCE_USERS, projected_audiences, unit_audiences
from tasks.kernels.closest import closest_history_items
from tasks.modalities.registry import FALLBACK_REASON, REGISTRY

REASON_DIMENSIONS = 256

def friends_who_have(data: Dataset, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """For each (user, item) pair: how many of the user's friends interacted with the item.

    Row u of (friends @ seen) lists what u's friends have; only the pair's own item is read, so
    the cost is the friends' histories, not the item's audience (millions for a hit).
    """
    if data.social is None or len(users) == 0:
        return np.zeros(len(users), dtype=np.int64)
    friends = sp.csr_matrix(data.social[users].sign(), dtype=np.float32)  # pairs × users
    reach = sp.csr_matrix(friends @ data.seen())  # pairs × items
    return np.asarray(reach[np.arange(len(users)), items]).ravel().astype(np.int64)


#: Items' audience vectors and the cosine below which two items count as unrelated.
AudienceVectors = tuple[sp.csr_matrix | np.ndarray, float]


def audience_vectors(data: Dataset) -> AudienceVectors:
    """What `_closest_history_item` compares items by; computed once per run and shared by its
    user shards (projecting the audiences costs a pass over every interaction)."""
    if data.n_users <= EXACT_AUDIENCE_USERS:
        return unit_audiences(data), 0.0
    return projected_audiences(data, REASON_DIMENSIONS), 1.5 / np.sqrt(REASON_DIMENSIONS)


def _closest_history_item(
    data: Dataset,
    users: np.ndarray,
    items: np.ndarray,
    block: int = 4096,
    audiences: Callable[[], AudienceVectors] | None = None,
) -> np.ndarray:
    """For each pair: the user's history item most similar to the recommended one, or -1.

    Similarity = cosine of the two items' audiences (who interacted with them). Exact up to
    `EXACT_AUDIENCE_USERS` users; above, on seeded projections of the audiences
    (`tasks.data.segments`), where a cosine below the projection's noise level counts as none.
    Works in blocks of pairs so memory stays bounded.
    """
    seen = data.seen()
    vectors, floor = audiences() if audiences else audience_vectors(data)
    if isinstance(vectors, np.ndarray):
        return closest_history_items(seen, vectors, users, items, floor)
    best = np.full(len(users), -1, dtype=np.int64)
    for start in range(0, len(users), block):
        u, i = users[start : start + block], items[start : start + block]
        history = seen[u]
        rows = np.repeat(np.arange(len(u)), np.diff(history.indptr))
        hist_items = history.indices.astype(np.int64)
        sims = np.asarray(vectors[i[rows]].multiply(vectors[hist_items]).sum(axis=1)).ravel()
        keep = sims > floor
        rows, hist_items, sims = rows[keep], hist_items[keep], sims[keep]
        if not len(rows):
            continue
        order = np.lexsort((hist_items, -sims, rows))  # best first; ties → smaller item index
        first_rows, first_pos = np.unique(rows[order], return_index=True)
        best[start + first_rows] = hist_items[order][first_pos]
    return best


def explain(
    fused: pl.DataFrame, data: Dataset, audiences: Callable[[], AudienceVectors] | None = None
) -> pl.DataFrame:
    """Add `reason`, `top_modality` and a JSON `contributions` column to a fused list.

    Each row depends on its own user and item only, so a list explained a block of users at a
    time is the list explained whole; `audiences` (returning `audience_vectors`, computed once
    and kept) saves recomputing them per block.
    """
    contrib_cols = [c for c in fused.columns if c.startswith("contrib_")]
    if not contrib_cols or fused.height == 0:
        return fused.with_columns(
            pl.lit("popular right now").alias("reason"), pl.lit("{}").alias("contributions")
        )
    names = [c.removeprefix("contrib_") for c in contrib_cols]
    values = fused.select(contrib_cols).to_numpy()
    top = np.array(names)[np.argmax(values, axis=1)]
    users = fused["user_idx"].to_numpy().astype(np.int64)
    items = fused["item_idx"].to_numpy().astype(np.int64)
    generic = {m: spec.reason for m, spec in REGISTRY.items()}
    reason = np.array([generic.get(t, FALLBACK_REASON) for t in top], dtype=object)

    friends = [m for m, spec in REGISTRY.items() if spec.friends_reason]
    social_rows = np.flatnonzero(np.isin(top, friends))
    if social_rows.size:
        n = friends_who_have(data, users[social_rows], items[social_rows])
        reason[social_rows] = np.where(
            n == 1,
            "liked by 1 friend",
            np.char.add(np.char.add("liked by ", n.astype(str)), " friends"),
        )
        reason[social_rows[n == 0]] = "liked by friends of your friends"

    titles = _titles(data)
    for modality, template in ((m, s.because) for m, s in REGISTRY.items() if s.because):
        rows = np.flatnonzero(top == modality)
        if rows.size and titles is not None:
            closest = _closest_history_item(data, users[rows], items[rows],
                                            audiences=audiences)
            ok = closest >= 0
            reason[rows[ok]] = [template.format(titles[i]) for i in closest[ok]]

    total = values.sum(axis=1, keepdims=True)
    shares = np.divide(values, total, out=np.zeros_like(values), where=total > 0)
    contributions = pl.DataFrame(np.round(shares, 4), schema=names).select(
        pl.struct(names).struct.json_encode().alias("contributions")
    )
    return fused.with_columns(
        pl.Series("reason", reason.astype(str)),
        pl.Series("top_modality", top.astype(str)),
        contributions["contributions"],
    )


def _titles(data: Dataset) -> np.ndarray | None:
    if data.items is None or "title" not in data.items.columns:
        return None
    titles = data.items.sort("item_idx")["title"].fill_null(pl.col("item_id") if False else "")
    ids = data.item_ids.astype(str)
    out = np.where(titles.to_numpy() == "", ids, titles.to_numpy()).astype(object)
    return out
