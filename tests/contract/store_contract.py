"""The Store contract: what every backend must do, whatever it stores in.

`StoreContract` holds the tests; it knows nothing of any backend. A backend's test
module subclasses it as `Test<Backend>Store` and overrides the `store` fixture to
yield a fresh, empty, opened store (and close it afterwards)::

    class TestSqliteStore(StoreContract):
        @pytest.fixture
        async def store(self, tmp_path: Path) -> AsyncIterator[Store]:
            ...

Every timestamp passed in is a whole number of milliseconds, the precision the
store promises to keep. The tests move time only through the `now` they pass.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from worker.clock import parse_iso, utc_iso
from worker.domain import (
    Arrival,
    Case,
    CaseStatus,
    LedgerState,
    NewCase,
    OperatorTask,
    PlannedStep,
    StepStatus,
    Timer,
)
from worker.errors import LeaseLost, NotFound, StoreError
from worker.evidence import check_chain
from worker.store.base import (
    BudgetAsk,
    CasePage,
    EvidenceRecord,
    Store,
    TaskBacklog,
    event_hash,
    genesis_hash,
)

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
LEASE = 30.0

STEPS: tuple[PlannedStep, ...] = (
    PlannedStep(id="idp-deactivate", action="idp.deactivate_user", verify="idp.user_status"),
    PlannedStep(id="idp-sessions", action="idp.revoke_sessions", verify="idp.user_status"),
    PlannedStep(
        id="ic-disable",
        action="identity_center.disable_user",
        verify="identity_center.user_status",
    ),
    PlannedStep(
        id="portal-sessions",
        action="identity_center.portal_sessions",
        verify="operator.confirmation",
    ),
)


def at(seconds: float) -> datetime:
    """T0 plus `seconds`: the only way these tests move time."""
    return T0 + timedelta(seconds=seconds)


#: a person for each case made without a subject: a person has one active case
_PEOPLE = itertools.count(1)


def new_case(
    subject: str | None = None,
    *,
    priority: int = 50,
    key: str | None = None,
    run_after: datetime | None = None,
    trigger: dict[str, Any] | None = None,
    steps: tuple[PlannedStep, ...] = STEPS,
) -> NewCase:
    return NewCase(
        playbook="leaver",
        subject=subject or f"person-{next(_PEOPLE)}@example.com",
        steps=steps,
        trigger=trigger if trigger is not None else {"source": "test"},
        priority=priority,
        idempotency_key=key,
        run_after=run_after,
    )


def task_for(case: Case, step_id: str = "portal-sessions", **changes: Any) -> OperatorTask:
    fields: dict[str, Any] = {
        "case_id": case.id,
        "step_id": step_id,
        "title": "Revoke access-portal sessions",
        "instructions": "Open the console and revoke every active session.",
        "console_url": "https://console.aws.example/singlesignon",
        "subject": case.subject,
        "opened_at": at(1),
    }
    fields.update(changes)
    return OperatorTask(**fields)


class StoreContract:
    """Tests every Store backend must pass. Subclasses provide the `store` fixture."""

    @pytest.fixture
    async def store(self) -> AsyncIterator[Store]:
        """A fresh, empty, opened store, closed after the test. Each backend overrides this."""
        raise NotImplementedError(f"{type(self).__name__} must override the `store` fixture")
        yield  # unreachable; makes this an async generator like the overrides

    async def _claimed(self, store: Store, worker: str = "w1", now: float = 0) -> Case:
        """A fresh case, claimed by `worker` at `at(now)` for LEASE seconds."""
        case, _ = await store.create_case(new_case(), at(now))
        claimed = await store.claim_case(case.id, worker, at(now), LEASE)
        assert claimed is not None
        return claimed

    async def _portal_task_open(self, store: Store, now: float = 0) -> Case:
        """A fresh case claimed by w1 whose portal-sessions step waits on its open task
        (opened at `at(now + 2)`), the case still held."""
        case = await self._claimed(store, "w1", now=now)
        portal = next(i for i, s in enumerate(case.steps) if s.id == "portal-sessions")
        await store.start_step(case.id, portal, "w1", at(now + 1))
        await store.finish_step(case.id, portal, "w1", StepStatus.WAITING, at(now + 2))
        await store.open_task(task_for(case, opened_at=at(now + 2)))
        return case

    # creating and reading cases

    async def test_create_case_returns_pending_case_with_pending_steps_and_event(
        self, store: Store
    ) -> None:
        trigger = {"source": "hr", "employee": "E123"}
        case, created = await store.create_case(
            new_case("ada.lovelace@example.com", priority=77, trigger=trigger, key="hr:E123"), T0
        )

        assert created is True
        assert case.status is CaseStatus.PENDING
        assert case.playbook == "leaver"
        assert case.subject == "ada.lovelace@example.com"
        assert case.priority == 77
        assert case.steps == STEPS
        assert case.trigger == trigger
        assert case.idempotency_key == "hr:E123"
        assert case.created_at == T0
        assert case.updated_at == T0
        assert case.lease_owner is None
        assert case.lease_expires_at is None
        assert case.run_after is None
        assert case.halt_reason is None
        assert await store.get_case(case.id) == case

        records = await store.steps(case.id)
        assert [(r.index, r.step_id, r.action) for r in records] == [
            (i, s.id, s.action) for i, s in enumerate(STEPS)
        ]
        for record in records:
            assert record.case_id == case.id
            assert record.status is StepStatus.PENDING
            assert record.attempts == 0
            assert record.started_at is None
            assert record.finished_at is None
            assert record.evidence == {}
            assert record.error is None

        events = await store.events(case.id)
        assert len(events) == 1
        assert events[0].case_id == case.id
        assert events[0].seq == 1
        assert events[0].kind == "case_created"
        assert events[0].at == T0
        assert events[0].step_id is None
        assert events[0].data.get("trigger") == trigger

    async def test_same_idempotency_key_returns_the_existing_case(self, store: Store) -> None:
        first, created = await store.create_case(new_case("ada@example.com", key="hr:1"), T0)
        again, created_again = await store.create_case(
            new_case("someone.else@example.com", key="hr:1", priority=100), at(5)
        )

        assert created is True
        assert created_again is False
        assert again == first
        assert again.subject == "ada@example.com"
        assert [c.id for c in await store.list_cases()] == [first.id]
        assert len(await store.steps(first.id)) == len(STEPS)
        assert [e.kind for e in await store.events(first.id)] == ["case_created"]

    async def test_distinct_keys_create_distinct_cases(self, store: Store) -> None:
        a, created_a = await store.create_case(new_case(key="hr:1"), T0)
        b, created_b = await store.create_case(new_case(key="hr:2"), T0)
        c, created_c = await store.create_case(new_case(key=None), T0)
        d, created_d = await store.create_case(new_case(key=None), T0)

        assert (created_a, created_b, created_c, created_d) == (True, True, True, True)
        assert len({a.id, b.id, c.id, d.id}) == 4
        assert {x.id for x in await store.list_cases()} == {a.id, b.id, c.id, d.id}
        assert (await store.get_case(b.id)).idempotency_key == "hr:2"

    async def test_get_case_unknown_raises_not_found(self, store: Store) -> None:
        with pytest.raises(NotFound):
            await store.get_case("c-does-not-exist")
        assert issubclass(NotFound, StoreError)

    async def test_data_round_trips_exactly(self, store: Store) -> None:
        steps = (
            PlannedStep(
                id="idp-deactivate",
                action="idp.deactivate_user",
                verify="idp.user_status",
                options={
                    "send_email": False,
                    "retries": 3,
                    "ratio": 0.25,
                    "groups": ["eng", "ops"],
                    "nested": {"a": [1, {"b": None}], "ünï": "çødé"},
                },
            ),
            PlannedStep(id="idp-sessions", action="idp.revoke_sessions", verify=None),
        )
        trigger = {
            "source": "hr-feed",
            "event": {"type": "termination", "ids": [1, 2, 3], "effective": "2026-01-05"},
            "flags": {"urgent": True, "note": None},
            "reason": "Départ — 退職 🚪",
        }
        subject = "Zoë Ñúñez-山田 <zoë@exämple.com>"
        case, _ = await store.create_case(
            new_case(subject, trigger=trigger, steps=steps, key="ключ-1"), T0
        )

        for fetched in (case, await store.get_case(case.id)):
            assert fetched.subject == subject
            assert fetched.steps == steps
            assert fetched.steps[0].options == steps[0].options
            assert fetched.steps[1].verify is None
            assert fetched.trigger == trigger
            assert fetched.idempotency_key == "ключ-1"
        assert [c.subject for c in await store.list_cases()] == [subject]

    async def test_list_cases_filters_by_status(self, store: Store) -> None:
        pending, _ = await store.create_case(new_case("p@example.com"), T0)
        running = await self._claimed(store, "w1")
        waiting = await self._claimed(store, "w2")
        await store.release_case(waiting.id, "w2", CaseStatus.WAITING, at(1))

        def ids(cases: list[Case]) -> set[str]:
            return {c.id for c in cases}

        assert ids(await store.list_cases()) == {pending.id, running.id, waiting.id}
        assert ids(await store.list_cases(None)) == {pending.id, running.id, waiting.id}
        assert ids(await store.list_cases((CaseStatus.PENDING,))) == {pending.id}
        assert ids(await store.list_cases((CaseStatus.RUNNING,))) == {running.id}
        assert ids(await store.list_cases((CaseStatus.RUNNING, CaseStatus.WAITING))) == {
            running.id,
            waiting.id,
        }
        assert await store.list_cases((CaseStatus.HALTED, CaseStatus.CONTAINED)) == []

    # claiming

    async def test_claim_next_takes_highest_priority_then_oldest(self, store: Store) -> None:
        low, _ = await store.create_case(new_case("low@example.com", priority=10), at(0))
        high_old, _ = await store.create_case(new_case("high1@example.com", priority=100), at(1))
        high_new, _ = await store.create_case(new_case("high2@example.com", priority=100), at(2))
        mid, _ = await store.create_case(new_case("mid@example.com", priority=50), at(3))

        order = []
        for n in range(4):
            claimed = await store.claim_next(f"w{n}", at(10), LEASE)
            assert claimed is not None
            order.append(claimed.id)
        assert order == [high_old.id, high_new.id, mid.id, low.id]
        assert await store.claim_next("w9", at(10), LEASE) is None

    async def test_claim_next_with_a_minimum_priority_leaves_lower_cases(
        self, store: Store
    ) -> None:
        """A worker's urgent slots take incident cases only."""
        bulk, _ = await store.create_case(new_case("bulk@example.com", priority=10), at(0))
        normal, _ = await store.create_case(new_case("hr@example.com", priority=50), at(1))
        assert await store.claim_next("w1", at(10), LEASE, min_priority=100) is None
        incident, _ = await store.create_case(new_case("ir@example.com", priority=100), at(2))
        claimed = await store.claim_next("w1", at(10), LEASE, min_priority=100)
        assert claimed is not None and claimed.id == incident.id
        assert await store.claim_next("w1", at(10), LEASE, min_priority=100) is None
        assert (await store.get_case(bulk.id)).status is CaseStatus.PENDING
        assert (await store.get_case(normal.id)).status is CaseStatus.PENDING

    async def test_claim_marks_the_case_running_with_a_lease(self, store: Store) -> None:
        case, _ = await store.create_case(new_case(), T0)
        claimed = await store.claim_next("w1", at(10), LEASE)

        assert claimed is not None
        assert claimed.id == case.id
        assert claimed.status is CaseStatus.RUNNING
        assert claimed.lease_owner == "w1"
        assert claimed.lease_expires_at == at(10 + LEASE)
        assert await store.get_case(case.id) == claimed

    async def test_claimed_case_is_not_claimed_again_while_lease_holds(self, store: Store) -> None:
        case, _ = await store.create_case(new_case(), T0)
        assert await store.claim_next("w1", at(10), LEASE) is not None

        for later in (10, 20, 10 + LEASE - 1):
            assert await store.claim_next("w2", at(later), LEASE) is None
            assert await store.claim_case(case.id, "w2", at(later), LEASE) is None
        held = await store.get_case(case.id)
        assert held.lease_owner == "w1"
        assert held.lease_expires_at == at(10 + LEASE)

    async def test_lapsed_lease_lets_another_worker_claim(self, store: Store) -> None:
        case, _ = await store.create_case(new_case(), T0)
        assert await store.claim_next("w1", at(10), LEASE) is not None

        taken = await store.claim_next("w2", at(10 + LEASE + 1), LEASE)

        assert taken is not None
        assert taken.id == case.id
        assert taken.status is CaseStatus.RUNNING
        assert taken.lease_owner == "w2"
        assert taken.lease_expires_at == at(10 + LEASE + 1 + LEASE)

    async def test_lapsed_lease_can_be_taken_with_claim_case(self, store: Store) -> None:
        case = await self._claimed(store, "w1", now=0)
        taken = await store.claim_case(case.id, "w2", at(LEASE + 1), LEASE)
        assert taken is not None
        assert taken.lease_owner == "w2"

    async def test_worker_that_lost_its_lease_cannot_write(self, store: Store) -> None:
        case = await self._claimed(store, "w1", now=0)
        await store.start_step(case.id, 0, "w1", at(1))
        assert await store.claim_case(case.id, "w2", at(LEASE + 1), LEASE) is not None
        before_case = await store.get_case(case.id)
        before_steps = await store.steps(case.id)
        before_events = await store.events(case.id)

        assert await store.heartbeat(case.id, "w1", at(LEASE + 2), LEASE) is False
        with pytest.raises(StoreError):
            await store.start_step(case.id, 0, "w1", at(LEASE + 2))
        with pytest.raises(StoreError):
            await store.finish_step(case.id, 0, "w1", StepStatus.DONE, at(LEASE + 2))
        with pytest.raises(StoreError):
            await store.release_case(case.id, "w1", CaseStatus.CONTAINED, at(LEASE + 2))

        assert await store.get_case(case.id) == before_case
        assert await store.steps(case.id) == before_steps
        assert await store.events(case.id) == before_events

    async def test_run_after_in_the_future_is_not_claimable_until_due(self, store: Store) -> None:
        case, _ = await store.create_case(new_case(run_after=at(60)), T0)
        assert case.run_after == at(60)

        assert await store.claim_next("w1", at(0), LEASE) is None
        assert await store.claim_next("w1", at(59), LEASE) is None
        assert await store.claim_case(case.id, "w1", at(59), LEASE) is None
        assert (await store.get_case(case.id)).status is CaseStatus.PENDING

        claimed = await store.claim_next("w1", at(61), LEASE)
        assert claimed is not None
        assert claimed.id == case.id

    async def test_due_case_is_claimed_before_a_not_yet_due_more_urgent_one(
        self, store: Store
    ) -> None:
        await store.create_case(new_case("later@example.com", priority=100, run_after=at(60)), T0)
        due, _ = await store.create_case(new_case("now@example.com", priority=10), at(1))

        claimed = await store.claim_next("w1", at(2), LEASE)
        assert claimed is not None
        assert claimed.id == due.id

    async def test_release_pending_with_run_after_requeues_for_later(self, store: Store) -> None:
        case = await self._claimed(store, "w1", now=0)
        await store.release_case(case.id, "w1", CaseStatus.PENDING, at(1), run_after=at(100))

        released = await store.get_case(case.id)
        assert released.status is CaseStatus.PENDING
        assert released.run_after == at(100)
        assert released.lease_owner is None
        assert await store.claim_next("w2", at(99), LEASE) is None
        claimed = await store.claim_next("w2", at(101), LEASE)
        assert claimed is not None
        assert claimed.lease_owner == "w2"

    async def test_claim_case_claims_that_case(self, store: Store) -> None:
        urgent, _ = await store.create_case(new_case("urgent@example.com", priority=100), T0)
        wanted, _ = await store.create_case(new_case("wanted@example.com", priority=1), T0)

        claimed = await store.claim_case(wanted.id, "w1", at(1), LEASE)

        assert claimed is not None
        assert claimed.id == wanted.id
        assert claimed.status is CaseStatus.RUNNING
        assert claimed.lease_owner == "w1"
        assert claimed.lease_expires_at == at(1 + LEASE)
        assert (await store.get_case(urgent.id)).status is CaseStatus.PENDING
        assert await store.claim_case(wanted.id, "w2", at(2), LEASE) is None

    # leases

    async def test_heartbeat_extends_the_lease_only_for_its_owner(self, store: Store) -> None:
        case = await self._claimed(store, "w1", now=0)

        assert await store.heartbeat(case.id, "w2", at(20), LEASE) is False
        assert (await store.get_case(case.id)).lease_expires_at == at(LEASE)

        assert await store.heartbeat(case.id, "w1", at(25), LEASE) is True
        extended = await store.get_case(case.id)
        assert extended.lease_owner == "w1"
        assert extended.lease_expires_at == at(25 + LEASE)
        # Past the original expiry, but within the extended lease: still held.
        assert await store.claim_next("w2", at(LEASE + 5), LEASE) is None
        assert await store.claim_case(case.id, "w2", at(LEASE + 5), LEASE) is None

    async def test_heartbeat_on_a_released_case_is_false(self, store: Store) -> None:
        case = await self._claimed(store, "w1", now=0)
        await store.release_case(case.id, "w1", CaseStatus.WAITING, at(1))
        assert await store.heartbeat(case.id, "w1", at(2), LEASE) is False
        assert (await store.get_case(case.id)).status is CaseStatus.WAITING

    async def test_release_by_non_owner_raises_and_changes_nothing(self, store: Store) -> None:
        case = await self._claimed(store, "w1", now=0)
        before = await store.get_case(case.id)

        with pytest.raises(StoreError):
            await store.release_case(
                case.id, "w2", CaseStatus.HALTED, at(1), halt_reason="not yours"
            )

        assert await store.get_case(case.id) == before

    async def test_release_of_a_pending_case_raises(self, store: Store) -> None:
        case, _ = await store.create_case(new_case(), T0)
        with pytest.raises(StoreError):
            await store.release_case(case.id, "w1", CaseStatus.CONTAINED, at(1))
        assert (await store.get_case(case.id)).status is CaseStatus.PENDING

    async def test_release_waiting_then_resume_makes_it_pending(self, store: Store) -> None:
        case = await self._claimed(store, "w1", now=0)
        await store.release_case(case.id, "w1", CaseStatus.WAITING, at(1))

        waiting = await store.get_case(case.id)
        assert waiting.status is CaseStatus.WAITING
        assert waiting.lease_owner is None
        assert waiting.lease_expires_at is None
        assert waiting.updated_at == at(1)
        # A waiting case is nobody's to run, however long it waits.
        assert await store.claim_next("w2", at(LEASE + 100), LEASE) is None
        assert await store.claim_case(case.id, "w2", at(LEASE + 100), LEASE) is None

        resumed = await store.resume_case(case.id, at(200))
        assert resumed.status is CaseStatus.PENDING
        assert resumed.lease_owner is None
        assert resumed.updated_at == at(200)
        assert await store.get_case(case.id) == resumed
        claimed = await store.claim_next("w2", at(201), LEASE)
        assert claimed is not None
        assert claimed.id == case.id
        assert claimed.lease_owner == "w2"

    async def test_resume_leaves_other_cases_as_they_are(self, store: Store) -> None:
        running = await self._claimed(store, "w1", now=0)
        contained = await self._claimed(store, "w2", now=0)
        await store.release_case(contained.id, "w2", CaseStatus.CONTAINED, at(1))
        pending, _ = await store.create_case(new_case(run_after=at(100)), T0)

        for case_id in (running.id, contained.id, pending.id):
            before = await store.get_case(case_id)
            assert await store.resume_case(case_id, at(5)) == before
            assert await store.get_case(case_id) == before
        assert (await store.get_case(running.id)).lease_owner == "w1"
        assert (await store.get_case(contained.id)).status is CaseStatus.CONTAINED
        assert (await store.get_case(pending.id)).run_after == at(100)

    async def test_halted_case_keeps_its_reason_and_is_not_claimable(self, store: Store) -> None:
        case = await self._claimed(store, "w1", now=0)
        await store.release_case(
            case.id, "w1", CaseStatus.HALTED, at(1), halt_reason="okta: 403 forbidden"
        )

        halted = await store.get_case(case.id)
        assert halted.status is CaseStatus.HALTED
        assert halted.halt_reason == "okta: 403 forbidden"
        assert halted.lease_owner is None
        assert await store.claim_next("w2", at(LEASE + 100), LEASE) is None
        assert await store.claim_case(case.id, "w2", at(LEASE + 100), LEASE) is None

    async def test_resume_of_a_halted_case_clears_the_reason(self, store: Store) -> None:
        case = await self._claimed(store, "w1", now=0)
        await store.release_case(
            case.id, "w1", CaseStatus.HALTED, at(1), halt_reason="okta: 403 forbidden"
        )

        retried = ("case_retried", {"retried_by": "ops"})
        resumed = await store.resume_case(case.id, at(300), event=retried)
        assert resumed.status is CaseStatus.PENDING
        assert resumed.halt_reason is None
        assert resumed.run_after is None
        assert resumed.updated_at == at(300)
        # its event in the same write; none from a second resume, which changes nothing
        await store.resume_case(case.id, at(301), event=retried)
        written = [(e.kind, e.data, e.at) for e in await store.events(case.id)]
        assert [w for w in written if w[0] == "case_retried"] == [(*retried, at(300))]
        await self._assert_chained(store, case.id)
        claimed = await store.claim_next("w2", at(301), LEASE)
        assert claimed is not None
        assert claimed.id == case.id

    # steps

    async def test_start_step_counts_attempts_and_keeps_first_started_at(
        self, store: Store
    ) -> None:
        case = await self._claimed(store, "w1", now=0)

        first = await store.start_step(case.id, 1, "w1", at(1))
        assert first.case_id == case.id
        assert first.index == 1
        assert first.step_id == "idp-sessions"
        assert first.status is StepStatus.RUNNING
        assert first.attempts == 1
        assert first.started_at == at(1)

        second = await store.start_step(case.id, 1, "w1", at(5))
        assert second.attempts == 2
        assert second.started_at == at(1)
        assert (await store.steps(case.id))[1] == second
        others = [r for r in await store.steps(case.id) if r.index != 1]
        assert all(r.status is StepStatus.PENDING and r.attempts == 0 for r in others)

    async def test_start_step_refuses_a_non_owner(self, store: Store) -> None:
        case = await self._claimed(store, "w1", now=0)
        with pytest.raises(StoreError):
            await store.start_step(case.id, 0, "w2", at(1))
        record = (await store.steps(case.id))[0]
        assert record.attempts == 0
        assert record.status is StepStatus.PENDING
        assert record.started_at is None

    async def test_finish_step_stores_evidence_and_error(self, store: Store) -> None:
        case = await self._claimed(store, "w1", now=0)
        evidence = {
            "acted": True,
            "reads": 2,
            "status": {"before": "ACTIVE", "after": "DEPROVISIONED"},
            "note": "vérifié ✓",
        }
        await store.start_step(case.id, 0, "w1", at(1))
        done = await store.finish_step(case.id, 0, "w1", StepStatus.DONE, at(2), evidence=evidence)
        assert done.status is StepStatus.DONE
        assert done.evidence == evidence
        assert done.error is None
        assert done.attempts == 1
        assert done.started_at == at(1)
        assert done.finished_at == at(2)

        await store.start_step(case.id, 1, "w1", at(3))
        failed = await store.finish_step(
            case.id,
            1,
            "w1",
            StepStatus.FAILED,
            at(4),
            evidence={"http_status": 403},
            error="okta: 403 Forbidden",
        )
        assert failed.status is StepStatus.FAILED
        assert failed.evidence == {"http_status": 403}
        assert failed.error == "okta: 403 Forbidden"
        assert failed.finished_at == at(4)

        assert (await store.steps(case.id))[:2] == [done, failed]

    async def test_finish_step_refuses_a_non_owner(self, store: Store) -> None:
        case = await self._claimed(store, "w1", now=0)
        started = await store.start_step(case.id, 0, "w1", at(1))

        with pytest.raises(StoreError):
            await store.finish_step(
                case.id, 0, "w2", StepStatus.DONE, at(2), evidence={"forged": True}, error="x"
            )

        assert (await store.steps(case.id))[0] == started

    # side-effect ledger

    async def test_permission_set_lock_makes_holders_of_one_set_take_turns(
        self, store: Store
    ) -> None:
        await permission_set_locks_take_turns(store, store)

    async def test_a_cancelled_wait_for_a_permission_set_lock_is_a_cancellation(
        self, store: Store
    ) -> None:
        await cancelled_lock_wait_ends_cleanly(store, store)

    async def test_ledger_intent_is_idempotent(self, store: Store) -> None:
        case, _ = await store.create_case(new_case(), T0)
        key = f"{case.id}:idp-deactivate:okta.deactivate"
        assert await store.ledger_get(key) is None

        first = await store.ledger_intent(key, case.id, "idp-deactivate", "okta.deactivate", at(1))
        assert first.key == key
        assert first.case_id == case.id
        assert first.step_id == "idp-deactivate"
        assert first.operation == "okta.deactivate"
        assert first.state is LedgerState.INTENT
        assert first.requested_at == at(1)
        assert first.applied_at is None

        second = await store.ledger_intent(key, case.id, "idp-sessions", "other.op", at(9))
        assert second == first
        assert await store.ledger_get(key) == first

    async def test_ledger_applied_keeps_the_first_applied_at(self, store: Store) -> None:
        case, _ = await store.create_case(new_case(), T0)
        key = f"{case.id}:ic-disable:identity_center.disable"
        intent = await store.ledger_intent(
            key, case.id, "ic-disable", "identity_center.disable", at(1)
        )

        applied = await store.ledger_applied(key, at(2))
        assert applied.state is LedgerState.APPLIED
        assert applied.applied_at == at(2)
        assert applied.requested_at == intent.requested_at
        assert applied.operation == intent.operation

        again = await store.ledger_applied(key, at(7))
        assert again == applied
        assert await store.ledger_get(key) == applied
        # An intent written again after the call was applied does not undo it.
        assert (
            await store.ledger_intent(key, case.id, "ic-disable", "identity_center.disable", at(8))
            == applied
        )

    async def test_ledger_intents_are_a_cases_entries_not_yet_applied(self, store: Store) -> None:
        case, _ = await store.create_case(new_case(), T0)
        other, _ = await store.create_case(new_case("grace.hopper@example.com"), T0)
        late = await store.ledger_intent("k-late", case.id, "idp-sessions", "op.b", at(3))
        early = await store.ledger_intent("k-early", case.id, "idp-deactivate", "op.a", at(1))
        await store.ledger_intent("k-done", case.id, "ic-disable", "op.c", at(2))
        await store.ledger_applied("k-done", at(4))
        await store.ledger_intent("k-other", other.id, "idp-deactivate", "op.a", at(1))
        assert await store.ledger_intents(case.id) == [early, late]
        await store.ledger_applied("k-early", at(5))
        assert await store.ledger_intents(case.id) == [late]
        assert await store.ledger_intents("c-none") == []

    async def test_an_entry_left_in_intent_is_settled_once(self, store: Store) -> None:
        case, _ = await store.create_case(new_case(), T0)
        for key in ("k-applied", "k-not", "k-unknown", "k-marked"):
            await store.ledger_intent(key, case.id, "deny", "deny-put", at(1))
        await store.ledger_applied("k-marked", at(2))  # its step marked it meanwhile
        applied = await store.ledger_settle("k-applied", LedgerState.APPLIED, at(3))
        assert applied is not None and applied.state is LedgerState.APPLIED
        assert applied.applied_at == at(3)
        not_applied = await store.ledger_settle("k-not", LedgerState.NOT_APPLIED, at(3))
        assert not_applied is not None and not_applied.applied_at is None
        assert not_applied.state is LedgerState.NOT_APPLIED
        unknown = await store.ledger_settle("k-unknown", LedgerState.UNKNOWN, at(3))
        assert unknown is not None and unknown.state is LedgerState.UNKNOWN
        # what a step marked stands; a settled entry is not settled again
        assert await store.ledger_settle("k-marked", LedgerState.NOT_APPLIED, at(4)) is None
        assert (await store.ledger_get("k-marked")).state is LedgerState.APPLIED
        assert await store.ledger_settle("k-not", LedgerState.APPLIED, at(4)) is None
        assert await store.ledger_intents(case.id) == []
        with pytest.raises(NotFound):
            await store.ledger_settle("c-none:step:op", LedgerState.APPLIED, at(1))

    async def test_ledger_applied_unknown_key_raises_not_found(self, store: Store) -> None:
        with pytest.raises(NotFound):
            await store.ledger_applied("c-none:step:op", at(1))

    async def test_ledger_keys_are_independent(self, store: Store) -> None:
        case, _ = await store.create_case(new_case(), T0)
        a = await store.ledger_intent("k-a", case.id, "idp-deactivate", "op.a", at(1))
        b = await store.ledger_intent("k-b", case.id, "idp-sessions", "op.b", at(2))
        await store.ledger_applied("k-a", at(3))
        assert (await store.ledger_get("k-b")) == b
        got_a = await store.ledger_get("k-a")
        assert got_a is not None
        assert got_a.state is LedgerState.APPLIED
        assert got_a.requested_at == a.requested_at

    # operator tasks

    async def test_open_task_is_idempotent(self, store: Store) -> None:
        case, _ = await store.create_case(new_case(), T0)
        assert await store.get_task(case.id, "portal-sessions") is None

        first = await store.open_task(task_for(case, opened_at=at(1)))
        assert first == task_for(case, opened_at=at(1))
        assert first.confirmed_at is None
        assert first.confirmed_by is None

        second = await store.open_task(
            task_for(case, opened_at=at(50), title="A different title", instructions="other")
        )
        assert second == first
        assert second.opened_at == at(1)
        assert second.title == "Revoke access-portal sessions"
        assert await store.get_task(case.id, "portal-sessions") == first
        assert await store.open_tasks() == [first]

    async def test_confirm_task_records_who_and_when_and_keeps_the_first(
        self, store: Store
    ) -> None:
        case, _ = await store.create_case(new_case(), T0)
        await store.open_task(task_for(case, opened_at=at(1)))

        first = await store.confirm_task(case.id, "portal-sessions", "grace@example.com", at(5))
        confirmed = first.task
        assert confirmed.confirmed_by == "grace@example.com"
        assert confirmed.confirmed_at == at(5)
        assert confirmed.opened_at == at(1)
        assert (first.already, first.resumed) == (False, False)  # the case is not waiting

        again = await store.confirm_task(case.id, "portal-sessions", "mallory@example.com", at(9))
        assert (again.task, again.already, again.resumed) == (confirmed, True, False)
        assert await store.get_task(case.id, "portal-sessions") == confirmed
        confirmations = [e for e in await store.events(case.id) if e.kind == "operator_confirmed"]
        assert [(e.step_id, e.data, e.at) for e in confirmations] == [
            ("portal-sessions", {"confirmed_by": "grace@example.com"}, at(5))
        ]

    async def test_confirm_task_resumes_a_case_waiting_on_that_step_in_the_same_write(
        self, store: Store
    ) -> None:
        case = await self._portal_task_open(store)
        await store.release_case(case.id, "w1", CaseStatus.WAITING, at(3))

        # another step's task does not resume it
        await store.open_task(task_for(case, "ic-disable", opened_at=at(3)))
        other = await store.confirm_task(case.id, "ic-disable", "ops", at(4))
        assert not other.resumed
        assert (await store.get_case(case.id)).status is CaseStatus.WAITING

        done = await store.confirm_task(case.id, "portal-sessions", "ops", at(5))
        assert (done.already, done.resumed) == (False, True)
        resumed = await store.get_case(case.id)
        assert (resumed.status, resumed.run_after) == (CaseStatus.PENDING, None)
        kinds = [e.kind for e in await store.events(case.id)]
        assert kinds.count("operator_confirmed") == 2
        await self._assert_chained(store, case.id)

        # a worker releasing it as waiting on that step again cannot leave it waiting;
        # a repeated confirmation keeps the first and records nothing more
        claimed = await store.claim_case(case.id, "w1", at(6), LEASE)
        assert claimed is not None
        assert await store.release_case(case.id, "w1", CaseStatus.WAITING, at(7)) is (
            CaseStatus.PENDING
        )
        again = await store.confirm_task(case.id, "portal-sessions", "someone-else", at(8))
        assert (again.already, again.resumed) == (True, False)
        assert again.task.confirmed_by == "ops"
        assert [e.kind for e in await store.events(case.id)].count("operator_confirmed") == 2

        # a halted case stays halted (`offboard retry` resumes it, not a confirmation)
        claimed = await store.claim_case(case.id, "w1", at(9), LEASE)
        assert claimed is not None
        await store.release_case(case.id, "w1", CaseStatus.HALTED, at(10), halt_reason="x")
        halted = await store.confirm_task(case.id, "portal-sessions", "ops", at(11))
        assert not halted.resumed
        assert (await store.get_case(case.id)).status is CaseStatus.HALTED

    async def test_a_release_as_waiting_after_its_task_was_confirmed_is_pending(
        self, store: Store
    ) -> None:
        # the operator was quicker than the worker's release: the confirmation found no
        # waiting case to resume, so the release itself must not leave it waiting
        case = await self._portal_task_open(store)
        assert not (await store.confirm_task(case.id, "portal-sessions", "ops", at(3))).resumed
        await store.wait_for_work(0)  # what came before is not the point

        status = await store.release_case(case.id, "w1", CaseStatus.WAITING, at(4))
        assert status is CaseStatus.PENDING
        released = await store.get_case(case.id)
        assert (released.status, released.lease_owner) == (CaseStatus.PENDING, None)
        assert await store.wait_for_work(5) is True  # a worker is told to take it

        # with its task still open, it waits; a release in another status is as asked
        other = await self._portal_task_open(store, now=5)
        assert await store.release_case(other.id, "w1", CaseStatus.WAITING, at(8)) is (
            CaseStatus.WAITING
        )
        third = await self._claimed(store, "w1", now=9)
        assert await store.release_case(third.id, "w1", CaseStatus.CONTAINED, at(10)) is (
            CaseStatus.CONTAINED
        )

    async def test_confirm_unknown_task_raises_not_found(self, store: Store) -> None:
        case, _ = await store.create_case(new_case(), T0)
        with pytest.raises(NotFound):
            await store.confirm_task(case.id, "portal-sessions", "grace@example.com", at(5))

    async def test_open_tasks_lists_only_unconfirmed(self, store: Store) -> None:
        a, _ = await store.create_case(new_case("a@example.com"), T0)
        b, _ = await store.create_case(new_case("b@example.com"), T0)
        task_a = await store.open_task(task_for(a, opened_at=at(1)))
        task_b = await store.open_task(task_for(b, opened_at=at(2)))
        task_a2 = await store.open_task(task_for(a, "ic-disable", opened_at=at(3)))

        assert sorted(await store.open_tasks(), key=lambda t: t.opened_at) == [
            task_a,
            task_b,
            task_a2,
        ]

        await store.confirm_task(a.id, "portal-sessions", "grace@example.com", at(4))
        assert sorted(await store.open_tasks(), key=lambda t: t.opened_at) == [task_b, task_a2]

        await store.confirm_task(b.id, "portal-sessions", "grace@example.com", at(5))
        await store.confirm_task(a.id, "ic-disable", "grace@example.com", at(6))
        assert await store.open_tasks() == []

    # timeline

    async def test_append_event_numbers_events_per_case(self, store: Store) -> None:
        a, _ = await store.create_case(new_case("a@example.com"), T0)
        b, _ = await store.create_case(new_case("b@example.com"), T0)

        a2 = await store.append_event(
            a.id, "step_started", at(1), step_id="idp-deactivate", data={"attempt": 1}
        )
        b2 = await store.append_event(b.id, "note", at(2), step_id=None, data={})
        a3 = await store.append_event(
            a.id, "step_done", at(3), step_id="idp-deactivate", data={"evidence": {"x": [1, 2]}}
        )
        b3 = await store.append_event(
            b.id, "step_started", at(4), step_id="idp-deactivate", data={"attempt": 1}
        )
        a4 = await store.append_event(a.id, "note", at(5), step_id=None, data={"text": "ünï ✓"})

        assert (a2.seq, a3.seq, a4.seq) == (2, 3, 4)
        assert (b2.seq, b3.seq) == (2, 3)
        assert a3.case_id == a.id
        assert a3.kind == "step_done"
        assert a3.step_id == "idp-deactivate"
        assert a3.at == at(3)
        assert a3.data == {"evidence": {"x": [1, 2]}}

        events_a = await store.events(a.id)
        events_b = await store.events(b.id)
        assert [e.seq for e in events_a] == [1, 2, 3, 4]
        assert [e.seq for e in events_b] == [1, 2, 3]
        assert events_a[1:] == [a2, a3, a4]
        assert events_b[1:] == [b2, b3]
        assert [e.kind for e in events_a] == ["case_created", "step_started", "step_done", "note"]

    async def test_events_of_an_unknown_case_are_empty(self, store: Store) -> None:
        assert await store.events("c-does-not-exist") == []

    async def test_ping(self, store: Store) -> None:
        await store.ping()

    # the evidence chain over the timeline

    async def _assert_chained(self, store: Store, case_id: str) -> list[EvidenceRecord]:
        """The case's events form a valid chain, the head points at its last link,
        and the records are the events, with their hashes."""
        records = await store.evidence(case_id)
        events = await store.events(case_id)
        assert [(r.case_id, r.seq, r.kind, r.step_id, r.data) for r in records] == [
            (e.case_id, e.seq, e.kind, e.step_id, e.data) for e in events
        ]
        assert [parse_iso(r.at) for r in records] == [e.at for e in events]
        prev = genesis_hash(case_id)
        for seq, r in enumerate(records, start=1):
            assert r.seq == seq
            assert r.prev_hash == prev, f"event {seq} does not link to event {seq - 1}"
            assert re.fullmatch(r"[0-9a-f]{64}", r.hash)
            assert r.hash == event_hash(case_id, r.seq, r.at, r.kind, r.step_id, r.data, prev)
            prev = r.hash
        assert await store.evidence_head(case_id) == (prev, len(records))
        assert check_chain(case_id, records, prev, len(records)) == []
        return records

    async def test_events_get_a_valid_hash_chain(self, store: Store) -> None:
        case, _ = await store.create_case(new_case(trigger={"source": "hr", "id": "E1"}), T0)
        first = await self._assert_chained(store, case.id)
        assert len(first) == 1 and first[0].kind == "case_created"
        assert first[0].prev_hash == genesis_hash(case.id)
        assert first[0].data["trigger"] == {"source": "hr", "id": "E1"}

        await store.append_event(
            case.id, "step_started", at(1), step_id="idp-deactivate", data={"attempt": 1}
        )
        await store.append_event(
            case.id,
            "step_done",
            at(2),
            step_id="idp-deactivate",
            data={"verified_by": "okta.user_status", "nested": {"b": [1, 2.5], "a": None}},
        )
        await store.append_event(
            case.id,
            "operator_confirmed",
            at(3),
            step_id="portal-sessions",
            data={"confirmed_by": "grace@example.com", "note": 'ünï ✓ "quoted", \n'},
        )
        records = await self._assert_chained(store, case.id)
        assert [r.kind for r in records] == [
            "case_created",
            "step_started",
            "step_done",
            "operator_confirmed",
        ]
        # the genesis is the case's own: chains of two cases never share a link
        other, _ = await store.create_case(new_case("b@example.com"), T0)
        assert (await store.evidence(other.id))[0].prev_hash != genesis_hash(case.id)

    async def test_values_the_backend_normalises_still_verify(self, store: Store) -> None:
        """What is hashed is what is stored: numbers a database rewrites and times finer
        than it keeps still verify when read back."""
        case, _ = await store.create_case(new_case(), T0)
        data = {
            "huge": 1e300,
            "tiny": 1.5e-300,
            "negative_zero": -0.0,
            "tenth": 0.1,
            "big_int": 2**62,
            "keys": {"z": 1, "a": 2, "é": 3},
            "text": "ünï ✓ \u2028 \U0001f600",
        }
        await store.append_event(
            case.id, "note", T0 + timedelta(microseconds=123456), step_id=None, data=data
        )
        await store.append_event(case.id, "note", at(1), step_id=None, data={"after": True})
        await self._assert_chained(store, case.id)

    async def test_chain_head_moves_with_every_event(self, store: Store) -> None:
        case, _ = await store.create_case(new_case(), T0)
        other, _ = await store.create_case(new_case("b@example.com"), T0)
        head = await store.evidence_head(case.id)
        assert head == ((await store.evidence(case.id))[0].hash, 1)

        # events the store writes itself, in the transactions of other changes
        by = {"source": "hris", "delivery": "hook:hr:hris:d-2"}
        await store.reschedule_case(case.id, at(100), at(1), by=by)
        moved = (await self._assert_chained(store, case.id))[-1]
        assert moved.kind == "case_rescheduled" and moved.data["by"] == by
        assert (await store.evidence_head(case.id))[1] == 2
        await store.cancel_case(other.id, at(2), "rescinded")
        assert [r.kind for r in await self._assert_chained(store, other.id)] == [
            "case_created",
            "case_cancelled",
        ]

        contained = await self._contained(store)
        await store.save_countdown(
            contained.id, {}, 0, self._timers(contained, 0, **{"a": 10, "all-lapsed": 20}), at(2)
        )
        await store.claim_due_timer("w1", at(30))
        await store.claim_due_timer("w1", at(30))
        kinds = [r.kind for r in await self._assert_chained(store, contained.id)]
        assert kinds[-3:] == ["milestone_reached", "milestone_reached", "case_access_lapsed"]

        before = await store.evidence_head(case.id)
        appended = await store.append_event(case.id, "note", at(3), step_id=None, data={})
        after = await store.evidence_head(case.id)
        assert after[1] == before[1] + 1 == appended.seq
        assert after[0] != before[0]
        assert (await store.evidence(case.id))[-1].prev_hash == before[0]
        # another case's head did not move
        assert await store.evidence_head(other.id) == (
            (await store.evidence(other.id))[-1].hash,
            2,
        )

    async def test_appending_after_many_events_still_chains(self, store: Store) -> None:
        a, _ = await store.create_case(new_case("a@example.com"), T0)
        b, _ = await store.create_case(new_case("b@example.com"), T0)
        for n in range(1, 151):
            await store.append_event(
                a.id if n % 3 else b.id, "note", at(n), step_id=None, data={"n": n}
            )
        await self._assert_chained(store, a.id)
        await self._assert_chained(store, b.id)
        # concurrent appends to one case take turns: one chain, no seq twice
        await asyncio.gather(
            *(
                store.append_event(a.id, "note", at(200), step_id=None, data={"c": n})
                for n in range(25)
            )
        )
        records = await self._assert_chained(store, a.id)
        assert len(records) == 1 + 100 + 25
        assert sorted(r.data["c"] for r in records[-25:]) == list(range(25))
        last = await store.append_event(a.id, "note", at(300), step_id=None, data={"last": 1})
        assert last.seq == 127
        assert (await self._assert_chained(store, a.id))[-1].data == {"last": 1}

    async def test_evidence_of_an_unknown_case(self, store: Store) -> None:
        assert await store.evidence("c-does-not-exist") == []
        with pytest.raises(NotFound):
            await store.evidence_head("c-does-not-exist")
        with pytest.raises(StoreError):
            await store.append_event("c-does-not-exist", "note", T0, step_id=None, data={})

    # countdown and timers

    async def _contained(self, store: Store) -> Case:
        case, _ = await store.create_case(new_case(), at(0))
        await store.claim_case(case.id, "w1", at(0), LEASE)
        await store.release_case(case.id, "w1", CaseStatus.CONTAINED, at(1))
        return case

    @staticmethod
    def _timers(case: Case, epoch: int, **due: float) -> list[Timer]:
        return [
            Timer(
                case_id=case.id,
                name=name,
                epoch=epoch,
                due_at=at(seconds),
                closes_case=name == "all-lapsed",
            )
            for name, seconds in due.items()
        ]

    async def test_save_countdown_stores_it_on_the_case(self, store: Store) -> None:
        case = await self._contained(store)
        record = {"milestones": [{"name": "all-lapsed", "at": "x"}], "epoch": 0}
        await store.save_countdown(case.id, record, 0, self._timers(case, 0, a=10), at(2))
        assert (await store.get_case(case.id)).countdown == record
        assert [t.name for t in await store.timers(case.id)] == ["a"]
        assert await store.next_timer_due() == at(10)

    async def test_timer_fires_once_when_due_with_an_event(self, store: Store) -> None:
        case = await self._contained(store)
        await store.save_countdown(case.id, {}, 0, self._timers(case, 0, a=10, b=20), at(2))

        assert await store.claim_due_timer("w1", at(9)) is None
        fired = await store.claim_due_timer("w1", at(15))
        assert fired is not None and fired.name == "a" and fired.fired_at == at(15)
        assert fired.fired_by == "w1"
        assert await store.claim_due_timer("w2", at(15)) is None
        events = [e for e in await store.events(case.id) if e.kind == "milestone_reached"]
        assert [e.data["milestone"] for e in events] == ["a"]
        assert await store.next_timer_due() == at(20)

    async def test_last_milestone_closes_the_case(self, store: Store) -> None:
        case = await self._contained(store)
        timers = self._timers(case, 0, **{"roles": 10, "all-lapsed": 20})
        await store.save_countdown(case.id, {}, 0, timers, at(2))
        await store.claim_due_timer("w1", at(30))
        assert (await store.get_case(case.id)).status is CaseStatus.CONTAINED
        closing = await store.claim_due_timer("w1", at(30))
        assert closing is not None and closing.name == "all-lapsed"
        assert (await store.get_case(case.id)).status is CaseStatus.ACCESS_LAPSED
        kinds = [e.kind for e in await store.events(case.id)]
        assert kinds.count("milestone_reached") == 2 and kinds[-1] == "case_access_lapsed"

    async def test_a_work_timer_fires_once_without_a_milestone_event(self, store: Store) -> None:
        case = await self._contained(store)
        timers = self._timers(case, 0, **{"reread-01": 10, "deny-removable": 20, "a": 30})
        await store.save_countdown(case.id, {}, 0, timers, at(2))
        while await store.claim_due_timer("w1", at(40)) is not None:
            pass
        events = await store.events(case.id)
        assert [e.data["milestone"] for e in events if e.kind == "timer_fired"] == [
            "reread-01",
            "deny-removable",
        ]
        assert [e.data["milestone"] for e in events if e.kind == "milestone_reached"] == ["a"]
        assert (await store.get_case(case.id)).status is CaseStatus.CONTAINED

    async def test_rescheduling_moves_unfired_timers_and_keeps_fired_ones(
        self, store: Store
    ) -> None:
        case = await self._contained(store)
        await store.save_countdown(case.id, {}, 0, self._timers(case, 0, a=10, b=100), at(2))
        await store.claim_due_timer("w1", at(11))
        await store.save_countdown(case.id, {}, 0, self._timers(case, 0, a=50, b=40), at(12))

        timers = {t.name: t for t in await store.timers(case.id)}
        assert timers["a"].fired_at == at(11) and timers["a"].due_at == at(10)
        assert timers["b"].due_at == at(40) and timers["b"].fired_at is None

    async def test_a_new_epoch_drops_unfired_timers_and_fires_anew(self, store: Store) -> None:
        case = await self._contained(store)
        await store.save_countdown(case.id, {}, 0, self._timers(case, 0, a=10, b=100), at(2))
        await store.claim_due_timer("w1", at(11))
        await store.save_countdown(case.id, {}, 1, self._timers(case, 1, a=60, b=160), at(20))

        timers = [(t.name, t.epoch, t.fired_at is not None) for t in await store.timers(case.id)]
        assert timers == [("a", 0, True), ("a", 1, False), ("b", 1, False)]
        fired = await store.claim_due_timer("w1", at(61))
        assert fired is not None and (fired.name, fired.epoch) == ("a", 1)

    async def test_next_timer_due_is_none_without_timers(self, store: Store) -> None:
        assert await store.next_timer_due() is None

    async def test_a_release_with_an_event_writes_both_or_neither(self, store: Store) -> None:
        case, _ = await store.create_case(new_case(), at(0))
        await store.claim_case(case.id, "w1", at(0), LEASE)
        with pytest.raises(StoreError):
            await store.release_case(
                case.id, "w2", CaseStatus.CONTAINED, at(1), event=("case_contained", {})
            )
        await store.release_case(
            case.id, "w1", CaseStatus.CONTAINED, at(2), event=("case_contained", {})
        )
        assert (await store.get_case(case.id)).status is CaseStatus.CONTAINED
        kinds = [e.kind for e in await store.events(case.id)]
        assert kinds.count("case_contained") == 1 and kinds[-1] == "case_contained"

    async def test_next_case_due_is_the_soonest_lease_end_or_run_after(self, store: Store) -> None:
        """What an idle worker waits for when no notification will come."""
        assert await store.next_case_due(at(0)) is None
        held, _ = await store.create_case(new_case(subject="held@example.com"), at(0))
        deferred, _ = await store.create_case(new_case(subject="later@example.com"), at(0))
        await store.claim_case(held.id, "w1", at(0), 40)
        await store.claim_case(deferred.id, "w2", at(0), LEASE)
        await store.release_case(deferred.id, "w2", CaseStatus.PENDING, at(1), run_after=at(30))

        assert await store.next_case_due(at(2)) == at(30)
        assert await store.next_case_due(at(31)) == at(40)  # run_after passed: claimable now
        assert await store.next_case_due(at(41)) is None  # both claimable now

    async def test_finish_step_appends_its_event_in_the_same_write(self, store: Store) -> None:
        case, _ = await store.create_case(new_case(), at(0))
        await store.claim_case(case.id, "w1", at(0), LEASE)
        await store.start_step(case.id, 0, "w1", at(1))
        await store.finish_step(
            case.id,
            0,
            "w1",
            StepStatus.DONE,
            at(2),
            evidence={"x": 1},
            event=("step_done", {"x": 1}),
        )
        events = await store.events(case.id)
        assert (events[-1].kind, events[-1].step_id, events[-1].data) == (
            "step_done",
            "idp-deactivate",
            {"x": 1},
        )
        # a non-owner's finish writes neither the step nor the event
        with pytest.raises(StoreError):
            await store.finish_step(
                case.id, 1, "w2", StepStatus.DONE, at(3), event=("step_done", {})
            )
        assert len(await store.events(case.id)) == len(events)

    async def test_start_step_appends_its_event_in_the_same_write(self, store: Store) -> None:
        case, _ = await store.create_case(new_case(), at(0))
        await store.claim_case(case.id, "w1", at(0), LEASE)
        before = len(await store.events(case.id))
        await store.start_step(case.id, 0, "w1", at(1))
        await store.start_step(case.id, 0, "w1", at(2))
        started = (await store.events(case.id))[before:]
        assert [(e.kind, e.step_id, e.data, e.at) for e in started] == [
            ("step_started", "idp-deactivate", {"attempt": 1}, at(1)),
            ("step_started", "idp-deactivate", {"attempt": 2}, at(2)),
        ]
        await self._assert_chained(store, case.id)
        # a non-owner's start writes neither the step nor the event
        with pytest.raises(StoreError):
            await store.start_step(case.id, 1, "w2", at(3))
        assert (await store.steps(case.id))[1].attempts == 0
        assert len(await store.events(case.id)) == before + 2

    async def test_finish_and_start_is_one_write_of_both_or_neither(self, store: Store) -> None:
        case, _ = await store.create_case(new_case(), at(0))
        await store.claim_case(case.id, "w1", at(0), LEASE)
        await store.start_step(case.id, 0, "w1", at(1))
        before = len(await store.events(case.id))

        started = await store.finish_and_start(
            case.id, 0, "w1", at(2), evidence={"x": 1}, event=("step_done", {"x": 1}), next_index=1
        )
        assert (started.index, started.status, started.attempts, started.started_at) == (
            1,
            StepStatus.RUNNING,
            1,
            at(2),
        )
        done, running = (await store.steps(case.id))[:2]
        assert (done.status, done.evidence, done.finished_at) == (StepStatus.DONE, {"x": 1}, at(2))
        assert running == started
        written = (await store.events(case.id))[before:]
        assert [(e.kind, e.step_id, e.data) for e in written] == [
            ("step_done", "idp-deactivate", {"x": 1}),
            ("step_started", "idp-sessions", {"attempt": 1}),
        ]
        await self._assert_chained(store, case.id)

        # neither, when the lease is not the writer's or the next step does not exist
        steps, events = await store.steps(case.id), await store.events(case.id)
        with pytest.raises(LeaseLost):
            await store.finish_and_start(
                case.id, 1, "w2", at(3), evidence={}, event=("step_done", {}), next_index=2
            )
        with pytest.raises(NotFound, match="no step 99"):
            await store.finish_and_start(
                case.id, 1, "w1", at(3), evidence={}, event=("step_done", {}), next_index=99
            )
        assert await store.steps(case.id) == steps
        assert await store.events(case.id) == events

    # admitting trigger deliveries together (group commit)

    @staticmethod
    def _arrival(key: str, subject: str, **changes: Any) -> Arrival:
        return Arrival(
            key=key,
            case=new_case(subject, trigger={"source": "hr", "delivery": key}, **changes),
            answer=lambda case: {"status": 202, "body": {"case_id": case.id, "key": key}},
        )

    async def test_admit_creates_each_case_with_its_delivery(self, store: Store) -> None:
        arrivals = [self._arrival(f"hook:{i}", f"p{i}@example.com") for i in range(3)]
        admissions = await store.admit(arrivals, T0)

        assert [a.created for a in admissions] == [True, True, True]
        for arrival, admission in zip(arrivals, admissions, strict=True):
            case, delivery = admission.case, admission.delivery
            assert case is not None and delivery is not None
            # the case is what create_case would have made, and reads back the same
            assert case.status is CaseStatus.PENDING
            assert (case.subject, case.playbook, case.steps) == (
                arrival.case.subject,
                "leaver",
                STEPS,
            )
            assert case.trigger == {"source": "hr", "delivery": arrival.key}
            assert case.created_at == T0 and case.priority == 50
            assert await store.get_case(case.id) == case
            steps = await store.steps(case.id)
            assert [(r.step_id, r.status) for r in steps] == [
                (s.id, StepStatus.PENDING) for s in STEPS
            ]
            # the delivery records the answer computed from the created case
            assert delivery.outcome == {
                "status": 202,
                "body": {"case_id": case.id, "key": arrival.key},
            }
            assert await store.get_delivery(arrival.key) == delivery
            # its timeline starts with a chained case_created event
            records = await self._assert_chained(store, case.id)
            assert [r.kind for r in records] == ["case_created"]
            assert records[0].data["subject"] == arrival.case.subject
        assert len(await store.list_cases()) == 3

    async def test_admit_replays_a_known_key_and_writes_nothing(self, store: Store) -> None:
        (first,) = await store.admit([self._arrival("hook:1", "ada@example.com")], T0)
        (again,) = await store.admit([self._arrival("hook:1", "ada@example.com")], at(5))
        assert again.created is False and again.case is None
        assert again.delivery == first.delivery
        assert len(await store.list_cases()) == 1

    async def test_admit_leaves_a_person_s_open_case_to_the_caller(self, store: Store) -> None:
        older, _ = await store.create_case(new_case("ada@example.com"), T0)
        # one open case per person: a second for the same person is the first
        again, created = await store.create_case(new_case("ada@example.com"), at(1))
        assert created is False and again == older
        (admission,) = await store.admit([self._arrival("hook:1", "ada@example.com")], at(5))
        # the open case, as find_open_case answers; no delivery recorded
        assert admission.created is False and admission.delivery is None
        assert admission.case == older
        assert await store.get_delivery("hook:1") is None
        assert len(await store.list_cases()) == 1
        # a closed case is not open: the person gets a new one
        await store.cancel_case(older.id, at(6), "test")
        (fresh,) = await store.admit([self._arrival("hook:1", "ada@example.com")], at(7))
        assert fresh.created is True

    async def test_admit_sees_the_arrivals_before_it_in_the_same_call(self, store: Store) -> None:
        admissions = await store.admit(
            [
                self._arrival("hook:1", "ada@example.com"),
                self._arrival("hook:1", "ada@example.com"),  # the same delivery again
                self._arrival("hook:2", "ada@example.com"),  # the same person, another key
                self._arrival("hook:3", "bob@example.com"),
            ],
            T0,
        )
        made, replayed, joined, other = admissions
        assert made.created and made.case is not None
        assert replayed == replace(made, case=None, created=False)
        assert joined.created is False and joined.delivery is None
        assert joined.case == made.case
        assert other.created and other.case is not None and other.case.id != made.case.id
        assert await store.get_delivery("hook:2") is None
        assert len(await store.list_cases()) == 2

    async def test_admit_is_all_or_nothing(self, store: Store) -> None:
        keyed = replace(self._arrival("hook:2", "bob@example.com"), case=new_case(key="k"))
        with pytest.raises(ValueError, match="idempotency key"):
            await store.admit([self._arrival("hook:1", "ada@example.com"), keyed], T0)
        assert await store.list_cases() == []
        assert await store.get_delivery("hook:1") is None
        assert await store.admit([], T0) == []

    # aggregates and pages: read without loading every case

    async def _in_state(
        self, store: Store, status: CaseStatus, seconds: float, *, playbook: str = "leaver"
    ) -> Case:
        """A case created at `at(seconds)` and left in `status` (pending: as created)."""
        new = replace(new_case(), playbook=playbook)
        case, _ = await store.create_case(new, at(seconds))
        if status is CaseStatus.CANCELLED:
            return await store.cancel_case(case.id, at(seconds), "test")
        if status is not CaseStatus.PENDING:
            assert await store.claim_case(case.id, "w1", at(seconds), LEASE) is not None
            if status is not CaseStatus.RUNNING:
                await store.release_case(case.id, "w1", status, at(seconds))
        return await store.get_case(case.id)

    async def test_case_counts_by_status_and_playbook(self, store: Store) -> None:
        assert await store.case_counts() == []
        for n, status in enumerate(
            [CaseStatus.PENDING, CaseStatus.PENDING, CaseStatus.RUNNING, CaseStatus.HALTED]
        ):
            await self._in_state(store, status, n)
        await self._in_state(store, CaseStatus.HALTED, 10, playbook="incident")
        await self._in_state(store, CaseStatus.CANCELLED, 11, playbook="incident")

        counts = {(c.status, c.playbook): c.count for c in await store.case_counts()}
        assert counts == {
            (CaseStatus.PENDING, "leaver"): 2,
            (CaseStatus.RUNNING, "leaver"): 1,
            (CaseStatus.HALTED, "leaver"): 1,
            (CaseStatus.HALTED, "incident"): 1,
            (CaseStatus.CANCELLED, "incident"): 1,
        }
        assert sum(counts.values()) == len(await store.list_cases())

    @staticmethod
    def _countdown(**milestones: float) -> dict[str, Any]:
        return {
            "milestones": [
                {"name": name.replace("_", "-"), "at": utc_iso(at(seconds)), "meaning": ""}
                for name, seconds in milestones.items()
            ],
            "epoch": 0,
        }

    async def test_running_countdowns_are_open_cases_with_all_lapsed_ahead(
        self, store: Store
    ) -> None:
        contained = await self._contained(store)
        timers = self._timers(contained, 0, **{"all-lapsed": 100})
        countdown = self._countdown(new_sessions_end=10, all_lapsed=100)
        await store.save_countdown(contained.id, countdown, 0, timers, at(2))
        waiting = await self._in_state(store, CaseStatus.WAITING, 3)  # the portal task open
        await store.save_countdown(waiting.id, self._countdown(all_lapsed=50), 0, [], at(3))
        # not counted: no countdown, one without milestones, one whose all-lapsed is
        # not a milestone of it, and a cancelled case
        await self._in_state(store, CaseStatus.CONTAINED, 4)
        empty = await self._in_state(store, CaseStatus.CONTAINED, 5)
        await store.save_countdown(empty.id, {}, 0, [], at(5))
        other = await self._in_state(store, CaseStatus.CONTAINED, 6)
        await store.save_countdown(other.id, self._countdown(roles=500), 0, [], at(6))
        cancelled = await self._in_state(store, CaseStatus.CANCELLED, 7)
        await store.save_countdown(cancelled.id, self._countdown(all_lapsed=500), 0, [], at(7))

        assert await store.running_countdowns(at(10)) == 2
        # strictly before the milestone, to the microsecond
        assert await store.running_countdowns(at(50) - timedelta(microseconds=1)) == 2
        assert await store.running_countdowns(at(50)) == 1
        assert await store.running_countdowns(at(99.999)) == 1
        assert await store.running_countdowns(at(100)) == 0
        # closed by its last milestone: no longer running, whatever the time asked about
        assert (await store.claim_due_timer("w1", at(100))) is not None
        assert (await store.get_case(contained.id)).status is CaseStatus.ACCESS_LAPSED
        assert await store.running_countdowns(at(10)) == 1

    async def test_count_events_counts_one_kind_across_every_case(self, store: Store) -> None:
        assert await store.count_events("drift_detected") == 0
        a = await self._contained(store)
        b, _ = await store.create_case(new_case("bob@example.com"), at(1))
        for case, drifts in ((a, 2), (b, 1)):
            for n in range(drifts):
                await store.append_event(
                    case.id, "drift_detected", at(5 + n), step_id=None, data={}
                )
            await store.append_event(case.id, "recontained", at(9), step_id=None, data={})
        assert await store.count_events("drift_detected") == 3
        assert await store.count_events("recontained") == 2
        assert await store.count_events("case_created") == 2
        assert await store.count_events("drift") == 0

    async def test_task_backlog_counts_the_unconfirmed_and_dates_the_oldest(
        self, store: Store
    ) -> None:
        assert await store.task_backlog() == TaskBacklog(waiting=0, oldest_opened_at=None)
        first = await self._claimed(store, "w1", 0)
        second, _ = await store.create_case(new_case("bob@example.com"), at(1))
        await store.open_task(task_for(first, opened_at=at(3)))
        await store.open_task(task_for(first, "other-step", opened_at=at(7)))
        await store.open_task(task_for(second, opened_at=at(5)))
        assert await store.task_backlog() == TaskBacklog(waiting=3, oldest_opened_at=at(3))
        await store.confirm_task(first.id, "portal-sessions", "ops", at(8))
        assert await store.task_backlog() == TaskBacklog(waiting=2, oldest_opened_at=at(5))

    async def test_open_tasks_of_some_cases_only(self, store: Store) -> None:
        cases = [
            (await store.create_case(new_case(f"p{n}@example.com"), at(n)))[0] for n in range(3)
        ]
        await store.open_task(task_for(cases[0], opened_at=at(6)))
        await store.open_task(task_for(cases[0], "other-step", opened_at=at(4)))
        await store.open_task(task_for(cases[1], opened_at=at(5)))
        await store.open_task(task_for(cases[2], opened_at=at(1)))
        await store.confirm_task(cases[0].id, "other-step", "ops", at(7))

        found = await store.open_tasks_of([cases[0].id, cases[1].id, "c-unknown"])
        assert [(t.case_id, t.step_id) for t in found] == [
            (cases[1].id, "portal-sessions"),  # opened at 5
            (cases[0].id, "portal-sessions"),  # opened at 6; its other task is confirmed
        ]
        assert await store.open_tasks_of([]) == []

    async def test_urgent_cases_halted_then_waiting_then_newest_a_page_at_a_time(
        self, store: Store
    ) -> None:
        plan = [
            (CaseStatus.CONTAINED, 1),
            (CaseStatus.HALTED, 2),
            (CaseStatus.WAITING, 3),
            (CaseStatus.PENDING, 4),
            (CaseStatus.HALTED, 5),
            (CaseStatus.CANCELLED, 6),
            (CaseStatus.WAITING, 7),
            (CaseStatus.RUNNING, 8),
            (CaseStatus.CONTAINED, 8),  # created at the same time as the one before
        ]
        made = [await self._in_state(store, status, seconds) for status, seconds in plan]
        same_time = sorted([made[7].id, made[8].id])

        def ids(page: CasePage) -> list[str]:
            return [c.id for c in page.cases]

        everything = await store.urgent_cases(None, limit=100, offset=0)
        assert everything.total == 9
        assert ids(everything) == [
            made[4].id,  # halted, newest first
            made[1].id,
            made[6].id,  # waiting, newest first
            made[2].id,
            *same_time,  # then the rest, newest first; the same time by id
            made[5].id,
            made[3].id,
            made[0].id,
        ]
        assert everything.cases[0] == await store.get_case(made[4].id)

        open_only = (
            CaseStatus.PENDING,
            CaseStatus.RUNNING,
            CaseStatus.WAITING,
            CaseStatus.HALTED,
            CaseStatus.CONTAINED,
        )
        expected = [i for i in ids(everything) if i != made[5].id]
        walked: list[str] = []
        for offset in range(0, 10, 3):
            page = await store.urgent_cases(open_only, limit=3, offset=offset)
            assert page.total == 8
            assert len(page.cases) == min(3, max(0, 8 - offset))
            walked += ids(page)
        assert walked == expected
        assert ids(await store.urgent_cases((), limit=2, offset=1)) == ids(everything)[1:3]
        halted = await store.urgent_cases((CaseStatus.HALTED,), limit=1, offset=1)
        assert (ids(halted), halted.total) == ([made[1].id], 2)
        none = await store.urgent_cases((CaseStatus.ACCESS_LAPSED,), limit=5, offset=0)
        assert none == CasePage(cases=(), total=0)

    async def test_cases_after_walks_the_cases_in_list_order_by_keyset(self, store: Store) -> None:
        for n, seconds in enumerate([1, 2, 2, 2, 3, 4, 5]):
            status = CaseStatus.CANCELLED if n in (1, 5) else CaseStatus.PENDING
            await self._in_state(store, status, seconds)
        listed = [c.id for c in await store.list_cases()]

        async def walk(statuses: tuple[CaseStatus, ...] | None, limit: int) -> list[str]:
            seen: list[str] = []
            after: str | None = None
            while page := await store.cases_after(statuses, after=after, limit=limit):
                assert len(page) <= limit
                seen += [c.id for c in page]
                after = page[-1].id
            return seen

        assert await walk(None, 2) == listed
        assert await walk(None, 100) == listed
        assert await walk((), 3) == listed
        pending = [c.id for c in await store.list_cases((CaseStatus.PENDING,))]
        assert len(pending) == 5
        assert await walk((CaseStatus.PENDING,), 2) == pending
        first = await store.cases_after(None, after=None, limit=2)
        assert [c.id for c in first] == listed[:2]
        assert first[0] == await store.get_case(listed[0])
        # a cursor on a case the filter leaves out still marks a place
        after_cancelled = await store.cases_after((CaseStatus.PENDING,), after=listed[1], limit=10)
        assert [c.id for c in after_cancelled] == [i for i in listed[2:] if i in pending]
        assert await store.cases_after(None, after=listed[-1], limit=5) == []
        assert await store.cases_after(None, after=None, limit=0) == []
        with pytest.raises(NotFound):
            await store.cases_after(None, after="c-does-not-exist", limit=5)

        # a case created during a walk comes at its end, and nothing repeats
        page = await store.cases_after(None, after=None, limit=4)
        late = await self._in_state(store, CaseStatus.PENDING, 9)
        rest = await store.cases_after(None, after=page[-1].id, limit=100)
        assert [c.id for c in page + rest] == [*listed, late.id]

    # ties: every ordered listing ends on a unique key, so rows equal in what they are
    # sorted by come back in one documented order, the same on every backend

    async def _tied_cases(self, store: Store, n: int = 4, subject: str | None = None) -> list[Case]:
        """`n` cases created at one instant with one priority, sorted by id."""
        cases = [
            (await store.create_case(new_case(subject or f"tie{i}@example.com"), T0))[0]
            for i in range(n)
        ]
        return sorted(cases, key=lambda case: case.id)

    async def test_cases_created_at_one_instant_list_and_page_by_id(self, store: Store) -> None:
        ids = [case.id for case in await self._tied_cases(store)]

        assert [c.id for c in await store.list_cases()] == ids
        assert [c.id for c in await store.list_cases((CaseStatus.PENDING,))] == ids
        assert [c.id for c in await store.cases_after(None, after=None, limit=10)] == ids
        assert [c.id for c in await store.cases_after(None, after=ids[1], limit=10)] == ids[2:]
        page = await store.urgent_cases(None, limit=10, offset=0)
        assert [c.id for c in page.cases] == ids
        page = await store.urgent_cases((CaseStatus.PENDING,), limit=2, offset=1)
        assert [c.id for c in page.cases] == ids[1:3]

    async def test_claim_next_takes_cases_of_one_priority_and_instant_by_id(
        self, store: Store
    ) -> None:
        ids = [case.id for case in await self._tied_cases(store)]

        claimed = []
        while (case := await store.claim_next("w1", at(1), LEASE)) is not None:
            claimed.append(case.id)
        assert claimed == ids

    async def test_a_person_s_cases_of_one_instant_are_one_case(self, store: Store) -> None:
        ids = {case.id for case in await self._tied_cases(store, 3, "twin@example.com")}

        assert len(ids) == 1
        found = await store.find_open_case("twin@example.com")
        assert found is not None
        assert {found.id} == ids
        arrival = Arrival(key="hook:twin", case=new_case("twin@example.com"), answer=lambda c: {})
        [admission] = await store.admit([arrival], at(1))
        assert admission.created is False
        assert admission.case is not None
        assert {admission.case.id} == ids

    async def test_tasks_opened_at_one_instant_list_by_case_then_step(self, store: Store) -> None:
        cases = await self._tied_cases(store, 3)
        for case in reversed(cases):
            for step_id in ("b-step", "a-step"):
                await store.open_task(task_for(case, step_id, opened_at=at(1)))

        expected = [(case.id, step_id) for case in cases for step_id in ("a-step", "b-step")]
        assert [(t.case_id, t.step_id) for t in await store.open_tasks()] == expected
        some = [cases[2].id, cases[0].id]
        listed = await store.open_tasks_of(some)
        assert [(t.case_id, t.step_id) for t in listed] == [e for e in expected if e[0] in some]

    async def test_timers_due_at_one_instant_fire_by_case_then_name(self, store: Store) -> None:
        cases = await self._tied_cases(store, 3)
        for case in reversed(cases):
            timers = [Timer(case_id=case.id, name=n, epoch=0, due_at=at(5)) for n in ("b", "a")]
            await store.save_countdown(case.id, {}, 0, timers, T0)

        assert [t.name for t in await store.timers(cases[0].id)] == ["a", "b"]
        fired = []
        while (timer := await store.claim_due_timer("w1", at(5))) is not None:
            fired.append((timer.case_id, timer.name))
        assert fired == [(case.id, name) for case in cases for name in ("a", "b")]

    # one active case per person

    async def test_a_person_has_one_active_case_whatever_the_playbook(self, store: Store) -> None:
        leaver, _ = await store.create_case(new_case("una@example.com"), T0)
        incident = replace(new_case("una@example.com"), playbook="incident", priority=100)
        again, created = await store.create_case(incident, at(1))
        assert created is False and again.id == leaver.id
        assert [c.id for c in await store.list_cases()] == [leaver.id]
        # contained: open (a trigger joins it) but not active, so a new case may open
        assert await store.claim_case(leaver.id, "w1", at(2), LEASE) is not None
        await store.release_case(leaver.id, "w1", CaseStatus.CONTAINED, at(3))
        assert (await store.find_open_case("una@example.com")) == await store.get_case(leaver.id)
        beside, created = await store.create_case(incident, at(4))
        assert created is True and beside.id != leaver.id
        # the active case is the one a trigger finds, not the contained one
        assert (await store.find_open_case("una@example.com")) == beside
        third, created = await store.create_case(new_case("una@example.com"), at(5))
        assert created is False and third.id == beside.id

    async def test_escalating_appends_steps_raises_priority_and_runs_a_contained_case(
        self, store: Store
    ) -> None:
        case, _ = await store.create_case(new_case("esc@example.com"), T0)
        assert await store.claim_case(case.id, "w1", at(1), LEASE) is not None
        await store.release_case(case.id, "w1", CaseStatus.CONTAINED, at(2))
        deny = PlannedStep(id="deny", action="identity_center.deny_role_sessions", verify=None)
        escalated, added = await store.escalate_case(
            case.id, (*STEPS, deny), 100, at(3), {"source": "pagerduty"}
        )
        assert added == ("deny",)
        assert escalated.priority == 100 and escalated.status is CaseStatus.PENDING
        assert escalated.steps == (*STEPS, deny)
        assert escalated == await store.get_case(case.id)
        steps = await store.steps(case.id)
        assert (steps[-1].index, steps[-1].step_id, steps[-1].status) == (
            len(STEPS),
            "deny",
            StepStatus.PENDING,
        )
        events = await self._assert_chained(store, case.id)
        assert events[-1].kind == "case_escalated"
        assert events[-1].data == {"source": "pagerduty", "steps_added": ["deny"], "priority": 100}
        # again: nothing more to add, the priority is never lowered
        again, added = await store.escalate_case(case.id, (deny,), 50, at(4), {})
        assert added == () and again.priority == 100 and len(again.steps) == len(STEPS) + 1

    @pytest.mark.parametrize("released", [CaseStatus.CONTAINED, CaseStatus.WAITING])
    async def test_a_case_escalated_while_it_runs_is_released_pending_once(
        self, store: Store, released: CaseStatus
    ) -> None:
        case = await self._claimed(store, "w1", now=0)
        deny = PlannedStep(id="deny", action="identity_center.deny_role_sessions", verify=None)
        running, _ = await store.escalate_case(case.id, (deny,), 100, at(1), {})
        assert running.status is CaseStatus.RUNNING and running.lease_owner == "w1"
        # its worker knew only the old steps (say it waits on the operator's task now):
        # the new one must still run at once, not after someone confirms
        await store.release_case(case.id, "w1", released, at(2), event=("case_contained", {}))
        assert (await store.get_case(case.id)).status is CaseStatus.PENDING
        # the timeline does not say contained: the case runs again
        assert "case_contained" not in [e.kind for e in await store.events(case.id)]
        # the next worker knew every step: its release stands (no claim-release loop)
        assert await store.claim_case(case.id, "w2", at(3), LEASE) is not None
        await store.release_case(case.id, "w2", released, at(4))
        assert (await store.get_case(case.id)).status is released

    async def test_a_halted_or_closed_case_is_not_escalated(self, store: Store) -> None:
        halted = await self._in_state(store, CaseStatus.HALTED, 1)
        cancelled = await self._in_state(store, CaseStatus.CANCELLED, 2)
        for case in (halted, cancelled):
            with pytest.raises(StoreError, match="cannot be escalated"):
                await store.escalate_case(case.id, (), 100, at(3), {})
            assert await store.get_case(case.id) == case

    # -- the rate budget replicas share ------------------------------------------------

    @staticmethod
    def _ask(holder: str, want: int, priority: int | None = 50, **kw: Any) -> BudgetAsk:
        values: dict[str, Any] = {
            "bucket": "okta:users-id-write",
            "holder": holder,
            "window": 60.0,
            "limit": 10,
            "want": want,
            "priority": priority,
            "reserve": 2,
            "ttl": 5.0,
        }
        return BudgetAsk(**(values | kw))

    async def test_replicas_together_get_no_more_than_a_window_holds(self, store: Store) -> None:
        start = 1_800_000_000.0  # a minute's start
        a = await store.lease_budget(self._ask("a", 5), start + 1)
        b = await store.lease_budget(self._ask("b", 5), start + 2)
        again = await store.lease_budget(self._ask("a", 5), start + 3)
        # 10 a window, the last 2 kept for urgent calls: 5 + 3, then nothing
        assert (a.granted, b.granted, again.granted) == (5, 3, 0)
        assert a.window_end == b.window_end == start + 60
        assert again.retry_at == start + 60  # nothing to gain before the next window
        urgent = await store.lease_budget(self._ask("b", 5, priority=100), start + 4)
        assert urgent.granted == 2
        assert (await store.lease_budget(self._ask("a", 1, priority=100), start + 5)).granted == 0
        other = await store.lease_budget(self._ask("a", 1, bucket="okta:other"), start + 5)
        assert other.granted == 1  # buckets are counted apart
        nxt = await store.lease_budget(self._ask("a", 9), start + 60)
        assert nxt.granted == 8 and nxt.window_end == start + 120

    async def test_a_starved_urgent_call_holds_back_other_replicas(self, store: Store) -> None:
        start = 1_800_000_000.0
        await store.lease_budget(self._ask("bulk", 8, priority=0), start + 1)
        await store.lease_budget(self._ask("ir", 2, priority=100), start + 2)
        starved = await store.lease_budget(self._ask("ir", 1, priority=100, ttl=70), start + 3)
        assert starved.granted == 0
        # the next window: the replica with the incident waiting goes first
        held = await store.lease_budget(self._ask("bulk", 4, priority=0), start + 60)
        assert held.granted == 0 and held.retry_at < start + 61
        assert (await store.lease_budget(self._ask("ir", 1, priority=100), start + 60.1)).granted
        # served: its waiting call no longer holds anyone back
        assert (await store.lease_budget(self._ask("bulk", 4, priority=0), start + 60.2)).granted

    async def test_a_dead_replica_s_lease_lapses(self, store: Store) -> None:
        start = 1_800_000_000.0
        await store.lease_budget(self._ask("a", 8, priority=0), start + 1)
        short = await store.lease_budget(self._ask("dead", 3, priority=100, ttl=65), start + 2)
        assert short.granted == 2  # its third urgent call waits, recorded
        grant = await store.lease_budget(self._ask("b", 0, priority=None), start + 3)
        assert grant.holders == 3
        # "dead" never renews; while its lease lasts, its waiting call goes first
        held = await store.lease_budget(self._ask("b", 1, priority=0), start + 61)
        assert held.granted == 0
        # once it lapses, it no longer counts (a concurrency cap is split among fewer)
        # and holds nobody back
        later = await store.lease_budget(self._ask("b", 1, priority=0), start + 68)
        assert later.granted == 1 and later.holders == 1


