"""A linear model's sum over feature columns, compiled: one pass per column, no temporaries.

NumPy's `(x - mean) / scale * coef` made four arrays of the block's length per column (a third
of fusing a shard went there); this does the same operations on each value in the same order,
in float64, so the sum has the same bits.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def _add_standardised(
    z: np.ndarray, x: np.ndarray, mean: float, scale: float, coef: float
) -> None:  # pragma: no cover - compiled; covered through `add_standardised`
    for i in range(z.shape[0]):
        z[i] += (x[i] - mean) / scale * coef


def add_standardised(z: np.ndarray, x: np.ndarray, mean: float, scale: float,
                     coef: float) -> None:
    """z += (x - mean) / scale * coef, in place, element by element in float64."""
    if z.shape != x.shape or z.dtype != np.float64:
        raise ValueError(f"z must be float64 of x's shape {x.shape}, not {z.dtype} {z.shape}")
    _add_standardised(z, np.ascontiguousarray(x), float(mean), float(scale), float(coef))
