"""The domain records: frozen, keyword-only, with no behaviour that touches I/O."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from worker.errors import OffboardError


class InvalidSubject(OffboardError):
    """The address a trigger names cannot be a login: a 4xx (exit 2), never a 500.

    The message names what is wrong and never repeats the address (personal data)."""

    def __init__(self, message: str, *, non_ascii: bool = False) -> None:
        super().__init__(message)
        #: only its characters are wrong: a look-alike of a protected identity is
        #: refused as protected (403) by admission, so a front end leaves it to admission
        self.non_ascii = non_ascii


#: longest address (RFC 5321: a path of 256 octets, less the angle brackets)
MAX_ADDRESS = 254


def canonical_subject(raw: str) -> str:
    """The person's address as every front end admits it: trimmed, Unicode NFC, checked.

    The spelling is kept (for display); compare with `subject_key`. Raises
    `InvalidSubject` naming what is wrong: the IdPs' logins (Okta `login`, Entra
    `userPrincipalName`, Identity Center `userName`) are ASCII, so a non-ASCII address
    cannot name anyone there and is refused before anything is recorded."""
    address = unicodedata.normalize("NFC", raw.strip())
    if not address:
        raise InvalidSubject("the address is empty: it names the person to act on")
    for index, char in enumerate(address):
        if not char.isascii():
            raise InvalidSubject(
                f"the address has a non-ASCII character (U+{ord(char):04X} at position "
                f"{index + 1}): logins at the IdP and Identity Center are ASCII",
                non_ascii=True,
            )
        if char.isspace() or not char.isprintable():
            raise InvalidSubject(
                f"the address has a space or control character at position {index + 1}"
            )
    local, at, domain = address.partition("@")
    if not at or not local or not domain or "@" in domain:
        raise InvalidSubject("the address is not an email address (it needs exactly one @)")
    if len(address) > MAX_ADDRESS:
        raise InvalidSubject(f"the address is longer than {MAX_ADDRESS} characters")
    return address


def subject_key(subject: str) -> str:
    """How two spellings of one person compare: canonical, then case-folded."""
    return unicodedata.normalize("NFC", subject.strip()).casefold()


#: Case priorities: the worker claims, and the rate limiters serve, higher first.
PRIORITIES: dict[str, int] = {"incident": 100, "normal": 50, "bulk": 10}
#: at or above this, a case is urgent: it may take the slots and the budget kept for it
URGENT = PRIORITIES["incident"]


class CaseStatus(StrEnum):
    #: waiting for a worker to claim it (new, or released for a retry at `run_after`)
    PENDING = "pending"
    #: claimed by a worker that holds a lease on it
    RUNNING = "running"
    #: a step waits for a human (an operator task); no worker holds it
    WAITING = "waiting"
    #: a step failed permanently; no later step runs until a human acts
    HALTED = "halted"
    #: every containment step is done and verified; the residual-access countdown runs
    CONTAINED = "contained"
    #: the countdown reached its last milestone: no access can remain
    ACCESS_LAPSED = "access_lapsed"
    #: withdrawn before any step ran (a rescinded termination, an operator's cancel)
    CANCELLED = "cancelled"


class StepStatus(StrEnum):
    #: not started
    PENDING = "pending"
    #: started at least once, not yet verified
    RUNNING = "running"
    #: an operator task is open for it
    WAITING = "waiting"
    #: acted on and verified by read-back (or by an operator's confirmation)
    DONE = "done"
    #: failed permanently
    FAILED = "failed"


class LedgerState(StrEnum):
    #: written before the external call: the call may or may not have happened
    INTENT = "intent"
    #: written after the call returned success
    APPLIED = "applied"
    #: left in intent, then a read of the provider showed the call had not taken effect
    NOT_APPLIED = "not_applied"
    #: left in intent, and no read can tell whether the call took effect (a revocation)
    UNKNOWN = "unknown"


@dataclass(frozen=True, kw_only=True)
class PlannedStep:
    """A playbook step as frozen into a case when the case is created."""

    id: str
    action: str
    verify: str | None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Case:
    id: str
    playbook: str
    subject: str
    status: CaseStatus
    priority: int
    steps: tuple[PlannedStep, ...]
    trigger: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    run_after: datetime | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    halt_reason: str | None = None
    idempotency_key: str | None = None
    #: the latest residual-access countdown (countdown.Countdown.as_json), once computed
    countdown: dict[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class Timer:
    """A durable milestone: fires once, at or after `due_at`, even across restarts."""

    case_id: str
    name: str
    #: bumped when the countdown restarts (drift): a new epoch's milestones fire anew
    epoch: int
    due_at: datetime
    fired_at: datetime | None = None
    fired_by: str | None = None
    #: closes the case as access-lapsed when it fires
    closes_case: bool = False


@dataclass(frozen=True, kw_only=True)
class StepRecord:
    case_id: str
    index: int
    step_id: str
    action: str
    status: StepStatus
    attempts: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True, kw_only=True)
class LedgerEntry:
    """One external mutation, recorded before it is attempted (write-ahead)."""

    key: str
    case_id: str
    step_id: str
    operation: str
    state: LedgerState
    requested_at: datetime
    applied_at: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class OperatorTask:
    """Work only a human can do (console-only actions), durable until confirmed."""

    case_id: str
    step_id: str
    title: str
    instructions: str
    console_url: str
    subject: str
    opened_at: datetime
    confirmed_at: datetime | None = None
    confirmed_by: str | None = None


@dataclass(frozen=True, kw_only=True)
class CaseEvent:
    """One line of a case's timeline."""

    case_id: str
    seq: int
    at: datetime
    kind: str
    step_id: str | None
    data: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class Delivery:
    """A trigger delivery already processed: a replay gets the same answer."""

    key: str
    case_id: str | None
    #: the answer given the first time (status and body), replayed as it was
    outcome: dict[str, Any]
    received_at: datetime


@dataclass(frozen=True, kw_only=True)
class Arrival:
    """A verified trigger that opens a case, admitted once per delivery key."""

    key: str
    case: NewCase
    #: the delivery's outcome (status and body) for the case created for it
    answer: Callable[[Case], dict[str, Any]]


@dataclass(frozen=True, kw_only=True)
class Admission:
    """What became of an `Arrival`. Exactly one of three:

    - created: `case` is new and `delivery` records the answer given for it;
    - replayed: the key was seen before, `delivery` is the first record, `case` None;
    - open: the person already has an open case, of any playbook (`case`), nothing
      was written, `delivery` None: the caller decides (join, escalate, attach) itself.
    """

    case: Case | None
    delivery: Delivery | None
    created: bool


@dataclass(frozen=True, kw_only=True)
class Refusal:
    """A trigger refused for a reason an auditor should see (a protected identity)."""

    at: datetime
    source: str
    subject: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class NewCase:
    playbook: str
    subject: str
    steps: tuple[PlannedStep, ...]
    trigger: dict[str, Any]
    priority: int = 0
    idempotency_key: str | None = None
    run_after: datetime | None = None
