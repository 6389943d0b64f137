"""What each playbook action does: act, then verify by reading the state back.

Every mutation goes through the step's `Ledger` (worker/ledger.py): read first on
every attempt (a goal already reached is not acted on again), write the ledger
intent, call, mark it applied, then poll the read-back until it shows the goal.
The action registry (worker/actions.py) names which handler runs which action.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property, partial
from typing import Any, TypeVar

import structlog

from worker.clock import Clock, utc_iso
from worker.countdown import INVENTORY_READ, ReachablePermissionSet, union_sets
from worker.domain import Case, OperatorTask, PlannedStep, StepRecord
from worker.errors import PermanentError, TransientError
from worker.ledger import Ledger
from worker.providers.base import (
    REQUEST_SUCCEEDED,
    IdentityCenter,
    IdentityCenterUser,
    IdentityProvider,
    IdpUser,
)
from worker.providers.policy import deny_sid
from worker.resolve import IC_NOT_FOUND, Reader, resolve_person
from worker.retry import RetryPolicy
from worker.store.base import Store

T = TypeVar("T")
log = structlog.get_logger(__name__)


@dataclass(frozen=True, kw_only=True)
class Providers:
    idp: IdentityProvider
    identity_center: IdentityCenter


@dataclass(frozen=True, kw_only=True)
class Done:
    evidence: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class Waiting:
    task: OperatorTask
    evidence: dict[str, Any]


Outcome = Done | Waiting


@dataclass(kw_only=True)
class StepContext:
    case: Case
    step: PlannedStep
    index: int
    record: StepRecord
    #: evidence of the steps already done in this case, by step id
    earlier: dict[str, dict[str, Any]]
    store: Store
    clock: Clock
    providers: Providers
    policy: RetryPolicy
    verify_timeout: float
    verify_interval: float
    #: what the step just before this one read, in this same run (never from the store:
    #: a read recorded hours ago is not a read before acting)
    previous_reads: dict[str, Any] = field(default_factory=dict)
    #: what this step read that the next one may take as its read before acting
    reads_to_pass: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def ledger(self) -> Ledger:
        """This step's side effects, keyed `{case}:{step}:{operation}`."""
        return Ledger(
            store=self.store,
            clock=self.clock,
            policy=self.policy,
            case_id=self.case.id,
            step_id=self.step.id,
            verify_timeout=self.verify_timeout,
            verify_interval=self.verify_interval,
        )

    async def call(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        return await self.ledger.call(operation, call)

    def earlier_fact(self, key: str) -> Any:
        for evidence in self.earlier.values():
            if key in evidence:
                return evidence[key]
        return None


async def _idp_user_id(ctx: StepContext) -> str:
    user_id, _ = await _idp_user(ctx)
    return user_id


async def _idp_user(ctx: StepContext) -> tuple[str, IdpUser | None]:
    """The user's IdP id, and their state when the lookup had to read it just now."""
    known = ctx.earlier_fact("idp_user_id") or ctx.record.evidence.get("idp_user_id")
    if known:
        # the resolve's read a moment ago, in this run, serves as the read before acting
        # (it is retried with a fresh read if the act fails)
        just_read = ctx.previous_reads.get("idp_user")
        if isinstance(just_read, IdpUser) and just_read.id == str(known):
            return str(known), just_read
        return str(known), None
    user = await ctx.call("idp.find_user", lambda: ctx.providers.idp.find_user(ctx.case.subject))
    return user.id, user


#: what an Identity Center step records when the person has no Identity Center user
NO_IC_USER = "no Identity Center user: no AWS access through Identity Center"


def _no_ic_user(ctx: StepContext, searched: str | None = None) -> Done | None:
    """Done, with the search as evidence, when the lookup found no Identity Center user
    (userName, email and externalId, case-insensitively: `find_user`). The person has
    no AWS access through Identity Center, so the Identity Center steps say so rather
    than halt the case after the IdP was changed."""
    searched = (
        searched or ctx.earlier_fact("ic_user_absent") or ctx.record.evidence.get("ic_user_absent")
    )
    if not searched:
        return None
    return Done(
        evidence={
            "ic_user_id": None,
            "ic_user_absent": searched,
            "note": NO_IC_USER,
            "verified_by": f"Identity Center search: {searched}",
            "verified_at": utc_iso(ctx.clock.now()),
            "permission_sets": [],
            "applications": [],
        }
    )


async def person_resolve(ctx: StepContext) -> Outcome:
    """Reads only: the person in every system, and the ids every later step acts on."""
    resolution = await resolve_person(
        ctx.ledger, ctx.providers.idp, ctx.providers.identity_center, ctx.case.subject
    )
    # the IdP step comes next: this read is its read before acting. Identity Center is
    # read again by its step, after the IdP is confirmed.
    ctx.reads_to_pass["idp_user"] = resolution.idp_user
    return Done(evidence={**resolution.evidence(), "verified_at": utc_iso(ctx.clock.now())})


async def idp_deactivate_user(ctx: StepContext) -> Outcome:
    idp = ctx.providers.idp
    user_id, fresh = await _idp_user(ctx)
    user, evidence = await ctx.ledger.mutate(
        operation=f"{idp.name}.deactivate",
        read=lambda: idp.get_user(user_id),
        reached=lambda u: u.deactivated,
        act=lambda _: idp.deactivate_user(user_id),
        fresh=fresh,
    )
    return Done(
        evidence={
            "idp": idp.name,
            "idp_user_id": user.id,
            "verified_by": f"GET user: status {user.status}",
            "verified_at": utc_iso(ctx.clock.now()),
            **evidence,
        }
    )


async def idp_revoke_sessions(ctx: StepContext) -> Outcome:
    idp = ctx.providers.idp
    user_id = await _idp_user_id(ctx)
    operation = f"{idp.name}.revoke_sessions"
    evidence: dict[str, Any] = {"idp": idp.name, "idp_user_id": user_id}
    # No read can tell whether sessions were revoked: the ledger entry alone decides.
    # Idempotent on the provider's side: repeating after a crash ends no more than once.
    sent = await ctx.ledger.once(operation, lambda: idp.revoke_sessions(user_id))
    if not sent.sent:
        evidence["note"] = "revocation applied earlier; not repeated"
    evidence.update(sent.evidence())
    evidence["acted_at"] = utc_iso(sent.applied_at)
    # No provider lists a user's sessions; what can be read back is that the user
    # is still deactivated, so no session can be started again.
    user, _ = await ctx.ledger.poll_until(
        f"{operation}.verify", lambda: idp.get_user(user_id), lambda u: u.deactivated
    )
    evidence["verified_by"] = (
        f"provider acknowledged revocation; GET user: status {user.status} (no new sessions)"
    )
    evidence["verified_at"] = utc_iso(ctx.clock.now())
    return Done(evidence=evidence)


async def _ic_user_id(ctx: StepContext) -> str:
    user_id, _ = await _ic_user(ctx)
    return user_id


async def _ic_user(ctx: StepContext) -> tuple[str, IdentityCenterUser | None]:
    """The user's Identity Center id, and their state when the lookup read it just now."""
    known = ctx.earlier_fact("ic_user_id") or ctx.record.evidence.get("ic_user_id")
    if known:
        return str(known), None
    ic = ctx.providers.identity_center
    user = await ctx.call("identitystore.GetUserId", lambda: ic.find_user(ctx.case.subject))
    return user.user_id, user


async def identity_center_disable_user(ctx: StepContext) -> Outcome:
    ic = ctx.providers.identity_center
    absent = _no_ic_user(ctx)
    if absent is not None:
        return absent
    try:
        user_id, fresh = await _ic_user(ctx)
    except PermanentError as exc:
        if exc.code != IC_NOT_FOUND:
            raise  # two users match (AmbiguousUser), access denied, ...: halt, naming it
        absent = _no_ic_user(ctx, str(exc))
        assert absent is not None
        return absent
    base = {"ic_user_id": user_id, "identity_source": ic.identity_source}
    if ic.identity_source == "directory":
        return await _console_disable(ctx, user_id, base)
    user, evidence = await ctx.ledger.mutate(
        operation="identity_center.disable",
        read=lambda: ic.get_user(user_id),
        reached=lambda u: u.disabled,
        act=lambda _: ic.disable_user(user_id),
        fresh=fresh,
    )
    verified_at = utc_iso(ctx.clock.now())
    return Done(
        evidence={
            **base,
            "method": "SCIM PATCH active=false",
            "verified_by": f"identitystore DescribeUser: UserStatus {user.status}",
            "verified_at": verified_at,
            **evidence,
            **await _inventory(ctx, user_id),
        }
    )


async def _inventory(ctx: StepContext, user_id: str) -> dict[str, Any]:
    """What the user can still reach, read right after the disable (before any removal):
    the countdown's input, kept as evidence of why its times were chosen."""
    return await read_inventory(ctx.ledger, ctx.providers.identity_center, user_id)


async def read_inventory(
    ledger: Reader,
    ic: IdentityCenter,
    user_id: str,
    *,
    since: datetime | None = None,
    run_wide: bool = False,
) -> dict[str, Any]:
    """The permission sets the user reaches (with durations) and the applications they
    are assigned to, as evidence and countdown input; `since`: nothing that other cases
    share (a group's assignments, a duration) read before that moment; `run_wide`: a
    re-read on the shared grid, whose memberships may come from one listing of every
    group (IdentityCenter.group_memberships).
    Applications that cannot be read (access denied, not implemented) are recorded as
    None, said "not covered" by the countdown, and do not halt the case."""
    # the memberships once, for both: every call is time in a mass run
    groups = [
        group
        for _, group in await ledger.call(
            "identitystore.ListGroupMemberships",
            lambda: ic.group_memberships(user_id, since=since, run_wide=run_wide),
        )
    ]
    sets = await ledger.call(
        "identity_center.inventory",
        lambda: ic.reachable_permission_sets(
            user_id, since=since, groups=groups, run_wide=run_wide
        ),
    )
    applications: list[dict[str, Any]] | None
    try:
        found = await ledger.call(
            "identity_center.applications",
            lambda: ic.reachable_applications(user_id, since=since, groups=groups),
        )
        applications = [a.as_json() for a in found]
    except PermanentError as exc:
        log.warning("applications_unreadable", error=str(exc))
        applications = None
    return {"permission_sets": [ps.as_json() for ps in sets], "applications": applications}


async def _console_disable(ctx: StepContext, user_id: str, base: dict[str, Any]) -> Outcome:
    """Identity Center's own directory: disabling is console-only, so a human does it,
    and DescribeUser still has the last word."""
    ic = ctx.providers.identity_center
    user = await ctx.call("identitystore.DescribeUser", lambda: ic.get_user(user_id))
    task = await ctx.store.get_task(ctx.case.id, ctx.step.id)
    if user.disabled:
        return Done(
            evidence={
                **base,
                "method": "console (operator)",
                "confirmed_by": task.confirmed_by if task else None,
                "verified_by": f"identitystore DescribeUser: UserStatus {user.status}",
                "verified_at": utc_iso(ctx.clock.now()),
                **await _inventory(ctx, user_id),
            }
        )
    if task is None or task.confirmed_at is None:
        task = await _open_task(
            ctx,
            title=f"Disable Identity Center user {ctx.case.subject}",
            instructions=(
                "Identity Center's own directory has no disable API. In the console open "
                "the user and choose 'Disable user access', then confirm this task."
            ),
            console_url=ic.console_user_url(user_id),
        )
        return Waiting(task=task, evidence=base)
    # Confirmed, but read-back disagrees: give eventual consistency its time, then halt,
    # because retrying cannot make a human's unfinished console work finished.
    try:
        user, _ = await ctx.ledger.poll_until(
            "identitystore.DescribeUser", lambda: ic.get_user(user_id), lambda u: u.disabled
        )
    except TransientError:
        raise PermanentError(
            "identity-center",
            f"{task.confirmed_by} confirmed the console disable, but DescribeUser still shows "
            f"UserStatus {user.status}: disable the user in the console, then run "
            f"'offboard retry {ctx.case.id}'",
        ) from None
    return Done(
        evidence={
            **base,
            "method": "console (operator)",
            "confirmed_by": task.confirmed_by,
            "verified_by": f"identitystore DescribeUser: UserStatus {user.status}",
            "verified_at": utc_iso(ctx.clock.now()),
            **await _inventory(ctx, user_id),
        }
    )


async def identity_center_portal_sessions(ctx: StepContext) -> Outcome:
    ic = ctx.providers.identity_center
    if (absent := _no_ic_user(ctx)) is not None:
        return absent
    user_id = await _ic_user_id(ctx)
    task = await ctx.store.get_task(ctx.case.id, ctx.step.id)
    if task is not None and task.confirmed_at is not None:
        return Done(
            evidence={
                "ic_user_id": user_id,
                "confirmed_by": task.confirmed_by,
                "confirmed_at": utc_iso(task.confirmed_at),
                "verified_by": (
                    f"operator confirmation by {task.confirmed_by} "
                    "(AWS has no API to list or delete another user's portal sessions)"
                ),
                "task_opened_at": utc_iso(task.opened_at),
            }
        )
    task = await _open_task(
        ctx,
        title=f"Delete the access-portal sessions of {ctx.case.subject}",
        instructions=(
            "AWS offers no API for this. In the IAM Identity Center console open the user, "
            "tab 'Active sessions', select all sessions and choose 'Delete session'. "
            f"Then run: offboard confirm {ctx.case.id} {ctx.step.id}"
        ),
        console_url=ic.console_user_url(user_id),
    )
    return Waiting(task=task, evidence={"ic_user_id": user_id})


async def _open_task(
    ctx: StepContext, *, title: str, instructions: str, console_url: str
) -> OperatorTask:
    task = await ctx.store.open_task(
        OperatorTask(
            case_id=ctx.case.id,
            step_id=ctx.step.id,
            title=title,
            instructions=instructions,
            console_url=console_url,
            subject=ctx.case.subject,
            opened_at=ctx.clock.now(),
        )
    )
    log.warning("operator_task_open", title=task.title, console_url=task.console_url)
    return task


#: what runs an action (worker/actions.py names one for each)
StepHandler = Callable[[StepContext], Awaitable[Outcome]]


# --- hardening: cut role sessions early, remove access -------------------------------


async def _reachable(ctx: StepContext) -> list[ReachablePermissionSet]:
    """Every set read so far: the disable's read and the re-reads since (a set found
    by a later re-read is covered then, through the same ledger entries)."""
    known = ctx.earlier_fact("permission_sets") or []
    reread = [
        p
        for e in await ctx.store.events(ctx.case.id)
        if e.kind == INVENTORY_READ
        for p in e.data.get("permission_sets", [])
    ]
    return list(union_sets([ReachablePermissionSet.from_json(p) for p in [*known, *reread]]))


#: How often one case puts its deny statement back on a set whose read-back after
#: provisioning lost it, before the step is handed back to the queue.
REMERGE_ATTEMPTS = 3


async def cover_with_deny(
    ledger: Ledger, ic: IdentityCenter, user_id: str, sets: list[ReachablePermissionSet]
) -> tuple[list[str], datetime]:
    """Put the deny statement on every set (read first: one already carrying it is left
    alone), provision each and read every one back. The sets whose policy changed, and
    when provisioning finished on all of them."""
    changed: list[str] = []
    for ps in sets:
        if await _deny_on(ledger, ic, user_id, ps):
            changed.append(ps.name or ps.arn)
    provisioned_at = ledger.clock.now()
    # Read back: every set still carries the statement (another case's put since ours
    # is built from a policy that has it: they take turns).
    for ps in sets:
        policy = await ledger.call(
            "sso-admin.GetInlinePolicy", partial(ic.deny_policy, ps.arn, user_id)
        )
        if not policy.denies:
            raise TransientError("sso-admin", f"deny statement not read back on {ps.arn}")
    return changed, provisioned_at


async def _deny_on(
    ledger: Ledger, ic: IdentityCenter, user_id: str, ps: ReachablePermissionSet
) -> bool:
    """Merge the statement into one set's inline policy and provision it, then read it
    back; put it again if something dropped it meanwhile. Whether a put was sent.

    The read-merge-put and the provisioning's start hold the set's lock (every case,
    every replica): a put built from a stale read would drop another case's statement,
    and a provisioning started between someone's read and put would carry a policy that
    is about to change. The wait for provisioning runs without it."""
    label = ps.name or ps.arn
    put_sent = False
    for _ in range(REMERGE_ATTEMPTS):
        async with ledger.store.permission_set_lock(ps.arn):
            _, put = await ledger.mutate(
                operation="sso-admin.PutInlinePolicy",
                entry_key=f"deny-put:{ps.arn}",
                read=partial(ic.deny_policy, ps.arn, user_id),
                reached=lambda policy: policy.denies,
                act=ic.merge_deny,
                verify=False,  # read back below, after provisioning
                reread=True,  # GetInlinePolicy shows the put at once
            )
            put_sent = put_sent or "acted_at" in put
            # What makes the statement bite; repeating it is harmless. AWS runs one
            # provisioning of a set at a time: ConflictException is waited out (transient).
            request = await ledger.call(
                "sso-admin.ProvisionPermissionSet", partial(ic.provision, ps.arn)
            )
        await ledger.poll_until(
            f"sso-admin.DescribePermissionSetProvisioningStatus({label})",
            partial(ic.provisioned, request),
            bool,
        )
        policy = await ledger.call(
            "sso-admin.GetInlinePolicy", partial(ic.deny_policy, ps.arn, user_id)
        )
        if policy.denies:
            return put_sent
        log.warning("deny_statement_lost", permission_set=ps.arn)
    raise TransientError("sso-admin", f"deny statement not read back on {ps.arn}")


async def identity_center_deny_role_sessions(ctx: StepContext) -> Outcome:
    ic = ctx.providers.identity_center
    if (absent := _no_ic_user(ctx)) is not None:
        return absent
    user_id = await _ic_user_id(ctx)
    sets = await _reachable(ctx)
    changed, provisioned_at = await cover_with_deny(ctx.ledger, ic, user_id, sets)
    return Done(
        evidence={
            "ic_user_id": user_id,
            "deny_sid": deny_sid(user_id),
            "permission_sets": [ps.arn for ps in sets],
            "policies_changed": changed,
            "provisioned_at": utc_iso(provisioned_at),
            "verified_by": (
                f"GetInlinePolicyForPermissionSet shows {deny_sid(user_id)} on {len(sets)} "
                f"permission set(s); provisioning {REQUEST_SUCCEEDED}"
            ),
            "verified_at": utc_iso(ctx.clock.now()),
        }
    )


async def identity_center_background_sessions(ctx: StepContext) -> Outcome:
    """User background sessions: no API ends one user's (PutApplicationSessionConfiguration
    turns them off for everyone's new ones, and whether that ends running ones is not
    documented), so this step changes nothing and says which applications keep them and
    how to end them, rather than pretend they ended."""
    ic = ctx.providers.identity_center
    if (absent := _no_ic_user(ctx)) is not None:
        return absent
    user_id = await _ic_user_id(ctx)
    evidence: dict[str, Any] = {"ic_user_id": user_id, "ended_by_this_step": False}
    try:
        found = await ctx.call(
            "identity_center.applications", lambda: ic.reachable_applications(user_id)
        )
    except PermanentError as exc:
        evidence["applications"] = None
        evidence["verified_by"] = f"applications could not be read ({exc}): not covered"
        evidence["verified_at"] = utc_iso(ctx.clock.now())
        return Done(evidence=evidence)
    keeping = [a for a in found if a.background_sessions is not False]
    evidence["applications"] = [a.as_json() for a in keeping]
    evidence["how_to_end"] = [
        f"{a.name or a.arn}: stop {ctx.case.subject}'s running jobs and sessions in the "
        "application itself (e.g. SageMaker Studio spaces, EMR Studio, Glue interactive "
        "sessions); or set UserBackgroundSessionApplicationStatus DISABLED with "
        "PutApplicationSessionConfiguration, which affects every user of it"
        + ("" if a.background_sessions else " (its setting could not be read)")
        for a in keeping
    ]
    if keeping:
        log.warning("background_sessions_remain", applications=[a.name for a in keeping])
    evidence["verified_by"] = "GetApplicationSessionConfiguration: user background sessions " + (
        "enabled or unknown for " + ", ".join(a.name or a.arn for a in keeping)
        if keeping
        else f"disabled on all {len(found)} application(s)"
    )
    evidence["verified_at"] = utc_iso(ctx.clock.now())
    return Done(evidence=evidence)


async def identity_center_remove_access(ctx: StepContext) -> Outcome:
    ic = ctx.providers.identity_center
    if (absent := _no_ic_user(ctx)) is not None:
        return absent
    user_id = await _ic_user_id(ctx)
    direct = await ctx.call(
        "sso-admin.ListAccountAssignments", lambda: ic.assignments("USER", user_id)
    )
    # Deletes need no read first: one already done answers "not found", which the
    # adapter takes as done, so a repeat after a crash or a lost answer does no harm.
    for account, arn in direct:

        async def deleted(request: str | None, account: str = account) -> None:
            if request is not None:
                await ctx.ledger.poll_until(
                    f"sso-admin.DescribeAccountAssignmentDeletionStatus({account})",
                    partial(ic.assignment_deleted, request),
                    bool,
                )

        await ctx.ledger.once(
            "sso-admin.DeleteAccountAssignment",
            partial(ic.unassign, user_id, account, arn),
            entry_key=f"unassign:{account}:{arn}",
            settle=deleted,
        )
    memberships = await ctx.call(
        "identitystore.ListGroupMemberships", lambda: ic.group_memberships(user_id)
    )
    for membership_id, _group in memberships:
        await ctx.ledger.once(
            "identitystore.DeleteGroupMembership",
            partial(ic.leave_group, membership_id),
            entry_key=f"leave-group:{membership_id}",
        )
    # Read back: nothing of the user's own is left (group assignments stay: they are others' too).
    left = await ctx.call(
        "sso-admin.ListAccountAssignments", lambda: ic.assignments("USER", user_id)
    )
    groups = await ctx.call(
        "identitystore.ListGroupMemberships", lambda: ic.group_memberships(user_id)
    )
    if left or groups:
        raise TransientError(
            "identity-center",
            f"read-back still shows {len(left)} assignment(s), {len(groups)} group(s)",
        )
    return Done(
        evidence={
            "ic_user_id": user_id,
            "removed_assignments": [{"account": a, "permission_set": p} for a, p in direct],
            "left_groups": [g for _, g in memberships],
            "verified_by": "ListAccountAssignmentsForPrincipal(USER) and "
            "ListGroupMembershipsForMember read back empty",
            "verified_at": utc_iso(ctx.clock.now()),
        }
    )
