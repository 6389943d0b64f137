"""The worker loop: claim runnable cases, fire due milestones, watch for drift.

`offboard worker` runs it alone; `offboard serve` (HTTP triggers) runs it beside
the web server. Stopping sets an event: no new case is claimed, cases in flight
finish their current step (bounded by a grace period), the rest stay retryable.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from datetime import datetime

import structlog

from worker.clock import seconds_until, utc_iso
from worker.countdown import parse_iso_duration
from worker.domain import URGENT, Case, CaseStatus, Timer
from worker.errors import StoreCorrupt, StoreError, StoreUnavailable
from worker.intents import settle_intents
from worker.notify import Notification, deliver
from worker.runtime import Runtime
from worker.store.base import REREAD_FINAL, is_milestone
from worker.watchdog import WATCHED, check_case, listed_statuses
from worker.window import on_timer

log = structlog.get_logger(__name__)

#: the pauses between tries of an unreachable database: doubling, at most this long
OUTAGE_FIRST_PAUSE = 0.1
OUTAGE_MAX_PAUSE = 2.0


class Worker:
    def __init__(self, runtime: Runtime, *, grace_seconds: float = 30.0) -> None:
        self.runtime = runtime
        self.engine = runtime.engine
        self.store = runtime.store
        self.clock = runtime.clock
        config = runtime.config.worker
        self.concurrency = config.concurrency
        self.urgent_slots = config.urgent_slots
        self.poll = config.poll_seconds
        self.watchdog_interval = parse_iso_duration(runtime.config.countdown.watchdog_interval)
        self.grace = grace_seconds
        self._running: set[asyncio.Task[object]] = set()
        self._next_watchdog: datetime | None = None
        self._watchdog: asyncio.Task[int] | None = None
        #: the work of fired work timers (re-reads), running beside the loop
        self._timer_work: set[asyncio.Task[None]] = set()
        self.wake = asyncio.Event()
        #: False while the database is unreachable (readiness reads it)
        self.available = True
        #: set when the database file is found damaged: the loop stops with it
        self.corrupt: StoreCorrupt | None = None
        self._case_of: dict[asyncio.Task[object], str] = {}
        #: cases whose run an outage ended while this worker held their lease
        self._orphans: set[str] = set()
        #: final re-reads an outage stopped, to retry when the database is back
        self._finals: list[Timer] = []
        #: the due timers firing now (`tick`), beside the claims
        self._timer_pass: asyncio.Task[bool] | None = None

    async def run(self, stop: asyncio.Event) -> None:
        log.info("worker_started", worker_id=self.engine.worker_id, concurrency=self.concurrency)
        try:
            while not stop.is_set():
                if self.corrupt is not None:
                    raise self.corrupt
                try:
                    busy = await self.tick(wait_for_timers=False)
                    if not busy:
                        await self._idle(stop)
                except StoreUnavailable as exc:
                    await self._outage(stop, exc)
        finally:
            await self.drain()
            log.info("worker_stopped", worker_id=self.engine.worker_id)

    async def _outage(self, stop: asyncio.Event, exc: StoreUnavailable) -> None:
        """The database went away: claim nothing, try it with growing pauses until it
        answers, then hand back the cases whose run it cut short. No exit: a restart
        or a managed failover takes tens of seconds, and every replica rides it out."""
        self.available = False
        began = time.monotonic()
        log.warning("store_unavailable", error=str(exc))
        for attempt in itertools.count():
            pause = min(OUTAGE_MAX_PAUSE, OUTAGE_FIRST_PAUSE * 2**attempt)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause * random.uniform(0.5, 1.0))
            if stop.is_set():
                return
            try:
                await self.store.ping()
            except StoreUnavailable:
                continue
            break
        self.available = True
        log.warning("store_available", down_seconds=round(time.monotonic() - began, 3))

    async def _after_outage(self) -> None:
        """What an outage cut short, once the database answers again. Cases whose run
        it ended still hold this worker's lease: pending again at once (the release
        matches only a lease still ours), not after it lapses; their step in flight
        resumes through the ledger's read. A final re-read it stopped is retried."""
        for case_id in list(self._orphans):
            if case_id in self._case_of.values():
                self._orphans.discard(case_id)  # claimed and running here again
                continue
            try:
                await self.store.release_case(
                    case_id, self.engine.worker_id, CaseStatus.PENDING, self.clock.now()
                )
            except (StoreUnavailable, StoreCorrupt):
                raise
            except StoreError:
                # no longer ours: its own release committed before the connection went,
                # or the lease lapsed and another worker took it
                log.info("case_not_held_after_outage", case_id=case_id)
            else:
                log.info("case_released_after_outage", case_id=case_id)
            self._orphans.discard(case_id)
        while self._finals:
            await self._retry_final(self._finals[0])
            self._finals.pop(0)

    async def tick(self, *, wait_for_timers: bool = True) -> bool:
        """One round of work; True if anything was done (so look again at once).
        The due timers fire in a pass of their own; `run` does not wait for it (its
        end wakes the loop), a caller that asks for one round does."""
        # Cleared before looking, never after: a wake-up set while this round looks
        # (a case committed just after the claim found none) keeps the next idle short.
        self.wake.clear()
        busy = False
        if self._orphans or self._finals:
            await self._after_outage()
        while len(self._running) < self.concurrency + self.urgent_slots:
            # once the ordinary slots are full, only an incident case may take one
            urgent_only = len(self._running) >= self.concurrency
            case = await self.store.claim_next(
                self.engine.worker_id,
                self.clock.now(),
                self.engine.settings.lease_seconds,
                min_priority=URGENT if urgent_only else 0,
            )
            if case is None:
                break
            if case.id in self._case_of.values():
                # Its lease lapsed under this very process (a heartbeat too late) and the
                # claim renewed it: the run under way goes on; a second one would run
                # steps beside it under the same worker id, which no lease check tells apart.
                log.warning("case_already_running_here", case_id=case.id)
                continue
            task: asyncio.Task[object] = asyncio.create_task(self.engine.run_claimed(case))
            self._running.add(task)
            self._case_of[task] = case.id
            task.add_done_callback(self._finished)
            busy = True
            # let the case queue its first store read before this loop's next claim:
            # the store serves one statement at a time, in order
            await asyncio.sleep(0)
        if self._timer_pass is not None and self._timer_pass.done():
            passed, self._timer_pass = self._timer_pass, None
            busy = passed.result() or busy  # its StoreUnavailable is this round's
        if self._timer_pass is None:
            # one short read when nothing is due (the usual round) rather than a claim's
            # write transaction: a new case's first store calls queue behind this round's
            due = await self.store.next_timer_due()
            if due is not None and due <= self.clock.now():
                # a task of its own: a catch-up read (seconds, when a provider is slow)
                # must not hold up the claims of the next rounds (a dead worker's case)
                self._timer_pass = asyncio.create_task(self._fire_due_timers())
                self._timer_pass.add_done_callback(lambda _: self.wake.set())
        if wait_for_timers and self._timer_pass is not None:
            passed, self._timer_pass = self._timer_pass, None
            busy = await passed or busy
        now = self.clock.now()
        if self._next_watchdog is None:
            self._next_watchdog = now + self.watchdog_interval
        elif now >= self._next_watchdog and self._watchdog is None:
            # in the background: reading every watched user must not hold up new cases
            self._next_watchdog = now + self.watchdog_interval
            self._watchdog = asyncio.create_task(self.watchdog_pass())
            self._watchdog.add_done_callback(self._watchdog_done)
        return busy

    @property
    def timers_firing(self) -> bool:
        """Whether a pass over the due timers is under way (`tick`)."""
        return self._timer_pass is not None and not self._timer_pass.done()

    async def _fire_due_timers(self) -> bool:
        """Fire every due timer, in order (an overdue re-read before its case's later
        timers); whether any fired."""
        fired = False
        while (
            timer := await self.store.claim_due_timer(self.engine.worker_id, self.clock.now())
        ) is not None:
            await self._fired(timer)
            fired = True
        return fired

    def _watchdog_done(self, task: asyncio.Task[int]) -> None:
        self._watchdog = None
        error = None if task.cancelled() else task.exception()
        if isinstance(error, StoreCorrupt):
            self._stop_on_corruption(error)
        elif error is not None:
            log.error("watchdog_pass_failed", error=str(error))

    async def watchdog_pass(self) -> int:
        drifted = 0
        cases = await self.store.list_cases(WATCHED)
        listed = await listed_statuses(self.engine, len(cases)) if cases else {}
        for case in cases:
            try:
                drifted += await check_case(self.engine, case, listed)
            except StoreError:
                raise  # the database, not the user: the pass stops, the next one reads again
            except Exception as exc:  # one unreadable user must not stop the others
                log.error("watchdog_check_failed", case_id=case.id, error=str(exc))
        return drifted

    async def _fired(self, timer: Timer) -> None:
        if is_milestone(timer.name):
            await self._milestone(timer)
            return
        if self.clock.now() - timer.due_at >= self.engine.sessions.reread_interval:
            # catching up after downtime: read before the case's later timers are
            # claimed, or an overdue all-lapsed would close the case on the old count
            await self._work(timer)
            return
        # in the background: a re-read waits for the rate limiter behind every case's
        # calls (it runs at the lowest priority) and must not hold up new cases
        task = asyncio.create_task(self._work(timer))
        self._timer_work.add(task)
        task.add_done_callback(self._timer_work.discard)

    async def _work(self, timer: Timer) -> None:
        with structlog.contextvars.bound_contextvars(case_id=timer.case_id, timer=timer.name):
            try:
                await on_timer(self.engine, timer)
            except StoreCorrupt as exc:
                self._stop_on_corruption(exc)
                return
            except StoreUnavailable as exc:
                # the next re-read reads again; the last one is retried once the
                # database is back (_after_outage)
                log.warning("work_timer_store_unavailable", error=str(exc))
                if timer.name.startswith(REREAD_FINAL):
                    self._finals.append(timer)
                return
            except Exception as exc:
                # a failed re-read is not repeated by this timer: the next one reads
                # again, and the window's last read is retried
                log.error("work_timer_failed", error=str(exc))
                if timer.name.startswith(REREAD_FINAL):
                    await self._retry_final(timer)

    async def _retry_final(self, timer: Timer) -> None:
        """The last re-read failed (after the retry policy's own attempts): read again at
        the next round, until it succeeds or the case closes (a closed case is not read)."""
        now = self.clock.now()
        retry = Timer(
            case_id=timer.case_id,
            name=f"{REREAD_FINAL}+{utc_iso(now)}",
            epoch=timer.epoch,
            due_at=now,
        )
        case = await self.store.get_case(timer.case_id)
        await self.store.save_countdown(
            timer.case_id, case.countdown or {}, timer.epoch, [retry], now
        )

    async def settle(self) -> None:
        """Wait for the work of the timers fired so far (the re-reads)."""
        while self._timer_work:
            await asyncio.gather(*self._timer_work, return_exceptions=True)

    async def _milestone(self, timer: Timer) -> None:
        case = await self.store.get_case(timer.case_id)
        log.info(
            "milestone_reached",
            case_id=timer.case_id,
            milestone=timer.name,
            epoch=timer.epoch,
            due_at=utc_iso(timer.due_at),
        )
        await deliver(
            self.engine.notifier,
            Notification(
                kind="milestone",
                case_id=timer.case_id,
                subject=case.subject,
                title=f"{case.subject}: {timer.name}",
                data={"milestone": timer.name, "due_at": utc_iso(timer.due_at)},
            ),
        )
        if timer.closes_case:
            # what a stopped worker left in intent is settled by reading the provider;
            # here, not in the background, so that a shutdown does not cut it short
            # (nothing is left in intent in the common case: one store read)
            await self._settle(case)

    async def _settle(self, case: Case) -> None:
        with structlog.contextvars.bound_contextvars(case_id=case.id):
            try:
                await settle_intents(self.engine, case, closing=True)
            except StoreCorrupt as exc:
                self._stop_on_corruption(exc)
            except Exception as exc:  # the next close of another case is not held up
                log.error("settle_intents_failed", error=str(exc))

    def _finished(self, task: asyncio.Task[object]) -> None:
        self._running.discard(task)
        case_id = self._case_of.pop(task, None)
        error = None if task.cancelled() else task.exception()
        if isinstance(error, StoreUnavailable) and case_id is not None:
            # released once the database is back (_after_outage)
            log.warning("case_run_cut_short", case_id=case_id, reason="store unavailable")
            self._orphans.add(case_id)
        elif isinstance(error, StoreCorrupt):
            self._stop_on_corruption(error)
        elif error is not None:
            log.error("case_run_failed", error=str(error))
        self.wake.set()

    def _stop_on_corruption(self, error: StoreCorrupt) -> None:
        """A damaged database file: retrying cannot mend it, so claim nothing more and
        stop the process with the message (once), rather than fail every few seconds."""
        if self.corrupt is None:
            log.error("store_corrupt", error=str(error))
            self.corrupt = error

    async def idle_seconds(self) -> float:
        """How long an idle worker may wait before looking again: the poll interval,
        cut short by the next timer and by the soonest a case becomes claimable with
        no notification to say so (a deferred case's run_after, a dead worker's lease
        lapsing), so a case is reclaimed within its lease and one round."""
        delay = self.poll
        now = self.clock.now()
        dues = [await self.store.next_case_due(now)]
        if self._timer_pass is None:  # a pass under way fires them, and its end wakes us
            dues.append(await self.store.next_timer_due())
        for due in dues:
            if due is not None:
                delay = max(0.0, min(delay, seconds_until(due, now)))
        return delay

    async def _idle(self, stop: asyncio.Event) -> None:
        delay = await self.idle_seconds()
        waiters: list[asyncio.Future[bool]] = [
            asyncio.ensure_future(stop.wait()),
            asyncio.ensure_future(self.wake.wait()),
        ]
        # PostgreSQL: another replica's new case wakes this one at once (LISTEN/NOTIFY)
        waiters.append(asyncio.ensure_future(self.store.wait_for_work(delay)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED), delay
            )
        for waiter in waiters:
            waiter.cancel()
        listened = waiters[-1]
        if listened.done() and not listened.cancelled() and listened.exception() is not None:
            raise listened.exception()  # type: ignore[misc]

    async def join(self) -> None:
        """Wait for the cases this worker is running to stop."""
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def drain(self) -> None:
        """Stop: let running cases finish within `grace` seconds, then cancel the rest."""
        self.engine.stopping.set()
        if self._timer_pass is not None:
            # the timers it claimed fire (a milestone's notification) within the grace
            _, late = await asyncio.wait([self._timer_pass], timeout=self.grace)
            for cut in late:
                cut.cancel()
            await asyncio.gather(self._timer_pass, return_exceptions=True)
            self._timer_pass = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
        # a re-read cut short is not lost for good: the next timer reads again
        for work in list(self._timer_work):
            work.cancel()
        await asyncio.gather(*self._timer_work, return_exceptions=True)
        if not self._running:
            return
        log.info("worker_draining", cases=len(self._running), grace_seconds=self.grace)
        _, pending = await asyncio.wait(self._running, timeout=self.grace)
        for task in pending:
            # The lease lapses and another worker (or a restart) resumes the case.
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
