"""Every store operation, once: which named query runs, in which transaction, how a
row becomes a domain record, and the rules (open statuses, the last milestone
closing the case, admission). A `Connector` runs the queries on one database.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from worker.clock import utc_iso
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
from worker.errors import CaseStarted, LeaseLost, NotFound, StoreError
from worker.store.base import (
    CLOSED_STATUSES,
    ESCALATABLE,
    OPEN_STATUSES,
    BudgetAsk,
    BudgetGrant,
    BudgetHolder,
    CaseCount,
    CasePage,
    EvidenceRecord,
    KeyedLocks,
    NewEvent,
    TaskBacklog,
    TaskConfirmed,
    all_lapsed_at,
    created_event,
    fired_event,
    genesis_hash,
    grant_budget,
    new_case_id,
    permission_set_lock_name,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

#: a row as a connector returns it: read by column name
Row = Any
R = TypeVar("R", bound="DataclassInstance")
M = TypeVar("M")


@cache
def queries() -> dict[str, str]:
    """The named statements of `queries.sql` (comment lines left out)."""
    text = resources.files("worker.store").joinpath("queries.sql").read_text()
    named: dict[str, str] = {}
    for chunk in text.split("-- name: ")[1:]:
        name, _, body = chunk.partition("\n")
        lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
        if name.strip() in named:  # each query written once: a second would win silently
            raise ValueError(f"queries.sql names {name.strip()!r} twice")
        named[name.strip()] = "\n".join(lines).strip()
    return named


#: A person's cases beyond their one active case, closed before the unique index
#: arrives: the highest priority (the incident), then the oldest, is kept. A
#: duplicate is closed as cancelled with the reason naming the case kept (the kept
#: case runs every containment step again, each read back first). A worker of
#: the old version still holding one loses its lease. Both backends run it.
ONE_ACTIVE_MIGRATION = """
UPDATE cases SET status = 'cancelled', lease_owner = NULL, lease_expires_at = NULL,
    halt_reason = 'closed at schema upgrade: a person has one active case, and case '
        || (SELECT k.id FROM cases k WHERE k.subject = cases.subject
            AND k.status IN ('pending', 'running', 'waiting', 'halted')
            ORDER BY k.priority DESC, k.created_at, k.id LIMIT 1)
        || ' is kept'
WHERE status IN ('pending', 'running', 'waiting', 'halted') AND EXISTS (
    SELECT 1 FROM cases k WHERE k.subject = cases.subject
    AND k.status IN ('pending', 'running', 'waiting', 'halted')
    AND (k.priority > cases.priority OR (k.priority = cases.priority
         AND (k.created_at < cases.created_at
              OR (k.created_at = cases.created_at AND k.id < cases.id)))));
CREATE UNIQUE INDEX cases_one_active ON cases (subject)
    WHERE status IN ('pending', 'running', 'waiting', 'halted');
