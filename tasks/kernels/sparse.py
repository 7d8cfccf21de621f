"""Dense score blocks from sparse products, compiled with Numba.

Content and social scores are sums of sparse rows: a friend's items, an item's rare features.
scipy computes those products holding the GIL, so the thread pool ran them one at a time
(measured: 2 threads slower than 1), and its sparse × sparse kernel emits a sparse result
that is densified anyway. These kernels write straight into the dense block, release the GIL,
and run on the pool side by side.
"""

from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp


@numba.njit(nogil=True, cache=True)
def _product_rows(
    l_indptr: np.ndarray, l_indices: np.ndarray, l_data: np.ndarray,
    r_indptr: np.ndarray, r_indices: np.ndarray, r_data: np.ndarray, out: np.ndarray,
    zero_as_neg_inf: bool,
) -> None:  # pragma: no cover - compiled; covered through `product_to_scores`
    neg_inf = np.float32(-np.inf)
    for row in range(out.shape[0]):
        o = out[row]
        o[:] = 0.0
        for n in range(l_indptr[row], l_indptr[row + 1]):
            k, w = l_indices[n], l_data[n]
            for q in range(r_indptr[k], r_indptr[k + 1]):
                o[r_indices[q]] += w * r_data[q]
        if not zero_as_neg_inf:
            continue
        for j in range(o.shape[0]):
            v = o[j]
            o[j] = neg_inf if v == 0.0 else v


@numba.njit(nogil=True, cache=True)
def _gram_upper_rows(
    l_indptr: np.ndarray, l_indices: np.ndarray, l_data: np.ndarray,
    r_indptr: np.ndarray, r_indices: np.ndarray, r_data: np.ndarray, out: np.ndarray,
    first: int,
) -> None:  # pragma: no cover - compiled; covered through `sparse_gram`
    """Rows `first…` of XᵀX from column j = row on (`r` rows' indices sorted): the upper half."""
    for row in range(out.shape[0]):
        i = first + row
        o = out[row]
        o[i:] = 0.0
        for n in range(l_indptr[i], l_indptr[i + 1]):
            k, w = l_indices[n], l_data[n]
            lo, hi = r_indptr[k], r_indptr[k + 1]
            start = lo + np.searchsorted(r_indices[lo:hi], i)
            for q in range(start, hi):
                o[r_indices[q]] += w * r_data[q]


@numba.njit(nogil=True, cache=True)
def _mirror_upper(out: np.ndarray) -> None:  # pragma: no cover - compiled
    tile = 64  # square tiles: the transposed reads stay in cache
    n = out.shape[0]
    for a in range(0, n, tile):
        for b in range(a, n, tile):
            for i in range(a, min(a + tile, n)):
                for j in range(max(b, i + 1), min(b + tile, n)):
                    out[j, i] = out[i, j]


# Reassociation and FMA contraction vectorise the sums; no "no-infinities" flag, since -inf is
# written here on purpose.
_FAST_FINITE = {"contract", "reassoc", "nsz", "arcp"}


@numba.njit(nogil=True, fastmath=_FAST_FINITE, cache=True)
def _add_product_rows(
    indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, right: np.ndarray,
    out: np.ndarray, start: int, blank_rows: np.ndarray, blank_columns: np.ndarray,
) -> None:  # pragma: no cover - compiled; covered through `add_sparse_dense_product`
    m = out.shape[1]
    neg_inf = -np.inf
    for t in range(out.shape[0]):
        o = out[t]  # 1-D row views: numba vectorises these loops, not 2-D indexing (10x)
        if blank_rows[start + t]:
            o[:] = neg_inf
            continue
        n, hi = indptr[start + t], indptr[start + t + 1]
        while n + 4 <= hi:  # four right rows per pass: one load/store of `o` per 4 products
            r0, r1, r2, r3 = (right[indices[n]], right[indices[n + 1]],
                              right[indices[n + 2]], right[indices[n + 3]])
            w0, w1, w2, w3 = data[n], data[n + 1], data[n + 2], data[n + 3]
            for j in range(m):
                o[j] += (w0 * r0[j] + w1 * r1[j]) + (w2 * r2[j] + w3 * r3[j])
            n += 4
        while n < hi:
            r, w = right[indices[n]], data[n]
            for j in range(m):
                o[j] += w * r[j]
            n += 1
        for j in blank_columns:
            o[j] = neg_inf


def csr32(matrix: sp.spmatrix) -> sp.csr_matrix:
    """CSR float32 view; duplicates and unsorted indices are fine (sums are additive), and it
    must not be mutated: fitted matrices are shared by the pool's threads."""
    return sp.csr_matrix(matrix, dtype=np.float32)


