"""The write-ahead side-effect ledger: one idempotent-mutation primitive.

A mutation goes intent -> act -> applied -> verified. Its ledger entry
(`{case}:{step}:{operation}`) is written before the call and marked applied after
it, and the provider's state is read first on *every* attempt, in-process retries
included: a retry after a call that took effect but failed on the way back (or
after a `kill -9` between the call and the ledger update) reads the effect and
does not send the call again. Where no read can tell (a session revocation), the
entry alone decides, and the evidence says so.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from worker.clock import Clock, utc_iso
from worker.domain import LedgerEntry, LedgerState
from worker.errors import TransientError
from worker.retry import RetryPolicy, with_retry
from worker.store.base import Store

T = TypeVar("T")

#: the timeline event written before a call no read can confirm is sent again
SENT_AGAIN = "mutation_sent_again"
#: why a call no read can confirm was sent more than once
NO_READ_CAN_TELL = (
    "sent again: no read can tell whether the earlier call applied "
    "(an answer lost on the way back, or a worker stopped before recording it); "
    "repeating it is harmless"
)


@dataclass(frozen=True, kw_only=True)
class Sent:
    """What `Ledger.once` did."""

    #: when the call was (first) recorded applied
    applied_at: datetime
    #: calls made now; 0 when the ledger showed it applied earlier
    sends: int
    #: of those, the ones that may repeat a call that had applied (no read can tell)
    again: int

    @property
    def sent(self) -> bool:
        return self.sends > 0

    def evidence(self) -> dict[str, Any]:
        if not self.again:
            return {}
        return {"sent_again": self.again, "sent_again_why": NO_READ_CAN_TELL}


@dataclass(frozen=True, kw_only=True)
class Ledger:
    """The side effects of one step of one case (the watchdog and the cleanup name
    their own), with the retry policy and the read-back patience they run under."""

    store: Store
    clock: Clock
    policy: RetryPolicy
    case_id: str
    step_id: str
    verify_timeout: float
    verify_interval: float

    def key(self, operation: str) -> str:
        return f"{self.case_id}:{self.step_id}:{operation}"

    async def call(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        """One provider call, retried in-process on transient failures (a read, or a
        mutation that is harmless to repeat)."""
        return await with_retry(call, self.policy, self.clock, operation=operation)

    async def poll_until(
        self, operation: str, read: Callable[[], Awaitable[T]], reached: Callable[[T], bool]
    ) -> tuple[T, int]:
        """Read until `reached`, for at most the verify timeout; the last read and the count."""
        deadline = self.clock.now().timestamp() + self.verify_timeout
        reads = 0
        while True:
            value = await self.call(operation, read)
            reads += 1
            if reached(value):
                return value, reads
            if self.clock.now().timestamp() >= deadline:
                raise TransientError(
                    operation.split(".")[0],
                    f"{operation}: read-back did not show the change within "
                    f"{self.verify_timeout:.0f} s (last read: {value})",
                )
            await self.clock.sleep(self.verify_interval)

    async def mutate(
        self,
        *,
        operation: str,
        read: Callable[[], Awaitable[T]],
        reached: Callable[[T], bool],
        act: Callable[[T], Awaitable[object]],
        fresh: T | None = None,
        entry_key: str | None = None,
        verify: bool = True,
        reread: bool = False,
    ) -> tuple[T, dict[str, Any]]:
        """Read; act (given that read) only if the goal is not reached; verify by read-back.

        The read and the act are retried together, so every attempt reads first.
        `fresh` is a read made a moment ago (looking the person up returns their state):
        it serves as the first attempt's read. `entry_key` names the entry when one
        operation runs on several targets (default: the operation). Without `verify`
        the caller reads back itself (the deny step reads every set at the end).
        `reread`: the read shows the provider's state at once (no eventual consistency
        to wait out), so a goal it shows unreached is acted on again even after an
        earlier call applied: something undid it, and the evidence says so."""
        name = entry_key or operation
        key = self.key(name)
        # A fresh read short of the goal: the first attempt acts unless the entry says
        # it applied, so the intent is written now and read as the entry (it leaves one
        # already there as it is): one store trip on the way to the call, not two.
        intended = fresh is not None and not reached(fresh)
        entry = await (self._intent(name) if intended else self.store.ledger_get(key))
        applied_earlier = entry is not None and entry.state is LedgerState.APPLIED
        trust_entry = applied_earlier and not reread
        sent = False
        first = fresh

        async def attempt() -> tuple[T, bool]:
            nonlocal first, sent, intended
            # every attempt reads first: after a call whose answer was lost, the read
            # says whether it applied, and only a goal not reached is acted on again
            before = first if first is not None else await read()
            first = None
            if reached(before) or trust_entry:
                return before, reached(before)
            if not intended:
                await self._intent(name)
                intended = True
            # sent from here on: a failure on the way back may hide a call that applied
            sent = True
            await act(before)
            return before, False

        before, was_reached = await self.call(operation, attempt)
        evidence: dict[str, Any] = {}
        if was_reached and not sent:
            evidence["acted"] = False
            evidence["note"] = (
                "already in the target state when read; no call made"
                if entry is None
                else "the earlier call had taken effect; not repeated"
            )
            if entry is not None and entry.state is LedgerState.INTENT:
                await self.store.ledger_applied(key, self.clock.now())
            return before, evidence
        if sent:
            if was_reached:
                evidence["note"] = (
                    "the call's answer was lost; a read showed it had taken effect; not sent again"
                )
            applied = await self.store.ledger_applied(key, self.clock.now())
            first_applied = applied.applied_at or self.clock.now()
            evidence["acted_at"] = utc_iso(self.clock.now() if applied_earlier else first_applied)
            if applied_earlier:
                evidence["sent_again"] = (
                    "a read showed the earlier call's effect gone: "
                    f"first applied {utc_iso(first_applied)}"
                )
        else:
            # Applied but not visible yet: wait for read-back, never call twice.
            evidence["note"] = "call applied earlier; waiting for read-back"
        evidence["acted"] = True
        if not verify:
            return before, evidence
        after, reads = await self.poll_until(f"{operation}.verify", read, reached)
        evidence["read_back_count"] = reads
        return after, evidence

    async def once(
        self,
        operation: str,
        act: Callable[[], Awaitable[T]],
        *,
        entry_key: str | None = None,
        settle: Callable[[T], Awaitable[object]] | None = None,
    ) -> Sent:
        """A mutation no read can confirm, or one whose repeat is harmless (a delete that
        answers "not found" once done): sent unless the ledger shows it applied. `settle`
        waits for what the call started (an asynchronous request) before the entry is
        marked applied. A send that may repeat one that applied (a retry after a lost
        answer, or an entry left in intent by a stopped worker) is recorded in the
        case's timeline before it goes out (`SENT_AGAIN`: durable, though the worker
        stop right after) and counted in `again`, which the step's evidence shows."""
        name = entry_key or operation
        key = self.key(name)
        entry = await self.store.ledger_get(key)
        if entry is not None and entry.state is LedgerState.APPLIED:
            return Sent(applied_at=entry.applied_at or entry.requested_at, sends=0, again=0)
        # an entry in intent: a call may have gone out before the worker stopped
        interrupted = entry is not None
        await self._intent(name)
        sends = 0

        async def attempt() -> T:
            nonlocal sends
            if sends or interrupted:
                await self.store.append_event(
                    self.case_id,
                    SENT_AGAIN,
                    self.clock.now(),
                    step_id=self.step_id,
                    data={"operation": operation, "entry": key, "why": NO_READ_CAN_TELL},
                )
            sends += 1
            return await act()

        answer = await self.call(operation, attempt)
        if settle is not None:
            await settle(answer)
        applied = await self.store.ledger_applied(key, self.clock.now())
        return Sent(
            applied_at=applied.applied_at or self.clock.now(),
            sends=sends,
            again=sends - 1 + int(interrupted),
        )

    async def _intent(self, name: str) -> LedgerEntry:
        """The entry in intent, or the one already there as it is."""
        # The operation column keeps the kind ("unassign"), the key the target too.
        operation = name.split(":", 1)[0]
        return await self.store.ledger_intent(
            self.key(name), self.case_id, self.step_id, operation, self.clock.now()
        )
