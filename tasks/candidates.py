"""Fit each enabled modality on a snapshot and collect its top-N candidates per user."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np
import polars as pl

from tasks.config import RunParameters
from tasks.data.dataset import Dataset
from tasks.kernels.blocks import CANDIDATE_SCHEMA, side_by_side, top_n
from tasks.memory import release_freed_memory
from tasks.modalities.base import Modality
from tasks.modalities.content import MissingModalityInput
from tasks.modalities.registry import REGISTRY, build_modality

log = logging.getLogger(__name__)


@dataclass
class CandidateSet:
    """All modalities' candidates in one long frame, plus what was skipped and how long it took."""

    candidates: pl.DataFrame  # modality, user_idx, item_idx, score, rank
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def modalities(self) -> list[str]:
        return sorted(self.candidates["modality"].unique().to_list())


@dataclass
class FittedModalities:
    """The modalities fitted on one snapshot, ready to score any set of users."""

    data: Dataset
    models: dict[str, Modality]
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


#: A run's candidates as published (`candidates` view; sql/warehouse/candidates_empty.sql).
PUBLISHED_SCHEMA = pl.Schema({"modality": pl.String, "user_id": pl.String, "item_id": pl.String,
                              "score": pl.Float32, "rank": pl.Int32})


def write_published(
    candidates: pl.DataFrame, user_ids: np.ndarray, item_ids: np.ndarray, path: Path
) -> None:
    """Integer-coded candidates written as published, with their string ids, to `path`.

    Each shard writes its own, so publishing only links the files in: joining the ids on for
    every candidate at once took 10 s of one process at 100k users (and would take minutes at
    1M). Streamed (0.07 GB, not 0.14 GB of id strings at 3M rows) and written under another
    name first: `path` is either the whole file or absent, and a file already published (a
    hard link to it) is never rewritten in place.
    """
    # Only the ids of the users these candidates hold (a shard's range): a lookup of every
    # user's id cost each of a 1M-user night's 200 shards ~0.3 s.
    codes = candidates["user_idx"].to_numpy()
    lo, hi = (int(codes.min()), int(codes.max()) + 1) if len(codes) else (0, 0)
    users = pl.LazyFrame({"user_idx": np.arange(lo, hi, dtype=np.int32),
                          "user_id": pl.Series(user_ids[lo:hi], dtype=pl.String)})
    items = pl.LazyFrame({"item_idx": np.arange(len(item_ids), dtype=np.int32),
                          "item_id": pl.Series(item_ids, dtype=pl.String)})
    partial = path.with_name(f".partial-{path.name}")
    (
        candidates.lazy()
        .with_columns(pl.col("user_idx", "item_idx").cast(pl.Int32))
        .join(users, on="user_idx", how="left", maintain_order="left")
        .join(items, on="item_idx", how="left", maintain_order="left")
        .select(pl.col(name).cast(dtype) for name, dtype in PUBLISHED_SCHEMA.items())
        .sink_parquet(partial, compression="zstd")
    )
    os.replace(partial, path)


#: Told after each fit and after the scoring (a long step's progress), with what was done.
OnStep = Callable[[str], None]


def fit_modalities(
    data: Dataset, params: RunParameters, modalities: Sequence[str] | None = None,
    on_step: OnStep | None = None,
) -> FittedModalities:
    """Fit every enabled modality; one whose inputs are absent is skipped with a log line.

    Sources are fitted two at a time (`side_by_side`): one source's fit leaves a core idle for
    a good part of it (a one-threaded Cholesky, Python between chunks). Those whose registry
    entry says `fit_alone` (the most memory) come after, by themselves. Each fit depends only
    on `data`, and the models are kept in the parameters' order, so the result is the same.
    """
    names = list(modalities or params.modalities)
    together = [n for n in names if not REGISTRY[n].fit_alone]
    fits = {}
    for name, fitted, seconds in chain(
        side_by_side(lambda name: _fit(name, data, params), together),
        (_fit(name, data, params) for name in names if REGISTRY[name].fit_alone),
    ):
        fits[name] = fitted, seconds
        if on_step is not None:
            on_step(f"fitted {name}")
    # The fits' working sets (0.3–0.8 GB each at 100k users) are gone; give their pages back
    # before the scoring builds its own.
    release_freed_memory()
    out = FittedModalities(data, {})
    for name in names:
        fitted, seconds = fits[name]
        if isinstance(fitted, MissingModalityInput):
            log.info("modality %s skipped: %s", name, fitted)
            out.skipped[name] = str(fitted)
        else:
            out.models[name], out.seconds[name] = fitted, seconds
    return out


def _fit(name: str, data: Dataset, params: RunParameters
         ) -> tuple[str, Modality | MissingModalityInput, float]:
    start = time.perf_counter()
    try:
        model = build_modality(name, params).fit(data)
    except MissingModalityInput as exc:
        return name, exc, 0.0
    return name, model, time.perf_counter() - start


def score_candidates(
    fitted: FittedModalities, params: RunParameters, users: np.ndarray | None = None
) -> CandidateSet:
    """Each fitted modality's top-N unseen items for `users` (default: all), one long frame.

    `seconds` holds the scoring time only; the fit time is `fitted.seconds`.
    """
    data = fitted.data
    users = np.arange(data.n_users) if users is None else users
    seen = data.seen()
    n = max(params.candidates_per_modality, params.top_k)
    out = CandidateSet(pl.DataFrame(), dict(fitted.skipped))
    frames = []
    for name, model in fitted.models.items():
        start = time.perf_counter()
        frame = top_n(model, users, n, seen=seen, block_size=params.block_size)
        frames.append(frame.with_columns(pl.lit(name).alias("modality")))
        out.seconds[name] = time.perf_counter() - start
        log.info(
            "modality %s: %d candidates for %d users in %.1fs",
            name,
            frame.height,
            frame["user_idx"].n_unique(),
            out.seconds[name],
        )
    if frames:
        out.candidates = pl.concat(frames).select(
            "modality", "user_idx", "item_idx", "score", "rank"
        )
    else:
        out.candidates = pl.DataFrame(schema={"modality": pl.String, **CANDIDATE_SCHEMA})
    return out


def generate_candidates(
    data: Dataset,
    params: RunParameters,
    users: np.ndarray | None = None,
    modalities: Sequence[str] | None = None,
    on_step: OnStep | None = None,
) -> CandidateSet:
    """Fit every modality and keep each one's top-N unseen items for `users` (default: all)."""
    fitted = fit_modalities(data, params, modalities, on_step)
    out = score_candidates(fitted, params, users)
    if on_step is not None:
        on_step("scored the candidates")
    out.seconds = {m: fit + out.seconds.get(m, 0.0) for m, fit in fitted.seconds.items()}
    return out
