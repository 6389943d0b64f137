"""The residual-access countdown: when a contained person's last possible access ends.

Disabling a user does not end access that already exists (DESIGN.md, seeds 002/004).
From the times the containment steps were verified and the user's real permission
sets, this computes the milestones. Every input time is the moment the worker saw
the change confirmed, which is never earlier than the change itself, so every
milestone is an upper bound: the promise is "never earlier than the truth".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from worker.clock import parse_iso, utc_iso

HOUR = timedelta(hours=1)


class CountdownInput(StrEnum):
    """The evidence the countdown reads, by what it gives (worker/actions.py says which
    action's evidence gives which input)."""

    #: t_ic (`verified_at`) and the permission sets reachable right after it
    IC_DISABLED = "ic_disabled"
    #: t_portal_revoked (`confirmed_at`)
    PORTAL_REVOKED = "portal_revoked"
    #: t_unassigned (`verified_at`)
    UNASSIGNED = "unassigned"
    #: t_deny_provisioned (`provisioned_at`)
    DENY_PROVISIONED = "deny_provisioned"


@dataclass(frozen=True, kw_only=True)
class SessionSettings:
    """AWS's documented durations; configuration, because AWS may change them."""

    #: a disabled user's sign-in session stays cached (and usable) this long
    signin_cache: timedelta = HOUR
    #: the CLI keeps working this long after its portal session is deleted
    cli_lag: timedelta = HOUR
    #: an application session lives this long after its last refresh
    app_session_cache: timedelta = HOUR
    #: removal of an assignment or membership reaches every region within this
    unassign_propagation: timedelta = timedelta(minutes=15)
    #: a provisioned deny statement takes effect within this
    deny_propagation: timedelta = timedelta(minutes=15)
    #: a permission set whose duration cannot be read counts as the maximum
    max_role_session: timedelta = timedelta(hours=12)


@dataclass(frozen=True, kw_only=True)
class ReachablePermissionSet:
    arn: str
    name: str
    #: None when it could not be read: counts as the 12 h maximum
    session_duration: timedelta | None
    accounts: tuple[str, ...]
    #: how the user reaches it: "USER" (direct) or "GROUP:<group id>"
    via: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "arn": self.arn,
            "name": self.name,
            "session_duration": iso_duration(self.session_duration),
            "accounts": list(self.accounts),
            "via": list(self.via),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReachablePermissionSet:
        duration = data.get("session_duration")
        return cls(
            arn=data["arn"],
            name=data.get("name", ""),
            session_duration=parse_iso_duration(duration) if duration else None,
            accounts=tuple(data.get("accounts", ())),
            via=tuple(data.get("via", ())),
        )


@dataclass(frozen=True, kw_only=True)
class CountdownInputs:
    ic_disabled_at: datetime
    permission_sets: tuple[ReachablePermissionSet, ...]
    portal_revoked_at: datetime | None = None
    unassigned_at: datetime | None = None
    deny_provisioned_at: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class Milestone:
    name: str
    at: datetime
    meaning: str


@dataclass(frozen=True, kw_only=True)
class Countdown:
    milestones: tuple[Milestone, ...]
    inputs: CountdownInputs
    settings: SessionSettings
    #: why the role-session milestone is what it is, in words
    reasons: tuple[str, ...]
    #: what the operator could still do to end access sooner
    would_shorten: tuple[str, ...]
    #: what this model cannot see, said out loud
    out_of_model: tuple[str, ...] = field(
        default=(
            "credentials minted from a live session (IAM access keys, role chaining into "
            "other roles) are not ended by any of these steps",
            "role sessions issued from assignments removed before this case began",
        )
    )

    @property
    def all_lapsed(self) -> datetime:
        return self.milestone("all-lapsed").at

    def milestone(self, name: str) -> Milestone:
        return next(m for m in self.milestones if m.name == name)

    def as_json(self) -> dict[str, Any]:
        i = self.inputs
        return {
            "milestones": [
                {"name": m.name, "at": utc_iso(m.at), "meaning": m.meaning} for m in self.milestones
            ],
            "inputs": {
                "ic_disabled_at": utc_iso(i.ic_disabled_at),
                "portal_revoked_at": _opt(i.portal_revoked_at),
                "unassigned_at": _opt(i.unassigned_at),
                "deny_provisioned_at": _opt(i.deny_provisioned_at),
                "permission_sets": [p.as_json() for p in i.permission_sets],
            },
            "settings": {
                "signin_cache": iso_duration(self.settings.signin_cache),
                "cli_lag": iso_duration(self.settings.cli_lag),
                "app_session_cache": iso_duration(self.settings.app_session_cache),
                "unassign_propagation": iso_duration(self.settings.unassign_propagation),
                "deny_propagation": iso_duration(self.settings.deny_propagation),
                "max_role_session": iso_duration(self.settings.max_role_session),
            },
            "reasons": list(self.reasons),
            "would_shorten": list(self.would_shorten),
            "out_of_model": list(self.out_of_model),
        }


def compute(inputs: CountdownInputs, settings: SessionSettings) -> Countdown:
    i, s = inputs, settings
    new_app_end = i.ic_disabled_at + s.signin_cache
    reasons = [f"sign-in sessions stay cached {_h(s.signin_cache)} after the disable"]
    if i.portal_revoked_at is not None and i.portal_revoked_at + s.cli_lag < new_app_end:
        new_app_end = i.portal_revoked_at + s.cli_lag
        reasons.append(f"portal sessions deleted: the CLI stops within {_h(s.cli_lag)}")
    new_role_end = new_app_end
    if i.unassigned_at is not None and i.unassigned_at + s.unassign_propagation < new_role_end:
        new_role_end = i.unassigned_at + s.unassign_propagation
        reasons.append("assignments removed: no new role sessions after propagation")

    apps_lapse = new_app_end + s.app_session_cache
    longest, longest_name = _longest_session(i.permission_sets, s)
    roles_lapse = new_role_end + longest
    if i.permission_sets:
        reasons.append(f"longest reachable role session: {longest_name} ({_h(longest)})")
    else:
        reasons.append("no permission set reachable: no role session can outlive new sessions")
    if i.deny_provisioned_at is not None and i.permission_sets:
        deny_end = i.deny_provisioned_at + s.deny_propagation
        if deny_end < roles_lapse:
            roles_lapse = deny_end
            reasons.append(
                f"deny statement provisioned on every reachable permission set: "
                f"role sessions cut {_h(s.deny_propagation)} after provisioning"
            )
    all_lapsed = max(apps_lapse, roles_lapse)

    shorten: list[str] = []
    if i.deny_provisioned_at is None and i.permission_sets:
        shorten.append(
            "run identity_center.deny_role_sessions: role sessions would end about "
            f"{_h(s.deny_propagation)} after provisioning instead of at {utc_iso(roles_lapse)}"
        )
    if i.unassigned_at is None and i.permission_sets:
        shorten.append(
            "run identity_center.remove_access: no new role sessions "
            f"{_h(s.unassign_propagation)} after removal"
        )
    milestones = (
        Milestone(
            name="new-sessions-end",
            at=new_app_end,
            meaning="no new application or AWS role session can start",
        ),
        Milestone(
            name="applications-lapse",
            at=apps_lapse,
            meaning="every application session has ended",
        ),
        Milestone(
            name="role-sessions-lapse",
            at=roles_lapse,
            meaning="every AWS account (role) session has ended",
        ),
        Milestone(
            name="all-lapsed", at=all_lapsed, meaning="no access through Identity Center remains"
        ),
    )
    return Countdown(
        milestones=milestones,
        inputs=inputs,
        settings=settings,
        reasons=tuple(reasons),
        would_shorten=tuple(shorten),
    )


def _longest_session(
    sets: tuple[ReachablePermissionSet, ...], settings: SessionSettings
) -> tuple[timedelta, str]:
    longest, name = timedelta(0), "none"
    for ps in sets:
        duration = ps.session_duration or settings.max_role_session
        if duration > longest:
            longest, name = duration, ps.name or ps.arn
    return longest, name


def _opt(when: datetime | None) -> str | None:
    return None if when is None else utc_iso(when)


def _h(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes % 60 == 0:
        return f"{minutes // 60} h"
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


def parse_iso_duration(text: str) -> timedelta:
    """ISO-8601 durations as AWS writes SessionDuration: PT1H, PT12H, PT90M, PT1H30M."""
    if not text.startswith("PT"):
        raise ValueError(f"not an ISO-8601 time duration: {text!r}")
    rest, total, number = text[2:], 0.0, ""
    units = {"H": 3600, "M": 60, "S": 1}
    for char in rest:
        if char.isdigit() or char == ".":
            number += char
        elif char in units and number:
            total += float(number) * units[char]
            number = ""
        else:
            raise ValueError(f"not an ISO-8601 time duration: {text!r}")
    if number or total <= 0:
        raise ValueError(f"not an ISO-8601 time duration: {text!r}")
    return timedelta(seconds=total)


def iso_duration(delta: timedelta | None) -> str | None:
    if delta is None:
        return None
    seconds = int(delta.total_seconds())
    hours, rem = divmod(seconds, 3600)
    minutes, secs = divmod(rem, 60)
    text = "PT" + (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
    return text + (f"{secs}S" if secs or text == "PT" else "")


def inputs_from_json(data: dict[str, Any]) -> CountdownInputs:
    def opt(key: str) -> datetime | None:
        value = data.get(key)
        return parse_iso(value) if value else None

    return CountdownInputs(
        ic_disabled_at=parse_iso(data["ic_disabled_at"]),
        permission_sets=tuple(ReachablePermissionSet.from_json(p) for p in data["permission_sets"]),
        portal_revoked_at=opt("portal_revoked_at"),
        unassigned_at=opt("unassigned_at"),
        deny_provisioned_at=opt("deny_provisioned_at"),
    )


def inputs_from_evidence(
    evidence: dict[str, dict[str, Any]], drift: dict[str, Any] | None = None
) -> CountdownInputs | None:
    """Countdown inputs from the evidence of the case's done steps, keyed by the
    CountdownInput each gives.

    After drift (the user was re-enabled and disabled again) the countdown restarts
    from the new disable; portal revocation, removal and deny are not trusted from
    before the drift, because whoever re-enabled the user may have undone them."""
    disable = evidence.get(CountdownInput.IC_DISABLED)
    if not disable or "verified_at" not in disable:
        return None
    sets = [ReachablePermissionSet.from_json(p) for p in disable.get("permission_sets", [])]
    ic_disabled_at = parse_iso(disable["verified_at"])

    def at(given: CountdownInput, key: str) -> datetime | None:
        found = evidence.get(given, {}).get(key)
        return parse_iso(found) if found else None

    portal = at(CountdownInput.PORTAL_REVOKED, "confirmed_at")
    unassigned = at(CountdownInput.UNASSIGNED, "verified_at")
    deny = at(CountdownInput.DENY_PROVISIONED, "provisioned_at")
    if drift:
        ic_disabled_at = max(ic_disabled_at, parse_iso(drift["redisabled_at"]))
        sets = [ReachablePermissionSet.from_json(p) for p in drift.get("permission_sets", [])]
        portal = unassigned = deny = None
    return CountdownInputs(
        ic_disabled_at=ic_disabled_at,
        permission_sets=tuple(sets),
        portal_revoked_at=portal,
        unassigned_at=unassigned,
        deny_provisioned_at=deny,
    )
