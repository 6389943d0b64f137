"""The store interface, the records it returns, and the evidence chain.

No SQL here: the statements are in `queries.sql`, run by `manager.StoreManager` on
a connector (`sqlite`, `postgres`). The evidence chain is defined here so that every
backend hashes the same way and `worker.evidence` can check any of them offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from worker.clock import parse_iso
from worker.domain import (
    URGENT,
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


def new_case_id() -> str:
    return "c-" + uuid.uuid4().hex[:16]


#: Names the encoding below; it is hashed into every link, so a change of encoding
#: can never be mistaken for this one. Never change what it means: add a new one.
CHAIN_VERSION = "offboard-evidence-v1"


def canonical_json(value: Any) -> str:
    """The one JSON text of a value that is hashed: keys sorted, no whitespace, ASCII
    only (everything else as \\u escapes)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _sha256(parts: list[Any]) -> str:
    return hashlib.sha256(canonical_json(parts).encode("ascii")).hexdigest()


def genesis_hash(case_id: str) -> str:
    """The `prev_hash` of a case's first event: fixed, derived from the case id."""
    return _sha256([CHAIN_VERSION, "genesis", case_id])


def event_hash(
    case_id: str,
    seq: int,
    at: str,
    kind: str,
    step_id: str | None,
    data: dict[str, Any],
    prev_hash: str,
) -> str:
    """SHA-256 (hex) of one event, linked to the one before it.

    The hashed text is the canonical JSON array ``[CHAIN_VERSION, case_id, seq, at,
    kind, step_id, canonical_json(data), prev_hash]`` in ASCII: a JSON array, so no
    field can run into the next; `at` is the stored timestamp text (`chain_time`).
    """
    return _sha256(
        [CHAIN_VERSION, case_id, seq, at, kind, step_id, canonical_json(data), prev_hash]
    )


def chain_time(when: datetime) -> str:
    """The text hashed for a timestamp a backend stores as a time value, not as text
    (PostgreSQL): UTC, every microsecond it keeps, and a Z."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


#: The statuses of a person's active case: at most one per person, whatever the
#: playbook (a partial unique index on `subject` in both SQL backends says so).
ACTIVE_STATUSES = (CaseStatus.PENDING, CaseStatus.RUNNING, CaseStatus.WAITING, CaseStatus.HALTED)
#: The statuses of a case that is still open (not closed): a new trigger for the
#: person joins it. A contained case's countdown runs: it is open, though not active,
#: so that `offboard run --new` can open another beside it.
OPEN_STATUSES = (*ACTIVE_STATUSES, CaseStatus.CONTAINED)
#: The open cases an incident escalates in place; a halted one waits for a human.
ESCALATABLE = (CaseStatus.PENDING, CaseStatus.RUNNING, CaseStatus.WAITING, CaseStatus.CONTAINED)


def created_event(new: NewCase) -> dict[str, Any]:
    """The data of a case's first event, `case_created`."""
    return {"trigger": new.trigger, "subject": new.subject, "playbook": new.playbook}


@dataclass(frozen=True, kw_only=True)
class NewEvent:
    """An event to append to its case's timeline (and hash chain)."""

    case_id: str
    kind: str
    at: datetime
    step_id: str | None = None
    data: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class EvidenceRecord:
    """One event as stored, with the links of its case's hash chain.

    `at` is the timestamp exactly as it was hashed (SQLite: the stored text, to the
    millisecond; PostgreSQL: `chain_time` of the stored value, to the microsecond).
    """

    case_id: str
    seq: int
    at: str
    kind: str
    step_id: str | None
    data: dict[str, Any]
    prev_hash: str
    hash: str


@dataclass(frozen=True, kw_only=True)
class CaseCount:
    """How many cases one playbook has in one state."""

    status: CaseStatus
    playbook: str
    count: int


@dataclass(frozen=True, kw_only=True)
class TaskBacklog:
    """The operator tasks not yet confirmed: how many, and when the oldest was opened."""

    waiting: int
    #: None when no task waits
    oldest_opened_at: datetime | None


@dataclass(frozen=True, kw_only=True)
class CasePage:
    """One page of a listing of cases, and how many cases the whole listing holds."""

    cases: tuple[Case, ...]
    total: int


