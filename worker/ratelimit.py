"""Client-side rate limits: stay under a provider's documented limits instead of
bouncing off them, and share a server's "wait" among every case.

One `RateLimiter` per provider, shared by all cases of the process. It spaces
requests (GCRA: a token bucket that reserves each request a start time), caps how
many run at once, and, when the provider answers "slow down" with a hint, makes
every caller wait it out, not just the one that was told.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import structlog

log = structlog.get_logger(__name__)


#: how long everyone waits when a provider throttles without saying for how long
UNHINTED_PAUSE = 1.0


class RateLimiter:
    def __init__(
        self,
        name: str,
        *,
        per_second: float | None = None,
        burst: int = 1,
        concurrency: int | None = None,
    ) -> None:
        self.name = name
        self.interval = 1.0 / per_second if per_second else 0.0
        self.tolerance = max(0, burst - 1) * self.interval
        self._tat = 0.0  # theoretical arrival time of the next request (monotonic seconds)
        self._blocked_until = 0.0
        self._lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(concurrency) if concurrency else None
        #: how often callers waited on a server's hint, for metrics and tests
        self.pauses = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one request's place: waits for the pace, a pause, and a free slot."""
        await self._wait_turn()
        if self._slots is None:
            yield
            return
        async with self._slots:
            yield

    async def _wait_turn(self) -> None:
        async with self._lock:
            now = time.monotonic()
            tat = max(self._tat, now, self._blocked_until)
            start = max(now, tat - self.tolerance, self._blocked_until)
            self._tat = tat + self.interval
        while True:
            delay = start - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            # a pause that began while we slept applies to us too
            if self._blocked_until <= time.monotonic():
                return
            start = self._blocked_until

    def pause(self, seconds: float) -> None:
        """The provider asked everyone to wait `seconds`."""
        until = time.monotonic() + max(0.0, seconds)
        if until > self._blocked_until:
            self._blocked_until = until
            self.pauses += 1
            log.warning("provider_paused", provider=self.name, seconds=round(seconds, 3))

    def budget(self, remaining: int, reset_in: float, *, reserve: int = 2) -> None:
        """A per-window budget read from the provider's headers (Okta's X-Rate-Limit-*):
        when it is nearly spent, wait for the window to reset rather than earn a 429."""
        if remaining <= reserve and reset_in > 0:
            self.pause(reset_in)


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
