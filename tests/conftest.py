"""Fixtures shared by the integration and acceptance tests: a running sandbox and a
runtime pointed at it with settings fast enough for tests."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_timeout

from tests.google_spec import google_conformance  # noqa: F401  (fixture)
from tests.graph_spec import graph_conformance  # noqa: F401  (fixture)
from tests.pg import pg_dsn, pg_fresh_dsn  # noqa: F401  (fixtures)
from worker.clock import ManualClock
from worker.config import Config, parse_config
from worker.runtime import Runtime, open_runtime
from worker.sandbox import Sandbox, SeededUser
from worker.testing import InMemoryStore

REPO = Path(__file__).resolve().parent.parent
LEAVER = "leaver@example.com"

#: how long a test may run on after its timeout before the process is ended
TIMEOUT_GRACE = 10.0
_BACKSTOP = pytest.StashKey[threading.Timer]()


@pytest.hookimpl
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> None:
    """pytest-timeout's signal method, with its thread method behind it.

    SIGALRM fails a test by raising where the main thread is; when that is the event
    loop's own code, asyncio logs the error and the loop runs on, and a test awaiting in
    a loop would never end. So a test still running `TIMEOUT_GRACE` seconds after its
    timeout ends the process, stacks dumped (under xdist: the worker, reported as
    crashed in that test). Returns None: pytest-timeout then sets its own timer."""
    if settings.method == "signal":
        backstop = threading.Timer(
            settings.timeout + TIMEOUT_GRACE, pytest_timeout.timeout_timer, (item, settings)
        )
        backstop.daemon = True
        backstop.start()
        item.stash[_BACKSTOP] = backstop


@pytest.hookimpl
def pytest_timeout_cancel_timer(item: pytest.Item) -> None:
    backstop = item.stash.get(_BACKSTOP, None)
    if backstop is not None:
        backstop.cancel()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "manual_clock: the sandbox and the runtime share the `clock` fixture, a ManualClock "
        "the test moves",
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def _manual_clock(request: pytest.FixtureRequest) -> ManualClock | None:
    """The test's `clock` when it is marked `manual_clock`; else the real clock (None)."""
    if request.node.get_closest_marker("manual_clock") is None:
        return None
    clock = request.getfixturevalue("clock")
    assert isinstance(clock, ManualClock)
    return clock


def fast_settings(data: dict[str, Any]) -> dict[str, Any]:
    """Short timeouts and waits so fault tests take seconds, not minutes."""
    data["worker"] = {
        "lease_seconds": 5,
        "verify_timeout_seconds": 2,
        "verify_interval_seconds": 0.02,
        "requeue_after_seconds": 0.1,
    }
    data["retry"] = {
        "attempts": 8,
        "initial_seconds": 0.01,
        "maximum_seconds": 0.2,
        "give_up_after_seconds": 10,
    }
    for idp in data["idp"].values():
        idp["timeout_seconds"] = 0.5
    data["identity_center"]["timeout_seconds"] = 0.5
    data["identity_center"]["scim"]["timeout_seconds"] = 0.5
    data["playbook_dirs"] = [str(REPO / "playbooks")]
    return data


@pytest.fixture
async def sandbox(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> AsyncIterator[Sandbox]:
    async with Sandbox(clock=_manual_clock(request)) as sb:
        for name, value in sb.environment().items():
            monkeypatch.setenv(name, value)
        yield sb


@pytest.fixture
def leaver(sandbox: Sandbox) -> SeededUser:
    return sandbox.seed_leaver(LEAVER)


@pytest.fixture
def config_data(sandbox: Sandbox, tmp_path: Path) -> dict[str, Any]:
    return fast_settings(sandbox.config_data(sqlite_path=str(tmp_path / "offboard.db")))


@pytest.fixture
def config(config_data: dict[str, Any]) -> Config:
    return parse_config(config_data, "test config")


@pytest.fixture
async def runtime(
    config: Config, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Runtime]:
    async with open_runtime(config, base_dir=tmp_path, clock=_manual_clock(request)) as rt:
        yield rt


@pytest.fixture
async def memory_store() -> AsyncIterator[InMemoryStore]:
    """An open in-memory store (worker/testing.py): engine and admission tests in
    milliseconds."""
    store = InMemoryStore()
    await store.open()
    try:
        yield store
    finally:
        await store.close()
