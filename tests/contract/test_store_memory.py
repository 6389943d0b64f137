"""The Store contract against the in-memory store the package ships for tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from worker.errors import StoreError
from worker.store.base import Store
from worker.testing import InMemoryStore

from .store_contract import LEASE, T0, StoreContract, at, new_case


class TestInMemoryStore(StoreContract):
    @pytest.fixture
    async def store(self) -> AsyncIterator[Store]:
        store = InMemoryStore()
        await store.open()
        try:
            yield store
        finally:
            await store.close()


@pytest.fixture
async def store() -> AsyncIterator[InMemoryStore]:
    store = InMemoryStore()
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def test_it_records_what_it_was_asked(store: InMemoryStore) -> None:
    case, _ = await store.create_case(new_case(), T0)
    await store.claim_next("w1", at(1), LEASE)
    await store.heartbeat(case.id, "w1", at(2), LEASE)
    assert [c.method for c in store.calls] == ["open", "create_case", "claim_next", "heartbeat"]
    (claim,) = store.calls_to("claim_next")
    assert claim.args == {
        "worker_id": "w1",
        "now": at(1),
        "lease_seconds": LEASE,
        "min_priority": 0,
    }


async def test_a_closed_store_refuses_work() -> None:
    store = InMemoryStore()
    with pytest.raises(StoreError, match="not open"):
        await store.ping()
    await store.open()
    await store.ping()
    await store.close()
    with pytest.raises(StoreError, match="not open"):
        await store.create_case(new_case(), T0)


async def test_wait_for_work_wakes_on_new_work_and_keeps_one_wake_up(
    store: InMemoryStore,
) -> None:
    # nothing yet: the wait runs out
    assert await store.wait_for_work(0.01) is False
    # work that came while nobody waited is kept, once
    case, _ = await store.create_case(new_case(), T0)
    assert await store.wait_for_work(5) is True
    assert await store.wait_for_work(0.01) is False
    # a waiter is woken by work that arrives during its wait
    waiter = asyncio.create_task(store.wait_for_work(5))
    await asyncio.sleep(0)
    await store.reschedule_case(case.id, at(60), at(1))
    assert await asyncio.wait_for(waiter, 1) is True


async def test_what_json_cannot_hold_is_refused_before_anything_is_written(
    store: InMemoryStore,
) -> None:
    with pytest.raises(TypeError):
        await store.create_case(new_case(trigger={"when": T0}), T0)
    assert await store.list_cases() == []
