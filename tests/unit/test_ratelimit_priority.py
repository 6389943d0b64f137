"""The rate limiter serves the most urgent caller first and keeps the end of a
window's budget for incidents. Orders and counts, never durations, are asserted."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import structlog

from worker.domain import PRIORITIES, URGENT
from worker.ratelimit import CASE_AGE, CASE_PRIORITY, RateLimiter

BULK, NORMAL, INCIDENT = PRIORITIES["bulk"], PRIORITIES["normal"], PRIORITIES["incident"]


@pytest.fixture(autouse=True)
def plain_logging() -> Iterator[None]:
    """The limiter logs its pauses: not into a stream an earlier test configured and
    closed (the tests of one process share structlog's configuration)."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


async def _take(limiter: RateLimiter, name: str, order: list[str], priority: int | None) -> None:
    async with limiter.slot(priority):
        order.append(name)


async def _queue(limiter: RateLimiter, callers: list[tuple[str, int | None]]) -> list[str]:
    order: list[str] = []
    tasks = []
    for name, priority in callers:
        tasks.append(asyncio.create_task(_take(limiter, name, order, priority)))
        await asyncio.sleep(0)  # arrive in this order
    await asyncio.gather(*tasks)
    return order


async def test_an_incident_call_goes_ahead_of_queued_bulk_calls() -> None:
    limiter = RateLimiter("t", per_second=200)
    limiter.pause(0.1)  # everyone queues before anyone goes, however slow the machine
    callers: list[tuple[str, int | None]] = [(f"bulk{i}", BULK) for i in range(20)]
    callers.insert(10, ("incident", INCIDENT))
    order = await _queue(limiter, callers)
    assert order == ["incident"] + [f"bulk{i}" for i in range(20)]


async def test_priorities_order_waiting_callers_then_arrival() -> None:
    limiter = RateLimiter("t", per_second=200)
    callers: list[tuple[str, int | None]] = [
        ("first", BULK),
        ("b1", BULK),
        ("n1", NORMAL),
        ("b2", BULK),
        ("i1", INCIDENT),
        ("n2", NORMAL),
    ]
    assert await _queue(limiter, callers) == ["first", "i1", "n1", "n2", "b1", "b2"]


async def test_the_case_priority_comes_from_the_task_context() -> None:
    limiter = RateLimiter("t", per_second=200)

    async def as_case(name: str, priority: int, order: list[str]) -> None:
        CASE_PRIORITY.set(priority)
        await _take(limiter, name, order, None)

    order: list[str] = []
    tasks = []
    for name, priority in [("b0", BULK), ("b1", BULK), ("b2", BULK), ("i", INCIDENT)]:
        tasks.append(asyncio.create_task(as_case(name, priority, order)))
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == ["b0", "i", "b1", "b2"]


async def test_a_pause_holds_every_caller_then_serves_the_incident_first() -> None:
    limiter = RateLimiter("t")
    limiter.pause(0.2)
    order = await _queue(limiter, [("bulk", BULK), ("normal", NORMAL), ("incident", INCIDENT)])
    assert order == ["incident", "normal", "bulk"]
    assert limiter.pauses == 1


async def test_the_window_reserve_is_kept_for_urgent_callers() -> None:
    limiter = RateLimiter("okta", urgent_reserve=10)
    # 8 calls left in the window, reset in 0.3 s: inside the reserve (2 + 10)
    assert limiter.budget(8, 0.3) is False  # not a throttle: urgent callers go on
    order: list[str] = []
    bulk = asyncio.create_task(_take(limiter, "bulk", order, BULK))
    await asyncio.sleep(0)
    await _take(limiter, "incident", order, URGENT)
    assert order == ["incident"]  # the bulk call still waits for the window to reset
    assert not bulk.done()
    await bulk
    assert order == ["incident", "bulk"]


async def test_a_spent_budget_holds_urgent_callers_too() -> None:
    limiter = RateLimiter("okta", urgent_reserve=10)
    assert limiter.budget(2, 0.2) is True
    order = await _queue(limiter, [("bulk", BULK), ("incident", INCIDENT)])
    assert order == ["incident", "bulk"]
    assert limiter.pauses == 1


async def test_a_cancelled_waiter_does_not_hold_up_the_others() -> None:
    limiter = RateLimiter("t", per_second=50)
    order: list[str] = []
    first = asyncio.create_task(_take(limiter, "first", order, BULK))
    await asyncio.sleep(0)
    doomed = asyncio.create_task(_take(limiter, "doomed", order, INCIDENT))
    await asyncio.sleep(0)
    last = asyncio.create_task(_take(limiter, "last", order, BULK))
    await asyncio.sleep(0)
    doomed.cancel()
    await asyncio.gather(first, last)
    assert order == ["first", "last"]
    assert doomed.cancelled()


async def test_among_equals_the_older_case_goes_first() -> None:
    """Served round-robin, every case would be half done when a budget runs out."""
    limiter = RateLimiter("t", per_second=200)

    async def as_case(name: str, created: float, order: list[str]) -> None:
        CASE_PRIORITY.set(NORMAL)
        CASE_AGE.set(created)
        await _take(limiter, name, order, None)

    order: list[str] = []
    tasks = []
    # the first takes the free slot; then a young case's call arrives before old ones'
    for name, created in [("first", 1.0), ("young", 300.0), ("old", 100.0), ("older", 50.0)]:
        tasks.append(asyncio.create_task(as_case(name, created, order)))
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == ["first", "older", "old", "young"]


async def test_calls_sent_are_counted_against_the_window_budget() -> None:
    """The headers of one answer say what was left; the calls sent since count too, so
    a burst of cases cannot overrun the reserve before the next answer arrives."""
    limiter = RateLimiter("okta", urgent_reserve=10)
    assert limiter.budget(20, 0.6) is False  # 20 left: 8 for anyone, 10 for urgent, 2 never
    order: list[str] = []
    bulk = [asyncio.create_task(_take(limiter, f"bulk{n}", order, BULK)) for n in range(9)]
    await asyncio.sleep(0)
    for n in range(10):
        await _take(limiter, f"ir{n}", order, INCIDENT)  # the reserve: at once, unpaced
    # the ordinary calls are spread over the window, so few went before the incident's
    assert sum(name.startswith("bulk") for name in order) <= 2
    last = asyncio.create_task(_take(limiter, "ir10", order, INCIDENT))
    await asyncio.sleep(0)
    assert not last.done()  # the final two calls of a window are never spent
    assert limiter.reserved_for_urgent
    await asyncio.gather(*bulk, last)  # ... until the window resets
    assert sorted(order) == sorted([f"bulk{n}" for n in range(9)] + [f"ir{n}" for n in range(11)])


async def test_ordinary_calls_are_paced_over_the_window() -> None:
    """A burst at a window's start would start many cases and finish none."""
    limiter = RateLimiter("okta", urgent_reserve=0)
    limiter.budget(12, 0.5)  # 10 usable in half a second: one every ~50 ms
    order: list[str] = []
    tasks = [asyncio.create_task(_take(limiter, f"b{n}", order, NORMAL)) for n in range(4)]
    await asyncio.sleep(0.01)
    assert len(order) == 1  # the first went at once, the others wait their spacing
    await asyncio.gather(*tasks)
    assert order == ["b0", "b1", "b2", "b3"]


async def test_the_concurrency_cap_is_kept_by_priority() -> None:
    limiter = RateLimiter("okta", concurrency=2)
    order: list[str] = []
    release = asyncio.Event()

    async def hold(name: str, priority: int) -> None:
        async with limiter.slot(priority):
            order.append(name)
            await release.wait()

    holders = [asyncio.create_task(hold(f"h{n}", BULK)) for n in range(2)]
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(hold("bulk", BULK)), asyncio.create_task(hold("ir", URGENT))]
    await asyncio.sleep(0.01)
    assert order == ["h0", "h1"]  # both places taken: nobody else is in flight
    release.set()
    await asyncio.gather(*holders, *waiting)
    assert order == ["h0", "h1", "ir", "bulk"]


async def test_a_caller_cancelled_while_holding_a_place_gives_it_back() -> None:
    limiter = RateLimiter("okta", concurrency=1)
    started = asyncio.Event()

    async def hold() -> None:
        async with limiter.slot(BULK):
            started.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(hold())
    await started.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    async with asyncio.timeout(1):
        async with limiter.slot(BULK):
            pass  # the place is free again
