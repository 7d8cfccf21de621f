"""Items as their audiences: who interacted with them, the space item-to-item cosines live in.

Diversity metrics and "because you liked X" reasons compare items by the overlap of their
audiences. Exactly, an item is a users-long 0/1 vector; with many users, a sum of such vectors
(a list's) is as wide as the union of the audiences, which took 66 s and 7 GB for 13 lists at
100k users. Above `EXACT_AUDIENCE_USERS`, unit audience vectors are therefore projected onto a
few hundred seeded Gaussian directions (Johnson–Lindenstrauss): every cosine is preserved in
expectation, within about ±1/√dims per pair.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp

from tasks.data.dataset import Dataset
from tasks.kernels.blocks import parallel_chunks

EXACT_AUDIENCE_USERS = 4096
_DIRECTION_ROWS = 8192  # users per slice of random directions (bounds their memory)
_ITEM_ROWS = 1024  # items per chunk of a slice's product


def unit_audiences(data: Dataset) -> sp.csr_matrix:
    """items × users, each row the item's 0/1 audience scaled to unit length (0 if none)."""
    audiences = sp.csr_matrix(data.seen().T, dtype=np.float32)
    norms = np.sqrt(np.asarray(audiences.sum(axis=1)).ravel())  # 0/1 rows: ||v||² = Σ v
    inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    return sp.csr_matrix(sp.diags(inv.astype(np.float32)) @ audiences)


def projected_audiences(
    data: Dataset, dims: int, seed: int = 0, items: np.ndarray | None = None
) -> np.ndarray:
    """items × dims: unit audiences projected on `dims` seeded Gaussian directions; with
    `items`, the rows of those items only, each the bits it has among all rows.

    Users are taken `_DIRECTION_ROWS` at a time (their directions' memory stays bounded), in
    order; each slice's product is split by items over the shared pool while the next slice's
    directions are drawn. An item's row is summed over its audience in user order whoever
    computes it, so the vectors are the same bits on any number of threads (tested).
    """
    unit = unit_audiences(data)
    if items is not None:
        unit = unit[np.asarray(items, dtype=np.int64)]
    unit = sp.csc_matrix(unit)
    rng = np.random.default_rng(seed)
    scale = np.float32(1.0 / np.sqrt(dims))
    out = np.zeros((unit.shape[0], dims), dtype=np.float32)
    slices = [(lo, min(lo + _DIRECTION_ROWS, data.n_users))
              for lo in range(0, data.n_users, _DIRECTION_ROWS)]

    def draw(bounds: tuple[int, int]) -> np.ndarray:
        directions = rng.standard_normal((bounds[1] - bounds[0], dims), dtype=np.float32)
        directions *= scale
        return directions

    with ThreadPoolExecutor(1, thread_name_prefix="recfusion-directions") as drawer:
        upcoming = drawer.submit(draw, slices[0]) if slices else None
        for at, (lo, hi) in enumerate(slices):
            assert upcoming is not None
            directions = upcoming.result()
            upcoming = drawer.submit(draw, slices[at + 1]) if at + 1 < len(slices) else None
            part = sp.csr_matrix(unit[:, lo:hi])

            def rows(a: int, b: int, part: sp.csr_matrix = part,
                     directions: np.ndarray = directions) -> None:
                out[a:b] += np.asarray(part[a:b] @ directions)

            parallel_chunks(rows, unit.shape[0], _ITEM_ROWS)
    return out
