"""Intake: trigger deliveries admitted to the store in groups (group commit).

Each webhook waits until its case and delivery are committed before it answers, so
an accept is durable. One transaction per delivery would bound intake by the store's
round trips; instead deliveries that arrive while a commit is under way wait for the
next one, and that one admits all of them together (`Store.admit`). An idle service
commits a lone delivery at once: nothing waits for a batch to fill.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from datetime import datetime

from worker.domain import Admission, Arrival
from worker.store.base import Store

#: At most this many arrivals in one transaction: a bounded wait for the last of them.
MAX_GROUP = 256


class Intake:
    def __init__(self, store: Store, now: Callable[[], datetime]) -> None:
        self._store = store
        self._now = now
        self._queue: list[tuple[Arrival, asyncio.Future[Admission]]] = []
        self._committing: asyncio.Task[None] | None = None
        #: the sizes of the latest groups committed, for tests and benchmarks to read
        self.groups: deque[int] = deque(maxlen=4096)

    async def admit(self, arrival: Arrival) -> Admission:
        """The arrival's admission, once the transaction holding it has committed."""
        future: asyncio.Future[Admission] = asyncio.get_running_loop().create_future()
        # read even when its caller has gone (hung up): no "never retrieved" warning
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._queue.append((arrival, future))
        if self._committing is None:
            self._committing = asyncio.create_task(self._commit_groups())
        # shielded: a client that hangs up must not cancel the others' commit
        return await asyncio.shield(future)

    async def _commit_groups(self) -> None:
        try:
            while self._queue:
                group, self._queue = self._queue[:MAX_GROUP], self._queue[MAX_GROUP:]
                self.groups.append(len(group))
                try:
                    admissions = await self._store.admit([a for a, _ in group], self._now())
                except Exception as exc:  # every waiter of the group gets the error
                    for _, future in group:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), admission in zip(group, admissions, strict=True):
                    if not future.done():
                        future.set_result(admission)
        finally:
            self._committing = None
            for _, future in self._queue:  # only if cancelled (shutdown) with some left
                future.cancel()
            self._queue = []

    async def close(self) -> None:
        """Wait for the groups under way to commit."""
        if self._committing is not None:
            await asyncio.shield(self._committing)