ARN = "arn:aws:sso:::permissionSet/ssoins-1/ps-shared"


async def permission_set_locks_take_turns(first: Store, second: Store) -> None:
    """While `first` holds a set's lock, `second` waits for it (another set's it gets at
    once); when `first` lets go, `second` has it."""
    held = asyncio.Event()
    release = asyncio.Event()
    order: list[str] = []

    async def holder() -> None:
        async with first.permission_set_lock(ARN):
            order.append("first")
            held.set()
            await release.wait()
            order.append("first done")

    async def waiter() -> None:
        async with second.permission_set_lock(ARN):
            order.append("second")

    holding = asyncio.create_task(holder())
    await asyncio.wait_for(held.wait(), 10)
    waiting = asyncio.create_task(waiter())
    async with asyncio.timeout(10), second.permission_set_lock(ARN + "-other"):
        pass  # another set is not held up
    await asyncio.sleep(0.2)  # time for the waiter to get the lock if it could
    assert order == ["first"]
    release.set()
    await asyncio.wait_for(asyncio.gather(holding, waiting), 10)
    assert order == ["first", "first done", "second"]


async def cancelled_lock_wait_ends_cleanly(first: Store, second: Store) -> None:
    """A worker whose lease is lost cancels its step, maybe while it waits for a set's
    lock: the wait ends as a cancellation (not a store failure a step would go on
    from), and the lock is free for others once its holder lets go."""
    async with first.permission_set_lock(ARN):
        waiting = asyncio.create_task(_hold(second))
        await asyncio.sleep(0.2)  # waiting for the lock by now
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(waiting, 10)
    async with asyncio.timeout(10), second.permission_set_lock(ARN):
        pass


async def _hold(store: Store) -> None:
    async with store.permission_set_lock(ARN):
        pass
