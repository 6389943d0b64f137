"""Group commit: deliveries that arrive while a commit is under way share the next one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from worker.domain import Admission, Arrival, NewCase, PlannedStep
from worker.errors import StoreError
from worker.intake import MAX_GROUP, Intake
from worker.store.sqlite import SqliteStore

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
STEP = PlannedStep(id="idp-deactivate", action="idp.deactivate_user", verify="idp.user_status")


def arrival(n: int) -> Arrival:
    return Arrival(
        key=f"hook:{n}",
        case=NewCase(
            playbook="leaver", subject=f"p{n}@example.com", steps=(STEP,), trigger={"n": n}
        ),
        answer=lambda case: {"status": 202, "body": {"case_id": case.id}},
    )


class GatedStore:
    """The real store, whose first `admit` waits at a gate: what a slow commit does."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.gate = asyncio.Event()
        self.calls: list[int] = []
        self.fail_next = False

    async def admit(self, arrivals: Sequence[Arrival], now: datetime) -> list[Admission]:
        self.calls.append(len(arrivals))
        if len(self.calls) == 1:
            await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise StoreError("database is locked")
        return await self.store.admit(arrivals, now)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[GatedStore]:
    sqlite = SqliteStore(tmp_path / "offboard.db")
    await sqlite.open()
    try:
        yield GatedStore(sqlite)
    finally:
        await sqlite.close()


def intake_on(store: GatedStore) -> Intake:
    gated: Any = store  # only `admit` is used
    return Intake(gated, lambda: T0)


async def test_arrivals_during_a_commit_share_the_next_one(store: GatedStore) -> None:
    intake = intake_on(store)
    first = asyncio.create_task(intake.admit(arrival(0)))
    await asyncio.sleep(0.01)  # its commit is under way (held at the gate)
    rest = [asyncio.create_task(intake.admit(arrival(n))) for n in range(1, 11)]
    await asyncio.sleep(0.01)
    assert store.calls == [1]
    store.gate.set()
    admissions = await asyncio.gather(first, *rest)

    assert store.calls == [1, 10]
    assert list(intake.groups) == [1, 10]
    assert all(a.created for a in admissions)
    ids = {a.case.id for a in admissions if a.case is not None}
    assert len(ids) == 11
    assert len(await store.store.list_cases()) == 11


async def test_a_lone_arrival_is_committed_at_once(store: GatedStore) -> None:
    store.gate.set()
    intake = intake_on(store)
    admission = await intake.admit(arrival(0))
    assert admission.created and store.calls == [1]
    # and the next one, after it, in a group of its own
    await intake.admit(arrival(1))
    assert store.calls == [1, 1]


async def test_a_group_is_at_most_max_group(store: GatedStore) -> None:
    intake = intake_on(store)
    first = asyncio.create_task(intake.admit(arrival(0)))
    await asyncio.sleep(0.01)
    rest = [asyncio.create_task(intake.admit(arrival(n))) for n in range(1, MAX_GROUP + 6)]
    await asyncio.sleep(0.01)
    store.gate.set()
    await asyncio.gather(first, *rest)
    assert store.calls == [1, MAX_GROUP, 5]


async def test_a_failed_commit_fails_its_group_only(store: GatedStore) -> None:
    intake = intake_on(store)
    first = asyncio.create_task(intake.admit(arrival(0)))
    await asyncio.sleep(0.01)
    group = [asyncio.create_task(intake.admit(arrival(n))) for n in (1, 2)]
    await asyncio.sleep(0.01)
    store.fail_next = True  # the first commit (still at the gate) fails
    store.gate.set()
    with pytest.raises(StoreError, match="locked"):
        await first
    # the group after it commits: each of its waiters gets its own case
    assert all(a.created for a in await asyncio.gather(*group))
    cases = await store.store.list_cases()
    assert sorted(c.subject for c in cases) == ["p1@example.com", "p2@example.com"]
    # nothing of the failed one was written: retried, it is created
    assert (await intake.admit(arrival(0))).created


async def test_a_caller_that_goes_away_does_not_cancel_the_commit(store: GatedStore) -> None:
    intake = intake_on(store)
    gone = asyncio.create_task(intake.admit(arrival(0)))
    await asyncio.sleep(0.01)
    gone.cancel()
    store.gate.set()
    await intake.close()
    # the delivery was committed all the same: a retry of it is a replay
    again = await intake.admit(arrival(0))
    assert again.created is False and again.delivery is not None
    assert len(await store.store.list_cases()) == 1
