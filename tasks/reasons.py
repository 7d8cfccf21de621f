"""A short human-readable reason per recommendation, from its strongest modality's evidence."""

from __future__ import annotations

import numpy as np
import polars as pl
import scipy.sparse as sp

from tasks.dataset import Dataset

GENERIC = {
    "behavior": "people with similar taste chose it",
    "content": "similar to items you interacted with",
    "social": "popular among your friends",
    "popularity": "popular right now",
    "hybrid_features": "similar to items you interacted with",
    "hybrid_samples": "people like you and your friends chose it",
}


def friends_who_have(data: Dataset, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """For each (user, item) pair: how many of the user's friends interacted with the item."""
    if data.social is None or len(users) == 0:
        return np.zeros(len(users), dtype=np.int64)
    friends = data.social[users].sign()  # pairs × users
    holders = sp.csr_matrix(data.seen()[:, items].T)  # pairs × users
    return np.asarray(friends.multiply(holders).sum(axis=1)).ravel().astype(np.int64)


def _closest_history_item(
    data: Dataset, users: np.ndarray, items: np.ndarray, block: int = 4096
) -> np.ndarray:
    """For each pair: the user's history item most co-consumed with the recommended item.

    Works in blocks of pairs so the pairs × items co-occurrence never exists all at once.
    """
    seen = data.seen()
    item_users = sp.csr_matrix(seen.T)
    # Cosine-style: divide by the history item's popularity so a hit everyone has doesn't win.
    inv_sqrt_pop = 1.0 / np.sqrt(np.maximum(np.asarray(seen.sum(axis=0)).ravel(), 1.0))
    seen_scaled = sp.csr_matrix(seen @ sp.diags(inv_sqrt_pop))
    best = np.full(len(users), -1, dtype=np.int64)
    for start in range(0, len(users), block):
        u, i = users[start : start + block], items[start : start + block]
        co = sp.csr_matrix((item_users[i] @ seen_scaled).multiply(seen[u]))  # restricted to history
        if not co.nnz:
            continue
        rows = np.repeat(np.arange(co.shape[0]), np.diff(co.indptr))
        order = np.lexsort((-co.data, rows))
        first_rows, first_pos = np.unique(rows[order], return_index=True)
        best[start + first_rows] = co.indices[order][first_pos]
    return best


def explain(fused: pl.DataFrame, data: Dataset) -> pl.DataFrame:
    """Add `reason`, `top_modality` and a JSON `contributions` column to a fused list."""
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
    reason = np.array([GENERIC.get(t, "recommended for you") for t in top], dtype=object)

    social_rows = np.flatnonzero(top == "social")
    if social_rows.size:
        n = friends_who_have(data, users[social_rows], items[social_rows])
        reason[social_rows] = np.where(
            n == 1,
            "liked by 1 friend",
            np.char.add(np.char.add("liked by ", n.astype(str)), " friends"),
        )
        reason[social_rows[n == 0]] = "liked by friends of your friends"

    titles = _titles(data)
    for modality, template in (
        ("behavior", "because you liked {}"),
        ("hybrid_features", "because you liked {}"),
        ("hybrid_samples", "because you liked {}"),
        ("content", "similar to {}"),
    ):
        rows = np.flatnonzero(top == modality)
        if rows.size and titles is not None:
            closest = _closest_history_item(data, users[rows], items[rows])
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
