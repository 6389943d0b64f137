"""Client-side rate limits: stay under a provider's documented limits instead of
bouncing off them, and share a server's "wait" among every case.

One `RateLimiter` per provider, shared by all cases of the process. It spaces
requests (GCRA: a token bucket), caps how many run at once, and, when the provider
answers "slow down" with a hint, makes every caller wait it out, not just the one
that was told.

Waiting callers are served by priority, then the oldest case first, then in arrival
order: an incident case's call goes ahead of a thousand queued bulk calls, and among
equals a case that started earlier finishes first (served round-robin, hundreds of
cases would all be half done when a window's budget runs out, and the next provider
in the playbook would sit idle). For a per-window budget (Okta's
X-Rate-Limit-*), the last `urgent_reserve` calls of a window are kept for urgent
cases, so that an incident never waits for the next window behind a bulk run.

Several replicas (PostgreSQL) share one budget: a limiter with a `SharedBudget`
also needs a token from a slice it leased from the store (`Store.lease_budget`)
before a call goes. A slice is a few calls of the current window, so the store sees
one short transaction per slice, not per call; a replica whose most urgent call
starves records it there, and the others hold back their less urgent ones. A cap on
calls in flight is split among the replicas whose lease is live.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import time
from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

import structlog

from worker.domain import URGENT
from worker.errors import StoreError
from worker.store.base import BudgetAsk, BudgetGrant

log = structlog.get_logger(__name__)


#: how long everyone waits when a provider throttles without saying for how long
UNHINTED_PAUSE = 1.0
#: the priority of the case the current task works on (the engine sets it per case)
CASE_PRIORITY: ContextVar[int] = ContextVar("case_priority", default=0)
#: when that case was created (epoch seconds): among equal priorities, older goes first
CASE_AGE: ContextVar[float] = ContextVar("case_age", default=0.0)
#: how soon a replica asks the store again after the store failed (seconds)
STORE_RETRY = 1.0


class BudgetStore(Protocol):
    async def lease_budget(self, ask: BudgetAsk, now: float) -> BudgetGrant: ...


@dataclass(frozen=True, kw_only=True)
class SharedBudget:
    """A provider's budget shared by the replicas through the store: `limit` calls a
    `window` (None: no budget, only the `concurrency` cap to split), leased `chunk`
    calls at a time under `bucket` by `holder` (this replica)."""

    store: BudgetStore
    holder: str
    bucket: str
    window: float = 60.0
    limit: int | None = None
    chunk: int = 5
    ttl: float = 5.0
    concurrency: int | None = None


class RateLimiter:
    def __init__(
        self,
        name: str,
        *,
        per_second: float | None = None,
        burst: int = 1,
        concurrency: int | None = None,
        urgent_reserve: int = 0,
        shared: SharedBudget | None = None,
    ) -> None:
        self.name = name
        # the number of the call the current task holds a place for (see `budget`);
        # one per limiter: a call holds places in two (Okta's bucket and org cap)
        self._call_number: ContextVar[int] = ContextVar(f"call_number_{name}", default=0)
        self.shared = shared
        self._tokens = 0  # calls of a leased slice not yet sent
        self._tokens_end = 0.0  # the end of the slice's window (epoch seconds)
        self._lease_retry_at = 0.0  # epoch seconds
        self._leasing: asyncio.Task[None] | None = None
        self._lease_wake = asyncio.Event()
        self._leased_for = -1  # the priority the running lease asks for
        self.interval = 1.0 / per_second if per_second else 0.0
        self.tolerance = max(0, burst - 1) * self.interval
        self.urgent_reserve = urgent_reserve
        self._tat = 0.0  # theoretical arrival time of the next request (monotonic seconds)
        self._blocked_until = 0.0  # everyone waits (a server's hint)
        # a per-window budget (Okta): calls left in the window, counted down as they are
        # sent (None: not known, e.g. a new window), and when the window resets
        self._left: int | None = None
        self._window_ends = 0.0
        self._sent = 0  # calls sent so far, numbering them
        self._last_paced = 0.0  # when the last non-urgent call went, for the pacing
        self._budget_from = 0  # the number of the call whose answer set `_left`
        self._floor = 2  # calls never spent: the headers may lag the calls in flight
        # requests in flight, capped by the dispatcher itself: a separate semaphore would
        # let callers past the budget check wait there and go once the budget is spent
        self._concurrency = concurrency
        self._in_flight = 0
        # waiting callers: (-priority, case age, arrival, future), served smallest first
        self._waiting: list[tuple[int, float, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()
        self._changed: asyncio.Event | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        #: how often callers waited on a server's hint, for metrics and tests
        self.pauses = 0

    @contextlib.asynccontextmanager
    async def slot(self, priority: int | None = None) -> AsyncIterator[None]:
        """Hold one request's place: waits for the pace, a pause, and a free slot.
        `priority` defaults to that of the case the calling task works on."""
        await self._wait_turn(CASE_PRIORITY.get() if priority is None else priority)
        token = self._call_number.set(self._sent)
        try:
            yield
        finally:
            self._call_number.reset(token)
            self._in_flight -= 1
            if self._waiting and self._changed is not None:
                self._changed.set()  # a place is free

    @property
    def concurrency(self) -> int | None:
        """The cap on this process's calls in flight (its share, among replicas)."""
        return self._concurrency

    @property
    def waiting(self) -> int:
        """Callers waiting for their turn now."""
        return sum(1 for *_, waiter in self._waiting if not waiter.done())

    @property
    def reserved_for_urgent(self) -> bool:
        """Only urgent callers may go now (the window's reserve is reached)."""
        return self._budget_opens(0, time.monotonic()) > 0.0

    def _budget_opens(self, priority: int, now: float) -> float:
        """When the window's budget lets a caller of this priority go: 0.0 if it does
        now, else when. Urgent callers may spend the reserve at once; the others spend
        the rest spread evenly to the window's end, so that each goes to the oldest case
        waiting (a burst at the window's start would start hundreds of cases and finish
        none, and the next provider of the playbook would sit idle)."""
        if self._left is None or now >= self._window_ends:
            self._left = None
            return 0.0
        if priority >= URGENT:
            return 0.0 if self._left > self._floor else self._window_ends
        usable = self._left - self._floor - self.urgent_reserve
        if usable <= 0:
            return self._window_ends
        spacing = (self._window_ends - now) / usable
        return self._last_paced + spacing if self._last_paced + spacing > now else 0.0

    def _opens_at(self, priority: int) -> float:
        """When a caller of this priority may go; infinity while every place is taken."""
        if self._concurrency is not None and self._in_flight >= self._concurrency:
            return math.inf
        if self.shared is not None and not self._leased(priority):
            return math.inf
        at = max(self._tat - self.tolerance, self._blocked_until)
        return max(at, self._budget_opens(priority, max(at, time.monotonic())))

    async def _wait_turn(self, priority: int) -> None:
        now = time.monotonic()
        if not self._waiting and self._opens_at(priority) <= now:
            self._take(now, priority)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (-priority, CASE_AGE.get(), next(self._arrivals), waiter)
        heapq.heappush(self._waiting, entry)
        self._wake()
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._in_flight -= 1  # given a place just as it was cancelled: hand it back
            if self._changed is not None:
                self._changed.set()  # the dispatcher drops it now, not at its next turn
            raise

    def _leased(self, priority: int) -> bool:
        """Whether a token of a leased slice is at hand; else have one leased."""
        assert self.shared is not None
        wall = time.time()
        if self.shared.limit is None:  # only a share of the cap: renew the lease
            if wall >= self._lease_retry_at and (self._leasing is None or self._leasing.done()):
                self._lease_retry_at = wall + self.shared.ttl / 3
                self._leasing = asyncio.get_running_loop().create_task(self._lease(0))
            return True
        if self._tokens > 0 and wall < self._tokens_end:
            return True
        if self._leasing is None or self._leasing.done():
            self._leased_for = priority
            self._leasing = asyncio.get_running_loop().create_task(self._lease(priority))
        elif priority > self._leased_for:
            self._lease_wake.set()  # a more urgent call: ask now, not at the retry time
        return False

    async def _lease(self, priority: int) -> None:
        """Lease a slice of the shared budget for the calls waiting now."""
        assert self.shared is not None
        shared = self.shared
        delay = self._lease_retry_at - time.time()
        if delay > 0 and shared.limit is not None:
            # a more urgent call (set before or during the wait) cuts it short
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lease_wake.wait(), delay)
        self._lease_wake.clear()
        waiting = [-p for p, *_, waiter in self._waiting if not waiter.done()]
        head = max(waiting, default=priority)
        want = 0 if shared.limit is None else min(shared.chunk, max(1, waiting.count(head)))
        self._leased_for = head
        ask = BudgetAsk(
            bucket=shared.bucket,
            holder=shared.holder,
            window=shared.window,
            limit=shared.limit or 0,
            want=want,
            priority=head if want else None,
            reserve=self.urgent_reserve,
            ttl=shared.ttl,
        )
        try:
            grant = await shared.store.lease_budget(ask, time.time())
        except Exception as exc:  # every caller waits on this task: it must not die silently
            message = str(exc) if isinstance(exc, StoreError) else type(exc).__name__
            log.warning("rate_budget_unavailable", provider=self.name, error=message)
            self._lease_retry_at = time.time() + STORE_RETRY
        else:
            if grant.granted:
                self._tokens, self._tokens_end = grant.granted, grant.window_end
            if shared.limit is not None:
                self._lease_retry_at = grant.retry_at
            if shared.concurrency is not None:
                self._concurrency = max(1, shared.concurrency // grant.holders)
        if self._changed is not None:
            self._changed.set()

    def _take(self, now: float, priority: int) -> None:
        if self.shared is not None and self.shared.limit is not None:
            self._tokens -= 1
        self._tat = max(self._tat, now) + self.interval
        self._sent += 1
        self._in_flight += 1
        if self._left is not None:
            self._left -= 1
            if priority < URGENT:
                self._last_paced = now

    def _wake(self) -> None:
        if self._changed is None:
            self._changed = asyncio.Event()
        self._changed.set()
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch())

    async def _dispatch(self) -> None:
        """Release waiting callers one at a time, the most urgent first, at the pace."""
        assert self._changed is not None
        while self._waiting:
            negative, _, _, waiter = self._waiting[0]
            if waiter.done():  # its caller was cancelled
                heapq.heappop(self._waiting)
                continue
            now = time.monotonic()
            opens = self._opens_at(-negative)
            if opens > now:
                # a pause, a freed place, or a more urgent caller changes who goes next
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    timeout = None if opens == math.inf else opens - now
                    await asyncio.wait_for(self._changed.wait(), timeout)
                continue
            heapq.heappop(self._waiting)
            self._take(now, -negative)
            waiter.set_result(None)
            if self.interval == 0.0:
                await asyncio.sleep(0)  # let the released caller run before the next

    def pause(self, seconds: float) -> None:
        """The provider asked everyone to wait `seconds`."""
        until = time.monotonic() + max(0.0, seconds)
        if until > self._blocked_until:
            self._blocked_until = until
            self.pauses += 1
            log.warning("provider_paused", provider=self.name, seconds=round(seconds, 3))
            if self._changed is not None:
                self._changed.set()

    def budget(self, remaining: int, reset_in: float) -> bool:
        """A per-window budget read from the provider's headers (Okta's X-Rate-Limit-*),
        called while the answered call still holds its place. From here on the calls
        sent are counted against it: the last `urgent_reserve` calls are kept for urgent
        callers and nobody spends the final ones, so no call earns a 429 and an incident
        never waits for the next window. True when the budget is spent (a throttle)."""
        if reset_in <= 0:
            return False
        mine = self._call_number.get()
        now = time.monotonic()
        was_reserved = self.reserved_for_urgent
        new_window = self._left is None or now >= self._window_ends
        if not new_window and mine < self._budget_from:
            return False  # an older call's answer, overtaken by a newer one
        # the calls sent after this one are not counted in `remaining` yet
        left = remaining - (self._sent - mine)
        self._left, self._budget_from = left, mine
        self._window_ends = now + reset_in
        if not was_reserved and self.reserved_for_urgent:
            log.info("provider_reserved_for_urgent", provider=self.name, seconds=round(reset_in, 3))
        if self._changed is not None:
            self._changed.set()  # who may go next has changed
        if left <= self._floor:
            self.pauses += 1
            return True
        return False


class Limits:
    """The limiters of one runtime, by provider."""

    def __init__(self, limiters: dict[str, RateLimiter]) -> None:
        self._limiters = limiters

    def __getitem__(self, name: str) -> RateLimiter:
        if name not in self._limiters:
            self._limiters[name] = RateLimiter(name)
        return self._limiters[name]

    def all(self) -> list[RateLimiter]:
        return list(self._limiters.values())
