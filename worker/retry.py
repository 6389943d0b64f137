"""Retrying transient provider failures: exponential backoff with jitter, server hints first."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
)

from worker.clock import Clock
from worker.errors import TransientError

T = TypeVar("T")
log = structlog.get_logger(__name__)


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How long one call keeps trying before the step is handed back to the queue.

    A step whose call still fails transiently after this is not failed: the case is
    released and retried later (transient faults delay cases, never fail them).
    """

    attempts: int = 8
    initial: float = 0.2
    maximum: float = 30.0
    give_up_after: float = 120.0
    #: never wait less than a server asked, but cap absurd hints
    max_hint: float = 300.0

    def backoff(self, attempt: int) -> float:
        """Full-jitter exponential backoff for the given 1-based attempt."""
        ceiling = min(self.maximum, self.initial * (2 ** (attempt - 1)))
        return random.uniform(ceiling / 2, ceiling)

    def wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        backoff = self.backoff(state.attempt_number)
        if isinstance(error, TransientError) and error.retry_after is not None:
            # The server's hint is a floor: sending earlier only earns another 429.
            return max(min(error.retry_after, self.max_hint), 0.0) + random.uniform(0, 0.05)
        return backoff


async def with_retry(
    call: Callable[[], Awaitable[T]], policy: RetryPolicy, clock: Clock, *, operation: str
) -> T:
    """Run `call`, retrying TransientError under `policy`; the last error propagates."""

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning(
            "provider_call_retry",
            operation=operation,
            attempt=state.attempt_number,
            wait_seconds=round(state.upcoming_sleep, 3),
            error=str(error),
        )

    retrying = AsyncRetrying(
        retry=retry_if_exception_type(TransientError),
        wait=policy.wait,
        stop=stop_after_attempt(policy.attempts) | stop_after_delay(policy.give_up_after),
        sleep=clock.sleep,
        before_sleep=before_sleep,
        reraise=True,
    )

    async def attempt() -> T:
        # tenacity awaits only coroutine functions; `call` may be a lambda returning one
        return await call()

    return await retrying(attempt)
