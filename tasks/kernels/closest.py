"""For each (user, item) pair: the user's history item whose vector is closest, compiled.

The reasons ("because you liked X") compare a recommended item with every item of the user's
history. Gathering both vectors per pair and history item first (NumPy) held pairs × history ×
dimensions floats at once and ran on one core; here each pair is a loop over its history with
the dot product in registers, and chunks of pairs run on the shared pool.
"""

from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp


@numba.njit(nogil=True, cache=True)
def _closest(
    indptr: np.ndarray, indices: np.ndarray, vectors: np.ndarray, users: np.ndarray,
    items: np.ndarray, floor: float, out: np.ndarray, start: int, stop: int,
) -> None:  # pragma: no cover - compiled; covered through `closest_history_items`
    dims = vectors.shape[1]
    for p in range(start, stop):
        target = vectors[items[p]]
        best, best_sim = -1, floor
        for n in range(indptr[users[p]], indptr[users[p] + 1]):
            j = indices[n]
            other = vectors[j]
            s = 0.0  # float64: the sum of float32 products, in one order
            for d in range(dims):
                s += target[d] * other[d]
            # the most similar; equally similar: the smaller item index
            if s > best_sim or (best >= 0 and s == best_sim and j < best):
                best, best_sim = j, s
        out[p] = best


def closest_history_items(
    history: sp.csr_matrix, vectors: np.ndarray, users: np.ndarray, items: np.ndarray,
    floor: float,
) -> np.ndarray:
    """Per pair, the item of `history[user]` whose row of `vectors` has the largest dot product
    with the pair's item's row, above `floor`; -1 when none is. Ties: the smaller item index."""
    from tasks.kernels.blocks import parallel_chunks

    history = sp.csr_matrix(history)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    users = np.ascontiguousarray(users, dtype=np.int64)
    items = np.ascontiguousarray(items, dtype=np.int64)
    out = np.full(len(users), -1, dtype=np.int64)
    indptr, indices = history.indptr.astype(np.int64), history.indices.astype(np.int64)

    def chunk(a: int, b: int) -> None:
        _closest(indptr, indices, vectors, users, items, float(floor), out, a, b)

    parallel_chunks(chunk, len(users), chunk=4096)
    return out
