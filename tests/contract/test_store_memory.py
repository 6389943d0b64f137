"""The Store contract against the in-memory store the package ships for tests."""

from __future__ import annotations

import asyncio
import random
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from worker.clock import utc_iso
from worker.domain import Arrival, CaseStatus, Delivery, StepStatus, Timer
from worker.errors import StoreError
from worker.store.base import Store, new_case_id
from worker.store.sqlite import SqliteStore
from worker.testing import InMemoryStore

from .store_contract import LEASE, T0, StoreContract, at, new_case, task_for


class TestInMemoryStore(StoreContract):
    @pytest.fixture
    def store(self, memory_store: InMemoryStore) -> Store:
        return memory_store


@pytest.fixture
def store(memory_store: InMemoryStore) -> InMemoryStore:
    return memory_store


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


# The same random history on the in-memory store and on SQLite answers the same: the
# double is only worth what its likeness to the real backends is.

SUBJECTS = [f"p{n}@example.com" for n in range(6)]
WORKERS = ["w1", "w2"]
STATUSES = [CaseStatus.PENDING, CaseStatus.WAITING, CaseStatus.HALTED, CaseStatus.CONTAINED]
#: what a random call does, the more frequent the more often listed
OPERATIONS = (
    *("create", "create", "admit", "claim_next", "claim_case", "heartbeat", "release"),
    *("step", "step", "event", "countdown", "timer", "task", "confirm", "resume"),
    *("cancel", "reschedule", "ledger", "delivery", "read", "read", "read"),
)


def _outcome(result: Any) -> Any:
    """What one call answered, comparable across the two stores."""
    if isinstance(result, BaseException):
        return ("raised", type(result), str(result))
    return ("returned", result)


