"""Top-n per user of a dense score block, in one pass, compiled with Numba.

Each user keeps its n best (score, item) pairs sorted, plus the n-th best score as a threshold.
A scan compares every score with the threshold and, rarely, inserts (about n·ln(items / n)
times per user in random order): one read of the block, no index arrays, no sort. Items are
scanned in increasing order and only a strictly better score displaces a kept one, so ties keep
the smaller item id first. -inf, +inf and NaN are never selected.

Both layouts of `tasks.kernels.blocks.top_n_of_block`: users × items (one row per user) and
items × users (a column per user, from modalities that compute the transposed product).
The kernels release the GIL, so row or column ranges run side by side on the shared pool.
"""

from __future__ import annotations

import numba
import numpy as np

_TILE = 32  # items per tile of `select_columns`


@numba.njit(nogil=True, cache=True, inline="always")
def _insert(vals: np.ndarray, items: np.ndarray, count: int, n: int, v: float,
            item: int) -> int:  # pragma: no cover - compiled
    """Insert (v, item) into the sorted buffer of `count` ≤ n entries; returns the new count."""
    pos = count if count < n else n - 1  # when full, the last (smallest) entry is dropped
    while pos > 0 and vals[pos - 1] < v:
        vals[pos] = vals[pos - 1]
        items[pos] = items[pos - 1]
        pos -= 1
    vals[pos] = v
    items[pos] = item
    return count + 1 if count < n else n


@numba.njit(nogil=True, cache=True)
def select_rows(
    scores: np.ndarray, n: int, vals: np.ndarray, items: np.ndarray, counts: np.ndarray,
    lo: int, hi: int,
) -> None:  # pragma: no cover - compiled; covered through `top_n_of_block`
    """Rows lo..hi of a users × items block → vals/items[row, :counts[row]], best first."""
    inf = np.float32(np.inf)
    for r in range(lo, hi):
        row, v_r, i_r = scores[r], vals[r], items[r]
        count, thresh = 0, -inf
        for j in range(row.shape[0]):
            v = row[j]
            if v > thresh and v < inf:
                count = _insert(v_r, i_r, count, n, v, j)
                if count == n:
                    thresh = v_r[n - 1]
        counts[r] = count


@numba.njit(nogil=True, cache=True)
def select_columns(
    scores_t: np.ndarray, n: int, vals: np.ndarray, items: np.ndarray, counts: np.ndarray,
    lo: int, hi: int,
) -> None:  # pragma: no cover - compiled; covered through `top_n_of_block`
    """Columns lo..hi (users) of an items × users block.

    Rows are contiguous across users, so a tile of `_TILE` items is first reduced to each
    user's maximum (an element-wise max over contiguous rows, vectorised); only users whose
    tile maximum beats their threshold read their tile entries one by one.
    """
    inf = np.float32(np.inf)
    width = hi - lo
    thresh = np.full(width, -inf, dtype=np.float32)
    best = np.empty(width, dtype=np.float32)
    for u in range(lo, hi):
        counts[u] = 0
    for t0 in range(0, scores_t.shape[0], _TILE):
        t1 = min(t0 + _TILE, scores_t.shape[0])
        best[:] = -inf
        for i in range(t0, t1):
            row = scores_t[i, lo:hi]
            for k in range(width):
                v = row[k]
                best[k] = v if v > best[k] else best[k]
        for k in range(width):
            if best[k] <= thresh[k]:
                continue
            u = lo + k
            for i in range(t0, t1):
                v = scores_t[i, u]
                if v > thresh[k] and v < inf:
                    c = _insert(vals[u], items[u], counts[u], n, v, i)
                    counts[u] = c
                    if c == n:
                        thresh[k] = vals[u, n - 1]


@numba.njit(nogil=True, cache=True)
def weighted_dcg(
    planes: np.ndarray, valid: np.ndarray, hits: np.ndarray, weights: np.ndarray,
    discounts: np.ndarray,
) -> np.ndarray:  # pragma: no cover - compiled; covered through `tasks.fusion.weights`
    """DCG@k per user of the weighted sum of feature planes (modalities × users × slots).

    Each slot's score adds the planes in their order (float32); invalid slots never rank.
    A user's top k keep the better score, ties to the smaller slot (slots are item-ordered),
    as `select_rows` does: one pass, no sort, no per-trial arrays of users × slots.
    """
    n_mods, n_users, n_slots = planes.shape
    k = len(discounts)
    out = np.zeros(n_users, dtype=np.float64)
    vals = np.empty(k, dtype=np.float32)
    slots = np.empty(k, dtype=np.int64)
    score = np.empty(n_slots, dtype=np.float32)
    w = weights.astype(np.float32)
    for u in range(n_users):
        score[:] = np.float32(0.0)
        for j in range(n_mods):  # plane by plane: contiguous, vectorised adds in a fixed order
            plane, wj = planes[j, u], w[j]
            for s in range(n_slots):
                score[s] += wj * plane[s]
        count = 0
        for s in range(n_slots):
            v = score[s]
            if valid[u, s] and (count < k or v > vals[k - 1]):
                count = _insert(vals, slots, count, k, v, s)
        gain = 0.0
        for r in range(count):
            gain += hits[u, slots[r]] * discounts[r]
        out[u] = gain
    return out


