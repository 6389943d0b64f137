"""Admission: what becomes of a request to offboard (or to spare) a person, decided once.

Every front end — the HR and incident webhooks, the manual API, `offboard run` and
`offboard bulk` — hands over an `Instruction` and gets back one `Admitted`. The front
ends only translate it: an HTTP status and problem document, an exit code, a CSV row's
outcome. The decisions, made here and nowhere else:

- replayed: the delivery key was answered before; the first answer stands;
- created: the person has no open case of this playbook; a new one, due at the
  effective time;
- existing / rescheduled: the person's open case is joined; a later instruction for a
  termination not yet started moves it to the new effective time;
- cancelled / nothing-scheduled / already-started: a rescission withdraws the open
  case if containment has not begun;
- protected: a break-glass or service identity is never offboarded; the refusal is
  recorded, because an auditor wants to see the attempt.

Admission decides, intake batches: a keyed termination for someone with no open case
(the common webhook) is committed with the others arriving meanwhile
(`worker/intake.py`, `Store.admit`).
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from worker.domain import (
    Arrival,
    Case,
    CaseStatus,
    Delivery,
    InvalidSubject,
    NewCase,
    Refusal,
    canonical_subject,
    subject_key,
)
from worker.errors import CaseStarted, OffboardError
from worker.intake import Intake
from worker.playbook import Playbook
from worker.store.base import Store

#: a login: printable ASCII without spaces, exactly one @ (the OpenAPI document says the same)
LOGIN = re.compile(r"[!-?A-~]+@[!-?A-~]+")


def is_login(subject: str) -> bool:
    return LOGIN.fullmatch(subject) is not None


#: Cyrillic and Greek letters that look like ASCII letters (after NFKC, before casefold):
#: `root@` spelt with a Cyrillic o (U+043E) is still root. Small and explicit, by design;
#: written as escapes so that the table itself cannot be misread.
CONFUSABLES = str.maketrans(
    {
        # Cyrillic, lower case
        "\u0430": "a", "\u0432": "b", "\u0435": "e", "\u043a": "k", "\u043c": "m",
        "\u043d": "h", "\u043e": "o", "\u0440": "p", "\u0441": "c", "\u0442": "t",
        "\u0443": "y", "\u0445": "x", "\u0455": "s", "\u0456": "i", "\u0458": "j",
        "\u0501": "d", "\u04bb": "h", "\u051b": "q", "\u051d": "w", "\u04cf": "l",
        "\u04af": "y",
        # Cyrillic, upper case
        "\u0410": "a", "\u0412": "b", "\u0415": "e", "\u041a": "k", "\u041c": "m",
        "\u041d": "h", "\u041e": "o", "\u0420": "p", "\u0421": "c", "\u0422": "t",
        "\u0423": "y", "\u0425": "x", "\u0405": "s", "\u0406": "i", "\u0408": "j",
        "\u051a": "q", "\u051c": "w", "\u04c0": "l", "\u04ae": "y",
        # Greek, upper case
        "\u0391": "a", "\u0392": "b", "\u0395": "e", "\u0396": "z", "\u0397": "h",
        "\u0399": "i", "\u039a": "k", "\u039c": "m", "\u039d": "n", "\u039f": "o",
        "\u03a1": "p", "\u03a4": "t", "\u03a5": "y", "\u03a7": "x",
        # Greek, lower case
        "\u03b1": "a", "\u03b9": "i", "\u03ba": "k", "\u03bd": "v", "\u03bf": "o",
        "\u03c1": "p", "\u03c4": "t", "\u03c5": "u", "\u03c7": "x", "\u03f2": "c",
        "\u03f3": "j",
    }
)  # fmt: skip


def folded(subject: str) -> str:
    """The form protected identities are matched on: NFKC, look-alikes folded, casefold."""
    return unicodedata.normalize("NFKC", subject.strip()).translate(CONFUSABLES).casefold()


def protected_pattern(subject: str, patterns: Sequence[str]) -> str | None:
    """The configured pattern that protects this identity, if one does: matched on the
    folded form (case, Unicode compatibility forms and Cyrillic/Greek look-alikes)."""
    lowered = folded(subject)
    return next((p for p in patterns if fnmatch.fnmatchcase(lowered, folded(p))), None)


def protected_reason(subject: str, pattern: str) -> str:
    return f"{subject} is a protected identity (matches {pattern!r}): never offboarded"


def protected_detail(pattern: str) -> str:
    """A refusal's detail for a front end: it never echoes the address (a pattern
    without a wildcard is the address itself, so it is not named either)."""
    which = f"matches {pattern!r}" if any(c in pattern for c in "*?[") else "listed"
    return f"the address is a protected identity ({which}): never offboarded"


class ProtectedIdentity(OffboardError):
    """A break-glass or service identity that no trigger may offboard."""


class Outcome(StrEnum):
    #: a new case
    CREATED = "created"
    #: the person's open case of this playbook, joined
    EXISTING = "existing"
    #: joined, with an effective time: a case not started yet moves to it
    RESCHEDULED = "rescheduled"
    #: the key was answered before: nothing done, the first answer stands
    REPLAYED = "replayed"
    #: a rescission withdrew the open case before containment began
    CANCELLED = "cancelled"
    #: a rescission for a person with no open case of this playbook
    NOTHING_SCHEDULED = "nothing-scheduled"
    #: a rescission, or a new date, after containment began: nothing changed
    ALREADY_STARTED = "already-started"
    #: a protected identity: nothing changed but the refusal, recorded
    PROTECTED = "protected"


#: outcomes that change nothing but (for a protected identity) the refusals: no
#: delivery is recorded, so the same key may be tried again
REFUSED = (Outcome.ALREADY_STARTED, Outcome.PROTECTED)


@dataclass(frozen=True, kw_only=True)
class Instruction:
    """What arrived: offboard (or, rescinded, spare) this person with this playbook."""

    playbook: Playbook
    subject: str
    #: what the case records of what sent it; its "source" names a refusal's source
    trigger: dict[str, Any]
    rescind: bool = False
    #: when the termination takes effect; None or a past time: now
    effective_at: datetime | None = None
    #: the delivery key (a webhook delivery, an Idempotency-Key, a bulk row): a key
    #: is acted on once, and a repeat is replayed
    key: str | None = None
    #: a key the case itself carries: a crash after the case was made but before the
    #: delivery was recorded finds the same case again, even a finished one
    case_key: str | None = None


@dataclass(frozen=True, kw_only=True)
class Admitted:
    """What became of an `Instruction`."""

    outcome: Outcome
    #: the case made, joined, moved or cancelled; None when replayed or refused
    case: Case | None = None
    #: keyed: the delivery recorded for the key (replayed: the first one); None otherwise
    delivery: Delivery | None = None
    #: why it was refused (protected, already started), for a human
    detail: str = ""

    @property
    def created(self) -> bool:
        return self.outcome is Outcome.CREATED


#: the answer a front end records with a delivery, replayed as it was for a repeat
Answer = Callable[[Admitted], dict[str, Any]]


def playbook_case(
    playbook: Playbook,
    subject: str,
    trigger: dict[str, Any],
    *,
    run_after: datetime | None = None,
    idempotency_key: str | None = None,
) -> NewCase:
    """The case a playbook makes for a person: its steps, at its priority."""
    return NewCase(
        playbook=playbook.name,
        subject=subject,
        steps=playbook.steps,
        trigger=trigger,
        priority=playbook.priority,
        run_after=run_after,
        idempotency_key=idempotency_key,
    )


class Admissions:
    """The one admission path. The server keeps one: its locks decide a person's
    instructions one at a time, and its intake groups the webhooks' commits."""

    def __init__(
        self,
        store: Store,
        now: Callable[[], datetime],
        *,
        protected: Sequence[str],
        intake: Intake | None = None,
    ) -> None:
        self._store = store
        self._now = now
        self._protected = tuple(protected)
        self._intake = intake
        #: one lock per stripe of subjects: a person's instructions are decided one at a time
        self._locks = tuple(asyncio.Lock() for _ in range(64))

    def _subject(self, instruction: Instruction) -> str:
        """The subject canonicalised once, for every front end: trimmed, NFC, checked
        (`InvalidSubject`, a 4xx); a termination's case is keyed on the case-folded form.
        A protected identity is decided on the folded form before any check, so a
        look-alike spelling (non-ASCII) is refused as protected, not as invalid."""
        raw = instruction.subject
        if not instruction.rescind and protected_pattern(raw, self._protected) is not None:
            return raw.strip()
        try:
            return subject_key(canonical_subject(raw))
        except InvalidSubject as exc:
            raise InvalidSubject(
                f"the subject must be the person's login (an email address): {exc}",
                non_ascii=exc.non_ascii,
            ) from None

    def _lock_for(self, subject: str) -> asyncio.Lock:
        digest = hashlib.sha256(folded(subject).encode()).digest()
        return self._locks[digest[0] % len(self._locks)]

    async def admit(self, instruction: Instruction, answer: Answer | None = None) -> Admitted:
        """Decide and do; a keyed instruction records `answer` (or {}) with its delivery."""
        subject = self._subject(instruction)
        async with self._lock_for(subject):
            if instruction.key is not None:
                grouped = await self._group_commit(instruction, subject, answer)
                if grouped is not None:
                    return grouped
                seen = await self._store.get_delivery(instruction.key)
                if seen is not None:
                    return Admitted(outcome=Outcome.REPLAYED, delivery=seen)
            if instruction.rescind:
                admitted = await self._rescind(instruction, subject)
            else:
                admitted = await self._terminate(instruction, subject)
            if instruction.key is None or admitted.outcome in REFUSED:
                return admitted
            delivery = Delivery(
                key=instruction.key,
                case_id=admitted.case.id if admitted.case is not None else None,
                outcome=answer(admitted) if answer is not None else {},
                received_at=self._now(),
            )
            await self._store.record_delivery(delivery)
            return Admitted(outcome=admitted.outcome, case=admitted.case, delivery=delivery)

    def _run_after(self, instruction: Instruction) -> datetime | None:
        effective = instruction.effective_at
        return effective if effective is not None and effective > self._now() else None

    async def _group_commit(
        self, instruction: Instruction, subject: str, answer: Answer | None
    ) -> Admitted | None:
        """The common case, a termination for someone with no open case: admitted
        together with the deliveries arriving meanwhile, in one commit. None when the
        rest of `admit` decides: a rescission, a protected identity, an open case."""
        if (
            self._intake is None
            or instruction.key is None
            or instruction.rescind
            or not is_login(subject)
            or protected_pattern(subject, self._protected) is not None
        ):
            return None

        def recorded(case: Case) -> dict[str, Any]:
            made = Admitted(outcome=Outcome.CREATED, case=case)
            return answer(made) if answer is not None else {}

        new = self._new_case(instruction, subject)
        admission = await self._intake.admit(
            Arrival(key=instruction.key, case=new, answer=recorded)
        )
        if admission.delivery is None:
            return None
        if not admission.created:
            return Admitted(outcome=Outcome.REPLAYED, delivery=admission.delivery)
        return Admitted(outcome=Outcome.CREATED, case=admission.case, delivery=admission.delivery)

    def _new_case(self, instruction: Instruction, subject: str) -> NewCase:
        trigger = instruction.trigger
        given = unicodedata.normalize("NFC", instruction.subject.strip())
        if given != subject:  # the spelling that arrived, kept for display
            trigger = {**trigger, "subject_as_given": given}
        return playbook_case(
            instruction.playbook,
            subject,
            trigger,
            run_after=self._run_after(instruction),
            idempotency_key=instruction.case_key,
        )

    async def _rescind(self, instruction: Instruction, subject: str) -> Admitted:
        case = await self._store.find_open_case(subject, instruction.playbook.name)
        if case is None:
            return Admitted(outcome=Outcome.NOTHING_SCHEDULED)
        trigger = instruction.trigger
        reason = f"termination rescinded by {trigger.get('source')} ({trigger.get('reference')})"
        try:
            case = await self._store.cancel_case(case.id, self._now(), reason)
        except CaseStarted as exc:
            return Admitted(outcome=Outcome.ALREADY_STARTED, case=None, detail=str(exc))
        return Admitted(outcome=Outcome.CANCELLED, case=case)

    async def _terminate(self, instruction: Instruction, subject: str) -> Admitted:
        pattern = protected_pattern(subject, self._protected)
        if pattern is not None:
            reason = protected_detail(pattern)
            await self._store.record_refusal(
                Refusal(
                    at=self._now(),
                    source=str(instruction.trigger.get("source", "unknown")),
                    subject=instruction.subject.strip(),
                    reason=reason,
                )
            )
            return Admitted(outcome=Outcome.PROTECTED, detail=reason)
        if not is_login(subject):
            raise InvalidSubject("the subject must be the person's login (an email address)")
        run_after = self._run_after(instruction)
        existing = await self._store.find_open_case(subject, instruction.playbook.name)
        if existing is None:
            case, created = await self._store.create_case(
                self._new_case(instruction, subject), self._now()
            )
            if created:
                return Admitted(outcome=Outcome.CREATED, case=case)
            existing = case  # the case key was used before: that case, as it is
        else:
            # a later instruction for a termination not started yet moves it; a new date
            # for one that began is refused, as a rescission is (the case is kept for
            # bulk, which joins it)
            due = run_after or self._now()
            if run_after is not None and existing.status is not CaseStatus.PENDING:
                started = f"case {existing.id} has started (status {existing.status.value})"
                return Admitted(
                    outcome=Outcome.ALREADY_STARTED,
                    case=existing,
                    detail=f"{started}: containment cannot be withdrawn or moved once it began",
                )
            scheduled = existing.status is CaseStatus.PENDING and existing.run_after is not None
            if scheduled and existing.run_after != due:
                try:
                    existing = await self._store.reschedule_case(
                        existing.id, due, self._now(), by=_mover(instruction)
                    )
                except CaseStarted as exc:
                    if run_after is not None:
                        return Admitted(
                            outcome=Outcome.ALREADY_STARTED, case=existing, detail=str(exc)
                        )
                    # brought forward to now, but it started meanwhile: joined as it is
        # "rescheduled" says the instruction carried a time, whether or not it moved
        outcome = Outcome.RESCHEDULED if run_after is not None else Outcome.EXISTING
        return Admitted(outcome=outcome, case=existing)


def _mover(instruction: Instruction) -> dict[str, Any]:
    """What `case_rescheduled` records of the instruction that moved the date."""
    trigger = instruction.trigger
    moved_by = {"source": trigger.get("source"), "reference": trigger.get("reference")}
    moved_by["delivery"] = instruction.key
    return {k: v for k, v in moved_by.items() if v is not None}
