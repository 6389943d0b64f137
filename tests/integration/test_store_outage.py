"""The database going away under a running worker (a restart, a managed failover):
the worker pauses claiming, reports itself not ready, waits for the database, and
resumes its cases without repeating a provider call already made. No exit.

The outage here is the SQLite connector refusing every statement with
StoreUnavailable, as the PostgreSQL connector does when its server is gone (the real
`kill -9` of PostgreSQL: tests/acceptance/test_store_restart.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.flows import mutations
from worker.cases import open_case
from worker.config import parse_config
from worker.domain import CaseStatus
from worker.errors import StoreUnavailable
from worker.runtime import Runtime, open_runtime
from worker.sandbox import Sandbox, SeededUser
from worker.sandbox.common import FaultRule
from worker.store.sqlite import SqliteStore
from worker.web.app import build_app
from worker.worker import Worker


class Outage:
    """Switches a SQLite store's connector unreachable and back."""

    def __init__(self, store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        assert isinstance(store, SqliteStore)
        self.down = False
        connector = store.connector
        for name in ("_one", "_all", "run", "many"):
            monkeypatch.setattr(connector, name, self._guard(getattr(connector, name)))
        begin = connector._begin

        @contextlib.asynccontextmanager
        async def guarded_begin(sql: str) -> Any:
            self._check()
            async with begin(sql) as tx:
                yield tx

        monkeypatch.setattr(connector, "_begin", guarded_begin)

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("the test's database is down")

    def _guard(self, method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def guarded(*args: Any, **kwargs: Any) -> Any:
            self._check()
            return await method(*args, **kwargs)

        return guarded

    @contextlib.contextmanager
    def during(self) -> Iterator[None]:
        self.down = True
        try:
            yield
        finally:
            self.down = False


async def until(condition: Callable[[], Any], what: str) -> None:
    """Wait for `condition` (bounded so a broken worker fails instead of hanging)."""
    for _ in range(1000):
        if await condition() if asyncio.iscoroutinefunction(condition) else condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


async def test_a_worker_rides_out_an_outage_mid_step_and_resumes_without_repeating(
    runtime: Runtime, sandbox: Sandbox, leaver: SeededUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    outage = Outage(runtime.store, monkeypatch)
    # the deactivation is under way when the database goes
    sandbox.faults.add(FaultRule(endpoint="okta.deactivate", kind="latency", delay=0.3, count=1))
    case, _ = await open_case(runtime, runtime.playbook("leaver"), leaver.login, {})
    worker = Worker(runtime)
    stop = asyncio.Event()
    loop = asyncio.create_task(worker.run(stop))
    await until(lambda: sandbox.audit.calls.get("okta.deactivate"), "the deactivation started")

    with outage.during():
        await until(lambda: not worker.available, "the worker saw the outage")
        await until(lambda: not worker._running, "the case's run stopped at the store")
        await asyncio.sleep(0.3)  # several of the worker's tries of the database fail
        assert not loop.done(), "the worker exited on a database outage"
        assert not worker.available

    async def waiting() -> bool:
        return (await runtime.store.get_case(case.id)).status is CaseStatus.WAITING

    await until(waiting, "the case resumed and reached the operator task")
    assert worker.available
    stop.set()
    await asyncio.wait_for(loop, 10)

    # the deactivation made before the outage was found by reading, not sent again
    assert mutations(sandbox).count("okta.deactivate") == 1
    assert mutations(sandbox)[:3] == ["okta.deactivate", "okta.clear_sessions", "scim.patch_user"]


async def test_an_idle_worker_wakes_when_a_dead_workers_lease_lapses(
    runtime: Runtime, leaver: SeededUser
) -> None:
    """Not after its poll interval: at the lease's end (and at a deferred case's
    run_after), whichever comes first."""
    worker = Worker(runtime)
    worker.poll = 3600.0
    now = runtime.clock.now()
    case, _ = await open_case(runtime, runtime.playbook("leaver"), leaver.login, {})
    assert await runtime.store.claim_case(case.id, "dead-worker", now, 40) is not None

    assert 0 < await worker.idle_seconds() <= 40

    await runtime.store.release_case(
        case.id, "dead-worker", CaseStatus.PENDING, now, run_after=now + timedelta(seconds=15)
    )
    assert 0 < await worker.idle_seconds() <= 15


async def test_webhooks_during_an_outage_get_503_with_retry_after_and_then_202(
    config_data: dict[str, Any],
    tmp_path: Path,
    leaver: SeededUser,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sender retries a 503 (never a 500): the same delivery, once the database is
    back, creates the case."""
    from tests.integration import test_server as server

    for name, value in {
        "T_API_TOKEN": server.API_TOKEN,
        "T_WHSEC": server.WHSEC,
        "T_WHSEC_OLD": server.WHSEC_OLD,
        "T_PD": server.PD_SECRET,
        "T_BEARER": server.BEARER,
    }.items():
        monkeypatch.setenv(name, value)
    config = parse_config(server.server_settings(config_data), "test")
    async with open_runtime(config, base_dir=tmp_path) as runtime:
        outage = Outage(runtime.store, monkeypatch)
        async with TestClient(TestServer(build_app(runtime, run_worker=False))) as http:
            body, headers = server.signed(server.termination(leaver.login))
            with outage.during():
                refused = await http.post("/v1/hooks/hr/hris", data=body, headers=headers)
                assert refused.status == 503, await refused.text()
                assert refused.headers["Retry-After"].isdigit()
                assert (await refused.json())["status"] == 503
                ready = await http.get("/readyz")
                assert ready.status == 503 and "Retry-After" in ready.headers
            again = await http.post("/v1/hooks/hr/hris", data=body, headers=headers)
            assert again.status == 202, await again.text()
            assert (await again.json())["outcome"] == "created"
            assert (await http.get("/readyz")).status == 200


async def test_a_case_reclaimed_by_the_process_still_running_it_is_not_run_twice(
    runtime: Runtime, leaver: SeededUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under load a heartbeat can come too late: the lease lapses and this same
    worker's next claim takes the case again. Two runs under one worker id would pass
    every lease check together (the chaos run saw a later step start before an
    earlier one finished); the run under way goes on alone."""
    case, _ = await open_case(runtime, runtime.playbook("leaver"), leaver.login, {})
    started: list[str] = []
    release = asyncio.Event()

    async def a_long_run(claimed: Any) -> CaseStatus:
        started.append(claimed.id)
        await release.wait()
        return CaseStatus.RUNNING

    monkeypatch.setattr(runtime.engine, "run_claimed", a_long_run)
    worker = Worker(runtime)
    assert await worker.tick() is True
    # the lease lapses under the run (the clock jumps past it) and the claim renews it
    later = runtime.clock.now() + timedelta(seconds=runtime.engine.settings.lease_seconds + 1)
    monkeypatch.setattr(worker.clock, "now", lambda: later)
    await worker.tick()
    await asyncio.sleep(0)

    assert started == [case.id]
    assert (await runtime.store.get_case(case.id)).lease_owner == worker.engine.worker_id
    release.set()
    await worker.drain()
