"""What each playbook action does: act, then verify by reading the state back.

Every mutation goes through `guarded_mutation`: read first (a goal already
reached is not acted on again), write the ledger intent, call, mark it applied,
then poll the read-back until it shows the goal. After a `kill -9` between the
call and the ledger update, the read-first step finds the effect and does not
repeat the call.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import structlog

from worker.clock import Clock, utc_iso
from worker.countdown import ReachablePermissionSet
from worker.domain import Case, LedgerState, OperatorTask, PlannedStep, StepRecord
from worker.errors import PermanentError, TransientError
from worker.providers.base import IdentityCenter, IdentityCenterUser, IdentityProvider, IdpUser
from worker.retry import RetryPolicy, with_retry
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
    facts: dict[str, Any] = field(default_factory=dict)

    async def call(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        return await with_retry(call, self.policy, self.clock, operation=operation)

    def ledger_key(self, operation: str) -> str:
        return f"{self.case.id}:{self.step.id}:{operation}"

    def earlier_fact(self, key: str) -> Any:
        for evidence in self.earlier.values():
            if key in evidence:
                return evidence[key]
        return None


async def poll_until(
    ctx: StepContext,
    operation: str,
    read: Callable[[], Awaitable[T]],
    reached: Callable[[T], bool],
) -> tuple[T, int]:
    """Read until `reached`, for at most the verify timeout; returns the last read and count."""
    deadline = ctx.clock.now().timestamp() + ctx.verify_timeout
    reads = 0
    while True:
        value = await ctx.call(operation, read)
        reads += 1
        if reached(value):
            return value, reads
        if ctx.clock.now().timestamp() >= deadline:
            raise TransientError(
                operation.split(".")[0],
                f"{operation}: read-back did not show the change within "
                f"{ctx.verify_timeout:.0f} s (last read: {value})",
            )
        await ctx.clock.sleep(ctx.verify_interval)


async def guarded_mutation(
    ctx: StepContext,
    *,
    operation: str,
    read: Callable[[], Awaitable[T]],
    reached: Callable[[T], bool],
    act: Callable[[], Awaitable[None]],
    fresh: T | None = None,
) -> tuple[T, dict[str, Any]]:
    """Read, act only if needed (write-ahead ledger around the call), verify by read-back.

    `fresh` is a read this step made a moment ago (looking the person up returns their
    state): it serves as the read before acting, instead of asking again."""
    before = fresh if fresh is not None else await ctx.call(f"{operation}.read", read)
    key = ctx.ledger_key(operation)
    entry = await ctx.store.ledger_get(key)
    evidence: dict[str, Any] = {}
    if reached(before):
        evidence["acted"] = False
        evidence["note"] = (
            "already in the target state when read; no call made"
            if entry is None
            else "the earlier call had taken effect; not repeated"
        )
        if entry is not None and entry.state is LedgerState.INTENT:
            await ctx.store.ledger_applied(key, ctx.clock.now())
        return before, evidence
    if entry is not None and entry.state is LedgerState.APPLIED:
        # Applied but not visible yet: wait for read-back, never call twice.
        evidence["note"] = "call applied earlier; waiting for read-back"
    else:
        await ctx.store.ledger_intent(key, ctx.case.id, ctx.step.id, operation, ctx.clock.now())
        await ctx.call(operation, act)
        applied = await ctx.store.ledger_applied(key, ctx.clock.now())
        evidence["acted_at"] = utc_iso(applied.applied_at or ctx.clock.now())
    evidence["acted"] = True
    after, reads = await poll_until(ctx, f"{operation}.verify", read, reached)
    evidence["read_back_count"] = reads
    return after, evidence


async def _idp_user_id(ctx: StepContext) -> str:
    user_id, _ = await _idp_user(ctx)
    return user_id


async def _idp_user(ctx: StepContext) -> tuple[str, IdpUser | None]:
    """The user's IdP id, and their state when the lookup had to read it just now."""
    known = ctx.earlier_fact("idp_user_id") or ctx.record.evidence.get("idp_user_id")
    if known:
        return str(known), None
    user = await ctx.call("idp.find_user", lambda: ctx.providers.idp.find_user(ctx.case.subject))
    return user.id, user


