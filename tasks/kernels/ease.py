"""EASE's last step in place, compiled: from the upper triangle of P = (G + λI)⁻¹ to B.

LAPACK's potri leaves P's upper triangle in the factor's memory. Mirroring it with NumPy
(`triu`, `p += p.T`) held four m×m matrices at once (m = 6,000: 0.6 GB); this writes B into that
same memory, so the whole closed form needs the Gram's one m×m buffer.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def _weights_from_upper(p: np.ndarray) -> None:  # pragma: no cover - compiled
    n = p.shape[0]
    diag = np.empty(n, dtype=p.dtype)
    for j in range(n):
        diag[j] = p[j, j]
    for j in range(n):
        for i in range(j):
            v = p[i, j]  # P_ij = P_ji
            p[i, j] = v / -diag[i]  # (Bᵀ)_ij = B_ji = −P_ji / P_ii
            p[j, i] = v / -diag[j]  # (Bᵀ)_ji = B_ij = −P_ij / P_jj
        p[j, j] = 0.0


def weights_from_inverse(upper: np.ndarray) -> np.ndarray:
    """B = I − P·diag(P)⁻¹ (zero diagonal) from `upper`, an F-ordered m×m array whose upper
    triangle holds P, overwritten; returned as a C-ordered view of that memory."""
    _weights_from_upper(upper)  # writes Bᵀ in F order: the same bytes are B in C order
    return upper.T
