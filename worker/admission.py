"""Admission: what becomes of a request to offboard (or to spare) a person, decided once.

Every front end — the HR and incident webhooks, the manual API, `offboard run` and
`offboard bulk` — hands over an `Instruction` and gets back one `Admitted`. The front
ends only translate it: an HTTP status and problem document, an exit code, a CSV row's
outcome. The decisions, made here and nowhere else:

- replayed: the delivery key was answered before; the first answer stands;
- created: the person has no open case (of any playbook); a new one, due at the
  effective time. One person has at most one open case whatever arrives: the store
  holds it too (a unique index on the active cases' subject), so a race between
  processes or replicas joins the winner;
- existing / rescheduled: the person's open case is joined, recorded on its timeline
  (`trigger_joined`); a later instruction for a termination not yet started moves it
  to the new effective time;
- escalated: an incident (a playbook of higher priority) for a person with an open
  lower-priority case escalates it in place: the incident's steps it lacks are
  appended in playbook order (never against the order rules), its priority is raised
  so that it jumps the queue, it runs at once (a contained case too), `case_escalated`
  is recorded and the operators are told;
- attached: the person's case is halted: the trigger is recorded on it
  (`trigger_attached`) and the operators are told, instead of a parallel case;
- contained: the person's case is contained: joined, it answers with its countdown
  (`offboard run --new --reason` opens a new one anyway, the reason recorded);
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
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from worker.domain import (
    URGENT,
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
from worker.notify import Notification, Notifier, deliver
from worker.playbook import Playbook, escalation_steps
from worker.store.base import ESCALATABLE, Store

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
    #: the person's open case (of any playbook) joined: recorded on its timeline
    EXISTING = "existing"
    #: joined, with an effective time: a case not started yet moves to it
    RESCHEDULED = "rescheduled"
    #: an incident for a person with an open lower-priority case: that case escalated
    #: in place (the incident's steps it lacked added, its priority raised)
    ESCALATED = "escalated"
    #: the person's case is halted: the trigger attached to it, the operators told
    ATTACHED = "attached"
    #: the person's case is contained (its countdown runs): joined, nothing to start
    CONTAINED = "contained"
    #: the key was answered before: nothing done, the first answer stands
    REPLAYED = "replayed"
    #: a rescission withdrew the open case before containment began
    CANCELLED = "cancelled"
    #: a rescission for a person with no open case of this playbook
    NOTHING_SCHEDULED = "nothing-scheduled"
    #: a rescission, or a new date, after containment began (or a rescission of a case
    #: another playbook owns): nothing changed
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
    #: `offboard run --new --reason`: a new case even beside the person's contained
    #: one, this reason recorded with it (an active case is still joined)
    new_reason: str | None = None


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
        notifier: Notifier | None = None,
    ) -> None:
        self._store = store
        self._notifier = notifier
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
        admitted = await self._admit(instruction, subject, answer)
        if self._notifier is not None and admitted.case is not None:
            note = _notification(admitted, instruction)
            if note is not None:  # after the lock: a slow channel holds no one up
                await deliver(self._notifier, note)
        return admitted

    async def _admit(
        self, instruction: Instruction, subject: str, answer: Answer | None
    ) -> Admitted:
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
        case = await self._store.find_open_case(subject)
        if case is None:
            return Admitted(outcome=Outcome.NOTHING_SCHEDULED)
        if (
            case.playbook != instruction.playbook.name
            or case.priority > instruction.playbook.priority
        ):
            # an incident (or an escalated case) is not withdrawn by an HR rescission
            detail = (
                f"the person's open case {case.id} is a {case.playbook} case at priority "
                f"{case.priority}: a rescission of {instruction.playbook.name} does not withdraw it"
            )
            return Admitted(outcome=Outcome.ALREADY_STARTED, detail=detail)
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
        existing = await self._store.find_open_case(subject)
        fresh = existing is None or (
            existing.status is CaseStatus.CONTAINED and instruction.new_reason is not None
        )
        if fresh:
            new = self._new_case(instruction, subject)
            if instruction.new_reason is not None:
                new = replace(new, trigger={**new.trigger, "new_reason": instruction.new_reason})
            case, created = await self._store.create_case(new, self._now())
            if created:
                return Admitted(outcome=Outcome.CREATED, case=case)
            # the case key was used before (that case, as it is), or another process
            # or replica opened the person's case first: the winner is joined
            if case.idempotency_key is not None and case.idempotency_key == instruction.case_key:
                return Admitted(outcome=self._joined_outcome(instruction, case), case=case)
            existing = case
        assert existing is not None
        return await self._join(instruction, existing)

    def _joined_outcome(self, instruction: Instruction, case: Case) -> Outcome:
        if case.status is CaseStatus.CONTAINED:
            return Outcome.CONTAINED
        # "rescheduled" says the instruction carried a time, whether or not it moved
        return Outcome.RESCHEDULED if self._run_after(instruction) is not None else Outcome.EXISTING

    async def _join(self, instruction: Instruction, case: Case) -> Admitted:
        """The trigger meets the person's open case: escalate, attach or join it."""
        playbook, now = instruction.playbook, self._now()
        arrived = _arrived(instruction)
        # an incident (an urgent playbook) outranking the case escalates it; a leaver
        # trigger for a bulk case, say, only joins it
        urgent = playbook.priority >= URGENT and playbook.priority > case.priority
        if urgent and case.status in ESCALATABLE:
            escalation = escalation_steps(case.steps, playbook)
            data = {**arrived, "from_priority": case.priority}
            if escalation.left_out:
                data["steps_left_out"] = [
                    {"step": step_id, "why": why} for step_id, why in escalation.left_out
                ]
            case, _ = await self._store.escalate_case(
                case.id, escalation.added, playbook.priority, now, data
            )
            return Admitted(outcome=Outcome.ESCALATED, case=case)
        if case.status is CaseStatus.HALTED:
            await self._store.append_event(
                case.id, "trigger_attached", now, step_id=None, data=arrived
            )
            return Admitted(outcome=Outcome.ATTACHED, case=case)
        run_after = self._run_after(instruction)
        if run_after is not None and case.status is not CaseStatus.PENDING:
            # a new date for a case that began is refused, as a rescission is
            started = f"case {case.id} has started (status {case.status.value})"
            return Admitted(
                outcome=Outcome.ALREADY_STARTED,
                case=case,
                detail=f"{started}: containment cannot be withdrawn or moved once it began",
            )
        scheduled = case.status is CaseStatus.PENDING and case.run_after is not None
        if scheduled and case.playbook == playbook.name:
            # a later instruction for a termination not started yet moves it
            due = run_after or now
            if case.run_after != due:
                try:
                    case = await self._store.reschedule_case(
                        case.id, due, now, by=_mover(instruction)
                    )
                except CaseStarted as exc:
                    if run_after is not None:
                        return Admitted(outcome=Outcome.ALREADY_STARTED, case=case, detail=str(exc))
                    # brought forward to now, but it started meanwhile: joined as it is
        await self._store.append_event(case.id, "trigger_joined", now, step_id=None, data=arrived)
        return Admitted(outcome=self._joined_outcome(instruction, case), case=case)


