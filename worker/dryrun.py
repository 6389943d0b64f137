"""`offboard run PLAYBOOK --user X --dry-run`: a plan that reads, and changes nothing.

The person is resolved in every configured system exactly as a case's resolve step
would (worker/resolve.py), through a read path that records nothing; then what the
Identity Center user can reach is read, and the countdown that would start is computed
as if every automated step finished now. No store is opened and no mutating API is
called, so it works with read-only credentials (identitystore Get*/List*/Describe*,
sso-admin List*/Describe*/Get*, the IdP's user read).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from worker.actions import ACTIONS, DENY_ROLE_SESSIONS, REMOVE_ACCESS, Role
from worker.clock import Clock, utc_iso
from worker.countdown import (
    CountdownInputs,
    ReachableApplication,
    ReachablePermissionSet,
    SessionSettings,
    compute,
)
from worker.errors import PermanentError
from worker.playbook import Playbook
from worker.providers.base import IdentityCenter, IdentityCenterUser, IdentityProvider
from worker.report import countdown_text, plan_mark
from worker.resolve import Resolution, RetryingReader, resolve_person
from worker.retry import RetryPolicy
from worker.steps import read_inventory


@dataclass(frozen=True, kw_only=True)
class DryRun:
    playbook: Playbook
    subject: str
    at: datetime
    #: None when the resolve would halt the case (`halts` says why)
    resolution: Resolution | None
    halts: str | None
    #: the Identity Center user's state (the resolve finds only who)
    ic_state: IdentityCenterUser | None = None
    inventory: dict[str, Any] = field(default_factory=dict)
    countdown: dict[str, Any] | None = None
    #: per step: (step, the calls it would make as (method, target, mutates))
    plan: tuple[tuple[str, tuple[tuple[str, str, bool], ...]], ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "playbook": self.playbook.name,
            "subject": self.subject,
            "read_at": utc_iso(self.at),
            "person": (
                {**self.resolution.evidence(), "ic_status": self.ic_state and self.ic_state.status}
                if self.resolution
                else None
            ),
            "would_halt": self.halts,
            "permission_sets": self.inventory.get("permission_sets", []),
            "applications": self.inventory.get("applications", []),
            "countdown": self.countdown,
            "steps": [
                {
                    "step": line,
                    "calls": [{"method": m, "target": t, "mutates": w} for m, t, w in calls],
                }
                for line, calls in self.plan
            ],
        }

    def text(self) -> str:
        p = self.playbook
        lines = [f"dry run: playbook {p.name} ({p.source}) for {self.subject}"]
        lines.append(f"read at {utc_iso(self.at)}; nothing was changed and nothing recorded")
        r = self.resolution
        if r is None:
            lines.append(f"would HALT at the resolve step, before any change: {self.halts}")
        else:
            lines.append("the person now:")
            lines.append(
                f"  {r.idp_name}: user {r.idp_user.id} ({r.idp_user.login}), {r.idp_user.status}"
            )
            if r.ic_user is None:
                lines.append(f"  Identity Center: no user ({r.ic_searched})")
                lines.append("    the Identity Center steps would record: no AWS access through it")
            else:
                u = self.ic_state
                lines.append(
                    f"  Identity Center: user {r.ic_user.user_id}"
                    + (f" ({u.user_name}), {u.status}" if u else "")
                    + f", found by {r.ic_user.found_by}"
                )
                sets = self.inventory.get("permission_sets", [])
                for ps in sets:
                    lines.append(
                        f"    permission set {ps['name'] or ps['arn']} "
                        f"(session {ps['session_duration'] or 'unknown: 12 h counted'}): "
                        f"accounts {', '.join(ps['accounts'])} via {', '.join(ps['via'])}"
                    )
                if not sets:
                    lines.append("    no permission set reachable")
                apps = self.inventory.get("applications")
                if apps is None:
                    lines.append("    applications: could not be read")
                for app in apps or ():
                    lines.append(f"    application {app['name'] or app['arn']}")
        lines.append("the steps and the calls each would make:")
        for line, calls in self.plan:
            lines.append(line)
            for method, target, mutates in calls:
                lines.append(f"     {'WRITE' if mutates else 'read '} {method} {target}")
        if self.countdown is not None:
            lines.append("if every automated step finished now (the portal task unconfirmed):")
            lines.append(countdown_text(self.countdown, self.at))
        return "\n".join(lines)


async def dry_run(
    playbook: Playbook,
    subject: str,
    *,
    idp: IdentityProvider,
    ic: IdentityCenter,
    policy: RetryPolicy,
    clock: Clock,
    sessions: SessionSettings,
) -> DryRun:
    """Resolve `subject` and read what they reach, with reads only."""
    reader = RetryingReader(policy=policy, clock=clock)
    plan = tuple(
        (
            f"{n}. {s.id}: {s.action} (verify: {s.verify}){plan_mark(s)}",
            tuple(
                (c.method, c.target, c.mutates)
                for provider in _providers(s.action, idp, ic)
                for c in provider.plan(s.action, subject)
            ),
        )
        for n, s in enumerate(playbook.steps, start=1)
    )
    try:
        resolution = await resolve_person(reader, idp, ic, subject)
    except PermanentError as exc:
        return DryRun(
            playbook=playbook,
            subject=subject,
            at=clock.now(),
            resolution=None,
            halts=str(exc),
            plan=plan,
        )
    inventory: dict[str, Any] = {}
    countdown = None
    ic_state = None
    if resolution.ic_user is not None:
        user_id = resolution.ic_user.user_id
        ic_state = await reader.call("identitystore.DescribeUser", lambda: ic.get_user(user_id))
        inventory = await read_inventory(reader, ic, user_id)
        now = clock.now()
        actions = {s.action for s in playbook.steps}
        apps = inventory["applications"]
        countdown = compute(
            CountdownInputs(
                ic_disabled_at=now,
                permission_sets=tuple(
                    ReachablePermissionSet.from_json(p) for p in inventory["permission_sets"]
                ),
                unassigned_at=now if REMOVE_ACCESS.name in actions else None,
                deny_provisioned_at=now if DENY_ROLE_SESSIONS.name in actions else None,
                applications=(
                    None if apps is None else tuple(ReachableApplication.from_json(a) for a in apps)
                ),
            ),
            sessions,
        ).as_json()
    return DryRun(
        playbook=playbook,
        subject=subject,
        at=clock.now(),
        resolution=resolution,
        halts=None,
        ic_state=ic_state,
        inventory=inventory,
        countdown=countdown,
        plan=plan,
    )


def _providers(
    action: str, idp: IdentityProvider, ic: IdentityCenter
) -> tuple[IdentityProvider | IdentityCenter, ...]:
    role = ACTIONS[action].role
    if role is Role.EVERY:
        return (idp, ic)
    return (idp,) if role is Role.IDP else (ic,)
