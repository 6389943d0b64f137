"""Incident cases go ahead of HR and bulk cases: a worker whose ordinary slots are all
busy still takes an incident at once, and the end of an Okta window's budget is kept
for it (tests/unit/test_ratelimit_priority.py). Asserted on the order of events,
never on durations."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from worker.cases import open_case
from worker.domain import CaseStatus
from worker.runtime import Runtime
from worker.sandbox import Sandbox
from worker.sandbox.common import FaultRule
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


async def _incident_while_slots_are_full(
    sandbox: Sandbox, runtime: Runtime, *, hr_cases: int, urgent_slots: int
) -> tuple[list[str], list[str]]:
    """Three ordinary slots, all taken by slow HR cases; then an incident. Returns,
    at the moment the incident's IdP deactivation is done, the HR cases that had
    finished and the cases running."""
    # Identity Center answers slowly (under the client's timeout): each HR case holds
    # its slot for seconds.
    sandbox.faults.add(FaultRule(endpoint="identitystore.*", kind="latency", rate=1.0, delay=0.3))
    hr = [sandbox.seed_leaver(f"hr{i}@example.com") for i in range(hr_cases)]
    sandbox.seed_leaver(INCIDENT)
    worker = Worker(runtime)
    worker.concurrency, worker.urgent_slots = 3, urgent_slots
    leaver, incident = runtime.playbook("leaver"), runtime.playbook("incident")
    hr_ids = [(await open_case(runtime, leaver, u.login, {}))[0].id for u in hr]

    async with _running(worker):

        async def slots_full() -> bool:
            return len(await runtime.store.list_cases((CaseStatus.RUNNING,))) == 3

        await _until(slots_full)
        case, _ = await open_case(runtime, incident, INCIDENT, {"source": "test"})
        worker.wake.set()
        await _until(lambda: _deactivated(runtime, case.id))
        waiting = await runtime.store.list_cases((CaseStatus.WAITING,))
        running = await runtime.store.list_cases((CaseStatus.RUNNING,))
    return [c.id for c in waiting if c.id in hr_ids], [c.id for c in running]


async def test_an_incident_takes_an_urgent_slot_while_every_ordinary_slot_is_busy(
    sandbox: Sandbox, runtime: Runtime
) -> None:
    finished, running = await _incident_while_slots_are_full(
        sandbox, runtime, hr_cases=8, urgent_slots=1
    )
    # It did not wait for an HR case to free a slot: none had finished, four ran at once.
    assert finished == []
    assert len(running) == 4
    incident = next(c for c in await runtime.store.list_cases() if c.subject == INCIDENT)
    assert incident.id in running


async def test_without_urgent_slots_the_incident_waits_for_a_free_slot(
    sandbox: Sandbox, runtime: Runtime
) -> None:
    """The control: the test above fails if the urgent slot is taken away."""
    finished, _ = await _incident_while_slots_are_full(sandbox, runtime, hr_cases=4, urgent_slots=0)
    assert finished, "the incident ran before any HR case had freed a slot"
