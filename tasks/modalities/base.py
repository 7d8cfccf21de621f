"""The one small interface every modality follows.

A modality is fitted on a `Dataset` and then scores blocks of users against the whole catalog.
`tasks.kernels.blocks.top_n`
turns those dense blocks into top-N candidate lists, so a modality never
has to think about memory, seen-item exclusion or ranking.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from tasks.data.dataset import Dataset


@runtime_checkable
class Modality(Protocol):
    """Fit once, then score any block of users.

    `score_block` returns a dense float32 array of shape (len(users), n_items). Entries the modality
    has no evidence for are `-inf`; a row of all `-inf` means "cannot serve this user".
    """

    name: str

    def fit(self, data: Dataset) -> Modality: ...

    def score_block(self, users: np.ndarray) -> np.ndarray: ...
