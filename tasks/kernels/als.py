"""Conjugate-gradient half-sweep of implicit-feedback ALS, compiled with Numba.

Each row u solves (YᵀY + reg·I + Σ_i (c_ui − 1) y_i y_iᵀ) x_u = Σ_i c_ui y_i with a few CG steps
from its current value (Takács et al. 2011; the solver `implicit` uses). The work is a
sampled product (y_i · p for the row's stored items) fused with a scaled sum of the same y_i:
NumPy can only express that through nnz × factors temporaries, which made the fit memory-bound
(78 s and 2.7 GB at 5M interactions × 128 factors). Compiled per row it stays in cache.

Rows are split into contiguous, equally loaded ranges, each run by a `nogil` kernel on the shared
thread pool of `tasks.kernels.blocks`: no Numba threading layer, so it is safe under Prefect's
thread pool and in forked workers. Each row's y_i are first copied next to each other, so the
1 + steps passes over them run from L1/L2 (4.5 s instead of 5.4 s at 64 factors, 100k users).
"""

from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp

from tasks.kernels.blocks import parallel_chunks

PACKED_ROWS = 4096  # longer rows gather into a fresh array instead of the reused scratch


@numba.njit(nogil=True, fastmath=True, cache=True)
def _cg_rows(
    indptr: np.ndarray, indices: np.ndarray, conf: np.ndarray, x: np.ndarray, y: np.ndarray,
    yty: np.ndarray, steps: int, start: int, stop: int,
) -> None:  # pragma: no cover - compiled; covered through `cg_half_sweep`
    f = x.shape[1]
    one = np.float32(1.0)
    r = np.empty(f, dtype=np.float32)
    p = np.empty(f, dtype=np.float32)
    ap = np.empty(f, dtype=np.float32)
    scratch = np.empty((PACKED_ROWS, f), dtype=np.float32)
    for u in range(start, stop):
        lo, hi = indptr[u], indptr[u + 1]
        n = hi - lo
        if n == 0:  # no interactions: the exact solution is 0
            for k in range(f):
                x[u, k] = 0.0
            continue
        # The row's y_i are read 1 + steps times: copy them next to each other once, so the
        # CG passes run from L1/L2 instead of gathering from memory each time.
        if n <= PACKED_ROWS:
            block = scratch
            for t in range(n):
                i = indices[lo + t]
                for k in range(f):
                    block[t, k] = y[i, k]
        else:
            block = y[indices[lo:hi]]
        # r = b − A x, with b = Σ c y_i and A x = YᵀY x + Σ (c − 1)(y_i·x) y_i
        for k in range(f):
            acc = np.float32(0.0)
            for j in range(f):
                acc += yty[k, j] * x[u, j]
            r[k] = -acc
        for t in range(n):
            c = conf[lo + t]
            d = np.float32(0.0)
            for k in range(f):
                d += block[t, k] * x[u, k]
            w = c - (c - one) * d
            for k in range(f):
                r[k] += w * block[t, k]
        rs = np.float32(0.0)
        for k in range(f):
            p[k] = r[k]
            rs += r[k] * r[k]
        for _ in range(steps):
            if rs <= 1e-20:
                break
            for k in range(f):
                acc = np.float32(0.0)
                for j in range(f):
                    acc += yty[k, j] * p[j]
                ap[k] = acc
            for t in range(n):
                c = conf[lo + t]
                d = np.float32(0.0)
                for k in range(f):
                    d += block[t, k] * p[k]
                w = (c - one) * d
                for k in range(f):
                    ap[k] += w * block[t, k]
            pap = np.float32(0.0)
            for k in range(f):
                pap += p[k] * ap[k]
            if pap <= 0.0:
                break
            alpha = rs / pap
            rs_new = np.float32(0.0)
            for k in range(f):
                x[u, k] += alpha * p[k]
                r[k] -= alpha * ap[k]
                rs_new += r[k] * r[k]
            beta = rs_new / rs
            for k in range(f):
                p[k] = r[k] + beta * p[k]
            rs = rs_new


def _balanced_ranges(indptr: np.ndarray, parts: int) -> list[tuple[int, int]]:
    """Contiguous row ranges with about equal work (stored entries + a per-row constant)."""
    n = len(indptr) - 1
    work = indptr.astype(np.float64) + np.arange(n + 1) * 8.0  # yty matvecs cost ~ 8 entries
    cuts = np.searchsorted(work, work[-1] * np.arange(1, parts) / parts)
    bounds = np.unique(np.concatenate([[0], np.clip(cuts, 0, n), [n]]))
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def cg_half_sweep(
    x: np.ndarray, conf: sp.csr_matrix, y: np.ndarray, reg: float, steps: int, parts: int = 16,
) -> None:
    """Update every row of `x` (float32, C order) in place; `conf` rows align with `x`'s rows.

    `conf.data` holds the confidences c = 1 + alpha·r of the stored entries. Rows are cut into
    `parts` equally loaded ranges for the shared thread pool (more parts than cores: a range
    that lands on a busy core does not hold the others up).
    """
    f = y.shape[1]
    yty = (y.T.astype(np.float64) @ y + reg * np.eye(f)).astype(np.float32)
    indptr = conf.indptr.astype(np.int64)
    indices = conf.indices.astype(np.int32)
    data = conf.data.astype(np.float32)
    ranges = _balanced_ranges(indptr, parts)

    def run(a: int, b: int) -> None:
        for lo, hi in ranges[a:b]:
            _cg_rows(indptr, indices, data, x, y, yty, steps, lo, hi)

    parallel_chunks(run, len(ranges), chunk=1)
