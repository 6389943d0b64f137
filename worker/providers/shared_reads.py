"""Reads that tell many cases the same thing, made once.

A group's assignments, a permission set's description, an application's configuration
are the same for every leaver who reaches them: in a mass run hundreds of cases would
ask for each. One read answers every case that asks within `ttl` of the moment it was
sent, and cases asking while it is in flight wait for it rather than send their own.
A failed read is not remembered. Reads about one user (their status, their own
assignments and memberships) never come here.

A caller that must not see anything older than a moment (the countdown's re-reads: a
re-read due at 10:05 must see every change made before 10:05) passes `since`: only a
read sent at or after it answers, so sharing never makes such a read staler than one
sent at its due time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from worker.clock import Clock

T = TypeVar("T")

#: the default time a shared read answers later cases (config: identity_center.shared_read_ttl)
DEFAULT_TTL = timedelta(seconds=30)


class SharedReads:
    def __init__(self, clock: Clock, ttl: timedelta = DEFAULT_TTL) -> None:
        self.clock = clock
        self.ttl = ttl
        #: key -> (when the read was sent, its answer to be)
        self._reads: dict[Hashable, tuple[datetime, asyncio.Future[Any]]] = {}

    async def read(
        self,
        key: Hashable,
        call: Callable[[], Awaitable[T]],
        *,
        since: datetime | None = None,
    ) -> T:
        """`call()`'s answer, shared under `key`; with `since`, from a read sent then or later."""
        now = self.clock.now()
        held = self._reads.get(key)
        if held is None or not self._answers(held[0], now, since):
            held = (now, asyncio.ensure_future(call()))
            self._reads[key] = held
            if len(self._reads) > 4096:
                self._forget_old(now)
        try:
            answer: T = await asyncio.shield(held[1])
        except BaseException:
            if self._reads.get(key) is held and held[1].done():
                del self._reads[key]  # a failed read is not remembered
            raise
        return answer

    def _answers(self, sent: datetime, now: datetime, since: datetime | None) -> bool:
        return now - sent <= self.ttl and (since is None or sent >= since)

    def _forget_old(self, now: datetime) -> None:
        for key, (sent, future) in list(self._reads.items()):
            if future.done() and now - sent > self.ttl:
                del self._reads[key]
