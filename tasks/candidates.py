"""Blocked top-N: the only place where dense user×item scores exist, one block at a time.

Peak memory is block_size × n_items floats regardless of how many users there are.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import scipy.sparse as sp

from tasks.modalities.base import Modality

CANDIDATE_SCHEMA = {
    "user_idx": pl.Int32,
    "item_idx": pl.Int32,
    "score": pl.Float32,
    "rank": pl.Int32,
}


def top_n_of_block(
    scores: np.ndarray, n: int, seen: sp.csr_matrix | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Top-n per row of a dense score block: (row, item, score, rank), -inf entries dropped.

    `seen` (same rows as `scores`) masks items the user already has; it is applied in place.
    """
    n_rows, n_items = scores.shape
    if seen is not None and seen.nnz:
        rows = np.repeat(np.arange(n_rows), np.diff(seen.indptr))
        scores[rows, seen.indices] = -np.inf
    n = min(n, n_items)
    if n == 0 or n_rows == 0:
        empty = np.array([], dtype=np.int64)
        return empty, empty, np.array([], dtype=np.float32), empty
    if n < n_items:
        part = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    else:
        part = np.tile(np.arange(n_items), (n_rows, 1))
    part_scores = np.take_along_axis(scores, part, axis=1)
    # Stable order: score descending, then item index ascending, so ties are deterministic.
    order = np.lexsort((part, -part_scores), axis=1)
    items = np.take_along_axis(part, order, axis=1)
    top_scores = np.take_along_axis(part_scores, order, axis=1)
    ranks = np.broadcast_to(np.arange(1, n + 1), (n_rows, n))
    rows = np.broadcast_to(np.arange(n_rows)[:, None], (n_rows, n))
    keep = np.isfinite(top_scores)
    return rows[keep], items[keep], top_scores[keep].astype(np.float32), ranks[keep]


def top_n(
    model: Modality,
    users: np.ndarray,
    n: int,
    seen: sp.csr_matrix | None = None,
    block_size: int = 2048,
) -> pl.DataFrame:
    """Score `users` in blocks and keep each user's top-n unseen items with finite scores."""
    parts: list[pl.DataFrame] = []
    users = np.asarray(users, dtype=np.int64)
    for start in range(0, len(users), block_size):
        block = users[start : start + block_size]
        scores = np.asarray(model.score_block(block), dtype=np.float32)
        block_seen = seen[block] if seen is not None else None
        rows, items, top_scores, ranks = top_n_of_block(scores, n, block_seen)
        parts.append(
            pl.DataFrame(
                {"user_idx": block[rows], "item_idx": items, "score": top_scores, "rank": ranks},
                schema=CANDIDATE_SCHEMA,
            )
        )
    if not parts:
        return pl.DataFrame(schema=CANDIDATE_SCHEMA)
    return pl.concat(parts)
