"""The per-user half of a run: users cut into shards, each scored, fused, explained and staged.

Fitting happens once (`tasks.recommend.fit_for_shards`); a shard then needs only the fitted
modalities, the fusion plan and the dataset. In-process they are passed as they are; on a Dask
cluster they are pickled once to a file in the run's staging folder (`save_work`) and each worker
process reads that file once (`load_work`, cached by path), so a shard task's arguments are a
path and two user indexes, never the models.
"""

from __future__ import annotations

import logging
import os
import pickle
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from tasks.candidates import CandidateSet, FittedModalities, score_candidates, write_published
from tasks.config import RunParameters
from tasks.data.dataset import Dataset
from tasks.fusion.plan import FusionPlan, apply_plan
from tasks.outputs.reasons import AudienceVectors, audience_vectors, explain
from tasks.progress import expected_finish

log = logging.getLogger(__name__)

#: The pickled fit in a run's staging folder, read by every worker.
WORK_FILE = "shard-work.pickle"
#: Set to a shard index and the process scoring that shard SIGKILLs itself (tests: a worker lost
#: mid-run, like the OOM killer would do it). `INDEX:MARKER` kills once: the first process to
#: create the file MARKER (on storage every worker shares) dies, the shard's retry does not.
#: Unset, nothing happens.
KILL_SHARD_ENV = "RECFUSION_KILL_SHARD"


def _kill_point(index: int) -> None:
    shard, _, marker = os.environ.get(KILL_SHARD_ENV, "").partition(":")
    if shard != str(index):
        return
    if marker:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return  # killed once already: this is the retry
    os.kill(os.getpid(), 9)  # SIGKILL: no cleanup, no exception, as a lost worker


@dataclass
class ShardWork:
    """Everything a shard needs, fitted once per run."""

    fitted: FittedModalities
    plan: FusionPlan
    params: RunParameters
    _audiences: AudienceVectors | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def data(self) -> Dataset:
        return self.fitted.data

    def audiences(self) -> AudienceVectors:
        """The reasons' item vectors, computed on first need, once per process."""
        with self._lock:
            if self._audiences is None:
                self._audiences = audience_vectors(self.data)
            return self._audiences

    def __getstate__(self) -> dict[str, object]:
        # Neither is shipped: a lock cannot be pickled, and each worker computes the vectors
        # once only if a shard needs them (they would be items × 256 floats in the file).
        return {"fitted": self.fitted, "plan": self.plan, "params": self.params}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state, _audiences=None, _lock=threading.Lock())


@dataclass
class ShardResult:
    """What a shard hands back: its fused, explained lists and candidates, or where they went."""

    index: int
    lo: int
    hi: int
    fused: pl.DataFrame  # LIST_COLUMNS; empty when staged to `list_file`
    candidates: CandidateSet  # empty frame when staged to `candidate_file`
    candidate_file: Path | None  # as published (string ids: `write_published`)
    n_candidates: int
    seconds: float
    host: str = ""
    list_file: Path | None = None

    def lists(self) -> pl.DataFrame:
        return pl.read_parquet(self.list_file) if self.list_file is not None else self.fused


#: A shard's explained list, as published (ids as codes; the segment is joined at assembly).
LIST_COLUMNS = ("user_idx", "item_idx", "score", "rank", "reason", "contributions")


def user_shards(n_users: int, size: int) -> list[tuple[int, int]]:
    """[lo, hi) user index ranges of at most `size` users: `fusion_block_users` blocks."""
    return [(lo, min(lo + size, n_users)) for lo in range(0, n_users, size)]


def candidate_file(staging: Path, index: int) -> Path:
    return staging / f"candidates-{index:05d}.parquet"


def list_file(staging: Path, index: int) -> Path:
    return staging / f"lists-{index:05d}.parquet"


def run_shard(
    work: ShardWork, index: int, lo: int, hi: int, staging: Path | None = None
) -> ShardResult:
    """Score, fuse and explain users [lo, hi); with `staging`, their candidates (as published)
    and lists go to Parquet: held until every shard is done, the lists alone grew the process
    by 0.2 GB at 100k users (10 rows per user with their contributions), on top of the fitted
    sources."""
    _kill_point(index)
    start = time.perf_counter()
    params = work.params
    users = np.arange(lo, hi)
    cands = score_candidates(work.fitted, params, users)
    fused = apply_plan(cands.candidates, work.plan, params.top_k, work.data)
    # Only what is published goes back: the per-source contributions and top source were the
    # reasons' inputs, a quarter of a shard's list frame (0.6 GB of the driver's at 1M users).
    fused = explain(fused, work.data, work.audiences).select(LIST_COLUMNS)
    n = cands.candidates.height
    path = lists = None
    if staging is not None:
        path, lists = candidate_file(staging, index), list_file(staging, index)
        write_published(cands.candidates, work.data.user_ids, work.data.item_ids, path)
        cands.candidates = cands.candidates.clear()
        fused.write_parquet(lists)
        fused = fused.clear()
    return ShardResult(index, lo, hi, fused, cands, path, n, time.perf_counter() - start,
                       os.uname().nodename, lists)


def save_work(work: ShardWork, staging: Path) -> tuple[Path, int]:
    """The fit pickled once for the workers: (file, bytes)."""
    path = staging / WORK_FILE
    with path.open("wb") as out:
        pickle.dump(work, out, protocol=pickle.HIGHEST_PROTOCOL)
    return path, path.stat().st_size


_loaded: dict[str, ShardWork] = {}
_loading = threading.Lock()


def load_work(path: str) -> ShardWork:
    """The run's fit in this process, read from `path` on first use only.

    A worker keeps one run's fit at most: a long-lived cluster serving night after night must
    not pile every night's models up in memory (`forget_work` drops it when the run is done).
    """
    with _loading:
        if path not in _loaded:
            _loaded.clear()
            with open(path, "rb") as src:
                _loaded[path] = pickle.load(src)
            log.info("loaded the run's fit from %s in process %d", path, os.getpid())
        return _loaded[path]


def forget_work() -> int:
    """Drop this process's cached fit (run on every worker once a run's shards are done, so
    workers idle through publishing, or waiting for tomorrow's run, without the models)."""
    with _loading:
        n = len(_loaded)
        _loaded.clear()
    return n


@dataclass
class ShardProgress:
    """Users done so far, the rate and the expected finish: the log line after each shard."""

    total_users: int
    n_shards: int
    started: float = field(default_factory=time.perf_counter)
    users_done: int = 0
    shards_done: int = 0

    def begin(self) -> None:
        """Count the rate from now (after the fit, which is no shard's)."""
        self.started = time.perf_counter()

    def add(self, result: ShardResult) -> str:
        self.users_done += result.hi - result.lo
        self.shards_done += 1
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        where = f" on {result.host}" if result.host else ""
        return (
            f"recommend: shard {result.index + 1}/{self.n_shards} (users {result.lo}-"
            f"{result.hi - 1}{where}, {result.seconds:.1f}s): {self.users_done:,}/"
            f"{self.total_users:,} users done, {self.users_done / elapsed:,.0f} users/s, "
            f"{expected_finish(self.users_done, self.total_users, elapsed)}"
        )

    @property
    def fraction(self) -> float:
        return self.users_done / self.total_users if self.total_users else 1.0