@dataclass(frozen=True, kw_only=True)
class BudgetAsk:
    """One replica asking for a slice of a provider's rate budget (`Store.lease_budget`).

    The budget is `limit` calls per fixed window of `window` seconds (epoch-aligned,
    as Okta's minutes are), shared by every replica. `priority` is that of the most
    urgent call the replica has waiting (None: nothing waits, it only renews its
    lease); the last `reserve` calls of a window go to urgent calls only."""

    bucket: str
    holder: str
    window: float
    limit: int
    want: int
    priority: int | None
    reserve: int = 0
    #: how long the holder's lease (its priority, its share of a concurrency cap) lasts
    #: without a renewal: a replica that dies gives them back then
    ttl: float = 5.0


@dataclass(frozen=True, kw_only=True)
class BudgetHolder:
    """A replica's row in a bucket: its calls granted in the window starting at
    `window_start`, its most urgent waiting call, and when its lease lapses."""

    holder: str
    window_start: float
    granted: int
    priority: int | None
    expires_at: float


@dataclass(frozen=True, kw_only=True)
class BudgetGrant:
    """What a replica may spend: `granted` calls until `window_end` (epoch seconds);
    `holders`: the replicas holding a live lease on the bucket, this one included
    (a concurrency cap is split among them); `retry_at`: when asking again may help."""

    granted: int
    window_end: float
    holders: int
    retry_at: float


@dataclass(frozen=True, kw_only=True)
class TaskConfirmed:
    """What `Store.confirm_task` did: the task as stored (its first confirmation)."""

    task: OperatorTask
    #: confirmed before this call: nothing recorded
    already: bool
    #: the case waited for operators and is runnable again
    resumed: bool


#: how soon a replica held back by another's urgent calls asks again (seconds)
BUDGET_RETRY = 0.05


def grant_budget(
    holders: Sequence[BudgetHolder], ask: BudgetAsk, now: float
) -> tuple[BudgetHolder, BudgetGrant]:
    """The rule every store applies, atomically, to one bucket's rows: grant at most
    what the window has left (its reserve only to urgent calls) and nothing to a
    replica while another replica's live lease shows a more urgent call waiting.
    Calls granted to a replica that died stay counted (they may have been sent) until
    the window ends; its lease, and with it its priority and share, lapse after `ttl`."""
    start = math.floor(now / ask.window) * ask.window
    used = sum(h.granted for h in holders if h.window_start == start and h.holder != ask.holder)
    mine = next((h for h in holders if h.holder == ask.holder), None)
    spent = mine.granted if mine is not None and mine.window_start == start else 0
    left = ask.limit - used - spent
    others = [h for h in holders if h.holder != ask.holder and h.expires_at > now]
    priority = -1 if ask.priority is None else ask.priority
    outranked = any(h.priority is not None and h.priority > priority for h in others)
    usable = left if priority >= URGENT else left - ask.reserve
    granted = 0 if outranked else max(0, min(ask.want, usable))
    end = start + ask.window
    if granted or ask.want == 0:
        retry = now
    else:
        retry = min(end, now + BUDGET_RETRY) if outranked else end
    row = BudgetHolder(
        holder=ask.holder,
        window_start=start,
        granted=spent + granted,
        # a replica whose ask was met has no call left waiting at that priority
        priority=ask.priority if granted < ask.want else None,
        expires_at=now + ask.ttl,
    )
    return row, BudgetGrant(
        granted=granted, window_end=end, holders=len(others) + 1, retry_at=retry
    )


#: The milestone whose time ends a case's residual-access countdown.
ALL_LAPSED = "all-lapsed"


def first_milestone(countdown: dict[str, Any], name: str) -> Any:
    """The `at` of the first milestone called `name`, as stored; None if there is none."""
    milestones = countdown.get("milestones")
    if not isinstance(milestones, list):
        return None
    for milestone in milestones:
        if isinstance(milestone, dict) and milestone.get("name") == name:
            return milestone.get("at")
    return None


def all_lapsed_at(countdown: dict[str, Any]) -> datetime | None:
    """When the countdown's all-lapsed milestone falls; None without a readable one. Kept
    beside the document so that counting running countdowns reads no document."""
    at = first_milestone(countdown, ALL_LAPSED)
    if not isinstance(at, str):
        return None
    try:
        return parse_iso(at)
    except ValueError:
        return None