"""


class Runner(Protocol):
    """Runs a named query with `:name` parameters given as Python values (the
    connector encodes them), alone or in a transaction; `run` counts rows changed."""

    async def one(self, query: str, **params: Any) -> Row | None: ...
    async def all(self, query: str, **params: Any) -> list[Row]: ...
    async def run(self, query: str, **params: Any) -> int: ...
    async def many(self, query: str, rows: Sequence[dict[str, Any]]) -> None: ...


class NoRow(Exception):
    """A `rows_then_events` statement found no row: the rows so far, to roll back."""

    def __init__(self, found: list[Row | None]) -> None:
        super().__init__("no row")
        self.found = found


@dataclass(frozen=True)
class RowWrite:
    """A statement that returns the row it wrote, and the event to record with it."""

    query: str
    params: dict[str, Any]
    event_of: Callable[[Row], NewEvent | None]


class Connector(Runner, Protocol):
    """What differs between the databases; everything else is `StoreManager`'s.

    `snapshot`: reads that see one state. `time`, `doc`: a stored time or JSON
    document as Python (None stays None); `chain_time`: an event's time as hashed.
    `append_event(s)`: onto the case's hash chain, in `tx` (the seq). `rows_then_events`:
    statements in order, each one's row and the event its `event_of` makes of it (if
    any), in one transaction (SQLite: one trip to the database thread); all or none:
    when a statement returns no row, nothing is committed, and its row and those of
    the statements after it (not run) are None. `notify`: say
    there may be work (`wait_for_work`) when `tx` commits. `lock_admission`: make
    concurrent `admit`s of these deliveries and people (and `lease_budget`s of one
    bucket) take turns. `hold_lock`: a lock by name across the processes sharing the
    database, outside any transaction (one task of this process at a time asks for a
    name: `StoreManager` sees to it).
    """

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    def transaction(self) -> AbstractAsyncContextManager[Runner]: ...
    def snapshot(self) -> AbstractAsyncContextManager[Runner]: ...
    def time(self, value: Any) -> Any: ...
    def doc(self, value: Any) -> Any: ...
    def chain_time(self, value: Any) -> str: ...
    async def append_event(self, tx: Runner, event: NewEvent) -> int: ...
    async def append_event_alone(self, event: NewEvent) -> int:
        """`append_event` in a transaction of its own, in as few trips as the database allows."""

    async def append_events(self, tx: Runner, events: Sequence[NewEvent]) -> None: ...
    async def rows_then_events(self, writes: Sequence[RowWrite]) -> list[Row | None]: ...
    async def notify(self, tx: Runner, what: str) -> None: ...
    async def lock_admission(self, tx: Runner, names: Sequence[str]) -> None: ...
    def hold_lock(self, name: str) -> AbstractAsyncContextManager[None]: ...
    async def wait_for_work(self, timeout: float) -> bool: ...  # noqa: ASYNC109


async def migrate(
    migrations: Sequence[M], current: int, where: str, apply: Callable[[M], Awaitable[None]]
) -> list[int]:
    """Upgrade a database from schema version `current`: refuse one newer than this
    offboard; else `apply` each missing migration in order. The versions applied."""
    if current > len(migrations):
        raise StoreError(
            f"database {where} has schema version {current}, newer than this "
            f"offboard ({len(migrations)}): upgrade offboard"
        )
    for script in migrations[current:]:
        await apply(script)
    return list(range(current + 1, len(migrations) + 1))


async def take_signal(signal: asyncio.Event, timeout: float) -> bool:  # noqa: ASYNC109
    """Wait up to `timeout` seconds for `signal`; True (and cleared) once it is set,
    at once if it was set before the call. Cancelled, it consumes nothing."""
    if not signal.is_set():
        try:
            await asyncio.wait_for(signal.wait(), timeout)
        except TimeoutError:
            return False
    signal.clear()
    return True


def _statuses(statuses: tuple[CaseStatus, ...] | None) -> dict[str, Any]:
    """The `:statuses` / `:every` filter: these states, or every case for None or ()."""
    return {"statuses": [s.value for s in statuses or ()], "every": not statuses}


_OPEN = [s.value for s in OPEN_STATUSES]


@dataclass(frozen=True, kw_only=True)
class AdmissionPlan:
    """What `Store.admit` will do, decided from what the store holds: the cases to
    create (with their ids) and, per arrival, ("replayed", Delivery), ("open", Case),
    or ("new", case id) for a case created by this call (its own or an earlier
    arrival's), with the key's first arrival as the one that recorded the delivery."""

    creates: tuple[tuple[str, NewCase], ...]
    fates: tuple[tuple[str, Any], ...]


def preferred(found: Case | None, case: Case) -> Case:
    """Of two open cases of one person, the one a trigger joins (as `find_open_case`
    answers): the active one, else the newer contained one."""
    return case if found is None else max(found, case, key=_rank)


def _rank(case: Case) -> tuple[bool, datetime, str]:
    return (case.status is not CaseStatus.CONTAINED, case.created_at, case.id)


def plan_admission(
    arrivals: Sequence[Arrival],
    seen: dict[str, Delivery],
    open_cases: dict[str, Case],
) -> AdmissionPlan:
    """`seen`: the recorded deliveries among the arrivals' keys; `open_cases`: the
    open case per person among the arrivals' people (`preferred`), whatever its playbook."""
    creates: list[tuple[str, NewCase]] = []
    fates: list[tuple[str, Any]] = []
    made_for_key: dict[str, str] = {}
    made_for_person: dict[str, str] = {}
    for arrival in arrivals:
        new = arrival.case
        if new.idempotency_key is not None:
            raise ValueError("an arrival's case takes no idempotency key: its delivery key is one")
        person = new.subject
        if arrival.key in seen:
            fates.append(("replayed", seen[arrival.key]))
        elif arrival.key in made_for_key:
            fates.append(("replayed-new", made_for_key[arrival.key]))
        elif person in open_cases:
            fates.append(("open", open_cases[person]))
        elif person in made_for_person:
            fates.append(("open-new", made_for_person[person]))
        else:
            case_id = new_case_id()
            creates.append((case_id, new))
            made_for_key[arrival.key] = made_for_person[person] = case_id
            fates.append(("new", case_id))
    return AdmissionPlan(creates=tuple(creates), fates=tuple(fates))


def settle_admission(
    plan: AdmissionPlan,
    arrivals: Sequence[Arrival],
    created: dict[str, Case],
    received_at: datetime,
) -> tuple[list[Delivery], list[Admission]]:
    """The deliveries to record for the created cases, and each arrival's admission;
    `created` holds the new cases as the store reads them back."""
    deliveries: dict[str, Delivery] = {}
    for arrival, (fate, value) in zip(arrivals, plan.fates, strict=True):
        if fate == "new":
            case = created[value]
            deliveries[value] = Delivery(
                key=arrival.key,
                case_id=case.id,
                outcome=arrival.answer(case),
                received_at=received_at,
            )
    admissions: list[Admission] = []
    for fate, value in plan.fates:
        if fate == "replayed":
            admissions.append(Admission(case=None, delivery=value, created=False))
        elif fate == "replayed-new":
            admissions.append(Admission(case=None, delivery=deliveries[value], created=False))
        elif fate == "open":
            admissions.append(Admission(case=value, delivery=None, created=False))
        elif fate == "open-new":
            admissions.append(Admission(case=created[value], delivery=None, created=False))
        else:
            admissions.append(
                Admission(case=created[value], delivery=deliveries[value], created=True)
            )
    return list(deliveries.values()), admissions


class StoreManager:
    """The `Store` on a `Connector`."""

    def __init__(self, connector: Connector) -> None:
        self.connector = connector
        self.c = connector
        self._locks = KeyedLocks()

    # lifecycle

    async def open(self) -> None:
        await self.c.open()

    async def close(self) -> None:
        await self.c.close()

    async def ping(self) -> None:
        await self.c.one("ping")

    async def wait_for_work(self, timeout: float) -> bool:  # noqa: ASYNC109
        return await self.c.wait_for_work(timeout)

    # rows to records

    def _record(self, cls: type[R], row: Row, times: str = "", docs: str = "", **values: Any) -> R:
        """`cls` from the row's columns named as its fields: `times` and `docs` decoded,
        `values` as given."""
        values |= {name: self.c.time(row[name]) for name in times.split()}
        values |= {name: self.c.doc(row[name]) for name in docs.split()}
        values |= {f.name: row[f.name] for f in fields(cls) if f.name not in values}
        return cls(**values)

    def _case(self, row: Row) -> Case:
        steps = tuple(PlannedStep(**step) for step in self.c.doc(row["steps"]))
        times = "created_at updated_at run_after lease_expires_at"
        status = CaseStatus(row["status"])
        return self._record(Case, row, times, "trigger countdown", status=status, steps=steps)

    def _step(self, row: Row) -> StepRecord:
        status = StepStatus(row["status"])
        return self._record(
            StepRecord, row, "started_at finished_at", "evidence", index=row["idx"], status=status
        )

    def _ledger(self, row: Row) -> LedgerEntry:
        state = LedgerState(row["state"])
        return self._record(LedgerEntry, row, "requested_at applied_at", state=state)

    def _task(self, row: Row) -> OperatorTask:
        return self._record(OperatorTask, row, "opened_at confirmed_at")

    def _timer(self, row: Row) -> Timer:
        return self._record(Timer, row, "due_at fired_at", closes_case=bool(row["closes_case"]))

    def _delivery(self, row: Row) -> Delivery:
        return self._record(Delivery, row, "received_at", "outcome")

    # cases

    async def _insert_cases(
        self, tx: Runner, creates: Sequence[tuple[str, NewCase]], now: datetime
    ) -> bool:
        """The cases, their pending steps and first events; False if the one case's
        idempotency key is taken (nothing written)."""
        rows = [{**asdict(new), "id": case_id, "now": now} for case_id, new in creates]
        if len(rows) == 1:
            if not await tx.run("case_insert", **rows[0]):
                return False
        else:
            await tx.many("case_insert", rows)
        steps = [
            {"case_id": case_id, "idx": i, "step_id": s.id, "action": s.action}
            for case_id, new in creates
            for i, s in enumerate(new.steps)
        ]
        if steps:
            await tx.many("steps_insert", steps)
        events = [
            NewEvent(case_id=case_id, kind="case_created", at=now, data=created_event(new))
            for case_id, new in creates
        ]
        await self.c.append_events(tx, events)
        return True

    async def create_case(self, new: NewCase, now: datetime) -> tuple[Case, bool]:
        case_id = new_case_id()
        async with self.c.transaction() as tx:
            # replicas creating a case for the same person take turns, as `admit`'s do
            await self.c.lock_admission(tx, [f"person:{new.subject}"])
            if not await self._insert_cases(tx, [(case_id, new)], now):
                # the key is taken, or the person has an active case (the unique index;
                # PostgreSQL: ON CONFLICT waited for its writer): that case, as it is
                row = None
                if new.idempotency_key is not None:
                    row = await tx.one("case_by_key", key=new.idempotency_key)
                if row is None:
                    row = await tx.one("open_case_find", subject=new.subject, open=_OPEN)
                if row is None:
                    raise StoreError(f"the case of {new.idempotency_key or 'the person'} vanished")
                return self._case(row), False
            await self.c.notify(tx, f"case_created {case_id}")
            row = await tx.one("case_get", case_id=case_id)
        return self._case(row), True

    async def admit(self, arrivals: Sequence[Arrival], now: datetime) -> list[Admission]:
        # Set-based: a handful of statements and one commit for the whole group, so
        # that intake costs about the same for one delivery as for a hundred.
        if not arrivals:
            return []
        keys = sorted({a.key for a in arrivals})
        people = sorted({a.case.subject for a in arrivals})
        async with self.c.transaction() as tx:
            await self.c.lock_admission(
                tx, [f"delivery:{k}" for k in keys] + [f"person:{p}" for p in people]
            )
            seen = {d.key: d for d in map(self._delivery, await tx.all("deliveries_of", keys=keys))}
            open_cases: dict[str, Case] = {}
            for case in map(self._case, await tx.all("open_cases_of", people=people, open=_OPEN)):
                open_cases[case.subject] = preferred(open_cases.get(case.subject), case)
            plan = plan_admission(arrivals, seen, open_cases)
            created: dict[str, Case] = {}
            if plan.creates:
                await self._insert_cases(tx, plan.creates, now)
                ids = [case_id for case_id, _ in plan.creates]
                rows = await tx.all("cases_by_ids", ids=ids)
                created = {case.id: case for case in map(self._case, rows)}
                await self.c.notify(tx, f"cases_admitted {len(created)}")
            deliveries, admissions = settle_admission(plan, arrivals, created, now)
            if deliveries:
                await tx.many("delivery_insert", [asdict(d) for d in deliveries])
        return admissions

    async def get_case(self, case_id: str) -> Case:
        row = await self.c.one("case_get", case_id=case_id)
        if row is None:
            raise NotFound(f"no case {case_id!r}")
        return self._case(row)

    async def list_cases(self, statuses: tuple[CaseStatus, ...] | None = None) -> list[Case]:
        return list(map(self._case, await self.c.all("cases_list", **_statuses(statuses))))

    async def _claim(
        self, query: str, worker_id: str, now: datetime, lease_seconds: float, **params: Any
    ) -> Case | None:
        expires = now + timedelta(seconds=lease_seconds)
        row = await self.c.one(query, worker_id=worker_id, now=now, expires=expires, **params)
        return None if row is None else self._case(row)

    async def claim_next(
        self, worker_id: str, now: datetime, lease_seconds: float, *, min_priority: int = 0
    ) -> Case | None:
        return await self._claim(
            "claim_next", worker_id, now, lease_seconds, min_priority=min_priority
        )

    async def claim_case(
        self, case_id: str, worker_id: str, now: datetime, lease_seconds: float
    ) -> Case | None:
        return await self._claim("claim_case", worker_id, now, lease_seconds, case_id=case_id)

    async def heartbeat(
        self, case_id: str, worker_id: str, now: datetime, lease_seconds: float
    ) -> bool:
        expires = now + timedelta(seconds=lease_seconds)
        count = await self.c.run("heartbeat", case_id=case_id, worker_id=worker_id, expires=expires)
        return count == 1

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
        params = {
            "case_id": case_id,
            "worker_id": worker_id,
            "status": status.value,
            "run_after": run_after,
            "halt_reason": halt_reason,
            "now": now,
        }
        if event is None and status is not CaseStatus.WAITING:
            row = await self.c.one("release", **params)
        else:
            async with self.c.transaction() as tx:
                if status is CaseStatus.WAITING:
                    await tx.one("case_lock", case_id=case_id)
                row = await tx.one("release", **params)
                # one transaction: a lost connection cannot leave the state without its
                # event; and none when the case was escalated meanwhile (it runs again)
                if row is not None and row["status"] == status.value and event is not None:
                    await self._append(tx, case_id, event[0], now, event[1])
                if row is not None and row["status"] != status.value:
                    await self.c.notify(tx, f"case_runs_again {case_id}")
        if row is None:
            raise LeaseLost(f"case {case_id} is not held by worker {worker_id}")
        return CaseStatus(row["status"])

    async def find_open_case(self, subject: str) -> Case | None:
        row = await self.c.one("open_case_find", subject=subject, open=_OPEN)
        return None if row is None else self._case(row)

    async def escalate_case(
        self,
        case_id: str,
        steps: Sequence[PlannedStep],
        priority: int,
        now: datetime,
        data: dict[str, Any],
    ) -> tuple[Case, tuple[str, ...]]:
        async with self.c.transaction() as tx:
            row = await tx.one("case_get", case_id=case_id)
            if row is None:
                raise NotFound(f"no case {case_id!r}")
            # the person's turn (as creating a case takes), then the row as it is now
            await self.c.lock_admission(tx, [f"person:{row['subject']}"])
            case = self._case(await tx.one("case_lock", case_id=case_id))
            if case.status not in ESCALATABLE:
                raise StoreError(f"case {case_id} is {case.status.value}: it cannot be escalated")
            have = {s.id for s in case.steps}
            added = tuple(s for s in steps if s.id not in have)
            row = await tx.one(
                "case_escalate",
                case_id=case_id,
                steps=[asdict(s) for s in (*case.steps, *added)],
                priority=max(priority, case.priority),
                now=now,
                added=bool(added),
            )
            if added:
                first = len(case.steps)
                await tx.many(
                    "steps_insert",
                    [
                        {"case_id": case_id, "idx": first + i, "step_id": s.id, "action": s.action}
                        for i, s in enumerate(added)
                    ],
                )
            ids = tuple(s.id for s in added)
            event = {**data, "steps_added": list(ids), "priority": max(priority, case.priority)}
            await self._append(tx, case_id, "case_escalated", now, event)
            await self.c.notify(tx, f"case_escalated {case_id}")
        return self._case(row), ids

    async def _not_started(self, tx: Runner, case_id: str) -> None:
        """Hold the case row for `tx`; CaseStarted if the case has started."""
        row = await tx.one("case_started", case_id=case_id)
        if row is None:
            raise NotFound(f"no case {case_id!r}")
        if row["status"] != CaseStatus.PENDING.value or row["started"]:
            raise CaseStarted(
                f"case {case_id} has started (status {row['status']}): "
                "containment cannot be withdrawn or moved once it began"
            )

    async def reschedule_case(
        self, case_id: str, run_after: datetime, now: datetime, *, by: dict[str, Any] | None = None
    ) -> Case:
        async with self.c.transaction() as tx:
            await self._not_started(tx, case_id)
            row = await tx.one("case_reschedule", case_id=case_id, run_after=run_after, now=now)
            data: dict[str, Any] = {"run_after": utc_iso(run_after)}
            await self._append(
                tx, case_id, "case_rescheduled", now, {**data, "by": by} if by else data
            )
            await self.c.notify(tx, f"case_rescheduled {case_id}")
        return self._case(row)

    async def cancel_case(self, case_id: str, now: datetime, reason: str) -> Case:
        async with self.c.transaction() as tx:
            await self._not_started(tx, case_id)
            row = await tx.one("case_cancel", case_id=case_id, reason=reason, now=now)
            await self._append(tx, case_id, "case_cancelled", now, {"reason": reason})
        return self._case(row)

    async def resume_case(
        self, case_id: str, now: datetime, *, event: tuple[str, dict[str, Any]] | None = None
    ) -> Case:
        async with self.c.transaction() as tx:
            row = await tx.one("case_resume", case_id=case_id, now=now)
            if row is not None:
                if event is not None:
                    await self._append(tx, case_id, event[0], now, event[1])
                await self.c.notify(tx, f"case_resumed {case_id}")
                return self._case(row)
        return await self.get_case(case_id)

    # steps

    async def steps(self, case_id: str) -> list[StepRecord]:
        return list(map(self._step, await self.c.all("steps_of", case_id=case_id)))

    async def _held_step(
        self, row: Row | None, case_id: str, index: int, worker_id: str
    ) -> StepRecord:
        if row is None:  # say which: no case, not ours, or no such step
            owner = await self.c.one("case_owner", case_id=case_id)
            if owner is None:
                raise NotFound(f"no case {case_id!r}")
            if owner["lease_owner"] != worker_id:
                raise LeaseLost(f"case {case_id} is not held by worker {worker_id}")
            raise NotFound(f"case {case_id} has no step {index}")
        return self._step(row)

    @staticmethod
    def _start(case_id: str, index: int, worker_id: str, now: datetime) -> RowWrite:
        def started(row: Row) -> NewEvent:
            data = {"attempt": row["attempts"]}
            return NewEvent(
                case_id=case_id, kind="step_started", at=now, step_id=row["step_id"], data=data
            )

        params = {"case_id": case_id, "idx": index, "worker_id": worker_id, "now": now}
        return RowWrite("step_start", params, started)

    @staticmethod
    def _finish(
        case_id: str,
        index: int,
        worker_id: str,
        status: StepStatus,
        now: datetime,
        *,
        evidence: dict[str, Any] | None,
        error: str | None = None,
        event: tuple[str, dict[str, Any]] | None,
    ) -> RowWrite:
        def finished_event(row: Row) -> NewEvent | None:
            if event is None:
                return None
            kind, data = event
            return NewEvent(case_id=case_id, kind=kind, at=now, step_id=row["step_id"], data=data)

        params = {
            "case_id": case_id,
            "idx": index,
            "worker_id": worker_id,
            "status": status.value,
            "finished": now if status in (StepStatus.DONE, StepStatus.FAILED) else None,
            "evidence": evidence or {},
            "error": error,
        }
        return RowWrite("step_finish", params, finished_event)

    async def start_step(
        self, case_id: str, index: int, worker_id: str, now: datetime
    ) -> StepRecord:
        # one write: an attempt counted is an attempt on the timeline, even after a kill
        (row,) = await self.c.rows_then_events([self._start(case_id, index, worker_id, now)])
        return await self._held_step(row, case_id, index, worker_id)

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
        # one write: a kill cannot leave a done step without its event
        (row,) = await self.c.rows_then_events(
            [
                self._finish(
                    case_id,
                    index,
                    worker_id,
                    status,
                    now,
                    evidence=evidence,
                    error=error,
                    event=event,
                )
            ]
        )
        return await self._held_step(row, case_id, index, worker_id)

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
        # one write for the step done and the next one's attempt: both or neither
        finish = self._finish(
            case_id, index, worker_id, StepStatus.DONE, now, evidence=evidence, event=event
        )
        done, started = await self.c.rows_then_events(
            [finish, self._start(case_id, next_index, worker_id, now)]
        )
        await self._held_step(done, case_id, index, worker_id)
        return await self._held_step(started, case_id, next_index, worker_id)

    # side-effect ledger

    @contextlib.asynccontextmanager
    async def permission_set_lock(self, arn: str) -> AsyncIterator[None]:
        name = permission_set_lock_name(arn)
        # this process's tasks queue here, so each waits on no database connection
        async with self._locks.hold(name), self.c.hold_lock(name):
            yield

    async def ledger_get(self, key: str) -> LedgerEntry | None:
        row = await self.c.one("ledger_get", key=key)
        return None if row is None else self._ledger(row)

    async def ledger_intent(
        self, key: str, case_id: str, step_id: str, operation: str, now: datetime
    ) -> LedgerEntry:
        row = await self.c.one(
            "ledger_intent", key=key, case_id=case_id, step_id=step_id, operation=operation, now=now
        )
        return self._ledger(row)

    async def ledger_applied(self, key: str, now: datetime) -> LedgerEntry:
        row = await self.c.one("ledger_applied", key=key, now=now)
        if row is None:
            raise NotFound(f"no ledger entry {key!r}")
        return self._ledger(row)

    async def ledger_settle(
        self, key: str, state: LedgerState, now: datetime
    ) -> LedgerEntry | None:
        row = await self.c.one("ledger_settle", key=key, state=state.value, now=now)
        if row is not None:
            return self._ledger(row)
        if await self.c.one("ledger_get", key=key) is None:
            raise NotFound(f"no ledger entry {key!r}")
        return None

    async def ledger_intents(self, case_id: str) -> list[LedgerEntry]:
        return [self._ledger(row) for row in await self.c.all("ledger_intents_of", case_id=case_id)]

    # operator tasks

    async def open_task(self, task: OperatorTask) -> OperatorTask:
        await self.c.run("task_open", **asdict(task))
        existing = await self.get_task(task.case_id, task.step_id)
        if existing is None:
            raise StoreError(f"the task of case {task.case_id} step {task.step_id!r} vanished")
        return existing

    async def get_task(self, case_id: str, step_id: str) -> OperatorTask | None:
        row = await self.c.one("task_get", case_id=case_id, step_id=step_id)
        return None if row is None else self._task(row)

    async def confirm_task(
        self, case_id: str, step_id: str, confirmed_by: str, now: datetime
    ) -> TaskConfirmed:
        async with self.c.transaction() as tx:
            await tx.one("case_lock", case_id=case_id)
            row = await tx.one(
                "task_confirm", case_id=case_id, step_id=step_id, now=now, by=confirmed_by
            )
            already = row is None
            if already:
                row = await tx.one("task_get", case_id=case_id, step_id=step_id)
                if row is None:
                    raise NotFound(f"case {case_id} has no operator task for step {step_id!r}")
            else:
                data = {"confirmed_by": confirmed_by}
                await self._append(tx, case_id, "operator_confirmed", now, data, step_id)
            resumed = await tx.one("case_resume_confirmed", case_id=case_id, now=now)
            if resumed is not None:
                await self.c.notify(tx, f"case_resumed {case_id}")
        return TaskConfirmed(task=self._task(row), already=already, resumed=resumed is not None)

    async def open_tasks(self) -> list[OperatorTask]:
        return list(map(self._task, await self.c.all("tasks_open")))

    # countdown and its timers

    async def save_countdown(
        self,
        case_id: str,
        countdown: dict[str, Any],
        epoch: int,
        timers: list[Timer],
        now: datetime,
    ) -> None:
        async with self.c.transaction() as tx:
            # timers before the case row: the lock order claim_due_timer takes too
            await tx.run("timers_drop_older", case_id=case_id, epoch=epoch)
            if timers:
                rows = [{**asdict(t), "case_id": case_id, "epoch": epoch} for t in timers]
                await tx.many("timer_upsert", rows)
            await tx.run(
                "countdown_set",
                case_id=case_id,
                countdown=countdown,
                all_lapsed_at=all_lapsed_at(countdown),
                now=now,
            )
            await self.c.notify(tx, f"countdown_saved {case_id}")

    async def claim_due_timer(self, worker_id: str, now: datetime) -> Timer | None:
        async with self.c.transaction() as tx:
            row = await tx.one("timer_claim", now=now, worker_id=worker_id)
            if row is None:
                return None
            timer = self._timer(row)
            data = {"milestone": timer.name, "epoch": timer.epoch, "due_at": utc_iso(timer.due_at)}
            await self._append(tx, timer.case_id, fired_event(timer.name), now, data)
            if timer.closes_case:
                # the last milestone: the contained case's access has lapsed
                await tx.run(
                    "case_move",
                    case_id=timer.case_id,
                    now=now,
                    to=CaseStatus.ACCESS_LAPSED.value,
                    **{"from": CaseStatus.CONTAINED.value},
                )
                await self._append(tx, timer.case_id, "case_access_lapsed", now, {})
        return timer

    async def timers(self, case_id: str) -> list[Timer]:
        return list(map(self._timer, await self.c.all("timers_of", case_id=case_id)))

    async def next_timer_due(self) -> datetime | None:
        row = await self.c.one("timer_next")
        return None if row is None else self.c.time(row["due"])

    async def next_case_due(self, now: datetime) -> datetime | None:
        row = await self.c.one("case_next_due", now=now)
        return None if row is None else self.c.time(row["due"])

    # trigger deliveries and refusals

    async def record_delivery(self, delivery: Delivery) -> tuple[Delivery, bool]:
        if await self.c.run("delivery_insert", **asdict(delivery)):
            return delivery, True
        existing = await self.get_delivery(delivery.key)
        if existing is None:
            raise StoreError(f"delivery {delivery.key!r} vanished")
        return existing, False

    async def get_delivery(self, key: str) -> Delivery | None:
        row = await self.c.one("delivery_get", key=key)
        return None if row is None else self._delivery(row)

    async def record_refusal(self, refusal: Refusal) -> None:
        await self.c.run("refusal_insert", **asdict(refusal))

    async def refusals(self) -> list[Refusal]:
        return [self._record(Refusal, r, "at") for r in await self.c.all("refusals")]

    # timeline

    async def _append(
        self,
        tx: Runner,
        case_id: str,
        kind: str,
        now: datetime,
        data: dict[str, Any],
        step_id: str | None = None,
    ) -> int:
        event = NewEvent(case_id=case_id, kind=kind, at=now, step_id=step_id, data=data)
        return await self.c.append_event(tx, event)

    async def append_event(
        self, case_id: str, kind: str, now: datetime, *, step_id: str | None, data: dict[str, Any]
    ) -> CaseEvent:
        event = NewEvent(case_id=case_id, kind=kind, at=now, step_id=step_id, data=data)
        seq = await self.c.append_event_alone(event)
        return CaseEvent(case_id=case_id, seq=seq, at=now, kind=kind, step_id=step_id, data=data)

    async def events(self, case_id: str) -> list[CaseEvent]:
        rows = await self.c.all("events_of", case_id=case_id)
        return [self._record(CaseEvent, r, "at", "data") for r in rows]

    async def evidence(self, case_id: str) -> list[EvidenceRecord]:
        return [
            self._record(
                EvidenceRecord,
                r,
                at=self.c.chain_time(r["at"]),
                data=_stored_data(self.c, r["data"]),
            )
            for r in await self.c.all("events_of", case_id=case_id)
        ]

    async def evidence_head(self, case_id: str) -> tuple[str, int]:
        row = await self.c.one("evidence_head", case_id=case_id)
        if row is None:
            raise NotFound(f"no case {case_id!r}")
        return row["events_head"] or genesis_hash(case_id), int(row["events_count"])

    # aggregates and pages

    async def case_counts(self) -> list[CaseCount]:
        rows = await self.c.all("case_counts")
        return [self._record(CaseCount, r, status=CaseStatus(r["status"])) for r in rows]

    async def running_countdowns(self, now: datetime) -> int:
        # Milestone times are kept to the millisecond: `now` is cut to its own, since
        # utc_iso would round it up past a milestone due within that millisecond.
        cut = now.replace(microsecond=now.microsecond - now.microsecond % 1000)
        row = await self.c.one(
            "running_countdowns",
            closed=[s.value for s in CLOSED_STATUSES],
            now=cut,
        )
        return 0 if row is None else int(row["n"])

    async def count_events(self, kind: str) -> int:
        row = await self.c.one("count_events", kind=kind)
        return 0 if row is None else int(row["n"])

    async def task_backlog(self) -> TaskBacklog:
        row = await self.c.one("task_backlog")
        if row is None:
            return TaskBacklog(waiting=0, oldest_opened_at=None)
        return TaskBacklog(waiting=int(row["n"]), oldest_opened_at=self.c.time(row["oldest"]))

    async def open_tasks_of(self, case_ids: Sequence[str]) -> list[OperatorTask]:
        return list(map(self._task, await self.c.all("tasks_open_of", ids=list(case_ids))))

    async def urgent_cases(
        self, statuses: tuple[CaseStatus, ...] | None, *, limit: int, offset: int
    ) -> CasePage:
        wanted = _statuses(statuses)
        async with self.c.snapshot() as tx:  # the page and the count agree
            rows = await tx.all(
                "cases_urgent", **wanted, limit=max(0, limit), offset=max(0, offset)
            )
            total = await tx.one("cases_count", **wanted)
        return CasePage(cases=tuple(map(self._case, rows)), total=int(total["n"]) if total else 0)

    async def cases_after(
        self, statuses: tuple[CaseStatus, ...] | None, *, after: str | None, limit: int
    ) -> list[Case]:
        wanted = _statuses(statuses)
        if after is None:
            rows = await self.c.all("cases_first", **wanted, limit=max(0, limit))
            return list(map(self._case, rows))
        start = await self.c.one("case_created_at", case_id=after)
        if start is None:
            raise NotFound(f"no case {after!r}")
        rows = await self.c.all(
            "cases_after",
            **wanted,
            created_at=start["created_at"],
            after=after,
            limit=max(0, limit),
        )
        return list(map(self._case, rows))

    # the rate budget that replicas share

    async def lease_budget(self, ask: BudgetAsk, now: float) -> BudgetGrant:
        # One short transaction per slice of calls, not per call: replicas take turns
        # on the bucket's lock, read its few rows and write their own.
        async with self.c.transaction() as tx:
            await self.c.lock_admission(tx, [f"rate-budget:{ask.bucket}"])
            rows = await tx.all("budget_holders", bucket=ask.bucket)
            holders = [
                BudgetHolder(
                    holder=r["holder"],
                    window_start=float(r["window_start"]),
                    granted=int(r["granted"]),
                    priority=None if r["priority"] is None else int(r["priority"]),
                    expires_at=float(r["expires_at"]),
                )
                for r in rows
            ]
            mine, grant = grant_budget(holders, ask, now)
            await tx.run(
                "budget_save",
                bucket=ask.bucket,
                holder=mine.holder,
                window_start=mine.window_start,
                granted=mine.granted,
                priority=mine.priority,
                expires_at=mine.expires_at,
            )
            if len(holders) > grant.holders:
                await tx.run("budget_prune", bucket=ask.bucket, now=now, start=mine.window_start)
        return grant


def _stored_data(connector: Connector, value: Any) -> Any:
    """An event's data as stored; text that is no longer a JSON object (someone wrote
    to the database) is kept under a key of its own, so its hash fails and the check
    says which event it was instead of stopping there."""
    if not isinstance(value, str):
        return value
    try:
        data = connector.doc(value)
    except (TypeError, ValueError):
        data = None
    return data if isinstance(data, dict) else {"<unreadable stored data>": value}
