"""Limiters of two replicas sharing one budget through one PostgreSQL store: together
they never spend more than a window holds, an urgent call on one goes ahead of bulk
calls on the other, and a replica that stops gives its share back when its lease
lapses. Counts and orders are asserted, never durations."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import pytest
import structlog

from worker.domain import PRIORITIES
from worker.errors import StoreError
from worker.ratelimit import RateLimiter, SharedBudget
from worker.store.base import BudgetAsk, BudgetGrant
from worker.store.postgres import PostgresStore

BULK, INCIDENT = PRIORITIES["bulk"], PRIORITIES["incident"]


@pytest.fixture(autouse=True)
def plain_logging() -> Iterator[None]:
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


class Grants(list[tuple[str, float, int]]):
    """The slices granted to a test's replicas: (holder, window end, calls)."""

    def __init__(self) -> None:
        super().__init__()
        self.turns = asyncio.Lock()


class Recording:
    """A replica's store, recording every slice it was granted in the order the store
    granted them (the replicas' leases take turns on one lock, as the store's own lock
    makes them), optionally reached over a slow link (`lag` seconds before each ask)."""

    def __init__(self, store: PostgresStore, grants: Grants, lag: float = 0.0) -> None:
        self.store, self.grants, self.lag = store, grants, lag

    async def lease_budget(self, ask: BudgetAsk, now: float) -> BudgetGrant:
        if self.lag:
            await asyncio.sleep(self.lag)
            now = time.time()
        async with self.grants.turns:
            grant = await self.store.lease_budget(ask, now)
            self.grants.append((ask.holder, grant.window_end, grant.granted))
        return grant


@pytest.fixture
async def stores(pg_fresh_dsn: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    a, b = PostgresStore(pg_fresh_dsn), PostgresStore(pg_fresh_dsn)
    await a.open()
    await b.open()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


def replica(
    store: PostgresStore,
    holder: str,
    grants: Grants,
    lag: float = 0.0,
    **kw: object,
) -> RateLimiter:
    recording = Recording(store, grants, lag)
    shared = SharedBudget(store=recording, holder=holder, bucket="t", **kw)  # type: ignore[arg-type]
    return RateLimiter(holder, shared=shared, urgent_reserve=0)


async def _call(limiter: RateLimiter, name: str, order: list[str], priority: int) -> None:
    async with limiter.slot(priority):
        assert limiter._tokens >= 0  # every call went on a leased token
        order.append(name)


async def _window_start(window: float) -> None:
    """Wait for a window to begin, so that a test's first steps fall in one window."""
    await asyncio.sleep(math.floor(time.time() / window) * window + window + 0.01 - time.time())


async def test_two_replicas_never_spend_more_than_a_window_holds(
    stores: tuple[PostgresStore, PostgresStore],
) -> None:
    grants = Grants()
    a = replica(stores[0], "a", grants, window=0.5, limit=6, chunk=4)
    b = replica(stores[1], "b", grants, window=0.5, limit=6, chunk=4)
    order: list[str] = []
    calls = [_call(r, f"{r.name}{i}", order, BULK) for i in range(15) for r in (a, b)]
    await asyncio.gather(*calls)

    assert len(order) == 30
    granted: Counter[float] = Counter()
    for _, window_end, n in grants:
        granted[window_end] += n
    assert max(granted.values()) <= 6
    assert sum(granted.values()) >= 30  # the calls were made on granted tokens
    assert {holder for holder, _, n in grants if n} == {"a", "b"}  # both had a share


async def test_an_urgent_call_on_one_replica_goes_before_bulk_on_another(
    stores: tuple[PostgresStore, PostgresStore],
) -> None:
    grants = Grants()
    bulk = replica(stores[0], "bulk", grants, window=4.0, limit=3, chunk=3)
    # the incident's replica reaches the store later than the bulk one at every turn:
    # only the incident's recorded priority can put it first in the next window
    ir = replica(stores[1], "ir", grants, lag=0.2, window=4.0, limit=3, chunk=3)
    await _window_start(4.0)
    order: list[str] = []
    tasks = [asyncio.create_task(_call(bulk, f"bulk{i}", order, BULK)) for i in range(8)]
    for _ in range(500):  # until the bulk replica has spent the window
        if len(order) >= 3:
            break
        await asyncio.sleep(0.01)
    first_end = next(end for _, end, n in grants if n)
    tasks.append(asyncio.create_task(_call(ir, "incident", order, INCIDENT)))
    await asyncio.gather(*tasks)

    # starved in the first window, the incident is granted first in the next one (the
    # store's order of grants, not the order two replicas' calls happen to run in)
    granted = [(holder, end) for holder, end, n in grants if n]
    assert granted[0] == ("bulk", first_end)
    next_window = [holder for holder, end in granted if end == first_end + 4.0]
    assert next_window[0] == "ir", granted
    assert order.index("incident") <= 5  # went in the next window, not the one after


async def test_a_replica_that_stops_gives_its_share_of_the_cap_back(
    stores: tuple[PostgresStore, PostgresStore],
) -> None:
    grants = Grants()
    a = replica(stores[0], "a", grants, concurrency=10, ttl=0.6)
    b = replica(stores[1], "b", grants, concurrency=10, ttl=0.6)

    async def settle(limiter: RateLimiter, expected: int) -> int | None:
        for _ in range(100):
            async with limiter.slot(BULK):
                pass
            if limiter.concurrency == expected:
                break
            await asyncio.sleep(0.05)
        return limiter.concurrency

    assert await settle(a, 10) == 10  # alone
    assert await settle(b, 5) == 5
    assert await settle(a, 5) == 5  # two replicas: half the cap each
    # b stops renewing: once its lease lapses, a has the whole cap again
    assert await settle(a, 10) == 10


async def test_calls_wait_out_a_store_that_fails_and_go_once_it_answers(
    stores: tuple[PostgresStore, PostgresStore],
) -> None:
    class Flaky:
        def __init__(self) -> None:
            self.asked = 0

        async def lease_budget(self, ask: BudgetAsk, now: float) -> BudgetGrant:
            self.asked += 1
            if self.asked == 1:
                raise StoreError("the database is restarting")
            if self.asked == 2:
                raise ConnectionResetError
            return await stores[0].lease_budget(ask, now)

    flaky = Flaky()
    shared = SharedBudget(store=flaky, holder="a", bucket="t", window=60.0, limit=10)
    limiter = RateLimiter("t", shared=shared)
    order: list[str] = []
    await asyncio.gather(*(_call(limiter, f"c{i}", order, BULK) for i in range(3)))
    assert order == ["c0", "c1", "c2"] and flaky.asked == 3