async def idp_deactivate_user(ctx: StepContext) -> Outcome:
    idp = ctx.providers.idp
    user_id, fresh = await _idp_user(ctx)
    user, evidence = await guarded_mutation(
        ctx,
        operation=f"{idp.name}.deactivate",
        read=lambda: idp.get_user(user_id),
        reached=lambda u: u.deactivated,
        act=lambda: idp.deactivate_user(user_id),
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
    key = ctx.ledger_key(operation)
    entry = await ctx.store.ledger_get(key)
    evidence: dict[str, Any] = {"idp": idp.name, "idp_user_id": user_id}
    if entry is not None and entry.state is LedgerState.APPLIED:
        evidence["note"] = "revocation applied earlier; not repeated"
        evidence["acted_at"] = utc_iso(entry.applied_at or entry.requested_at)
    else:
        # Idempotent on the provider's side: repeating after a crash ends no more than once.
        await ctx.store.ledger_intent(key, ctx.case.id, ctx.step.id, operation, ctx.clock.now())
        await ctx.call(operation, lambda: idp.revoke_sessions(user_id))
        applied = await ctx.store.ledger_applied(key, ctx.clock.now())
        evidence["acted_at"] = utc_iso(applied.applied_at or ctx.clock.now())
    # No provider lists a user's sessions; what can be read back is that the user
    # is still deactivated, so no session can be started again.
    user, _ = await poll_until(
        ctx, f"{operation}.verify", lambda: idp.get_user(user_id), lambda u: u.deactivated
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
    user_id, fresh = await _ic_user(ctx)
    base = {"ic_user_id": user_id, "identity_source": ic.identity_source}
    if ic.identity_source == "directory":
        return await _console_disable(ctx, user_id, base)
    user, evidence = await guarded_mutation(
        ctx,
        operation="identity_center.disable",
        read=lambda: ic.get_user(user_id),
        reached=lambda u: u.disabled,
        act=lambda: ic.disable_user(user_id),
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
            "permission_sets": await _inventory(ctx, user_id),
        }
    )


async def _inventory(ctx: StepContext, user_id: str) -> list[dict[str, Any]]:
    """What the user can still reach, read right after the disable (before any removal):
    the countdown's input, kept as evidence of why its times were chosen."""
    ic = ctx.providers.identity_center
    sets = await ctx.call(
        "identity_center.inventory", lambda: ic.reachable_permission_sets(user_id)
    )
    return [ps.as_json() for ps in sets]


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
                "permission_sets": await _inventory(ctx, user_id),
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
        user, _ = await poll_until(
            ctx, "identitystore.DescribeUser", lambda: ic.get_user(user_id), lambda u: u.disabled
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
            "permission_sets": await _inventory(ctx, user_id),
        }
    )


async def identity_center_portal_sessions(ctx: StepContext) -> Outcome:
    ic = ctx.providers.identity_center
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


StepHandler = Callable[[StepContext], Awaitable[Outcome]]

HANDLERS: dict[str, StepHandler] = {
    "idp.deactivate_user": idp_deactivate_user,
    "idp.revoke_sessions": idp_revoke_sessions,
    "identity_center.disable_user": identity_center_disable_user,
    "identity_center.portal_sessions": identity_center_portal_sessions,
}


def handler_for(action: str) -> StepHandler:
    try:
        return HANDLERS[action]
    except KeyError:
        raise PermanentError("playbook", f"no handler for action {action!r}") from None


# --- hardening: cut role sessions early, remove access -------------------------------

#: AWS's limit on one permission set's inline policy
INLINE_POLICY_LIMIT = 32_768


def deny_sid(user_id: str) -> str:
    # Sids are alphanumeric; the user id makes the statement ours and findable.
    return "OffboardDeny" + "".join(c for c in user_id if c.isalnum())


def deny_statement(user_id: str) -> dict[str, Any]:
    # identitystore:userId is stable; aws:userid changes when the user name changes.
    return {
        "Sid": deny_sid(user_id),
        "Effect": "Deny",
        "Action": "*",
        "Resource": "*",
        "Condition": {"StringEquals": {"identitystore:userId": user_id}},
    }


def _policy(text: str, arn: str) -> dict[str, Any]:
    if not text.strip():
        return {"Version": "2012-10-17", "Statement": []}
    try:
        policy = json.loads(text)
    except ValueError:
        raise PermanentError("sso-admin", f"inline policy of {arn} is not JSON") from None
    statements = policy.get("Statement", [])
    policy["Statement"] = [statements] if isinstance(statements, dict) else list(statements)
    return dict(policy)


def merge_deny(text: str, user_id: str, arn: str) -> str | None:
    """The inline policy with our deny statement added, or None if it is already there."""
    policy = _policy(text, arn)
    if any(s.get("Sid") == deny_sid(user_id) for s in policy["Statement"]):
        return None
    policy["Statement"].append(deny_statement(user_id))
    merged = json.dumps(policy, separators=(",", ":"))
    if len(merged.encode()) > INLINE_POLICY_LIMIT:
        raise PermanentError(
            "sso-admin",
            f"adding the deny statement to {arn} would make its inline policy "
            f"{len(merged.encode())} bytes, over AWS's {INLINE_POLICY_LIMIT}: shorten the policy "
            "or cut role sessions with an SCP instead",
        )
    return merged


def remove_deny(text: str, user_id: str, arn: str) -> str | None:
    """The inline policy without our statement ("" if nothing is left), None if absent."""
    policy = _policy(text, arn)
    kept = [s for s in policy["Statement"] if s.get("Sid") != deny_sid(user_id)]
    if len(kept) == len(policy["Statement"]):
        return None
    if not kept:
        return ""
    policy["Statement"] = kept
    return json.dumps(policy, separators=(",", ":"))


