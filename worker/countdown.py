"""The residual-access countdown: when a contained person's last possible access ends.

Disabling a user does not end access that already exists (docs/architecture.md).
From the times the containment steps were verified and the user's real permission
sets, this computes the milestones. Every input time is the moment the worker saw
the change confirmed, which is never earlier than the change itself, so every
milestone is an upper bound: the promise is "never earlier than the truth".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
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


#: The case events that carry countdown inputs besides the steps' evidence.
#: A re-read of the inventory until new sessions end (`permission_sets`, `applications`).
INVENTORY_READ = "inventory_read"
#: The deny statement provisioned on sets found after the deny step.
DENY_EXTENDED = "deny_extended"


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
    #: user background sessions (AWS managed applications with trusted identity
    #: propagation) live this long: AWS's default; an instance setting no API reads
    background_session: timedelta = timedelta(days=7)
    #: how often the reachable permission sets are read again until new sessions end
    reread_interval: timedelta = timedelta(minutes=5)


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
class ReachableApplication:
    """An Identity Center application the user is assigned to (directly or through a
    group), and whether it keeps user background sessions."""

    arn: str
    name: str
    #: UserBackgroundSessionApplicationStatus: True ENABLED, False DISABLED, None unread
    background_sessions: bool | None
    #: how the user reaches it: "USER" (direct) or "GROUP:<group id>"
    via: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "arn": self.arn,
            "name": self.name,
            "background_sessions": self.background_sessions,
            "via": list(self.via),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReachableApplication:
        return cls(
            arn=data["arn"],
            name=data.get("name", ""),
            background_sessions=data.get("background_sessions"),
            via=tuple(data.get("via", ())),
        )


def union_sets(
    *reads: tuple[ReachablePermissionSet, ...] | list[ReachablePermissionSet],
) -> tuple[ReachablePermissionSet, ...]:
    """Every permission set any read saw, each with the longest duration any read gave
    it (an unreadable one, None, counts as the longest) and every account and path:
    a set that was reachable once may have issued a session then."""
    merged: dict[str, ReachablePermissionSet] = {}
    for read in reads:
        for ps in read:
            seen = merged.get(ps.arn)
            if seen is None:
                merged[ps.arn] = ps
                continue
            longest = (
                None
                if seen.session_duration is None or ps.session_duration is None
                else max(seen.session_duration, ps.session_duration)
            )
            merged[ps.arn] = ReachablePermissionSet(
                arn=ps.arn,
                name=ps.name or seen.name,
                session_duration=longest,
                accounts=tuple(sorted({*seen.accounts, *ps.accounts})),
                via=tuple(sorted({*seen.via, *ps.via})),
            )
    return tuple(merged[arn] for arn in sorted(merged))


@dataclass(frozen=True, kw_only=True)
class CountdownInputs:
    ic_disabled_at: datetime
    #: every set any read saw until new sessions could no longer start (union_sets)
    permission_sets: tuple[ReachablePermissionSet, ...]
    portal_revoked_at: datetime | None = None
    unassigned_at: datetime | None = None
    #: when the deny statement was last provisioned on *every* set in permission_sets;
    #: None while any of them lacks it
    deny_provisioned_at: datetime | None = None
    #: the applications the user is assigned to; None: they could not be read
    applications: tuple[ReachableApplication, ...] | None = ()
    #: an earlier epoch's all-lapsed (before a re-enable): never report earlier
    floor: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class Milestone:
    name: str
    at: datetime
    meaning: str


#: Said on every countdown: what no step of this tool ends or can see.
NOT_COVERED = (
    "credentials minted from a live session (IAM access keys, role chaining into "
    "other roles) are not ended by any of these steps",
    "role sessions issued from assignments removed before this case began, or under a "
    "session duration lowered before the first read",
    "customer-managed SAML/OIDC applications keep their own sessions, which Identity "
    "Center cannot end: end them in each application",
)


@dataclass(frozen=True, kw_only=True)
class Countdown:
    milestones: tuple[Milestone, ...]
    inputs: CountdownInputs
    settings: SessionSettings
    #: why the milestones are what they are, in words
    reasons: tuple[str, ...]
    #: what the operator could still do to end access sooner
    would_shorten: tuple[str, ...]
    #: what this model cannot see or does not bound, said out loud
    out_of_model: tuple[str, ...] = NOT_COVERED
    #: when role sessions end even if no deny statement had ever been provisioned:
    #: the earliest moment the deny may be taken off (None: no permission set)
    deny_removable_at: datetime | None = None

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
                "applications": (
                    None if i.applications is None else [a.as_json() for a in i.applications]
                ),
                "floor": _opt(i.floor),
            },
            "settings": {
                "signin_cache": iso_duration(self.settings.signin_cache),
                "cli_lag": iso_duration(self.settings.cli_lag),
                "app_session_cache": iso_duration(self.settings.app_session_cache),
                "unassign_propagation": iso_duration(self.settings.unassign_propagation),
                "deny_propagation": iso_duration(self.settings.deny_propagation),
                "max_role_session": iso_duration(self.settings.max_role_session),
                "background_session": iso_duration(self.settings.background_session),
                "reread_interval": iso_duration(self.settings.reread_interval),
            },
            "reasons": list(self.reasons),
            "would_shorten": list(self.would_shorten),
            "out_of_model": list(self.out_of_model),
            "deny_removable_at": _opt(self.deny_removable_at),
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
        unread = [ps.name or ps.arn for ps in i.permission_sets if ps.session_duration is None]
        if unread:
            reasons.append(
                f"session duration unreadable for {', '.join(unread)}: counted as the "
                f"{_h(s.max_role_session)} maximum"
            )
    else:
        reasons.append("no permission set reachable: no role session can outlive new sessions")
    deny_removable_at = roles_lapse if i.permission_sets else None
    if i.deny_provisioned_at is not None and i.permission_sets:
        deny_end = i.deny_provisioned_at + s.deny_propagation
        if deny_end < roles_lapse:
            roles_lapse = deny_end
            reasons.append(
                f"deny statement provisioned on every reachable permission set: "
                f"role sessions cut {_h(s.deny_propagation)} after provisioning"
            )
    lapses = [apps_lapse, roles_lapse]

    not_covered = list(NOT_COVERED)
    milestones = [
        Milestone(
            name="new-sessions-end",
            at=new_app_end,
            meaning="no new application or AWS role session can start",
        ),
        Milestone(
            name="applications-lapse",
            at=apps_lapse,
            meaning=(
                "every session of an Identity Center-managed application (the access "
                "portal, AWS managed applications) has ended"
            ),
        ),
        Milestone(
            name="role-sessions-lapse",
            at=roles_lapse,
            meaning="every AWS account (role) session has ended",
        ),
    ]
    if i.applications is None:
        not_covered.append(
            "user background sessions: the user's applications could not be read, so "
            "background sessions (up to 90 days) are not bounded here"
        )
    else:
        background = [a for a in i.applications if a.background_sessions]
        unknown = [a for a in i.applications if a.background_sessions is None]
        if background:
            bg_lapse = new_app_end + s.background_session
            lapses.append(bg_lapse)
            names = ", ".join(a.name or a.arn for a in background)
            reasons.append(
                f"user background sessions enabled for {names}: they outlive sign-out "
                f"by up to {_h(s.background_session)} (the configured instance setting)"
            )
            milestones.append(
                Milestone(
                    name="background-sessions-lapse",
                    at=bg_lapse,
                    meaning=(
                        "every user background session (AWS managed applications with "
                        "trusted identity propagation) has ended"
                    ),
                )
            )
        if unknown:
            not_covered.append(
                "user background sessions of "
                + ", ".join(a.name or a.arn for a in unknown)
                + ": their session configuration could not be read"
            )
    all_lapsed = max(lapses)
    if i.floor is not None and i.floor > all_lapsed:
        all_lapsed = i.floor
        reasons.append("an earlier disable's countdown ends later: kept as the floor")
    milestones.append(
        Milestone(
            name="all-lapsed", at=all_lapsed, meaning="no access through Identity Center remains"
        )
    )

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
    return Countdown(
        milestones=tuple(milestones),
        inputs=inputs,
        settings=settings,
        reasons=tuple(reasons),
        would_shorten=tuple(shorten),
        out_of_model=tuple(not_covered),
        deny_removable_at=deny_removable_at,
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
    """ISO-8601 durations as AWS and the configuration write them: PT1H, PT12H, PT90M,
    PT1H30M, P7D, P1DT12H (days, hours, minutes, seconds; no years or months)."""
    match = _DURATION.fullmatch(text)
    if match is None or not any(match.groups()) or text.endswith("T"):
        raise ValueError(f"not an ISO-8601 duration: {text!r}")
    days, hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    total = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    if total <= timedelta(0):
        raise ValueError(f"not an ISO-8601 duration: {text!r}")
    return total


_DURATION = re.compile(
    r"P(?:(\d+(?:\.\d+)?)D)?(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?"
)


def parse_session_duration(value: object) -> timedelta | None:
    """A permission set's SessionDuration in any shape AWS or an emulator gives it: an
    ISO-8601 text (AWS: "PT4H") or a number of seconds (moto: 3600, "3600"). None when
    it cannot be read: the countdown then takes the maximum and says so."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return timedelta(seconds=value) if value > 0 else None
    text = str(value).strip()
    try:
        return parse_iso_duration(text)
    except ValueError:
        pass
    try:
        seconds = float(text)
    except ValueError:
        return None
    return timedelta(seconds=seconds) if seconds > 0 else None


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

    apps = data.get("applications", [])
    return CountdownInputs(
        ic_disabled_at=parse_iso(data["ic_disabled_at"]),
        permission_sets=tuple(ReachablePermissionSet.from_json(p) for p in data["permission_sets"]),
        portal_revoked_at=opt("portal_revoked_at"),
        unassigned_at=opt("unassigned_at"),
        deny_provisioned_at=opt("deny_provisioned_at"),
        applications=None
        if apps is None
        else tuple(ReachableApplication.from_json(a) for a in apps),
        floor=opt("floor"),
    )


