"""Test doubles shipped in the package: an in-memory store and fake providers.

`InMemoryStore` implements the whole `Store` protocol in plain Python structures,
with the SQL backends' semantics (leases, claims, timers fired once, the evidence
hash chain, the same orders and tie-breaks), and passes the shared contract suite
(`tests/contract/test_store_memory.py`). It keeps what it was asked in `calls`.

The fake providers keep the state a real provider would (users, assignments,
permission sets, inline policies), record every call in order, and raise the
errors they are told to on chosen calls, before the call takes effect or after
(`Fault`). Give them one shared `calls` list to see the order across providers.

Nothing here does I/O: an engine built on these runs a case in milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import itertools
import json
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from worker import actions
from worker.clock import parse_iso, utc_iso
from worker.countdown import ReachableApplication, ReachablePermissionSet
from worker.domain import (
    Admission,
    Arrival,
    Case,
    CaseEvent,
    CaseStatus,
    Delivery,
    LedgerEntry,
    LedgerState,
    NewCase,
    OperatorTask,
    PlannedStep,
    Refusal,
    StepRecord,
    StepStatus,
    Timer,
)
from worker.errors import (
    CaseStarted,
    LeaseLost,
    NotFound,
    PermanentError,
    StoreError,
    StoreUnavailable,
)
from worker.notify import Notification
from worker.providers import policy
from worker.providers.base import (
    IdentityCenterMatch,
    IdentityCenterUser,
    IdpUser,
    InlinePolicy,
    PlannedCall,
)
from worker.store.base import (
    ACTIVE_STATUSES,
    ALL_LAPSED,
    CLOSED_STATUSES,
    ESCALATABLE,
    OPEN_STATUSES,
    URGENT_STATUSES,
    BudgetAsk,
    BudgetGrant,
    BudgetHolder,
    CaseCount,
    CasePage,
    EvidenceRecord,
    KeyedLocks,
    TaskBacklog,
    TaskConfirmed,
    created_event,
    event_hash,
    fired_event,
    first_milestone,
    genesis_hash,
    grant_budget,
    new_case_id,
    permission_set_lock_name,
)
from worker.store.manager import plan_admission, preferred, settle_admission

if TYPE_CHECKING:
    from worker.notify import Notifier
    from worker.providers.base import IdentityCenter, IdentityProvider
    from worker.store.base import Store

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")


# --------------------------------------------------------------------------------------
# the in-memory store


@dataclass(frozen=True, kw_only=True)
class StoreCall:
    """One store method called, with its arguments by name."""

    method: str
    args: dict[str, Any]


def _stored(when: datetime) -> datetime:
    """A time as a SQL backend reads it back: UTC, to the millisecond, rounded up."""
    return parse_iso(utc_iso(when))


def _stored_or_none(when: datetime | None) -> datetime | None:
    return None if when is None else _stored(when)


def _json(value: T) -> T:
    """A value as a backend reads back its JSON: a copy, tuples as lists; what JSON
    cannot hold raises here as it would there."""
    copied: T = json.loads(json.dumps(value))
    return copied


def _by_created(case: Case) -> tuple[datetime, str]:
    return (case.created_at, case.id)


def _task_order(task: OperatorTask) -> tuple[datetime, str, str]:
    return (task.opened_at, task.case_id, task.step_id)


def _recorded(
    method: Callable[Concatenate[InMemoryStore, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[InMemoryStore, P], Coroutine[Any, Any, R]]:
    """A store method that refuses to run on a closed store and records its call,
    every argument by name (defaults included)."""
    signature = inspect.signature(method)

    async def recorded(self: InMemoryStore, /, *args: P.args, **kwargs: P.kwargs) -> R:
        if not self._open:
            raise StoreError("store is not open")
        if self.unavailable:
            raise StoreUnavailable("the in-memory store is switched unavailable (a test's outage)")
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        del arguments["self"]
        self.calls.append(StoreCall(method=method.__name__, args=arguments))
        return await method(self, *args, **kwargs)

    functools.update_wrapper(recorded, method)
    return recorded


class InMemoryStore:
    """The `Store` protocol in dictionaries and lists, for tests.

    Each method runs without awaiting in between, so it is atomic for asyncio: that
    is this store's transaction. Writes the SQL backends refuse are refused here
    too, with the same errors; foreign keys become `StoreError`.
    """

    def __init__(self) -> None:
        #: every method called, in order (procrastinate's `InMemoryConnector.queries`)
        self.calls: list[StoreCall] = []
        self._open = False
        #: set by a test to stand for a database outage: every operation raises
        #: StoreUnavailable until it is cleared
        self.unavailable = False
        self._cases: dict[str, Case] = {}
        self._steps: dict[str, list[StepRecord]] = {}
        self._ledger: dict[str, LedgerEntry] = {}
        self._tasks: dict[tuple[str, str], OperatorTask] = {}
        self._timers: dict[tuple[str, str, int], Timer] = {}
        self._events: dict[str, list[EvidenceRecord]] = {}
        #: cases escalated while a worker held them: released pending (see `release_case`)
        self._rerun: set[str] = set()
        self._deliveries: dict[str, Delivery] = {}
        self._refusals: list[Refusal] = []
        self._budget: dict[str, dict[str, BudgetHolder]] = {}
        #: set when a case may have become runnable, as PostgreSQL's NOTIFY
        self._work = asyncio.Event()
        self._locks = KeyedLocks()

    def calls_to(self, method: str) -> list[StoreCall]:
        """The recorded calls of one method."""
        return [c for c in self.calls if c.method == method]

    def _case(self, case_id: str) -> Case:
        try:
            return self._cases[case_id]
        except KeyError:
            raise NotFound(f"no case {case_id!r}") from None

    def _referenced(self, case_id: str) -> None:
        """A row that names a case needs the case (the SQL tables' foreign key)."""
        if case_id not in self._cases:
            raise StoreError(f"FOREIGN KEY constraint failed: no case {case_id!r}")

    async def open(self) -> None:
        self._open = True
        self.calls.append(StoreCall(method="open", args={}))

    async def close(self) -> None:
        if self._open:
            self.calls.append(StoreCall(method="close", args={}))
        self._open = False

    @_recorded
    async def ping(self) -> None:
        """Nothing to reach: an open store answers, a closed one raises StoreError."""

    @_recorded
    async def wait_for_work(self, timeout: float) -> bool:  # noqa: ASYNC109
        """True as soon as a case was created, admitted, rescheduled or resumed, or a
        countdown saved, since the last True (kept while nobody waits); False after
        `timeout` without one. A hint, as PostgreSQL's LISTEN/NOTIFY: callers poll too."""
        if not self._work.is_set():
            try:
                await asyncio.wait_for(self._work.wait(), timeout)
            except TimeoutError:
                return False
        self._work.clear()
        return True

    # cases

    def _insert_case(self, case_id: str, new: NewCase, now: datetime, key: str | None) -> Case:
        at = _stored(now)
        case = Case(
            id=case_id,
            playbook=new.playbook,
            subject=new.subject,
            status=CaseStatus.PENDING,
            priority=new.priority,
            steps=tuple(
                PlannedStep(id=s.id, action=s.action, verify=s.verify, options=_json(s.options))
                for s in new.steps
            ),
            trigger=_json(new.trigger),
            created_at=at,
            updated_at=at,
            run_after=_stored_or_none(new.run_after),
            idempotency_key=key,
        )
        self._cases[case_id] = case
        self._steps[case_id] = [
            StepRecord(
                case_id=case_id,
                index=i,
                step_id=s.id,
                action=s.action,
                status=StepStatus.PENDING,
            )
            for i, s in enumerate(new.steps)
        ]
        self._append(case_id, "case_created", now, None, created_event(new))
        self._work.set()
        return case

    @_recorded
    async def create_case(self, new: NewCase, now: datetime) -> tuple[Case, bool]:
        case_id = new_case_id()  # drawn first, as the SQL backends do
        if new.idempotency_key is not None:
            for case in self._cases.values():
                if case.idempotency_key == new.idempotency_key:
                    return case, False
        for case in self._cases.values():  # the SQL backends' unique index
            if case.subject == new.subject and case.status in ACTIVE_STATUSES:
                return case, False
        # what cannot be stored as JSON fails before anything is written
        _json([new.trigger, [s.options for s in new.steps], created_event(new)])
        return self._insert_case(case_id, new, now, new.idempotency_key), True

    @_recorded
    async def admit(self, arrivals: Sequence[Arrival], now: datetime) -> list[Admission]:
        if not arrivals:
            return []
        keys = {a.key for a in arrivals}
        people = {a.case.subject for a in arrivals}
        seen = {k: d for k, d in self._deliveries.items() if k in keys}
        open_cases: dict[str, Case] = {}
        for case in self._open_cases():
            if case.subject in people:
                open_cases[case.subject] = preferred(open_cases.get(case.subject), case)
        plan = plan_admission(arrivals, seen, open_cases)  # raises before any write
        for _, new in plan.creates:
            _json([new.trigger, [s.options for s in new.steps]])
        created = {
            case_id: self._insert_case(case_id, new, now, None) for case_id, new in plan.creates
        }
        deliveries, admissions = settle_admission(plan, arrivals, created, now)
        for delivery in deliveries:
            self._deliveries[delivery.key] = self._stored_delivery(delivery)
        return admissions

    def _open_cases(self) -> list[Case]:
        return [c for c in self._cases.values() if c.status in OPEN_STATUSES]

    @_recorded
    async def get_case(self, case_id: str) -> Case:
        return self._case(case_id)

    @_recorded
    async def list_cases(self, statuses: tuple[CaseStatus, ...] | None = None) -> list[Case]:
        return sorted(self._filtered(statuses), key=_by_created)

    def _filtered(self, statuses: tuple[CaseStatus, ...] | None) -> list[Case]:
        """The cases in these states (None or empty: every case)."""
        if not statuses:
            return list(self._cases.values())
        return [c for c in self._cases.values() if c.status in statuses]

    @staticmethod
    def _runnable(case: Case, now: datetime) -> bool:
        """Pending and due, or running with a lapsed lease (compared as stored)."""
        at = _stored(now)
        if case.status is CaseStatus.PENDING:
            return case.run_after is None or case.run_after <= at
        if case.status is CaseStatus.RUNNING:
            return case.lease_expires_at is not None and case.lease_expires_at <= at
        return False

    def _take(self, case: Case, worker_id: str, now: datetime, lease_seconds: float) -> Case:
        claimed = replace(
            case,
            status=CaseStatus.RUNNING,
            lease_owner=worker_id,
            lease_expires_at=_stored(now + timedelta(seconds=lease_seconds)),
            updated_at=_stored(now),
        )
        self._cases[case.id] = claimed
        return claimed

    @_recorded
    async def claim_next(
        self, worker_id: str, now: datetime, lease_seconds: float, *, min_priority: int = 0
    ) -> Case | None:
        runnable = [
            c for c in self._cases.values() if self._runnable(c, now) and c.priority >= min_priority
        ]
        if not runnable:
            return None
        best = min(runnable, key=lambda c: (-c.priority, c.created_at, c.id))
        return self._take(best, worker_id, now, lease_seconds)

    @_recorded
    async def claim_case(
        self, case_id: str, worker_id: str, now: datetime, lease_seconds: float
    ) -> Case | None:
        case = self._cases.get(case_id)
        if case is None or not self._runnable(case, now):
            return None
        return self._take(case, worker_id, now, lease_seconds)

    @_recorded
    async def heartbeat(
        self, case_id: str, worker_id: str, now: datetime, lease_seconds: float
    ) -> bool:
        case = self._cases.get(case_id)
        if case is None or case.lease_owner != worker_id or case.status is not CaseStatus.RUNNING:
            return False
        self._cases[case_id] = replace(
            case, lease_expires_at=_stored(now + timedelta(seconds=lease_seconds))
        )
        return True

    @_recorded
    async def release_case(
        self,
        case_id: str,
        worker_id: str,
        status: CaseStatus,
        now: datetime,
        *,
        run_after: datetime | None = None,
        halt_reason: str | None = None,
        event: tuple[str, dict[str, Any]] | None = None,
    ) -> CaseStatus:
        case = self._cases.get(case_id)
        if case is None or case.lease_owner != worker_id:
            raise LeaseLost(f"case {case_id} is not held by worker {worker_id}")
        if event is not None:
            _json(event[1])  # fails before the case is written, as a rolled-back transaction
        rerun = case_id in self._rerun
        self._rerun.discard(case_id)
        requested = status
        if rerun and status in (CaseStatus.CONTAINED, CaseStatus.WAITING):
            status = CaseStatus.PENDING  # escalated while it ran: steps its worker did not know
        if status is CaseStatus.WAITING and self._confirmed_while_waiting(case_id):
            status = CaseStatus.PENDING  # the confirmation found no waiting case to resume
        if status is not requested:
            self._work.set()
        self._cases[case_id] = replace(
            case,
            status=status,
            run_after=_stored_or_none(run_after),
            halt_reason=halt_reason,
            lease_owner=None,
            lease_expires_at=None,
            updated_at=_stored(now),
        )
        if event is not None and status is requested:
            self._append(case_id, event[0], now, None, event[1])
        return status

    def _confirmed_while_waiting(self, case_id: str) -> bool:
        """Whether a step of the case waits on a task already confirmed."""
        return any(
            r.status is StepStatus.WAITING
            and (task := self._tasks.get((case_id, r.step_id))) is not None
            and task.confirmed_at is not None
            for r in self._steps.get(case_id, [])
        )

    @_recorded
    async def find_open_case(self, subject: str) -> Case | None:
        found: Case | None = None
        for case in self._open_cases():
            if case.subject == subject:
                found = preferred(found, case)
        return found

    @_recorded
    async def escalate_case(
        self,
        case_id: str,
        steps: Sequence[PlannedStep],
        priority: int,
        now: datetime,
        data: dict[str, Any],
    ) -> tuple[Case, tuple[str, ...]]:
        case = self._case(case_id)
        if case.status not in ESCALATABLE:
            raise StoreError(f"case {case_id} is {case.status.value}: it cannot be escalated")
        have = {s.id for s in case.steps}
        added = tuple(s for s in steps if s.id not in have)
        raised = max(priority, case.priority)
        status = case.status
        if added and status in (CaseStatus.CONTAINED, CaseStatus.WAITING):
            status = CaseStatus.PENDING
        run_after = case.run_after if status is CaseStatus.RUNNING else None
        if added and status is CaseStatus.RUNNING:
            self._rerun.add(case_id)
        first = len(case.steps)
        self._steps[case_id] = [
            *self._steps.get(case_id, []),
            *(
                StepRecord(
                    case_id=case_id,
                    index=first + i,
                    step_id=s.id,
                    action=s.action,
                    status=StepStatus.PENDING,
                )
                for i, s in enumerate(added)
            ),
        ]
        self._cases[case_id] = case = replace(
            case,
            steps=(*case.steps, *added),
            priority=raised,
            status=status,
            run_after=run_after,
            updated_at=_stored(now),
        )
        ids = tuple(s.id for s in added)
        self._append(
            case_id,
            "case_escalated",
            now,
            None,
            {**data, "steps_added": list(ids), "priority": raised},
        )
        self._work.set()
        return case, ids

    def _not_started(self, case_id: str) -> Case:
        case = self._case(case_id)
        started = any(r.attempts > 0 for r in self._steps.get(case_id, []))
        if case.status is not CaseStatus.PENDING or started:
            raise CaseStarted(
                f"case {case_id} has started (status {case.status.value}): "
                "containment cannot be withdrawn or moved once it began"
            )
        return case

    @_recorded
    async def reschedule_case(
        self, case_id: str, run_after: datetime, now: datetime, *, by: dict[str, Any] | None = None
    ) -> Case:
        case = self._not_started(case_id)
        self._cases[case_id] = replace(case, run_after=_stored(run_after), updated_at=_stored(now))
        data: dict[str, Any] = {"run_after": utc_iso(run_after)}
        self._append(case_id, "case_rescheduled", now, None, {**data, "by": by} if by else data)
        self._work.set()
        return self._cases[case_id]

    @_recorded
    async def cancel_case(self, case_id: str, now: datetime, reason: str) -> Case:
        case = self._not_started(case_id)
        self._cases[case_id] = replace(
            case, status=CaseStatus.CANCELLED, halt_reason=reason, updated_at=_stored(now)
        )
        self._append(case_id, "case_cancelled", now, None, {"reason": reason})
        return self._cases[case_id]

    @_recorded
    async def resume_case(
        self, case_id: str, now: datetime, *, event: tuple[str, dict[str, Any]] | None = None
    ) -> Case:
        case = self._case(case_id)
        if event is not None:
            _json(event[1])  # fails before the case is written, as a rolled-back transaction
        if case.status in (CaseStatus.WAITING, CaseStatus.HALTED):
            if event is not None:
                self._append(case_id, event[0], now, None, event[1])
            case = replace(
                case,
                status=CaseStatus.PENDING,
                run_after=None,
                halt_reason=None,
                updated_at=_stored(now),
            )
            self._cases[case_id] = case
            self._work.set()
        return case

    # steps

    @_recorded
    async def steps(self, case_id: str) -> list[StepRecord]:
        return list(self._steps.get(case_id, []))

    def _held_step(self, case_id: str, index: int, worker_id: str) -> StepRecord:
        """The step a write is about, refused unless the writer holds the case."""
        if self._case(case_id).lease_owner != worker_id:
            raise LeaseLost(f"case {case_id} is not held by worker {worker_id}")
        records = self._steps.get(case_id, [])
        if not 0 <= index < len(records):
            raise NotFound(f"case {case_id} has no step {index}")
        return records[index]

    @_recorded
    async def start_step(
        self, case_id: str, index: int, worker_id: str, now: datetime
    ) -> StepRecord:
        return self._start(case_id, index, worker_id, now)

    @_recorded
    async def finish_step(
        self,
        case_id: str,
        index: int,
        worker_id: str,
        status: StepStatus,
        now: datetime,
        *,
        evidence: dict[str, Any] | None = None,
        error: str | None = None,
        event: tuple[str, dict[str, Any]] | None = None,
    ) -> StepRecord:
        return self._finish(case_id, index, worker_id, status, now, evidence, error, event)

    @_recorded
    async def finish_and_start(
        self,
        case_id: str,
        index: int,
        worker_id: str,
        now: datetime,
        *,
        evidence: dict[str, Any],
        event: tuple[str, dict[str, Any]],
        next_index: int,
    ) -> StepRecord:
        self._held_step(case_id, next_index, worker_id)  # refused before anything is written
        self._finish(case_id, index, worker_id, StepStatus.DONE, now, evidence, None, event)
        return self._start(case_id, next_index, worker_id, now)

    def _start(self, case_id: str, index: int, worker_id: str, now: datetime) -> StepRecord:
        record = self._held_step(case_id, index, worker_id)
        started = replace(
            record,
            status=StepStatus.RUNNING,
            attempts=record.attempts + 1,
            started_at=record.started_at or _stored(now),
        )
        self._steps[case_id][index] = started
        # in the same write, as the databases do
        self._append(case_id, "step_started", now, record.step_id, {"attempt": started.attempts})
        return started

    def _finish(
        self,
        case_id: str,
        index: int,
        worker_id: str,
        status: StepStatus,
        now: datetime,
        evidence: dict[str, Any] | None,
        error: str | None,
        event: tuple[str, dict[str, Any]] | None,
    ) -> StepRecord:
        record = self._held_step(case_id, index, worker_id)
        stored_evidence = _json(evidence or {})
        if event is not None:
            _json(event[1])  # fails before the step is written, as a rolled-back transaction
        finished = replace(
            record,
            status=status,
            # like the SQL: only a done or failed step keeps a finish time
            finished_at=_stored(now) if status in (StepStatus.DONE, StepStatus.FAILED) else None,
            evidence=stored_evidence,
            error=error,
        )
        self._steps[case_id][index] = finished
        if event is not None:
            self._append(case_id, event[0], now, record.step_id, event[1])
        return finished

    # side-effect ledger

    @contextlib.asynccontextmanager
    async def permission_set_lock(self, arn: str) -> AsyncIterator[None]:
        """One process is all there is: its tasks take turns."""
        if not self._open:
            raise StoreError("store is not open")
        self.calls.append(StoreCall(method="permission_set_lock", args={"arn": arn}))
        async with self._locks.hold(permission_set_lock_name(arn)):
            yield

    @_recorded
    async def ledger_get(self, key: str) -> LedgerEntry | None:
        return self._ledger.get(key)

    @_recorded
    async def ledger_intent(
        self, key: str, case_id: str, step_id: str, operation: str, now: datetime
    ) -> LedgerEntry:
        if key not in self._ledger:
            self._referenced(case_id)
            self._ledger[key] = LedgerEntry(
                key=key,
                case_id=case_id,
                step_id=step_id,
                operation=operation,
                state=LedgerState.INTENT,
                requested_at=_stored(now),
            )
        return self._ledger[key]

    @_recorded
    async def ledger_applied(self, key: str, now: datetime) -> LedgerEntry:
        entry = self._ledger.get(key)
        if entry is None:
            raise NotFound(f"no ledger entry {key!r}")
        self._ledger[key] = replace(
            entry, state=LedgerState.APPLIED, applied_at=entry.applied_at or _stored(now)
        )
        return self._ledger[key]

    @_recorded
    async def ledger_settle(
        self, key: str, state: LedgerState, now: datetime
    ) -> LedgerEntry | None:
        entry = self._ledger.get(key)
        if entry is None:
            raise NotFound(f"no ledger entry {key!r}")
        if entry.state is not LedgerState.INTENT:
            return None
        applied_at = (entry.applied_at or _stored(now)) if state is LedgerState.APPLIED else None
        self._ledger[key] = entry = replace(entry, state=state, applied_at=applied_at)
        return entry

    @_recorded
    async def ledger_intents(self, case_id: str) -> list[LedgerEntry]:
        found = [
            e
            for e in self._ledger.values()
            if e.case_id == case_id and e.state is LedgerState.INTENT
        ]
        return sorted(found, key=lambda e: (e.requested_at, e.key))

    # operator tasks

    @_recorded
    async def open_task(self, task: OperatorTask) -> OperatorTask:
        slot = (task.case_id, task.step_id)
        if slot not in self._tasks:
            self._referenced(task.case_id)
            self._tasks[slot] = replace(
                task, opened_at=_stored(task.opened_at), confirmed_at=None, confirmed_by=None
            )
        return self._tasks[slot]

    @_recorded
    async def get_task(self, case_id: str, step_id: str) -> OperatorTask | None:
        return self._tasks.get((case_id, step_id))

    @_recorded
    async def confirm_task(
        self, case_id: str, step_id: str, confirmed_by: str, now: datetime
    ) -> TaskConfirmed:
        task = self._tasks.get((case_id, step_id))
        if task is None:
            raise NotFound(f"case {case_id} has no operator task for step {step_id!r}")
        already = task.confirmed_at is not None
        if not already:
            task = replace(task, confirmed_at=_stored(now), confirmed_by=confirmed_by)
            self._tasks[(case_id, step_id)] = task
            self._append(
                case_id, "operator_confirmed", now, step_id, {"confirmed_by": confirmed_by}
            )
        # in the same write, as the databases do
        case = self._case(case_id)
        resumed = case.status is CaseStatus.WAITING and self._confirmed_while_waiting(case_id)
        if resumed:
            self._cases[case_id] = replace(
                case, status=CaseStatus.PENDING, run_after=None, updated_at=_stored(now)
            )
            self._work.set()
        return TaskConfirmed(task=task, already=already, resumed=resumed)

    def _waiting_tasks(self) -> list[OperatorTask]:
        return sorted((t for t in self._tasks.values() if t.confirmed_at is None), key=_task_order)

    @_recorded
    async def open_tasks(self) -> list[OperatorTask]:
        return self._waiting_tasks()

    # countdown and timers

    @_recorded
    async def save_countdown(
        self,
        case_id: str,
        countdown: dict[str, Any],
        epoch: int,
        timers: list[Timer],
        now: datetime,
    ) -> None:
        if timers:
            self._referenced(case_id)
        stored = _json(countdown)
        if case_id in self._cases:
            self._cases[case_id] = replace(
                self._cases[case_id], countdown=stored, updated_at=_stored(now)
            )
        for slot, timer in list(self._timers.items()):
            if timer.case_id == case_id and timer.epoch < epoch and timer.fired_at is None:
                del self._timers[slot]
        for timer in timers:
            slot = (case_id, timer.name, epoch)
            existing = self._timers.get(slot)
            if existing is None:
                self._timers[slot] = Timer(
                    case_id=case_id,
                    name=timer.name,
                    epoch=epoch,
                    due_at=_stored(timer.due_at),
                    closes_case=timer.closes_case,
                )
            elif existing.fired_at is None:
                # within an epoch an unfired milestone moves; a fired one stays fired
                self._timers[slot] = replace(existing, due_at=_stored(timer.due_at))
        self._work.set()

    @_recorded
    async def claim_due_timer(self, worker_id: str, now: datetime) -> Timer | None:
        due = [t for t in self._timers.values() if t.fired_at is None and t.due_at <= _stored(now)]
        if not due:
            return None
        timer = min(due, key=lambda t: (t.due_at, t.case_id, t.name, t.epoch))
        self._timers[(timer.case_id, timer.name, timer.epoch)] = replace(
            timer, fired_at=_stored(now), fired_by=worker_id
        )
        self._append(
            timer.case_id,
            fired_event(timer.name),
            now,
            None,
            {"milestone": timer.name, "epoch": timer.epoch, "due_at": utc_iso(timer.due_at)},
        )
        if timer.closes_case:
            # the last milestone closes a contained case (a halted one stays halted)
            case = self._cases[timer.case_id]
            if case.status is CaseStatus.CONTAINED:
                self._cases[case.id] = replace(
                    case, status=CaseStatus.ACCESS_LAPSED, updated_at=_stored(now)
                )
            self._append(timer.case_id, "case_access_lapsed", now, None, {})
        return replace(timer, fired_at=now, fired_by=worker_id)

    @_recorded
    async def timers(self, case_id: str) -> list[Timer]:
        return sorted(
            (t for t in self._timers.values() if t.case_id == case_id),
            key=lambda t: (t.epoch, t.due_at, t.name),
        )

    @_recorded
    async def next_timer_due(self) -> datetime | None:
        return min((t.due_at for t in self._timers.values() if t.fired_at is None), default=None)

    @_recorded
    async def next_case_due(self, now: datetime) -> datetime | None:
        at = _stored(now)
        dues = [
            c.run_after if c.status is CaseStatus.PENDING else c.lease_expires_at
            for c in self._cases.values()
            if c.status in (CaseStatus.PENDING, CaseStatus.RUNNING)
        ]
        return min((due for due in dues if due is not None and due > at), default=None)

    # trigger deliveries and refusals

    @staticmethod
    def _stored_delivery(delivery: Delivery) -> Delivery:
        return replace(
            delivery, outcome=_json(delivery.outcome), received_at=_stored(delivery.received_at)
        )

    @_recorded
    async def record_delivery(self, delivery: Delivery) -> tuple[Delivery, bool]:
        existing = self._deliveries.get(delivery.key)
        if existing is not None:
            return existing, False
        self._deliveries[delivery.key] = self._stored_delivery(delivery)
        return delivery, True

    @_recorded
    async def get_delivery(self, key: str) -> Delivery | None:
        return self._deliveries.get(key)

    @_recorded
    async def record_refusal(self, refusal: Refusal) -> None:
        self._refusals.append(replace(refusal, at=_stored(refusal.at)))

    @_recorded
    async def refusals(self) -> list[Refusal]:
        return list(self._refusals)

    # timeline and its evidence chain

    def _append(
        self, case_id: str, kind: str, now: datetime, step_id: str | None, data: dict[str, Any]
    ) -> int:
        """Link the event to the case's chain head and move the head: hashed as it is
        read back (the stored time text and JSON), with the backends' functions."""
        if case_id not in self._cases:
            raise StoreError(f"no case {case_id!r} to record the event {kind!r} for")
        chain = self._events.setdefault(case_id, [])
        seq = len(chain) + 1
        prev = chain[-1].hash if chain else genesis_hash(case_id)
        at = utc_iso(now)
        stored = _json(data)
        chain.append(
            EvidenceRecord(
                case_id=case_id,
                seq=seq,
                at=at,
                kind=kind,
                step_id=step_id,
                data=stored,
                prev_hash=prev,
                hash=event_hash(case_id, seq, at, kind, step_id, stored, prev),
            )
        )
        return seq

    @_recorded
    async def append_event(
        self, case_id: str, kind: str, now: datetime, *, step_id: str | None, data: dict[str, Any]
    ) -> CaseEvent:
        seq = self._append(case_id, kind, now, step_id, data)
        return CaseEvent(case_id=case_id, seq=seq, at=now, kind=kind, step_id=step_id, data=data)

    @_recorded
    async def events(self, case_id: str) -> list[CaseEvent]:
        return [
            CaseEvent(
                case_id=r.case_id,
                seq=r.seq,
                at=parse_iso(r.at),
                kind=r.kind,
                step_id=r.step_id,
                data=_json(r.data),
            )
            for r in self._events.get(case_id, [])
        ]

    @_recorded
    async def evidence(self, case_id: str) -> list[EvidenceRecord]:
        return [replace(r, data=_json(r.data)) for r in self._events.get(case_id, [])]

    @_recorded
    async def evidence_head(self, case_id: str) -> tuple[str, int]:
        self._case(case_id)
        chain = self._events.get(case_id, [])
        return (chain[-1].hash if chain else genesis_hash(case_id)), len(chain)

    # aggregates and pages

    @_recorded
    async def case_counts(self) -> list[CaseCount]:
        counts: dict[tuple[str, str], int] = {}
        for case in self._cases.values():
            pair = (case.status.value, case.playbook)
            counts[pair] = counts.get(pair, 0) + 1
        return [
            CaseCount(status=CaseStatus(status), playbook=playbook, count=n)
            for (status, playbook), n in sorted(counts.items())
        ]

    @_recorded
    async def running_countdowns(self, now: datetime) -> int:
        # compared as text, as the SQL does: `now` cut to its millisecond, since
        # utc_iso would round it up past a milestone due within that millisecond
        cut = utc_iso(now.replace(microsecond=now.microsecond - now.microsecond % 1000))
        running = 0
        for case in self._cases.values():
            if case.countdown is None or case.status in CLOSED_STATUSES:
                continue
            lapse = first_milestone(case.countdown, ALL_LAPSED)
            if isinstance(lapse, str) and lapse > cut:
                running += 1
        return running

    @_recorded
    async def count_events(self, kind: str) -> int:
        return sum(r.kind == kind for chain in self._events.values() for r in chain)

    @_recorded
    async def lease_budget(self, ask: BudgetAsk, now: float) -> BudgetGrant:
        holders = self._budget.setdefault(ask.bucket, {})
        mine, grant = grant_budget(list(holders.values()), ask, now)
        holders[ask.holder] = mine
        return grant

    @_recorded
    async def task_backlog(self) -> TaskBacklog:
        waiting = self._waiting_tasks()
        return TaskBacklog(
            waiting=len(waiting), oldest_opened_at=waiting[0].opened_at if waiting else None
        )

    @_recorded
    async def open_tasks_of(self, case_ids: Sequence[str]) -> list[OperatorTask]:
        wanted = set(case_ids)
        return [t for t in self._waiting_tasks() if t.case_id in wanted]

    @_recorded
    async def urgent_cases(
        self, statuses: tuple[CaseStatus, ...] | None, *, limit: int, offset: int
    ) -> CasePage:
        cases = self._filtered(statuses)
        # URGENCY_ORDER: the urgent states in their order, then the newest, then by id
        # (stable sorts, the last key first)
        cases.sort(key=lambda c: c.id)
        cases.sort(key=lambda c: c.created_at, reverse=True)
        cases.sort(key=_urgency)
        start = max(0, offset)
        return CasePage(cases=tuple(cases[start : start + max(0, limit)]), total=len(cases))

    @_recorded
    async def cases_after(
        self, statuses: tuple[CaseStatus, ...] | None, *, after: str | None, limit: int
    ) -> list[Case]:
        cases = sorted(self._filtered(statuses), key=_by_created)
        if after is not None:
            mark = _by_created(self._case(after))
            cases = [c for c in cases if _by_created(c) > mark]
        return cases[: max(0, limit)]


def _urgency(case: Case) -> int:
    if case.status in URGENT_STATUSES:
        return URGENT_STATUSES.index(case.status)
    return len(URGENT_STATUSES)


# --------------------------------------------------------------------------------------
# fake providers


@dataclass(frozen=True, kw_only=True)
class ProviderCall:
    """One call a fake provider received."""

    #: "idp" | "identity_center" | "notifier"
    provider: str
    method: str
    args: tuple[Any, ...]

    @property
    def name(self) -> str:
        """`provider.method`, as the tests compare call logs."""
        return f"{self.provider}.{self.method}"


@dataclass(kw_only=True)
class Fault:
    """An error a fake raises on chosen calls of one method.

    The first `skip` matching calls pass; the next `times` (None: all of them) raise
    `error`. `after`: the call takes effect first, then raises, as a timeout after
    the provider applied the change."""

    method: str
    error: Exception
    after: bool = False
    skip: int = 0
    times: int | None = 1
    #: matching calls seen so far, and how many of them raised
    seen: int = 0
    fired: int = 0

    def strikes(self) -> bool:
        """Count one matching call; True if it must raise."""
        self.seen += 1
        if self.seen <= self.skip:
            return False
        if self.times is not None and self.fired >= self.times:
            return False
        self.fired += 1
        return True


class _Fake:
    """What every fake shares: the call log and the faults."""

    provider = "fake"

    def __init__(self, calls: list[ProviderCall] | None) -> None:
        #: every call, in order; pass one list to several fakes to see them interleaved
        self.calls: list[ProviderCall] = calls if calls is not None else []
        self.faults: list[Fault] = []

    def fail(
        self,
        method: str,
        error: Exception,
        *,
        after: bool = False,
        skip: int = 0,
        times: int | None = 1,
    ) -> Fault:
        """Make calls of `method` raise `error` (see `Fault`); returns the fault."""
        if not callable(getattr(self, method, None)):
            raise ValueError(f"{type(self).__name__} has no method {method!r}")
        fault = Fault(method=method, error=error, after=after, skip=skip, times=times)
        self.faults.append(fault)
        return fault

    def called(self, method: str) -> list[ProviderCall]:
        """This fake's calls of one method."""
        return [c for c in self.calls if c.provider == self.provider and c.method == method]

    async def _call(self, method: str, args: tuple[Any, ...], effect: Callable[[], T]) -> T:
        """Record the call, raise a fault that strikes before it, apply `effect`,
        raise a fault that strikes after it, or return what `effect` returned."""
        self.calls.append(ProviderCall(provider=self.provider, method=method, args=args))
        await asyncio.sleep(0)  # a real call yields to the loop: so does this one
        striking = [f for f in self.faults if f.method == method and f.strikes()]
        for fault in striking:
            if not fault.after:
                raise fault.error.with_traceback(None)  # one traceback, not every raise's
        result = effect()
        for fault in striking:
            raise fault.error.with_traceback(None)
        return result


@dataclass(kw_only=True)
class FakeIdpUser:
    """A user as the fake IdP holds it; mutable, as the provider's own state is."""

    id: str
    login: str
    #: "ACTIVE" | "DEPROVISIONED", Okta's words
    status: str = "ACTIVE"
    sessions_revoked: int = 0


class FakeIdentityProvider(_Fake):
    """An identity provider (`IdentityProvider`) with users in a dictionary."""

    provider = "idp"

    def __init__(self, *, name: str = "fake-idp", calls: list[ProviderCall] | None = None) -> None:
        super().__init__(calls)
        self.name = name
        self.users: dict[str, FakeIdpUser] = {}
        self._ids = itertools.count(1)

    def add_user(self, login: str, *, status: str = "ACTIVE") -> FakeIdpUser:
        user = FakeIdpUser(id=f"idp-{next(self._ids)}", login=login, status=status)
        self.users[user.id] = user
        return user

    def _user(self, user_id: str) -> FakeIdpUser:
        if user_id not in self.users:
            raise PermanentError(self.name, f"no user with id {user_id!r}", status=404)
        return self.users[user_id]

    @staticmethod
    def _shown(user: FakeIdpUser) -> IdpUser:
        return IdpUser(
            id=user.id,
            login=user.login,
            status=user.status,
            deactivated=user.status == "DEPROVISIONED",
        )

    async def find_user(self, subject: str) -> IdpUser:
        def find() -> IdpUser:
            for user in self.users.values():
                if user.login == subject:
                    return self._shown(user)
            raise PermanentError(self.name, f"no user with login {subject!r}", status=404)

        return await self._call("find_user", (subject,), find)

    async def get_user(self, user_id: str) -> IdpUser:
        return await self._call("get_user", (user_id,), lambda: self._shown(self._user(user_id)))

    async def deactivate_user(self, user_id: str) -> None:
        def deactivate() -> None:
            self._user(user_id).status = "DEPROVISIONED"

        await self._call("deactivate_user", (user_id,), deactivate)

    async def revoke_sessions(self, user_id: str) -> None:
        def revoke() -> None:
            self._user(user_id).sessions_revoked += 1

        await self._call("revoke_sessions", (user_id,), revoke)

    def plan(self, action: str, subject: str) -> list[PlannedCall]:
        self.calls.append(ProviderCall(provider=self.provider, method="plan", args=(action,)))
        if action == actions.DEACTIVATE_USER.name:
            return [
                PlannedCall(method="find_user", target=subject, mutates=False),
                PlannedCall(method="deactivate_user", target=subject, mutates=True),
                PlannedCall(method="get_user", target=subject, mutates=False),
            ]
        if action == actions.REVOKE_SESSIONS.name:
            return [
                PlannedCall(method="revoke_sessions", target=subject, mutates=True),
                PlannedCall(method="get_user", target=subject, mutates=False),
            ]
        return []


@dataclass(kw_only=True)
class FakeIcUser:
    """A user as the fake Identity Center holds it; mutable, as AWS's state is."""

    user_id: str
    user_name: str
    #: "ENABLED" | "DISABLED", as DescribeUser reports it
    status: str = "ENABLED"
    #: the ExternalIds the IdP's SCIM sync set (the IdP user's id)
    external_ids: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class FakePermissionSet:
    arn: str
    name: str
    #: None: DescribePermissionSet gives none that parses (the countdown takes 12 h)
    session_duration: timedelta | None


class FakeIdentityCenter(_Fake):
    """IAM Identity Center (`IdentityCenter`): users, groups, account assignments,
    permission sets and their inline policies, in dictionaries.

    Asynchronous requests (provisioning, assignment deletion) finish at once; set
    `request_failure` to a reason to see the next requests fail."""

    provider = "identity_center"

    def __init__(
        self, *, identity_source: str = "scim", calls: list[ProviderCall] | None = None
    ) -> None:
        super().__init__(calls)
        self.identity_source = identity_source
        self.users: dict[str, FakeIcUser] = {}
        self.permission_sets: dict[str, FakePermissionSet] = {}
        #: membership id -> (user id, group id)
        self.memberships: dict[str, tuple[str, str]] = {}
        #: (principal type, principal id, account id, permission set arn)
        self.assignments_made: list[tuple[str, str, str, str]] = []
        #: application arn -> (name, user background sessions enabled)
        self.applications: dict[str, tuple[str, bool | None]] = {}
        #: (principal type, principal id, application arn)
        self.application_assignments: list[tuple[str, str, str]] = []
        #: permission set arn -> its inline policy (JSON text)
        self.policies: dict[str, str] = {}
        #: permission set arn -> the inline policy each provisioning pushed, in order
        self.provisionings: dict[str, list[str]] = {}
        #: why the next asynchronous requests fail (None: they succeed)
        self.request_failure: str | None = None
        self._requests: dict[str, str | None] = {}
        self._ids = itertools.count(1)

    # arranging the state

    def add_user(self, user_name: str, *, status: str = "ENABLED") -> FakeIcUser:
        user = FakeIcUser(user_id=f"ic-{next(self._ids)}", user_name=user_name, status=status)
        self.users[user.user_id] = user
        return user

    def add_permission_set(
        self, name: str, session_duration: timedelta | None = timedelta(hours=1)
    ) -> FakePermissionSet:
        arn = f"arn:aws:sso:::permissionSet/ssoins-fake/ps-{next(self._ids)}"
        permission_set = FakePermissionSet(arn=arn, name=name, session_duration=session_duration)
        self.permission_sets[arn] = permission_set
        return permission_set

    def assign(self, principal_type: str, principal_id: str, account: str, arn: str) -> None:
        self.assignments_made.append((principal_type, principal_id, account, arn))

    def add_membership(self, user_id: str, group_id: str) -> str:
        membership_id = f"m-{next(self._ids)}"
        self.memberships[membership_id] = (user_id, group_id)
        return membership_id

    def _not_found(self, what: str) -> PermanentError:
        return PermanentError(
            "identity-center", f"{what} not found", status=400, code="ResourceNotFoundException"
        )

    def _user(self, user_id: str) -> FakeIcUser:
        if user_id not in self.users:
            raise self._not_found(f"user {user_id!r}")
        return self.users[user_id]

    @staticmethod
    def _shown(user: FakeIcUser) -> IdentityCenterUser:
        return IdentityCenterUser(
            user_id=user.user_id, user_name=user.user_name, status=user.status
        )

    def _request(self) -> str:
        request_id = f"req-{next(self._ids)}"
        self._requests[request_id] = self.request_failure
        return request_id

    # the protocol

    def _match(self, user_name: str) -> tuple[FakeIcUser, str]:
        # the adapter's contract: exact first, then case-insensitively; two is an error
        for user in self.users.values():
            if user.user_name == user_name:
                return user, "userName"
        key = user_name.casefold()
        matches = [u for u in self.users.values() if u.user_name.casefold() == key]
        if len(matches) > 1:
            named = " and ".join(f"{u.user_name!r} ({u.user_id})" for u in matches[:2])
            raise PermanentError(
                "identitystore",
                f"{user_name!r} is ambiguous in Identity Center: {len(matches)} users "
                f"match on userName case-insensitively, {named}; nothing was changed",
                code="AmbiguousUser",
            )
        if matches:
            return matches[0], "userName, any case"
        raise PermanentError(
            "identitystore",
            f"no Identity Center user with userName {user_name!r}",
            code="ResourceNotFoundException",
        )

    async def find_user(self, user_name: str) -> IdentityCenterUser:
        return await self._call(
            "find_user", (user_name,), lambda: self._shown(self._match(user_name)[0])
        )

    async def find_user_id(self, user_name: str) -> IdentityCenterMatch:
        def find() -> IdentityCenterMatch:
            user, how = self._match(user_name)
            return IdentityCenterMatch(user_id=user.user_id, found_by=how)

        return await self._call("find_user_id", (user_name,), find)

    async def find_user_by_external_id(self, external_id: str) -> IdentityCenterMatch:
        def find() -> IdentityCenterMatch:
            matches = [u for u in self.users.values() if external_id in u.external_ids]
            if len(matches) > 1:
                named = " and ".join(f"{u.user_name!r} ({u.user_id})" for u in matches[:2])
                raise PermanentError(
                    "identitystore",
                    f"externalId {external_id!r} is ambiguous in Identity Center: {named}",
                    code="AmbiguousUser",
                )
            if not matches:
                raise PermanentError(
                    "identitystore",
                    f"no Identity Center user with externalId {external_id!r}",
                    code="ResourceNotFoundException",
                )
            return IdentityCenterMatch(user_id=matches[0].user_id, found_by="externalId")

        return await self._call("find_user_by_external_id", (external_id,), find)

    async def get_user(self, user_id: str) -> IdentityCenterUser:
        return await self._call("get_user", (user_id,), lambda: self._shown(self._user(user_id)))

    async def user_statuses(self, most_pages: int) -> dict[str, str] | None:
        def listed() -> dict[str, str] | None:
            pages = max(1, -(-len(self.users) // 100))  # ListUsers' 100 a page
            if pages > most_pages:
                return None
            return {u.user_id: u.status for u in self.users.values()}

        return await self._call("user_statuses", (most_pages,), listed)

    async def disable_user(self, user_id: str) -> None:
        def disable() -> None:
            if self.identity_source != "scim":
                raise PermanentError(
                    "identity-center",
                    "identity source 'directory' has no disable API: use the console",
                )
            self._user(user_id).status = "DISABLED"

        await self._call("disable_user", (user_id,), disable)

    def console_user_url(self, user_id: str) -> str:
        return f"https://console.fake.example/singlesignon/users/{user_id}"

    async def group_memberships(
        self, user_id: str, *, since: datetime | None = None, run_wide: bool = False
    ) -> list[tuple[str, str]]:
        # one store, read now: a run-wide answer is the same answer
        return await self._call(
            "group_memberships",
            (user_id,),
            lambda: [(m, g) for m, (u, g) in self.memberships.items() if u == user_id],
        )

    async def assignments(
        self, principal_type: str, principal_id: str, *, since: datetime | None = None
    ) -> list[tuple[str, str]]:
        return await self._call(
            "assignments",
            (principal_type, principal_id),
            lambda: [
                (account, arn)
                for kind, who, account, arn in self.assignments_made
                if (kind, who) == (principal_type, principal_id)
            ],
        )

    async def permission_set(
        self, arn: str, *, since: datetime | None = None
    ) -> tuple[str, timedelta | None]:
        def describe() -> tuple[str, timedelta | None]:
            if arn not in self.permission_sets:
                raise self._not_found(f"permission set {arn}")
            found = self.permission_sets[arn]
            return found.name, found.session_duration

        return await self._call("permission_set", (arn,), describe)

    async def reachable_permission_sets(
        self,
        user_id: str,
        *,
        since: datetime | None = None,
        groups: Sequence[str] | None = None,
        run_wide: bool = False,
    ) -> list[ReachablePermissionSet]:
        # no cache here: every read is fresh
        await self._call("reachable_permission_sets", (user_id,), lambda: None)
        # as the adapter: the user's own assignments, then each group's, each a call
        found: dict[str, tuple[set[str], set[str]]] = {}
        if groups is None:
            groups = [group for _, group in await self.group_memberships(user_id)]
        principals = [("USER", user_id, "USER")] + [
            ("GROUP", group, f"GROUP:{group}") for group in groups
        ]
        for principal_type, principal_id, via in principals:
            for account, arn in await self.assignments(principal_type, principal_id):
                accounts, vias = found.setdefault(arn, (set(), set()))
                accounts.add(account)
                vias.add(via)
        result = []
        for arn, (accounts, vias) in sorted(found.items()):
            name, duration = await self.permission_set(arn)
            result.append(
                ReachablePermissionSet(
                    arn=arn,
                    name=name,
                    session_duration=duration,
                    accounts=tuple(sorted(accounts)),
                    via=tuple(sorted(vias)),
                )
            )
        return result

    def assign_application(
        self,
        principal_type: str,
        principal_id: str,
        arn: str,
        *,
        name: str = "",
        background_sessions: bool | None = False,
    ) -> None:
        self.applications[arn] = (name or arn.rsplit("/", 1)[-1], background_sessions)
        self.application_assignments.append((principal_type, principal_id, arn))

    async def reachable_applications(
        self, user_id: str, *, since: datetime | None = None, groups: Sequence[str] | None = None
    ) -> list[ReachableApplication]:
        if groups is None:
            groups = [group for _, group in await self.group_memberships(user_id)]

        def read() -> list[ReachableApplication]:
            found: dict[str, set[str]] = {}
            for principal_type, principal_id, arn in self.application_assignments:
                if principal_type == "USER" and principal_id == user_id:
                    found.setdefault(arn, set()).add("USER")
                elif principal_type == "GROUP" and principal_id in groups:
                    found.setdefault(arn, set()).add(f"GROUP:{principal_id}")
            return [
                ReachableApplication(
                    arn=arn,
                    name=self.applications[arn][0],
                    background_sessions=self.applications[arn][1],
                    via=tuple(sorted(vias)),
                )
                for arn, vias in sorted(found.items())
            ]

        return await self._call("reachable_applications", (user_id,), read)

    async def deny_policy(self, arn: str, user_id: str) -> InlinePolicy:
        def read() -> InlinePolicy:
            text = self.policies.get(arn, "")
            return InlinePolicy(
                arn=arn, user_id=user_id, text=text, denies=policy.has_deny(text, user_id, arn)
            )

        return await self._call("deny_policy", (arn, user_id), read)

    async def merge_deny(self, current: InlinePolicy) -> None:
        def merge() -> None:
            merged = policy.merge_deny(current.text, current.user_id, current.arn)
            if merged is not None:
                self.policies[current.arn] = merged

        await self._call("merge_deny", (current.arn, current.user_id), merge)

    async def remove_deny(self, current: InlinePolicy) -> None:
        def remove() -> None:
            without = policy.remove_deny(current.text, current.user_id, current.arn)
            if without:
                self.policies[current.arn] = without
            elif without is not None:
                del self.policies[current.arn]

        await self._call("remove_deny", (current.arn, current.user_id), remove)

    async def provision(self, arn: str) -> str:
        def provision() -> str:
            self.provisionings.setdefault(arn, []).append(self.policies.get(arn, ""))
            return self._request()

        return await self._call("provision", (arn,), provision)

    def _finished(self, request_id: str) -> bool:
        failure = self._requests[request_id]
        if failure is not None:
            raise PermanentError("sso-admin", f"request {request_id} failed: {failure}")
        return True

    async def provisioned(self, request_id: str) -> bool:
        return await self._call("provisioned", (request_id,), lambda: self._finished(request_id))

    async def unassign(self, user_id: str, account_id: str, arn: str) -> str | None:
        def delete() -> str | None:
            assignment = ("USER", user_id, account_id, arn)
            if assignment not in self.assignments_made:
                return None  # gone already: by us before a crash, or by someone
            self.assignments_made.remove(assignment)
            return self._request()

        return await self._call("unassign", (user_id, account_id, arn), delete)

    async def assignment_deleted(self, request_id: str) -> bool:
        return await self._call(
            "assignment_deleted", (request_id,), lambda: self._finished(request_id)
        )

    async def leave_group(self, membership_id: str) -> None:
        await self._call(
            "leave_group", (membership_id,), lambda: self.memberships.pop(membership_id, None)
        )

    def plan(self, action: str, subject: str) -> list[PlannedCall]:
        self.calls.append(ProviderCall(provider=self.provider, method="plan", args=(action,)))
        if action == actions.DISABLE_USER.name:
            return [
                PlannedCall(method="find_user", target=subject, mutates=False),
                PlannedCall(method="disable_user", target=subject, mutates=True),
                PlannedCall(method="get_user", target=subject, mutates=False),
            ]
        if action == actions.PORTAL_SESSIONS.name:
            return [PlannedCall(method="operator task", target="console", mutates=True)]
        return []


class FakeNotifier(_Fake):
    """A notifier (`Notifier`) that keeps what it was asked to send."""

    provider = "notifier"

    def __init__(self, *, calls: list[ProviderCall] | None = None) -> None:
        super().__init__(calls)
        self.sent: list[Notification] = []

    async def notify(self, notification: Notification) -> None:
        await self._call("notify", (notification,), lambda: self.sent.append(notification))


if TYPE_CHECKING:
    # the doubles keep to the protocols they stand in for
    _store: Store = InMemoryStore()
    _idp: IdentityProvider = FakeIdentityProvider()
    _ic: IdentityCenter = FakeIdentityCenter()
    _notifier: Notifier = FakeNotifier()