async def _reachable(ctx: StepContext, user_id: str) -> list[ReachablePermissionSet]:
    known = ctx.earlier_fact("permission_sets")
    if known is not None:
        return [ReachablePermissionSet.from_json(p) for p in known]
    ic = ctx.providers.identity_center
    return await ctx.call(
        "identity_center.inventory", lambda: ic.reachable_permission_sets(user_id)
    )


async def _await_request(
    ctx: StepContext, operation: str, read: Callable[[], Awaitable[tuple[str, str]]]
) -> None:
    """Poll an asynchronous AWS request until it succeeds; a FAILED one halts."""
    (status, reason), _ = await poll_until(
        ctx, operation, read, lambda answer: answer[0] in ("SUCCEEDED", "FAILED")
    )
    if status == "FAILED":
        raise PermanentError("sso-admin", f"{operation} FAILED: {reason or 'no reason given'}")


async def identity_center_deny_role_sessions(ctx: StepContext) -> Outcome:
    ic = ctx.providers.identity_center
    user_id = await _ic_user_id(ctx)
    sets = await _reachable(ctx, user_id)
    changed: list[str] = []
    for ps in sets:
        current = await ctx.call("sso-admin.GetInlinePolicy", partial(ic.inline_policy, ps.arn))
        merged = merge_deny(current, user_id, ps.arn)
        if merged is not None:
            key = ctx.ledger_key(f"deny-put:{ps.arn}")
            await ctx.store.ledger_intent(
                key, ctx.case.id, ctx.step.id, "deny-put", ctx.clock.now()
            )
            await ctx.call(
                "sso-admin.PutInlinePolicy",
                partial(ic.put_inline_policy, ps.arn, merged),
            )
            await ctx.store.ledger_applied(key, ctx.clock.now())
            changed.append(ps.name or ps.arn)
        # Provisioning is what makes the statement bite; repeating it is harmless.
        request = await ctx.call("sso-admin.ProvisionPermissionSet", partial(ic.provision, ps.arn))
        await _await_request(
            ctx,
            f"sso-admin.DescribePermissionSetProvisioningStatus({ps.name or ps.arn})",
            partial(ic.provisioning_status, request),
        )
    provisioned_at = ctx.clock.now()
    # Read back: every reachable set carries the statement.
    for ps in sets:
        policy = await ctx.call("sso-admin.GetInlinePolicy", partial(ic.inline_policy, ps.arn))
        if merge_deny(policy, user_id, ps.arn) is not None:
            raise TransientError("sso-admin", f"deny statement not read back on {ps.arn}")
    return Done(
        evidence={
            "ic_user_id": user_id,
            "deny_sid": deny_sid(user_id),
            "permission_sets": [ps.arn for ps in sets],
            "policies_changed": changed,
            "provisioned_at": utc_iso(provisioned_at),
            "verified_by": (
                f"GetInlinePolicyForPermissionSet shows {deny_sid(user_id)} on {len(sets)} "
                "permission set(s); provisioning SUCCEEDED"
            ),
            "verified_at": utc_iso(ctx.clock.now()),
        }
    )


async def identity_center_remove_access(ctx: StepContext) -> Outcome:
    ic = ctx.providers.identity_center
    user_id = await _ic_user_id(ctx)
    direct = await ctx.call(
        "sso-admin.ListAccountAssignments", lambda: ic.assignments("USER", user_id)
    )
    for account, arn in direct:
        key = ctx.ledger_key(f"unassign:{account}:{arn}")
        entry = await ctx.store.ledger_get(key)
        if entry is not None and entry.state is LedgerState.APPLIED:
            continue
        await ctx.store.ledger_intent(key, ctx.case.id, ctx.step.id, "unassign", ctx.clock.now())
        try:
            request = await ctx.call(
                "sso-admin.DeleteAccountAssignment",
                partial(ic.delete_assignment, user_id, account, arn),
            )
        except PermanentError as exc:
            if exc.code != "ResourceNotFoundException":
                raise
        else:
            await _await_request(
                ctx,
                f"sso-admin.DescribeAccountAssignmentDeletionStatus({account})",
                partial(ic.deletion_status, request),
            )
        await ctx.store.ledger_applied(key, ctx.clock.now())
    memberships = await ctx.call(
        "identitystore.ListGroupMemberships", lambda: ic.group_memberships(user_id)
    )
    for membership_id, _group in memberships:
        key = ctx.ledger_key(f"leave-group:{membership_id}")
        await ctx.store.ledger_intent(key, ctx.case.id, ctx.step.id, "leave-group", ctx.clock.now())
        try:
            await ctx.call(
                "identitystore.DeleteGroupMembership",
                partial(ic.delete_membership, membership_id),
            )
        except PermanentError as exc:
            if exc.code != "ResourceNotFoundException":
                raise
        await ctx.store.ledger_applied(key, ctx.clock.now())
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


HANDLERS["identity_center.deny_role_sessions"] = identity_center_deny_role_sessions
HANDLERS["identity_center.remove_access"] = identity_center_remove_access
