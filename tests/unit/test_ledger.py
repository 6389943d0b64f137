"""The idempotent-mutation primitive: every attempt reads first, so a call is sent
again only when a read shows it did not apply."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any, cast

from structlog.testing import capture_logs

from worker.clock import ManualClock
from worker.domain import LedgerEntry, LedgerState
from worker.errors import TransientError
from worker.ledger import Ledger
from worker.retry import RetryPolicy
from worker.store.base import Store


class LedgerStore:
    """The three ledger operations of the Store protocol, in a dict."""

    def __init__(self) -> None:
        self.entries: dict[str, LedgerEntry] = {}
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        #: the ledger operations asked for, in order
        self.calls: list[str] = []

    async def append_event(
        self, case_id: str, kind: str, now: datetime, *, step_id: str | None, data: dict[str, Any]
    ) -> None:
        self.events.append((case_id, kind, data))

    async def ledger_get(self, key: str) -> LedgerEntry | None:
        self.calls.append("ledger_get")
        return self.entries.get(key)

    async def ledger_intent(
        self, key: str, case_id: str, step_id: str, operation: str, now: datetime
    ) -> LedgerEntry:
        self.calls.append("ledger_intent")
        return self.entries.setdefault(
            key,
            LedgerEntry(
                key=key,
                case_id=case_id,
                step_id=step_id,
                operation=operation,
                state=LedgerState.INTENT,
                requested_at=now,
            ),
        )

    async def ledger_applied(self, key: str, now: datetime) -> LedgerEntry:
        self.calls.append("ledger_applied")
        entry = self.entries[key]
        if entry.state is not LedgerState.APPLIED:
            entry = replace(entry, state=LedgerState.APPLIED, applied_at=now)
            self.entries[key] = entry
        return entry


class Account:
    """A provider-side user whose deactivation can fail before or after it applies."""

    def __init__(self, *, fault: str | None) -> None:
        self.active = True
        self.fault = fault
        self.reads = 0
        self.sends = 0

    async def read(self) -> bool:
        self.reads += 1
        return not self.active

    async def deactivate(self, _before: object) -> None:
        self.sends += 1
        if self.fault == "before":
            self.fault = None
            raise TransientError("okta", "connection reset before the request arrived")
        self.active = False
        if self.fault == "after":
            self.fault = None
            raise TransientError("okta", "connection reset after the change was made")


def ledger(store: LedgerStore) -> Ledger:
    return Ledger(
        store=cast(Store, store),
        clock=ManualClock(),
        policy=RetryPolicy(attempts=4, initial=0.01, maximum=0.01),
        case_id="c-1",
        step_id="idp-deactivate",
        verify_timeout=10.0,
        verify_interval=1.0,
    )


async def deactivate(account: Account, store: LedgerStore) -> dict[str, Any]:
    _, evidence = await ledger(store).mutate(
        operation="okta.deactivate",
        read=account.read,
        reached=bool,
        act=account.deactivate,
    )
    return evidence


async def test_a_retry_after_an_after_fault_reads_and_does_not_send_again() -> None:
    account, store = Account(fault="after"), LedgerStore()
    with capture_logs() as logs:
        evidence = await deactivate(account, store)
    assert [e["event"] for e in logs] == ["provider_call_retry"]  # the fault was retried
    assert account.sends == 1, "the retry re-sent a mutation that had applied"
    assert not account.active
    # read, act (applied, then failed), read again (applied: stop), verify
    assert account.reads == 3
    assert evidence["acted"] is True and "acted_at" in evidence
    assert store.entries["c-1:idp-deactivate:okta.deactivate"].state is LedgerState.APPLIED


async def test_a_retry_after_a_before_fault_reads_and_sends_again() -> None:
    account, store = Account(fault="before"), LedgerStore()
    with capture_logs() as logs:
        await deactivate(account, store)
    assert [e["event"] for e in logs] == ["provider_call_retry"]
    assert account.sends == 2
    assert not account.active
    assert store.entries["c-1:idp-deactivate:okta.deactivate"].state is LedgerState.APPLIED


async def test_a_goal_already_reached_is_not_acted_on() -> None:
    account, store = Account(fault=None), LedgerStore()
    account.active = False
    evidence = await deactivate(account, store)
    assert account.sends == 0
    assert evidence == {
        "acted": False,
        "note": "already in the target state when read; no call made",
    }
    assert store.entries == {}


async def test_an_intent_left_by_a_crash_is_completed_without_a_second_call() -> None:
    account, store = Account(fault=None), LedgerStore()
    await store.ledger_intent(
        "c-1:idp-deactivate:okta.deactivate",
        "c-1",
        "idp-deactivate",
        "okta.deactivate",
        ManualClock().now(),
    )
    account.active = False  # the call before the crash took effect
    evidence = await deactivate(account, store)
    assert account.sends == 0
    assert evidence["note"] == "the earlier call had taken effect; not repeated"
    assert store.entries["c-1:idp-deactivate:okta.deactivate"].state is LedgerState.APPLIED


async def test_a_fresh_read_short_of_the_goal_reads_the_ledger_by_writing_the_intent() -> None:
    # one store trip, not a read then a write, on the way to the request (issue 16); the
    # intent still goes before the call, and a retry does not write it again
    account, store = Account(fault="before"), LedgerStore()
    seen: list[list[str]] = []

    async def act(before: object) -> None:
        seen.append(list(store.calls))
        await account.deactivate(before)

    with capture_logs():
        _, evidence = await ledger(store).mutate(
            operation="okta.deactivate", read=account.read, reached=bool, act=act, fresh=False
        )
    assert seen == [["ledger_intent"], ["ledger_intent"]]
    assert store.calls == ["ledger_intent", "ledger_applied"]
    assert account.sends == 2 and not account.active
    assert evidence["acted"] is True and "sent_again" not in evidence
    assert store.entries["c-1:idp-deactivate:okta.deactivate"].state is LedgerState.APPLIED


async def test_a_fresh_read_short_of_the_goal_trusts_an_applied_entry() -> None:
    account, store = Account(fault=None), LedgerStore()
    key = "c-1:idp-deactivate:okta.deactivate"
    await store.ledger_intent(key, "c-1", "idp-deactivate", "okta.deactivate", datetime.min)
    applied = await store.ledger_applied(key, ManualClock().now())
    account.active = False  # applied; the fresh read came before it showed
    _, evidence = await ledger(store).mutate(
        operation="okta.deactivate",
        read=account.read,
        reached=bool,
        act=account.deactivate,
        fresh=False,
    )
    assert account.sends == 0
    assert evidence["note"] == "call applied earlier; waiting for read-back"
    assert store.entries[key] == applied


async def test_once_is_not_sent_again_once_applied() -> None:
    store = LedgerStore()
    sent: list[str] = []

    async def revoke() -> None:
        sent.append("revoke")

    first = await ledger(store).once("okta.revoke_sessions", revoke)
    again = await ledger(store).once("okta.revoke_sessions", revoke)
    assert sent == ["revoke"]
    assert (first.sent, again.sent) == (True, False)
    assert again.applied_at == first.applied_at
    assert first.evidence() == again.evidence() == {}


async def test_once_after_a_stop_between_call_and_record_says_it_was_sent_again() -> None:
    store = LedgerStore()
    key = "c-1:idp-deactivate:okta.revoke_sessions"
    # a worker wrote the intent, maybe sent the call, and stopped before recording it
    await store.ledger_intent(
        key, "c-1", "idp-deactivate", "okta.revoke_sessions", ManualClock().now()
    )
    sent: list[str] = []

    async def revoke() -> None:
        sent.append("revoke")

    done = await ledger(store).once("okta.revoke_sessions", revoke)
    assert sent == ["revoke"]
    assert done.evidence()["sent_again"] == 1
    assert "no read can tell" in done.evidence()["sent_again_why"]
    assert store.entries[key].state is LedgerState.APPLIED


async def test_once_retried_after_a_lost_answer_says_it_was_sent_again() -> None:
    store = LedgerStore()
    sent: list[str] = []

    async def revoke() -> None:
        sent.append("revoke")
        if len(sent) == 1:
            raise TransientError("okta", "connection reset after the call applied")

    done = await ledger(store).once("okta.revoke_sessions", revoke)
    assert sent == ["revoke", "revoke"]
    assert (done.sends, done.again) == (2, 1)
    # in the timeline before it went out: a stop right after the send loses nothing
    assert [(kind, data["operation"]) for _, kind, data in store.events] == [
        ("mutation_sent_again", "okta.revoke_sessions")
    ]