#: Timers that schedule the worker's own work, not milestones of the countdown: the
#: inventory re-reads until new sessions end (`reread-01`, ..., `reread-final`) and
#: the moment a deny statement may come off. Their firing is recorded as `timer_fired`.
WORK_TIMER_PREFIXES = ("reread-", "deny-removable")
#: The last re-read: at new-sessions-end, when the inventory stops mattering.
REREAD_FINAL = "reread-final"
#: The moment every role session that could start without the deny has ended.
DENY_REMOVABLE = "deny-removable"


def is_milestone(timer_name: str) -> bool:
    """Whether a timer is a countdown milestone (shown and notified as one)."""
    return not timer_name.startswith(WORK_TIMER_PREFIXES)


def fired_event(timer_name: str) -> str:
    """The event a fired timer records."""
    return "milestone_reached" if is_milestone(timer_name) else "timer_fired"


#: The statuses of a case that is closed for good: no countdown of theirs runs.
CLOSED_STATUSES = (CaseStatus.ACCESS_LAPSED, CaseStatus.CANCELLED)
#: How `Store.urgent_cases` ranks states: these first, in this order, then the rest
#: (queries.sql's `cases_urgent` writes the same order as a CASE expression).
URGENT_STATUSES = (CaseStatus.HALTED, CaseStatus.WAITING)


def permission_set_lock_name(arn: str) -> str:
    """The name every process locks a permission set's inline policy under."""
    return f"permission-set:{arn}"


