"""Shared fixtures: one Prefect test server per session, small real sources, real DuckDB files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

SHARED = Path(__file__).resolve().parents[2] / "shared"
LASTFM = SHARED / "data" / "lastfm-2k"
LASTFM_SPLIT = SHARED / "data" / "lastfm-2k-split"


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=300):
        yield


@pytest.fixture(scope="session")
def small_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic source in the data contract (all four tables)."""
    from tasks.sources.demo import generate_demo_source

    out = tmp_path_factory.mktemp("small_source")
    generate_demo_source(out, users=300, items=200, events=8000, seed=3)
    return out


@pytest.fixture(scope="session")
def api_url(prefect_harness: None) -> str:
    """The test server's URL, for subprocesses that should use it rather than start their own."""
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value())


@pytest.fixture(scope="session")
def published_db(
    prefect_harness: None, small_source: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A database produced by one real nightly run (with evaluation) on the small source."""
    from flows.nightly import nightly
    from tasks.config import RunParameters

    db = tmp_path_factory.mktemp("published") / "rf.duckdb"
    state = nightly(params=RunParameters(source=str(small_source), db=str(db)), return_state=True)
    assert state.is_completed(), state.message
    return db


#: A test that needs one of these starts (or shares) a Prefect server and runs real flows.
SLOW_FIXTURES = {"prefect_harness", "published_db", "api_url"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`slow`: real flow runs, servers or subprocesses. `pytest -m "not slow"` = unit suite."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