def _arrived(instruction: Instruction) -> dict[str, Any]:
    """What a case's timeline records of a trigger that joined it."""
    trigger = instruction.trigger
    return {
        "source": trigger.get("source"),
        "reference": trigger.get("reference"),
        "playbook": instruction.playbook.name,
        "kind": trigger.get("kind", "terminate"),
    }


def _notification(admitted: Admitted, instruction: Instruction) -> Notification | None:
    """What the operators are told of an admission: an escalation, or a trigger for a
    halted case (it needs a human either way)."""
    case = admitted.case
    assert case is not None
    source = instruction.trigger.get("source")
    if admitted.outcome is Outcome.ESCALATED:
        return Notification(
            kind="case_escalated",
            case_id=case.id,
            subject=case.subject,
            title=f"case escalated by {instruction.playbook.name} ({source})",
            data={"playbook": instruction.playbook.name, "priority": case.priority},
        )
    if admitted.outcome is Outcome.ATTACHED:
        return Notification(
            kind="trigger_attached",
            case_id=case.id,
            subject=case.subject,
            title=f"{instruction.playbook.name} trigger ({source}) for a halted case",
            data={"halt_reason": case.halt_reason, "retry": f"offboard retry {case.id}"},
        )
    return None


def _mover(instruction: Instruction) -> dict[str, Any]:
    """What `case_rescheduled` records of the instruction that moved the date."""
    trigger = instruction.trigger
    moved_by = {"source": trigger.get("source"), "reference": trigger.get("reference")}
    moved_by["delivery"] = instruction.key
    return {k: v for k, v in moved_by.items() if v is not None}