def inputs_from_evidence(
    evidence: dict[str, dict[str, Any]],
    drift: dict[str, Any] | None = None,
    reads: Sequence[dict[str, Any]] = (),
    deny_extensions: Sequence[dict[str, Any]] = (),
) -> CountdownInputs | None:
    """Countdown inputs from the evidence of the case's done steps, keyed by the
    CountdownInput each gives, and the inventory read again since (`reads`: each with
    `permission_sets` and `applications`, as the disable's evidence writes them).

    The permission sets are the union of every read of every epoch: a set reachable
    once may have issued a session then. `deny_extensions` are the later provisionings
    that covered sets found after the deny step (`permission_sets`, `provisioned_at`):
    the deny counts only while it covers every set.

    After drift (the user was re-enabled and disabled again) the countdown restarts
    from the new disable, with the earlier all-lapsed as its floor; portal revocation,
    removal and deny are not trusted from before the drift, because whoever re-enabled
    the user may have undone them."""
    disable = evidence.get(CountdownInput.IC_DISABLED)
    if not disable or "verified_at" not in disable:
        return None
    first = [ReachablePermissionSet.from_json(p) for p in disable.get("permission_sets", [])]
    every = [first]
    applications = _applications(disable.get("applications", []))
    for read in [*reads, *([drift] if drift else [])]:
        every.append([ReachablePermissionSet.from_json(p) for p in read.get("permission_sets", [])])
        # sets no longer listed but still able to issue sessions while a removal spreads
        every.append([ReachablePermissionSet.from_json(p) for p in read.get("described", [])])
        if "applications" in read:
            applications = _union_applications(applications, _applications(read["applications"]))
    sets = union_sets(*every)
    ic_disabled_at = parse_iso(disable["verified_at"])

    def at(given: CountdownInput, key: str) -> datetime | None:
        found = evidence.get(given, {}).get(key)
        return parse_iso(found) if found else None

    portal = at(CountdownInput.PORTAL_REVOKED, "confirmed_at")
    unassigned = at(CountdownInput.UNASSIGNED, "verified_at")
    deny = at(CountdownInput.DENY_PROVISIONED, "provisioned_at")
    if deny is not None:
        # evidence written before re-reads existed names no sets: it covered the first read
        step = evidence[CountdownInput.DENY_PROVISIONED]
        covered = set(step.get("permission_sets", [ps.arn for ps in first]))
        for extension in deny_extensions:
            covered.update(extension["permission_sets"])
            deny = max(deny, parse_iso(extension["provisioned_at"]))
        if not {ps.arn for ps in sets} <= covered:
            deny = None
    if unassigned is not None and any(
        read.get("permission_sets") and parse_iso(read["recorded_at"]) > unassigned
        for read in reads
        if "recorded_at" in read
    ):
        # something reachable again after the removal: new role sessions can start on it
        # until new sessions end, so the removal shortens nothing
        unassigned = None
    floor = None
    if drift:
        ic_disabled_at = max(ic_disabled_at, parse_iso(drift["redisabled_at"]))
        floor = parse_iso(drift["floor"]) if drift.get("floor") else None
        portal = unassigned = deny = None
    return CountdownInputs(
        ic_disabled_at=ic_disabled_at,
        permission_sets=sets,
        portal_revoked_at=portal,
        unassigned_at=unassigned,
        deny_provisioned_at=deny,
        applications=applications,
        floor=floor,
    )


def _applications(data: list[dict[str, Any]] | None) -> tuple[ReachableApplication, ...] | None:
    return None if data is None else tuple(ReachableApplication.from_json(a) for a in data)


def _union_applications(
    *reads: tuple[ReachableApplication, ...] | None,
) -> tuple[ReachableApplication, ...] | None:
    """Every application any read saw; None (not covered) once any read could not say.
    Background sessions count as enabled if any read saw them so (unknown over off)."""
    if any(read is None for read in reads):
        return None
    merged: dict[str, ReachableApplication] = {}
    rank = {True: 2, None: 1, False: 0}
    for read in reads:
        for app in read or ():
            seen = merged.get(app.arn)
            if seen is None:
                merged[app.arn] = app
                continue
            status = max(seen.background_sessions, app.background_sessions, key=rank.__getitem__)
            merged[app.arn] = ReachableApplication(
                arn=app.arn,
                name=app.name or seen.name,
                background_sessions=status,
                via=tuple(sorted({*seen.via, *app.via})),
            )
    return tuple(merged[arn] for arn in sorted(merged))