def product_to_scores(
    left: sp.spmatrix, right: sp.spmatrix, out: np.ndarray | None = None
) -> np.ndarray:
    """Dense float32 `left @ right`; entries no product reached (or summing to 0) are -inf.

    `out` (C-ordered rows) receives the block when given. Cost: one scattered add per pair of
    stored entries that meet, with the output row in cache; no sparse intermediate.
    """
    left, right = csr32(left), csr32(right)
    if out is None:
        out = np.empty((left.shape[0], right.shape[1]), dtype=np.float32)
    _product_rows(left.indptr, left.indices, left.data, right.indptr, right.indices,
                  right.data, out, True)
    return out


def sparse_product_dense(left: sp.spmatrix, right: sp.spmatrix) -> np.ndarray:
    """Dense float32 `left @ right` (zeros stay 0), without scipy's sparse intermediate."""
    left, right = csr32(left), csr32(right)
    out = np.empty((left.shape[0], right.shape[1]), dtype=np.float32)
    _product_rows(left.indptr, left.indices, left.data, right.indptr, right.indices,
                  right.data, out, False)
    return out


def add_sparse_dense_product(
    left: sp.csr_matrix, right: np.ndarray, out: np.ndarray, start: int = 0,
    blank_rows: np.ndarray | None = None, blank_columns: np.ndarray | None = None,
) -> None:
    """out += left[start : start + len(out)] @ right, in place (rows of `left` are sparse).

    Then rows whose `blank_rows` flag is set (indexed like `left`) and the `blank_columns` of
    every row become -inf, while the row is still in cache: no evidence there.
    """
    right = np.ascontiguousarray(right, dtype=np.float32)
    rows = np.zeros(left.shape[0], dtype=np.bool_) if blank_rows is None else blank_rows
    columns = np.zeros(0, dtype=np.int64) if blank_columns is None else blank_columns
    _add_product_rows(left.indptr, left.indices, left.data.astype(np.float32, copy=False),
                      right, out, start, rows, columns.astype(np.int64, copy=False))


def sparse_gram(left: sp.spmatrix, right: sp.spmatrix | None = None) -> np.ndarray:
    """Dense float32 `leftᵀ @ right` (default `leftᵀ @ left`) for item×item Gram matrices.

    scipy builds a sparse result and densifies it (single-threaded, ~1 min for 6,000 Yelp items
    pooled with friends' histories); this adds each user's row pairs straight into dense rows,
    on every core. Cost: Σ over users of nnz(left row) × nnz(right row), halved for `leftᵀ @
    left`: only the upper triangle is summed, then mirrored. Entry (i, j) and (j, i) are the
    same products x_ui·x_uj added in the same user order, so the mirror is the bits the full
    sum gives (a test holds it).
    """
    from tasks.kernels.blocks import parallel_chunks

    lt = csr32(sp.csr_matrix(left).T)
    if right is None:
        r = csr32(left)
        if not r.has_sorted_indices:
            r = r.sorted_indices()
        lt = lt.sorted_indices() if not lt.has_sorted_indices else lt  # users in order
        out = np.empty((lt.shape[0], r.shape[1]), dtype=np.float32)

        def upper(a: int, b: int) -> None:
            _gram_upper_rows(lt.indptr, lt.indices, lt.data, r.indptr, r.indices, r.data,
                             out[a:b], a)

        parallel_chunks(upper, lt.shape[0], chunk=128)
        _mirror_upper(out)
        return out
    r = csr32(right)
    out = np.empty((lt.shape[0], r.shape[1]), dtype=np.float32)

    def chunk(a: int, b: int) -> None:
        block = lt[a:b]
        _product_rows(block.indptr, block.indices, block.data, r.indptr, r.indices, r.data,
                      out[a:b], False)

    parallel_chunks(chunk, lt.shape[0], chunk=256)
    return out


def scores_on_columns(
    left: sp.csr_matrix, right: np.ndarray, columns: np.ndarray, out: np.ndarray
) -> np.ndarray:
    """`out[:, columns] = left @ right`, every other entry and every row of `left` without an
    entry -inf (no evidence there): EASE over an item subset, scored for a block of users.

    Chunks of rows run on the shared pool, each in a small buffer that is then written into
    its columns; scipy's product held the GIL on one core and built a full intermediate.
    Each row is one user's own sum, so the bits do not depend on the chunking or threads.
    """
    from tasks.kernels.blocks import parallel_chunks

    left = csr32(left)
    right = np.ascontiguousarray(right, dtype=np.float32)
    columns = np.asarray(columns, dtype=np.int64)
    empty = np.diff(left.indptr) == 0
    every = len(columns) == out.shape[1] and bool(np.all(columns == np.arange(out.shape[1])))

    def chunk(a: int, b: int) -> None:
        if every:
            out[a:b] = 0.0
            add_sparse_dense_product(left, right, out[a:b], a, empty)
            return
        part = np.zeros((b - a, right.shape[1]), dtype=np.float32)
        add_sparse_dense_product(left, right, part, a, empty)
        out[a:b] = -np.inf
        out[a:b, columns] = part

    parallel_chunks(chunk, left.shape[0])
    return out