@numba.njit(nogil=True, cache=True)
def top_k_per_user(
    users: np.ndarray, scores: np.ndarray, k: int,
) -> np.ndarray:  # pragma: no cover - compiled; covered through `tasks.fusion.stacking`
    """Row indexes of each user's k best rows, best first, for rows grouped by user with items
    ascending within a user: the better score first, ties to the earlier row (the smaller item),
    as a sort by (user, score desc, item) then a cut at k would give, without the sort."""
    out = np.empty(len(users), dtype=np.int64)
    vals = np.empty(k, dtype=np.float64)
    rows = np.empty(k, dtype=np.int64)
    n_out, start = 0, 0
    while start < len(users):
        end = start
        while end < len(users) and users[end] == users[start]:
            end += 1
        count = 0
        for r in range(start, end):
            v = scores[r]
            if count < k or v > vals[k - 1]:
                count = _insert(vals, rows, count, k, v, r)
        for j in range(count):
            out[n_out] = rows[j]
            n_out += 1
        start = end
    return out[:n_out]


@numba.njit(nogil=True, cache=True, inline="always")
def _insert_by_item(vals: np.ndarray, items: np.ndarray, count: int, n: int, v: float,
                    item: int) -> int:  # pragma: no cover - compiled
    """`_insert` for items offered in any order: among equal scores the smaller item goes first,
    so the kept list is the one an ascending scan keeps."""
    pos = count if count < n else n - 1
    while pos > 0 and (vals[pos - 1] < v or (vals[pos - 1] == v and items[pos - 1] > item)):
        vals[pos] = vals[pos - 1]
        items[pos] = items[pos - 1]
        pos -= 1
    vals[pos] = v
    items[pos] = item
    return count + 1 if count < n else n


@numba.njit(nogil=True, cache=True)
def select_product_rows(
    l_indptr: np.ndarray, l_indices: np.ndarray, l_data: np.ndarray,
    r_indptr: np.ndarray, r_indices: np.ndarray, r_data: np.ndarray,
    s_indptr: np.ndarray, s_indices: np.ndarray, n_items: int, n: int,
    vals: np.ndarray, items: np.ndarray, counts: np.ndarray,
) -> None:  # pragma: no cover - compiled; covered through `tasks.kernels.blocks.top_n`
    """Top-n per row of the sparse product left @ right, items of `s` (seen) left out.

    An entry no product reached, or whose sum is exactly 0, is no evidence (as
    `tasks.kernels.sparse.product_to_scores` writes -inf there). Each row is summed in the
    order `product_to_scores` sums it, into a scratch row that only the touched items are read
    from and reset in: the cost is the products, not the catalogue's width.
    """
    inf = np.float32(np.inf)
    scratch = np.zeros(n_items, dtype=np.float32)
    mark = np.zeros(n_items, dtype=np.uint8)  # 1: touched, 2: seen
    touched = np.empty(n_items, dtype=np.int64)
    for row in range(l_indptr.shape[0] - 1):
        n_touched = 0
        for p in range(l_indptr[row], l_indptr[row + 1]):
            k, w = l_indices[p], l_data[p]
            for q in range(r_indptr[k], r_indptr[k + 1]):
                j = r_indices[q]
                if mark[j] == 0:
                    mark[j] = 1
                    touched[n_touched] = j
                    n_touched += 1
                scratch[j] += w * r_data[q]
        for p in range(s_indptr[row], s_indptr[row + 1]):
            mark[s_indices[p]] = 2
        v_r, i_r = vals[row], items[row]
        count, thresh, thresh_item = 0, -inf, -1
        for t in range(n_touched):
            j = touched[t]
            v = scratch[j]
            if mark[j] == 1 and v != 0.0 and v < inf and (
                v > thresh or (v == thresh and j < thresh_item)
            ):
                count = _insert_by_item(v_r, i_r, count, n, v, j)
                if count == n:
                    thresh, thresh_item = v_r[n - 1], i_r[n - 1]
            scratch[j] = 0.0
            mark[j] = 0
        for p in range(s_indptr[row], s_indptr[row + 1]):
            mark[s_indices[p]] = 0
        counts[row] = count