class KeyedLocks:
    """One asyncio lock per name, for the tasks of one process; a lock nobody holds
    or waits for is forgotten, so names do not pile up."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(name, (asyncio.Lock(), 0))
        self._locks[name] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[name]
            if users == 1:
                del self._locks[name]
            else:
                self._locks[name] = (lock, users - 1)


class Store(Protocol):
    """Durable state of cases, their steps, the side-effect ledger and operator tasks.

    Writes that belong to a claimed case take the worker id: a worker whose lease
    was lost (it stalled, another took over) cannot overwrite the new owner's work.

    Every ordering ends on a unique key, the same in every backend: cases by
    (created_at, id), after priority for `claim_next` (a person's open case: the
    first); open tasks by (opened_at, case_id, step_id); due timers by (due_at,
    case_id, name, epoch); a case's timers by (epoch, due_at, name).
    """

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...
    async def wait_for_work(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait until there may be new work (a case created, resumed or rescheduled, a
        countdown saved: by any process sharing the store, where the backend can tell),
        for at most `timeout` seconds; False if none came. A hint, not a queue: work
        that becomes due with time alone sends nothing, so callers still poll."""

    # cases
    async def create_case(self, new: NewCase, now: datetime) -> tuple[Case, bool]:
        """Create a case (and its pending steps); with an idempotency key already used,
        return the existing case and False."""

    async def admit(self, arrivals: Sequence[Arrival], now: datetime) -> list[Admission]:
        """Admit trigger deliveries together, in one transaction (group commit): for
        each arrival in order, its delivery's first record if the key is known; else
        the person's open case of that playbook if there is one (nothing written);
        else a new case, with the delivery recorded as `arrival.answer(case)`. An
        arrival sees the ones before it in the same call. All or nothing."""

    async def get_case(self, case_id: str) -> Case: ...
    async def list_cases(self, statuses: tuple[CaseStatus, ...] | None = None) -> list[Case]: ...
    async def claim_next(
        self, worker_id: str, now: datetime, lease_seconds: float, *, min_priority: int = 0
    ) -> Case | None:
        """Claim the most urgent runnable case: pending and due, or running with a lapsed
        lease; only one of at least `min_priority` (a worker's slots kept for incidents)."""

    async def claim_case(
        self, case_id: str, worker_id: str, now: datetime, lease_seconds: float
    ) -> Case | None:
        """Claim this case if it is runnable now; None if another worker holds it or not due."""

    async def heartbeat(
        self, case_id: str, worker_id: str, now: datetime, lease_seconds: float
    ) -> bool: ...
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
        """Hand the case back in `status`, with `event` (kind, data) on its timeline in
        the same write; StoreError if this worker does not hold it. The status set:
        PENDING instead of CONTAINED or WAITING for a case escalated while it ran, and
        instead of WAITING when a waiting step's task was confirmed meanwhile (made
        runnable at once, with no event: a confirmation never waits on a lost race)."""

    async def find_open_case(self, subject: str) -> Case | None:
        """The person's open case, whatever its playbook: their active one (there is at
        most one), else their newest contained one; None if every case of theirs is closed."""

    async def escalate_case(
        self,
        case_id: str,
        steps: Sequence[PlannedStep],
        priority: int,
        now: datetime,
        data: dict[str, Any],
    ) -> tuple[Case, tuple[str, ...]]:
        """Escalate an open case in place, in one transaction: append those of `steps`
        whose ids it lacks (as pending steps), raise its priority to `priority` (never
        lower it), make it runnable at once (a contained or waiting case becomes
        pending; a scheduled one due now) and record `case_escalated` with `data` and
        the steps added. The case as it is then, and the ids of the steps added.
        StoreError for a closed or halted case; NotFound for an unknown one."""

    async def reschedule_case(
        self, case_id: str, run_after: datetime, now: datetime, *, by: dict[str, Any] | None = None
    ) -> Case:
        """Move a case that has not started yet; StoreError if it has. `by`: what moved
        it (source, reference, delivery key), recorded in the `case_rescheduled` event."""

    async def cancel_case(self, case_id: str, now: datetime, reason: str) -> Case:
        """Withdraw a case no step of which has run; StoreError if one has."""

    async def resume_case(
        self, case_id: str, now: datetime, *, event: tuple[str, dict[str, Any]] | None = None
    ) -> Case:
        """Make a waiting or halted case runnable again (an operator fixed what halted
        it), with `event` (kind, data) on its timeline in the same write; any other case
        is left as it is, and no event is written."""

    # steps
    async def steps(self, case_id: str) -> list[StepRecord]: ...
    async def start_step(
        self, case_id: str, index: int, worker_id: str, now: datetime
    ) -> StepRecord: ...
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
    ) -> StepRecord: ...
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
        """`finish_step` DONE and `start_step(next_index)` in one write (both or
        neither): the attempt of the step that runs next."""

    # side-effect ledger
    def permission_set_lock(self, arn: str) -> AbstractAsyncContextManager[None]:
        """Held while one case reads, merges, puts and starts provisioning a permission
        set's inline policy (`worker.steps.cover_with_deny`, the deny cleanup): the
        tasks of a process and every process sharing the store take turns, so no put
        is built from a policy another case is about to change."""

    async def ledger_get(self, key: str) -> LedgerEntry | None: ...
    async def ledger_intent(
        self, key: str, case_id: str, step_id: str, operation: str, now: datetime
    ) -> LedgerEntry: ...
    async def ledger_applied(self, key: str, now: datetime) -> LedgerEntry: ...
    async def ledger_intents(self, case_id: str) -> list[LedgerEntry]:
        """The case's entries still in intent (a call that may or may not have gone
        out), oldest first, then by key."""

    async def ledger_settle(
        self, key: str, state: LedgerState, now: datetime
    ) -> LedgerEntry | None:
        """An entry left in intent, settled as a read showed it (`APPLIED`, `NOT_APPLIED`)
        or as no read can tell (`UNKNOWN`); None when it is no longer in intent (its step
        marked it meanwhile: that stands). NotFound if there is no such entry."""

    # operator tasks
    async def open_task(self, task: OperatorTask) -> OperatorTask:
        """Open the task, or return the one already open for that case and step."""

    async def get_task(self, case_id: str, step_id: str) -> OperatorTask | None: ...
    async def confirm_task(
        self, case_id: str, step_id: str, confirmed_by: str, now: datetime
    ) -> TaskConfirmed:
        """Record an operator's confirmation with its `operator_confirmed` event and make
        the case runnable again if it waits for operators with this step waiting: one
        write, so no lost answer can leave a confirmed task's case waiting for good. A
        task confirmed before keeps its first confirmation and gets no second event;
        its case is still made runnable if it waits (a confirmation repeated after a
        lost answer). NotFound for a task that was never opened."""

    async def open_tasks(self) -> list[OperatorTask]: ...

    # countdown and its timers
    async def save_countdown(
        self,
        case_id: str,
        countdown: dict[str, Any],
        epoch: int,
        timers: list[Timer],
        now: datetime,
    ) -> None:
        """Store the countdown and (re)schedule its milestones in one transaction.

        Unfired timers of older epochs are dropped; within an epoch an unfired timer
        moves to its new time and a fired one stays fired."""

    async def claim_due_timer(self, worker_id: str, now: datetime) -> Timer | None:
        """Fire the earliest due timer: mark it, record a `milestone_reached` event (a
        work timer: `timer_fired`) and, for the last milestone, close the case, all in
        one transaction (exactly once)."""

    async def timers(self, case_id: str) -> list[Timer]: ...
    async def next_timer_due(self) -> datetime | None: ...
    async def next_case_due(self, now: datetime) -> datetime | None:
        """The soonest moment after `now` a case becomes claimable: a pending case's
        `run_after`, a running case's lease lapsing. None if no such moment is known."""

    # trigger deliveries and refusals
    async def record_delivery(self, delivery: Delivery) -> tuple[Delivery, bool]:
        """Record a processed delivery; if its key is known, the first record and False."""

    async def get_delivery(self, key: str) -> Delivery | None: ...
    async def record_refusal(self, refusal: Refusal) -> None: ...
    async def refusals(self) -> list[Refusal]: ...

    # timeline
    async def append_event(
        self, case_id: str, kind: str, now: datetime, *, step_id: str | None, data: dict[str, Any]
    ) -> CaseEvent: ...
    async def events(self, case_id: str) -> list[CaseEvent]: ...

    # evidence: the events with their hash chain. Events are only ever inserted; each
    # insert also moves the case's chain head, in the same transaction.
    async def evidence(self, case_id: str) -> list[EvidenceRecord]:
        """The case's events as stored, in seq order, with their hashes; [] for an
        unknown case. Reads what is there: checking it is `worker.evidence.verify`."""

    async def evidence_head(self, case_id: str) -> tuple[str, int]:
        """The case's chain head as the case row records it: the hash of its last event
        (the genesis hash before any) and how many events were appended. NotFound for
        an unknown case."""

    # aggregates and pages: what a scrape, the status page and the API's list read,
    # without loading every case

    async def case_counts(self) -> list[CaseCount]:
        """How many cases each (status, playbook) pair holds; only pairs with a case."""

    async def running_countdowns(self, now: datetime) -> int:
        """How many cases, not closed (`CLOSED_STATUSES`), have a countdown whose first
        milestone named `ALL_LAPSED` is after `now` (milestone times are stored as
        `utc_iso` text in the countdown document, as the engine writes them)."""

    async def count_events(self, kind: str) -> int:
        """How many events of this kind every case's timeline holds together."""

    async def task_backlog(self) -> TaskBacklog:
        """The operator tasks not yet confirmed, counted, with the oldest one's opening."""

    async def open_tasks_of(self, case_ids: Sequence[str]) -> list[OperatorTask]:
        """The unconfirmed operator tasks of these cases, oldest first."""

    async def urgent_cases(
        self, statuses: tuple[CaseStatus, ...] | None, *, limit: int, offset: int
    ) -> CasePage:
        """Cases in these states (None or empty: every case), the most urgent first:
        halted, then waiting, then the rest; the newest first within each,
        then by id. `limit` of them from `offset`, with the number of all of them."""

    async def cases_after(
        self, statuses: tuple[CaseStatus, ...] | None, *, after: str | None, limit: int
    ) -> list[Case]:
        """Up to `limit` cases in these states (None or empty: every case) in
        `list_cases`' order (created_at, then id), those after the case `after` only
        (from the first for None): a keyset page. NotFound for an unknown `after`."""

    # the rate budget that replicas share

    async def lease_budget(self, ask: BudgetAsk, now: float) -> BudgetGrant:
        """Grant `ask.holder` up to `ask.want` calls of the bucket's current window
        (`grant_budget`'s rule, applied atomically across replicas; `now` in epoch
        seconds) and renew its lease, recording its most urgent waiting call."""
