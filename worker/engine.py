"""The engine: runs a claimed case's steps strictly in order, recording each before the next.

An operator task from the portal sessions on never blocks automated containment:
it opens, and the steps after it run at once; the case is contained when they
and the operator's confirmation are done (WAITING while only that is missing).

A step that fails permanently halts the case, so no later containment step can
run out of order; a step that keeps failing transiently hands the case back to
the queue for later, so a flaky provider delays a case but never fails it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from worker.actions import action
from worker.clock import Clock, utc_iso
from worker.countdown import (
    DENY_EXTENDED,
    INVENTORY_READ,
    Countdown,
    CountdownInput,
    CountdownInputs,
    SessionSettings,
    compute,
    inputs_from_evidence,
)
from worker.domain import Case, CaseStatus, StepRecord, StepStatus, Timer
from worker.errors import LeaseLost, PermanentError, StoreError, StoreUnavailable, TransientError
from worker.intents import settle_intents
from worker.ledger import Ledger
from worker.metrics import Metrics
from worker.notify import LogNotifier, Notification, Notifier, deliver
from worker.playbook import gates_later_steps
from worker.ratelimit import CASE_AGE, CASE_PRIORITY
from worker.retry import RetryPolicy
from worker.steps import Done, Providers, StepContext, Waiting
from worker.store.base import ALL_LAPSED, DENY_REMOVABLE, REREAD_FINAL, Store

log = structlog.get_logger(__name__)


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


#: the re-read grid's origin: any fixed moment will do, the same in every process
_GRID_ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)


def reread_tick_after(moment: datetime, interval: timedelta) -> datetime:
    """The first multiple of `interval` (counted from a fixed origin) after `moment`:
    never more than `interval` later, and the same for every case of a run."""
    ticks = (moment - _GRID_ORIGIN) // interval
    return _GRID_ORIGIN + (ticks + 1) * interval


@contextlib.contextmanager
def _start_unanswered(record: StepRecord) -> Iterator[None]:
    """A step start whose answer is lost may have committed: the attempt on the
    timeline must still have a line that names this worker (the lease holder's next)."""
    try:
        yield
    except StoreUnavailable:
        log.warning("step_start_unanswered", attempt=record.attempts + 1)
        raise


@dataclass(frozen=True, kw_only=True)
class EngineSettings:
    lease_seconds: float = 60.0
    verify_timeout: float = 120.0
    verify_interval: float = 1.0
    requeue_after: float = 30.0
    #: a step that raises something unexpected this often halts for a human
    max_unexpected_failures: int = 5


class Engine:
    def __init__(
        self,
        *,
        store: Store,
        providers: Providers,
        clock: Clock,
        policy: RetryPolicy,
        settings: EngineSettings,
        sessions: SessionSettings | None = None,
        notifier: Notifier | None = None,
        worker_id: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.sessions = sessions or SessionSettings()
        self.notifier: Notifier = notifier or LogNotifier()
        self.store = store
        self.providers = providers
        self.clock = clock
        self.policy = policy
        self.settings = settings
        self.worker_id = worker_id or default_worker_id()
        #: set on shutdown: the step in flight finishes, no further step starts
        self.stopping = asyncio.Event()
        #: held while a case's countdown is recomputed (gone with its last holder)
        self._countdown_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    async def run_claimed(self, case: Case) -> CaseStatus:
        """Run a case this worker has claimed until it is contained, waits, halts or is requeued."""
        with structlog.contextvars.bound_contextvars(case_id=case.id, playbook=case.playbook):
            # the steps' provider calls queue by this case's priority (the task copies it)
            token = CASE_PRIORITY.set(case.priority)
            age = CASE_AGE.set(case.created_at.timestamp())
            try:
                steps = asyncio.create_task(self._run_steps(case))
            finally:
                CASE_AGE.reset(age)
                CASE_PRIORITY.reset(token)
            lost = asyncio.Event()
            heartbeat = asyncio.create_task(self._heartbeat(case.id, steps, lost))
            try:
                return await steps
            except asyncio.CancelledError:
                if not lost.is_set():
                    raise
                # Another worker owns the case now: stop here, it resumes from the ledger.
                return CaseStatus.RUNNING
            except LeaseLost:
                # found on a write before the heartbeat noticed: the same, stop here
                log.error("lease_lost")
                return CaseStatus.RUNNING
            finally:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat

    async def _heartbeat(
        self, case_id: str, steps: asyncio.Task[CaseStatus], lost: asyncio.Event
    ) -> None:
        lease = self.settings.lease_seconds
        interval = lease / 3
        # The lease as this worker last renewed it (claimed just now), in monotonic
        # time, less a margin: past it another worker may take the case, so the step
        # stops there even when no heartbeat could say so (the database away, slow).
        held_until = time.monotonic() + lease - interval / 2
        while not steps.done():
            await asyncio.sleep(max(0.0, min(interval, held_until - time.monotonic())))
            if steps.done():
                return
            sent = time.monotonic()
            held = sent < held_until
            if held:
                try:
                    held = await asyncio.wait_for(
                        self.store.heartbeat(case_id, self.worker_id, self.clock.now(), lease),
                        held_until - sent,
                    )
                except (StoreUnavailable, TimeoutError) as exc:
                    # the step goes on while the lease surely holds; tried again then
                    log.warning("heartbeat_failed", error=str(exc) or type(exc).__name__)
                    continue
                else:
                    held_until = sent + lease - interval / 2
            if not held:
                # A stalled worker must not run a step beside the one that took over.
                log.error("lease_lost")
                lost.set()
                steps.cancel()
                return

    async def _run_steps(self, case: Case) -> CaseStatus:
        records = await self.store.steps(case.id)
        if any(r.status is StepStatus.DONE for r in records):
            # resumed: a done step does not run again to settle what it left in intent
            await settle_intents(self, case, closing=False)
        earlier: dict[str, dict[str, object]] = {}
        #: operator tasks left open behind us: they gate nothing, only containment
        still_open: list[str] = []
        #: what the step just run read, for the next one (reads made in this run only)
        passed: dict[str, Any] = {}
        #: this step's attempt, started in the same write as the last step's finish
        prestarted: StepRecord | None = None
        for index, step in enumerate(case.steps):
            record = records[index]
            reads, passed = passed, {}
            if prestarted is None:
                if record.status is StepStatus.DONE:
                    earlier[step.id] = record.evidence
                    continue
                if record.status is StepStatus.WAITING and not gates_later_steps(step.action):
                    task = await self.store.get_task(case.id, step.id)
                    if task is None or task.confirmed_at is None:
                        # still open (a resumed case, a restart): the steps after it go on
                        still_open.append(step.id)
                        continue
                if self.stopping.is_set():
                    # shutting down: hand the case back at a step boundary for the next worker
                    await self.store.release_case(
                        case.id, self.worker_id, CaseStatus.PENDING, self.clock.now()
                    )
                    log.info("case_released_for_shutdown", next_step=step.id)
                    return CaseStatus.PENDING
            with structlog.contextvars.bound_contextvars(step=step.id, action=step.action):
                # the attempt and its step_started event are one write: logged once it holds
                if prestarted is not None:
                    record, prestarted = prestarted, None
                else:
                    with _start_unanswered(record):
                        record = await self.store.start_step(
                            case.id, index, self.worker_id, self.clock.now()
                        )
                log.info("step_started", attempt=record.attempts)
                ctx = StepContext(
                    case=case,
                    step=step,
                    index=index,
                    record=record,
                    earlier=earlier,
                    store=self.store,
                    clock=self.clock,
                    providers=self.providers,
                    policy=self.policy,
                    verify_timeout=self.settings.verify_timeout,
                    verify_interval=self.settings.verify_interval,
                    previous_reads=reads,
                )
                started = time.monotonic()
                try:
                    outcome = await action(step.action).handler(ctx)
                except TransientError as exc:
                    self._took(case, index, "requeued", started)
                    return await self._requeue(case, index, str(exc))
                except PermanentError as exc:
                    self._took(case, index, "failed", started)
                    return await self._halt(case, index, str(exc))
                except StoreError:
                    raise
                except Exception as exc:
                    log.exception("step_crashed")
                    reason = f"internal error: {type(exc).__name__}: {exc}"
                    if record.attempts >= self.settings.max_unexpected_failures:
                        self._took(case, index, "failed", started)
                        return await self._halt(case, index, reason)
                    self._took(case, index, "requeued", started)
                    return await self._requeue(case, index, reason)
                waiting = isinstance(outcome, Waiting)
                self._took(case, index, "waiting" if waiting else "done", started)
                if isinstance(outcome, Waiting):
                    gates = gates_later_steps(step.action)
                    await self.store.finish_step(
                        case.id,
                        index,
                        self.worker_id,
                        StepStatus.WAITING,
                        self.clock.now(),
                        evidence=outcome.evidence,
                        event=(
                            "operator_task_opened",
                            {
                                "title": outcome.task.title,
                                "console_url": outcome.task.console_url,
                                "blocks_later_steps": gates,
                            },
                        ),
                    )
                    notification = Notification(
                        kind="operator_task",
                        case_id=case.id,
                        subject=case.subject,
                        title=outcome.task.title,
                        data={
                            "console_url": outcome.task.console_url,
                            "confirm": f"offboard confirm {case.id} {step.id}",
                        },
                    )
                    if not gates:
                        # The Identity Center user is confirmed disabled: the task opens and
                        # the automated steps after it run now, without waiting for a human.
                        log.info("operator_task_opened_not_blocking")
                        await deliver(self.notifier, notification)
                        still_open.append(step.id)
                        continue
                    return await self._wait(case, [step.id], notification)
                assert isinstance(outcome, Done)
                done = ("step_done", outcome.evidence)
                if self._starts_next_at_once(case, records, index):
                    # one write for both: a step less between a trigger and the IdP's change
                    nxt = case.steps[index + 1]
                    with (
                        structlog.contextvars.bound_contextvars(step=nxt.id, action=nxt.action),
                        _start_unanswered(records[index + 1]),
                    ):
                        prestarted = await self.store.finish_and_start(
                            case.id,
                            index,
                            self.worker_id,
                            self.clock.now(),
                            evidence=outcome.evidence,
                            event=done,
                            next_index=index + 1,
                        )
                else:
                    await self.store.finish_step(
                        case.id,
                        index,
                        self.worker_id,
                        StepStatus.DONE,
                        self.clock.now(),
                        evidence=outcome.evidence,
                        event=done,
                    )
                log.info("step_done", verified_by=outcome.evidence.get("verified_by"))
                earlier[step.id] = outcome.evidence
                passed = ctx.reads_to_pass
                if action(step.action).countdown_input is not None:
                    await self.update_countdown(case.id)
        if still_open:
            # every automated step is done; containment waits for the operator only
            return await self._wait(case, still_open, None)
        await self.store.release_case(
            case.id,
            self.worker_id,
            CaseStatus.CONTAINED,
            self.clock.now(),
            event=("case_contained", {}),
        )
        log.info("case_contained")
        return CaseStatus.CONTAINED

    def _starts_next_at_once(self, case: Case, records: list[StepRecord], index: int) -> bool:
        """Whether the step after `index`, just done, starts as soon as it is recorded:
        one that is not done or waiting for an operator, not behind a countdown update,
        on a worker that is not shutting down."""
        nxt = index + 1
        return (
            nxt < len(case.steps)
            and records[nxt].status not in (StepStatus.DONE, StepStatus.WAITING)
            and action(case.steps[index].action).countdown_input is None
            and not self.stopping.is_set()
        )

    async def _wait(
        self, case: Case, step_ids: list[str], notification: Notification | None
    ) -> CaseStatus:
        """Hand the case to the operators: WAITING until one of its tasks is confirmed.
        A task confirmed before this release (the confirmation found no waiting case
        to resume) makes the release PENDING instead, in the same write."""
        status = await self.store.release_case(
            case.id, self.worker_id, CaseStatus.WAITING, self.clock.now()
        )
        if status is not CaseStatus.WAITING:
            # a task confirmed meanwhile, or the case escalated while it ran
            log.info("case_released_to_run_again", steps=step_ids)
            return status
        log.info("case_waiting_for_operator", steps=step_ids)
        if notification is not None:
            await deliver(self.notifier, notification)
        return CaseStatus.WAITING

    def _took(self, case: Case, index: int, outcome: str, started: float) -> None:
        """One run of a step in the duration histogram (no I/O: the hot path)."""
        action = case.steps[index].action
        self.metrics.step_finished(case.playbook, action, outcome, time.monotonic() - started)

    async def _requeue(self, case: Case, index: int, reason: str) -> CaseStatus:
        now = self.clock.now()
        run_after = now + timedelta(seconds=self.settings.requeue_after)
        await self.store.finish_step(
            case.id,
            index,
            self.worker_id,
            StepStatus.RUNNING,
            now,
            error=reason,
            event=("step_deferred", {"reason": reason}),
        )
        await self.store.release_case(
            case.id, self.worker_id, CaseStatus.PENDING, now, run_after=run_after
        )
        log.warning("step_deferred", reason=reason, retry_in_seconds=self.settings.requeue_after)
        return CaseStatus.PENDING

    async def _halt(self, case: Case, index: int, reason: str) -> CaseStatus:
        step = case.steps[index]
        now = self.clock.now()
        halt_reason = f"step {step.id} ({step.action}) failed: {reason}"
        await self.store.finish_step(
            case.id,
            index,
            self.worker_id,
            StepStatus.FAILED,
            now,
            error=reason,
            event=("case_halted", {"reason": halt_reason}),
        )
        await self.store.release_case(
            case.id, self.worker_id, CaseStatus.HALTED, now, halt_reason=halt_reason
        )
        log.error("case_halted", reason=halt_reason)
        await deliver(
            self.notifier,
            Notification(
                kind="halted",
                case_id=case.id,
                subject=case.subject,
                title=f"case halted at {step.id}",
                data={"reason": halt_reason, "retry": f"offboard retry {case.id}"},
            ),
        )
        return CaseStatus.HALTED

    async def countdown_inputs(self, case: Case) -> tuple[CountdownInputs | None, bool]:
        """The countdown's inputs from what is stored for good (the done steps' evidence,
        every inventory read, every deny extension, the drift), and whether the deny ran."""
        case_id = case.id
        evidence: dict[str, dict[str, Any]] = {}
        deny_ran = False
        for step in await self.store.steps(case_id):
            given = action(step.action).countdown_input
            if given is not None and step.status is StepStatus.DONE:
                evidence[given] = step.evidence
                deny_ran = deny_ran or given is CountdownInput.DENY_PROVISIONED
        events = await self.store.events(case_id)
        inputs = inputs_from_evidence(
            evidence,
            (case.countdown or {}).get("drift"),
            reads=[
                {**e.data, "recorded_at": utc_iso(e.at)} for e in events if e.kind == INVENTORY_READ
            ],
            deny_extensions=[e.data for e in events if e.kind == DENY_EXTENDED],
        )
        return inputs, deny_ran

    async def update_countdown(self, case_id: str) -> Countdown | None:
        """(Re)compute the countdown from the evidence so far and the inventory read
        since, and reschedule its milestones and work timers (the re-reads until new
        sessions end, the moment the deny may come off)."""
        # one at a time per case in this process: a save computed from an older read
        # must not land after a newer one and move a milestone earlier
        lock = self._countdown_locks.get(case_id)
        if lock is None:
            lock = self._countdown_locks[case_id] = asyncio.Lock()
        async with lock:
            return await self._update_countdown(case_id)

    async def _update_countdown(self, case_id: str) -> Countdown | None:
        case = await self.store.get_case(case_id)
        inputs, deny_ran = await self.countdown_inputs(case)
        if inputs is None:
            return None
        drift = (case.countdown or {}).get("drift")
        countdown = compute(inputs, self.sessions)
        epoch = int((case.countdown or {}).get("epoch", 0))
        timers = [
            Timer(
                case_id=case_id,
                name=m.name,
                epoch=epoch,
                due_at=m.at,
                closes_case=m.name == ALL_LAPSED,
            )
            for m in countdown.milestones
        ]
        timers += self._work_timers(case_id, epoch, countdown, deny_ran)
        record = {**countdown.as_json(), "epoch": epoch, "drift": drift}
        await self.store.save_countdown(case_id, record, epoch, timers, self.clock.now())
        await self._event(
            case, "countdown_computed", None, {"all_lapsed": utc_iso(countdown.all_lapsed)}
        )
        log.info("countdown_computed", case_id=case_id, all_lapsed=utc_iso(countdown.all_lapsed))
        return countdown

    def _work_timers(
        self, case_id: str, epoch: int, countdown: Countdown, deny_ran: bool
    ) -> list[Timer]:
        """A re-read at most `reread_interval` apart from the disable while new sessions
        can start, and one at the moment they no longer can; with a deny, the moment it
        may come off (the role bound as if it had never run). The re-reads fall on one
        grid for every case (multiples of the interval), so the cases of a run re-read
        together and share what they read of groups and permission sets."""
        new_sessions_end = countdown.milestone("new-sessions-end").at
        due = reread_tick_after(countdown.inputs.ic_disabled_at, self.sessions.reread_interval)
        timers = []
        for n in itertools.count(1):
            if due >= new_sessions_end:
                break
            timers.append(Timer(case_id=case_id, name=f"reread-{n:02d}", epoch=epoch, due_at=due))
            due += self.sessions.reread_interval
        timers.append(
            Timer(case_id=case_id, name=REREAD_FINAL, epoch=epoch, due_at=new_sessions_end)
        )
        if deny_ran and countdown.deny_removable_at is not None:
            timers.append(
                Timer(
                    case_id=case_id,
                    name=DENY_REMOVABLE,
                    epoch=epoch,
                    due_at=countdown.deny_removable_at,
                )
            )
        return timers

    def ledger(self, case_id: str, label: str) -> Ledger:
        """The side effects a case has outside its steps (the watchdog's, the re-reads',
        the cleanup's), under the engine's retry and read-back settings."""
        return Ledger(
            store=self.store,
            clock=self.clock,
            policy=self.policy,
            case_id=case_id,
            step_id=label,
            verify_timeout=self.settings.verify_timeout,
            verify_interval=self.settings.verify_interval,
        )

    async def _event(
        self, case: Case, kind: str, step_id: str | None, data: dict[str, object]
    ) -> None:
        await self.store.append_event(case.id, kind, self.clock.now(), step_id=step_id, data=data)
