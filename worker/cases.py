"""What is done to a case once it exists: open one for a person (through admission),
drive it, confirm an operator task, retry a halted case, and take its deny statements
off once no role session started without them can live."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

import structlog

from worker.actions import DENY_ROLE_SESSIONS
from worker.admission import Instruction, Outcome, ProtectedIdentity
from worker.clock import seconds_until, utc_iso
from worker.countdown import DENY_EXTENDED, compute
from worker.domain import Case, CaseStatus, OperatorTask, StepStatus
from worker.errors import OffboardError
from worker.playbook import Playbook
from worker.runtime import Runtime
from worker.store.base import REREAD_FINAL

log = structlog.get_logger(__name__)
T = TypeVar("T")

#: case states in which nothing more will happen without a human
FINAL = (
    CaseStatus.CONTAINED,
    CaseStatus.HALTED,
    CaseStatus.ACCESS_LAPSED,
    CaseStatus.CANCELLED,
)


async def open_case(
    runtime: Runtime,
    playbook: Playbook,
    subject: str,
    trigger: dict[str, Any],
    *,
    run_after: datetime | None = None,
) -> tuple[Case, bool]:
    """A new case, or the person's open case whatever its playbook (joined, escalated
    by an incident, attached when halted), and whether it is new, through the one
    admission path; ProtectedIdentity if refused.

    Re-running a command after a crash resumes instead of starting twice; a later
    trigger for a termination not yet started moves it to the new time."""
    admitted = await runtime.admissions().admit(
        Instruction(playbook=playbook, subject=subject, trigger=trigger, effective_at=run_after)
    )
    if admitted.outcome is Outcome.PROTECTED:
        raise ProtectedIdentity(admitted.detail)
    assert admitted.case is not None, admitted  # unkeyed terminations always have a case
    return admitted.case, admitted.created


async def drive_case(runtime: Runtime, case_id: str) -> Case:
    """Run one case until it needs a human or is finished, waiting out leases and retries."""
    store, engine, clock = runtime.store, runtime.engine, runtime.clock
    while True:
        case = await store.get_case(case_id)
        if case.status in FINAL or case.status is CaseStatus.WAITING:
            return case
        claimed = await store.claim_case(
            case_id, engine.worker_id, clock.now(), engine.settings.lease_seconds
        )
        if claimed is None:
            # Held by another (perhaps dead) worker, or not due yet: wait for the lease or timer.
            wake = case.lease_expires_at if case.status is CaseStatus.RUNNING else case.run_after
            delay = 0.5 if wake is None else max(0.05, min(5.0, seconds_until(wake, clock.now())))
            if case.status is CaseStatus.RUNNING:
                log.info(
                    "case_held_elsewhere", case_id=case_id, holder=case.lease_owner, wait=delay
                )
            await clock.sleep(delay)
            continue
        await engine.run_claimed(claimed)


@dataclass(frozen=True, kw_only=True)
class Confirmation:
    """What a confirm did: the task as stored (its first confirmation), and whether
    it had been confirmed before, in which case nothing was recorded."""

    task: OperatorTask
    already: bool = False

    @property
    def message(self) -> str:
        task = self.task
        at = utc_iso(task.confirmed_at) if task.confirmed_at else "?"
        if self.already:
            return f"{task.case_id} {task.step_id} already confirmed by {task.confirmed_by} at {at}"
        return f"confirmed {task.case_id} {task.step_id} by {task.confirmed_by} at {at}"


async def confirm_task(
    runtime: Runtime, case_id: str, step_id: str, confirmed_by: str
) -> Confirmation:
    """Record an operator's confirmation and make the case runnable again, in one write
    (`Store.confirm_task`). Idempotent: a task confirmed before answers with that first
    confirmation (who, when) and records nothing, not even an event; its case is made
    runnable only if it still waits on this step (the first answer was lost). A halted
    case (a later automated step failed while this task was open) stays halted until
    `offboard retry`."""
    case = await runtime.store.get_case(case_id)
    if step_id not in {s.id for s in case.steps}:
        known = ", ".join(s.id for s in case.steps)
        raise OffboardError(f"case {case_id} has no step {step_id!r} (steps: {known})")
    done = await runtime.store.confirm_task(case_id, step_id, confirmed_by, runtime.clock.now())
    return Confirmation(task=done.task, already=done.already)


@dataclass(frozen=True, kw_only=True)
class DenyCleanup:
    """What `remove_deny_statements` did for one case."""

    case_id: str
    #: the permission sets the statement was taken off now
    removed: tuple[str, ...] = ()
    #: the permission sets that keep it, and until when (role sessions started
    #: without it may live until then)
    kept: tuple[str, ...] = ()
    kept_until: datetime | None = None
    #: why they are kept
    reason: str = ""


async def remove_deny_statements(runtime: Runtime) -> list[DenyCleanup]:
    """Take our deny statements off permission sets once every role session that could
    have started without them has ended: the role bound as if no deny had ever run, from
    the final inventory (never at all-lapsed, which the deny itself brought forward).
    Permission sets do not grow forever, and no role session comes back to life."""
    ic = runtime.providers.identity_center
    now = runtime.clock.now()
    done: list[DenyCleanup] = []
    for case in await runtime.store.list_cases():
        if case.status is CaseStatus.CANCELLED or not case.countdown:
            continue
        steps = await runtime.store.steps(case.id)
        deny = next(
            (
                s
                for s in steps
                if s.action == DENY_ROLE_SESSIONS.name and s.status is StepStatus.DONE
            ),
            None,
        )
        events = await runtime.store.events(case.id)
        if deny is None or any(e.kind == "deny_removed" for e in events):
            continue
        arns = list(deny.evidence.get("permission_sets", []))
        for e in events:
            if e.kind == DENY_EXTENDED:
                arns += [a for a in e.data["permission_sets"] if a not in arns]
        until = await _deny_removable_at(runtime, case)
        window_open = any(
            t.name == REREAD_FINAL and t.fired_at is None
            for t in await runtime.store.timers(case.id)
        )
        if until is None or now < until or window_open:
            reason = (
                "the inventory's last re-read (at new-sessions-end) has not run yet: "
                "a worker fires it"
                if window_open
                else "role sessions started without it may live until then"
            )
            done.append(
                DenyCleanup(case_id=case.id, kept=tuple(arns), kept_until=until, reason=reason)
            )
            continue
        user_id = str(deny.evidence["ic_user_id"])
        ledger = runtime.engine.ledger(case.id, deny.step_id)
        changed: list[str] = []
        for arn in arns:
            # the same turns as the deny's merge (steps.cover_with_deny): a removal put
            # from a stale read would drop a statement another case just added
            async with runtime.store.permission_set_lock(arn):
                _, removal = await ledger.mutate(
                    operation="sso-admin.PutInlinePolicy",
                    entry_key=f"deny-remove:{arn}",
                    read=partial(ic.deny_policy, arn, user_id),
                    reached=lambda policy: not policy.denies,
                    act=ic.remove_deny,
                    verify=False,
                )
                if not removal["acted"]:
                    continue
                request = await ledger.call("ProvisionPermissionSet", partial(ic.provision, arn))
            await ledger.poll_until("ProvisioningStatus", partial(ic.provisioned, request), bool)
            changed.append(arn)
        await runtime.store.append_event(
            case.id,
            "deny_removed",
            runtime.clock.now(),
            step_id=None,
            data={"permission_sets": changed, "deny_removable_at": utc_iso(until)},
        )
        done.append(DenyCleanup(case_id=case.id, removed=tuple(changed)))
    return done


async def _deny_removable_at(runtime: Runtime, case: Case) -> datetime | None:
    """The role bound without the deny, from what is stored for good (the union of
    every read), not from a saved countdown that a racing save may have left stale."""
    inputs, _ = await runtime.engine.countdown_inputs(case)
    if inputs is None:
        return None
    return compute(inputs, runtime.engine.sessions).deny_removable_at


async def retry_case(runtime: Runtime, case_id: str, retried_by: str) -> Case:
    """Run a halted case again from the step that failed, once a human fixed the cause."""
    case = await runtime.store.get_case(case_id)
    if case.status is not CaseStatus.HALTED:
        raise OffboardError(f"case {case_id} is {case.status.value}, not halted: nothing to retry")
    # one write: a lost answer cannot leave the event without the resume, nor a retry
    # repeated after it add a second event
    retried = ("case_retried", {"retried_by": retried_by, "halt_reason": case.halt_reason})
    return await runtime.store.resume_case(case_id, runtime.clock.now(), event=retried)
