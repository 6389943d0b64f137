"""Incident cases go ahead of HR and bulk cases: a worker whose ordinary slots are all
busy still takes an incident at once, and the end of an Okta window's budget is kept
for it (tests/unit/test_ratelimit_priority.py). Asserted on the order of events,
never on durations."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from worker.domain import CaseStatus
from worker.sandbox import Sandbox
from worker.sandbox.common import FaultRule
from worker.service import Runtime, open_case
from worker.worker import Worker

INCIDENT = "compromised@example.com"


async def _until(predicate: Any, timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():  # noqa: ASYNC110 - polling the store is the point
            await asyncio.sleep(0.02)


async def _deactivated(runtime: Runtime, case_id: str) -> bool:
    return any(
        s.step_id == "idp-deactivate" and s.status.value == "done"
        for s in await runtime.store.steps(case_id)
    )


@contextlib.asynccontextmanager
async def _running(worker: Worker) -> Any:
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield
    finally:
        stop.set()
        worker.grace = 0.1
        await task


async def test_an_incident_takes_an_urgent_slot_while_every_ordinary_slot_is_busy(
    sandbox: Sandbox, runtime: Runtime
) -> None:
    # Identity Center answers slowly (under the client's timeout): each HR case holds
    # its slot for seconds.
    sandbox.faults.add(FaultRule(endpoint="identitystore.*", kind="latency", rate=1.0, delay=0.3))
    hr = [sandbox.seed_leaver(f"hr{i}@example.com") for i in range(8)]
    sandbox.seed_leaver(INCIDENT)
    worker = Worker(runtime)
    worker.concurrency, worker.urgent_slots = 3, 1
    leaver, incident = runtime.playbook("leaver"), runtime.playbook("incident")
    hr_ids = [(await open_case(runtime, leaver, u.login, {}))[0].id for u in hr]

    async with _running(worker):

        async def slots_full() -> bool:
            return len(await runtime.store.list_cases((CaseStatus.RUNNING,))) == 3

        await _until(slots_full)
        case, _ = await open_case(runtime, incident, INCIDENT, {"source": "test"})
        worker.wake.set()
        await _until(lambda: _deactivated(runtime, case.id))
        finished = [
            c for c in await runtime.store.list_cases((CaseStatus.WAITING,)) if c.id in hr_ids
        ]
        running = await runtime.store.list_cases((CaseStatus.RUNNING,))

    # It did not wait for an HR case to free a slot: none had finished, four ran at once.
    assert finished == []
    assert case.id in {c.id for c in running}
    assert len(running) == 4


async def test_without_urgent_slots_the_incident_waits_for_a_free_slot(
    sandbox: Sandbox, runtime: Runtime
) -> None:
    """The control: the test above fails if the urgent slot is taken away."""
    sandbox.faults.add(FaultRule(endpoint="identitystore.*", kind="latency", rate=1.0, delay=0.3))
    hr = [sandbox.seed_leaver(f"hr{i}@example.com") for i in range(4)]
    sandbox.seed_leaver(INCIDENT)
    worker = Worker(runtime)
    worker.concurrency, worker.urgent_slots = 3, 0
    leaver, incident = runtime.playbook("leaver"), runtime.playbook("incident")
    hr_ids = [(await open_case(runtime, leaver, u.login, {}))[0].id for u in hr]

    async with _running(worker):

        async def slots_full() -> bool:
            return len(await runtime.store.list_cases((CaseStatus.RUNNING,))) == 3

        await _until(slots_full)
        case, _ = await open_case(runtime, incident, INCIDENT, {"source": "test"})
        worker.wake.set()
        await _until(lambda: _deactivated(runtime, case.id))
        finished = [
            c for c in await runtime.store.list_cases((CaseStatus.WAITING,)) if c.id in hr_ids
        ]

    assert finished, "the incident ran before any HR case had freed a slot"
