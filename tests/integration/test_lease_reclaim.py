"""Issue 15: a case held by a dead worker is reclaimed within its lease and one round —
even while this worker catches up on an overdue re-read (a slow Identity Center read
must not hold up the claims)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

from tests.flows import contain
from worker.cases import open_case
from worker.domain import CaseStatus, Timer
from worker.runtime import Runtime
from worker.sandbox import Sandbox, SeededUser
from worker.sandbox.common import FaultRule
from worker.worker import Worker


async def test_a_dead_workers_case_is_claimed_while_a_catch_up_read_is_slow(
    runtime: Runtime, sandbox: Sandbox, leaver: SeededUser
) -> None:
    contained = await contain(runtime, sandbox, leaver, playbook="leaver")
    now = runtime.clock.now()
    countdown = (await runtime.store.get_case(contained.id)).countdown
    assert countdown is not None
    # a re-read overdue by more than the re-read interval: the worker catches up,
    # reading before that case's later timers fire
    overdue = Timer(
        case_id=contained.id, name="reread-01", epoch=0, due_at=now - timedelta(minutes=30)
    )
    await runtime.store.save_countdown(contained.id, countdown, 0, [overdue], now)
    # ... and that read is slow: every answer about memberships takes 30 s (the client
    # times out and tries again until the retry policy gives up)
    sandbox.faults.add(
        FaultRule(
            endpoint="identitystore.ListGroupMembershipsForMember",
            kind="latency",
            delay=30.0,
            rate=1.0,
        )
    )
    # another case, held by a worker that died: its lease lapses in a moment
    other = sandbox.seed_leaver("other@example.com")
    held, _ = await open_case(runtime, runtime.playbook("leaver"), other.login, {})
    assert await runtime.store.claim_case(held.id, "dead-worker", now, 1.0) is not None

    async def reads_recorded() -> int:
        events = await runtime.store.events(contained.id)
        return sum(e.kind == "inventory_read" for e in events)

    before = await reads_recorded()
    worker = Worker(runtime)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        async with asyncio.timeout(15):
            while (await runtime.store.get_case(held.id)).lease_owner == "dead-worker":  # noqa: ASYNC110 - the store has no event to wait on
                await asyncio.sleep(0.05)
        # taken over while the catch-up read still waits for its answers (it retries
        # for seconds); before, the claims waited for it to end
        assert worker.timers_firing
        assert await reads_recorded() == before
        taken = await runtime.store.get_case(held.id)
        assert taken.lease_owner == runtime.engine.worker_id or taken.status in (
            CaseStatus.WAITING,
            CaseStatus.CONTAINED,
        )
    finally:
        stop.set()
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