class _History:
    """Random calls, the same ones for both stores: each draws its arguments from what
    the store holds (the in-memory store's view; the other holds the same, or the
    comparison has failed already)."""

    def __init__(self, seed: int, memory: InMemoryStore) -> None:
        self.random = random.Random(seed)
        self.memory = memory
        self.now = T0
        self.keys = 0

    def tick(self) -> datetime:
        self.now += timedelta(milliseconds=self.random.choice([1, 7, 500, 5_000, 40_000]))
        return self.now

    async def case_id(self) -> str:
        cases = await self.memory.list_cases()
        if not cases or self.random.random() < 0.05:
            return "c-unknown"
        return self.random.choice(cases).id

    async def next_call(self) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
        r = self.random
        now = self.tick()
        op = r.choice(OPERATIONS)
        if op == "create":
            key = f"k{r.randrange(8)}" if r.random() < 0.4 else None
            run_after = now + timedelta(seconds=r.choice([1, 60])) if r.random() < 0.2 else None
            subject = r.choice(SUBJECTS)
            new = new_case(subject, priority=r.choice([10, 50, 100]), key=key, run_after=run_after)
            return "create_case", (new, now), {}
        if op == "admit":
            arrivals = [
                Arrival(
                    key=f"hook:{r.randrange(10)}",
                    case=new_case(r.choice(SUBJECTS)),
                    answer=lambda case: {"status": 202, "case_id": case.id},
                )
                for _ in range(r.randrange(1, 4))
            ]
            return "admit", (arrivals, now), {}
        if op == "claim_next":
            return (
                "claim_next",
                (r.choice(WORKERS), now, LEASE),
                {"min_priority": r.choice([0, 100])},
            )
        if op == "claim_case":
            return "claim_case", (await self.case_id(), r.choice(WORKERS), now, LEASE), {}
        if op == "heartbeat":
            return "heartbeat", (await self.case_id(), r.choice(WORKERS), now, LEASE), {}
        if op == "release":
            status = r.choice(STATUSES)
            extra = {"run_after": now + timedelta(seconds=30)} if r.random() < 0.3 else {}
            if status is CaseStatus.HALTED:
                extra["halt_reason"] = "okta: 403"
            return "release_case", (await self.case_id(), r.choice(WORKERS), status, now), extra
        if op == "step":
            case_id, index, worker = await self.case_id(), r.randrange(5), r.choice(WORKERS)
            if r.random() < 0.5:
                return "start_step", (case_id, index, worker, now), {}
            status = r.choice([StepStatus.DONE, StepStatus.FAILED, StepStatus.RUNNING])
            return (
                "finish_step",
                (case_id, index, worker, status, now),
                {"evidence": {"n": r.randrange(9)}, "event": ("step_done", {"ok": True})},
            )
        if op == "event":
            return (
                "append_event",
                (await self.case_id(), "note", now),
                {"step_id": None, "data": {"n": r.random()}},
            )
        if op == "countdown":
            cases = await self.memory.list_cases()
            if not cases:
                return "next_timer_due", (), {}
            case = r.choice(cases)
            epoch = r.randrange(2)
            lapse = now + timedelta(seconds=r.choice([1, 30, 90]))
            timers = [
                Timer(case_id=case.id, name="roles", epoch=epoch, due_at=lapse),
                Timer(
                    case_id=case.id, name="all-lapsed", epoch=epoch, due_at=lapse, closes_case=True
                ),
            ][: r.randrange(3)]
            countdown = {
                "milestones": [{"name": "all-lapsed", "at": utc_iso(lapse)}],
                "epoch": epoch,
            }
            return "save_countdown", (case.id, countdown, epoch, timers, now), {}
        if op == "timer":
            return "claim_due_timer", (r.choice(WORKERS), now), {}
        if op == "task":
            cases = await self.memory.list_cases()
            if not cases:
                return "open_tasks", (), {}
            case = r.choice(cases)
            step = r.choice(["portal-sessions", "ic-disable"])
            return "open_task", (task_for(case, step, opened_at=now),), {}
        if op == "confirm":
            step = r.choice(["portal-sessions", "ic-disable"])
            return "confirm_task", (await self.case_id(), step, "ops", now), {}
        if op == "resume":
            return "resume_case", (await self.case_id(), now), {}
        if op == "cancel":
            return "cancel_case", (await self.case_id(), now, "rescinded"), {}
        if op == "reschedule":
            return "reschedule_case", (await self.case_id(), now + timedelta(seconds=60), now), {}
        if op == "ledger":
            cases = await self.memory.list_cases()
            key = f"ledger-{r.randrange(4)}"
            if cases and r.random() < 0.6:
                return "ledger_intent", (key, cases[0].id, "step", "op", now), {}
            return "ledger_applied", (key, now), {}
        if op == "delivery":
            key = f"hook:{r.randrange(10)}"
            if r.random() < 0.5:
                return "get_delivery", (key,), {}
            delivery = Delivery(key=key, case_id=None, outcome={"status": 400}, received_at=now)
            return "record_delivery", (delivery,), {}
        return r.choice(
            [
                ("list_cases", (), {}),
                ("list_cases", ((CaseStatus.PENDING, CaseStatus.RUNNING),), {}),
                ("urgent_cases", (None,), {"limit": 5, "offset": r.randrange(4)}),
                ("cases_after", (None,), {"after": await self.case_id(), "limit": 3}),
                ("find_open_case", (r.choice(SUBJECTS),), {}),
                ("case_counts", (), {}),
                ("running_countdowns", (now,), {}),
                ("count_events", ("note",), {}),
                ("open_tasks", (), {}),
                ("task_backlog", (), {}),
                ("open_tasks_of", ([await self.case_id(), await self.case_id()],), {}),
                ("next_timer_due", (), {}),
                ("steps", (await self.case_id(),), {}),
                ("events", (await self.case_id(),), {}),
                ("evidence", (await self.case_id(),), {}),
                ("evidence_head", (await self.case_id(),), {}),
                ("timers", (await self.case_id(),), {}),
                ("get_case", (await self.case_id(),), {}),
            ]
        )


@pytest.mark.parametrize("seed", range(4))
async def test_a_random_history_answers_as_sqlite_does(
    seed: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # case ids drawn alike by both stores, in no order (ties are broken by id)
    draws = {"memory": random.Random(seed), "sqlite": random.Random(seed)}
    current = ["memory"]

    def next_id() -> str:
        return f"c-{draws[current[0]].getrandbits(64):016x}"

    for module in list(sys.modules.values()):
        if (
            getattr(module, "__name__", "").startswith("worker.")
            and getattr(module, "new_case_id", None) is new_case_id
        ):
            monkeypatch.setattr(module, "new_case_id", next_id)

    memory = InMemoryStore()
    sqlite = SqliteStore(tmp_path / "offboard.db")
    await memory.open()
    await sqlite.open()
    history = _History(seed, memory)
    try:
        for n in range(400):
            method, args, kwargs = await history.next_call()
            answers = []
            for name, store in (("memory", memory), ("sqlite", sqlite)):
                current[0] = name
                try:
                    answers.append(_outcome(await getattr(store, method)(*args, **kwargs)))
                except Exception as exc:  # compared below: both must raise alike
                    answers.append(_outcome(exc))
            assert answers[0] == answers[1], f"call {n}: {method}{args} {kwargs}"
        for case in await memory.list_cases():
            assert await memory.evidence(case.id) == await sqlite.evidence(case.id)
            assert await memory.timers(case.id) == await sqlite.timers(case.id)
    finally:
        await memory.close()
        await sqlite.close()
