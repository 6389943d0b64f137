"""How tight the residual-access countdown is, measured against the session model.

Draws random leavers (permission sets reached directly and through groups, the phase of
the last sign-in validation before the disable, optional portal deletion, deny and
removal of access with a random true propagation no longer than the configured margin)
in a world that changes while the countdown runs: permission sets assigned to the user or
their group after the disable, a set's SessionDuration changed, applications assigned
and their user background sessions enabled, the user re-enabled and disabled again
(drift), and the deny statements taken off again by cleanup.

The worker's view follows the contract of worker/countdown.py: the reachable sets and
applications are read at the disable, every `reread_interval` until new sessions end and
once at it (and by the deny and removal steps before they act); the inputs are the union
of every read (`union_sets`); the deny is re-merged on sets found later and counts only
once every set of the union carries it; after drift the countdown covers both epochs
with the earlier all-lapsed as its floor; cleanup lifts the deny at
`Countdown.deny_removable_at`. Every change is seen 0-5 min after it happened. Then
`SimulatedLeaver` tries every kind of access to find the TRUE last access.

A violation is a prediction earlier than the truth (or a restart that moves a
milestone); there must be none. The rest is how much later than the truth the
prediction of "all lapsed" is: the price of the promise "never earlier".

    .venv/bin/python bench/countdown_tightness.py --samples 1000 --seed 1

`--weaken NAME` removes one mechanism of the contract (see `Weakening`), to show that
the test then finds violations. The generator (`draw_scenario`) is shared with
tests/unit/test_countdown.py: it takes its choices from a `Draw`, which here is
`random.Random` and there is Hypothesis.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from worker.clock import utc_iso
from worker.countdown import (
    Countdown,
    CountdownInput,
    CountdownInputs,
    ReachableApplication,
    ReachablePermissionSet,
    SessionSettings,
    compute,
    inputs_from_evidence,
    inputs_from_json,
    union_sets,
)
from worker.sandbox.sessions import (
    AccessKind,
    AwsSessionFacts,
    LeaverReport,
    SessionModel,
    SimulatedLeaver,
    Timeline,
)

USER = "9067c0ffee-leaver"
BASE = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
ACCOUNTS = ("111111111111", "222222222222", "333333333333")
GROUPS = ("engineers", "oncall")
#: how late the worker sees a change it made (its verification read comes after it)
MAX_OBSERVATION_DELAY = 5 * 60
#: how long after the previous step a hardening step may start
MAX_STEP_GAP = 3 * 3600
#: how long one step's individual changes (per set, per assignment) may spread
MAX_SPREAD = 5 * 60
RESTART_KINDS = ("json", "evidence")


def arn(index: int) -> str:
    return f"arn:aws:sso:::permissionSet/ssoins-7223c0ffee000001/ps-{index:016d}"


def app_arn(index: int) -> str:
    return f"arn:aws:sso::111122223333:application/ssoins-7223c0ffee000001/apl-{index:016d}"


class Draw(Protocol):
    """Where the generator takes its choices from: an integer in [low, high]."""

    def integer(self, low: int, high: int) -> int: ...


class RandomDraw:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def integer(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)


def _seconds(draw: Draw, low: int, high: int) -> timedelta:
    return timedelta(seconds=draw.integer(low, high))


def _edgy_seconds(draw: Draw, low: int, high: int) -> timedelta:
    """Uniform half the time; otherwise at or near an end, where the bounds are tight.

    Zero delays, the worst phase and a propagation at the margin are rare under a
    uniform draw, yet they are where a prediction would undercut the truth.
    """
    near = max(1, (high - low) // 8)
    pick = draw.integer(0, 7)
    if pick == 0:
        return timedelta(seconds=low)
    if pick == 1:
        return timedelta(seconds=high)
    if pick == 2:
        return _seconds(draw, low, low + near)
    if pick == 3:
        return _seconds(draw, high - near, high)
    return _seconds(draw, low, high)


class Weakening(StrEnum):
    """One mechanism of the contract taken away, to show that the check then fails."""

    #: the inventory read once, at the disable (issue 13, flow 2)
    READ_ONCE = "read-once"
    #: each read replaces the last instead of the union (flow 3: a raised duration lost)
    LATEST_READ = "latest-read"
    #: deny_provisioned_at kept from the deny step though sets found later lack the deny
    DENY_IGNORES_LATE_SETS = "deny-ignores-late-sets"
    #: cleanup takes the deny off at all-lapsed (flow 1)
    CLEANUP_AT_ALL_LAPSED = "cleanup-at-all-lapsed"
    #: after drift the earlier epoch's sets are dropped (flow 4)
    DRIFT_DROPS_EPOCH = "drift-drops-epoch"
    #: after drift the earlier all-lapsed is no floor
    NO_FLOOR = "no-floor"
    #: both: after drift only the fresh read, no floor (c4770d4's inputs_from_evidence)
    DRIFT_FORGETS = "drift-forgets"
    #: applications (and their background sessions) not read
    NO_APPLICATIONS = "no-applications"
    #: unassigned_at kept though a read after the removal found a reachable set
    KEEP_UNASSIGNED = "keep-unassigned"


# ---------------------------------------------------------------- scenarios


@dataclass(frozen=True, kw_only=True)
class PermissionSetSpec:
    arn: str
    name: str
    #: the true SessionDuration (until `changed_to` takes over)
    duration: timedelta
    #: whether the worker could read the duration (if not, it counts 12 h)
    known: bool
    accounts: tuple[str, ...]
    #: assigned to the user directly
    direct: bool
    #: assigned to these groups, of which the user is a member
    groups: tuple[str, ...]
    #: None: assigned before the disable; else the moment the assignment(s) were created
    added_at: datetime | None = None
    #: (new SessionDuration, when): the set's duration changed while the countdown runs
    changed_to: tuple[timedelta, datetime] | None = None

    @property
    def via(self) -> tuple[str, ...]:
        return (("USER",) if self.direct else ()) + tuple(f"GROUP:{g}" for g in self.groups)

    def duration_at(self, at: datetime) -> timedelta:
        if self.changed_to is not None and self.changed_to[1] <= at:
            return self.changed_to[0]
        return self.duration


@dataclass(frozen=True, kw_only=True)
class ApplicationSpec:
    app_id: str
    name: str
    #: "open" (no assignment required), "USER", or a group id
    principal: str
    #: UserBackgroundSessionApplicationStatus ENABLED from `background_since` on
    background: bool
    #: None: from before the disable
    background_since: datetime | None = None
    #: whether the worker could read the application's session configuration
    known: bool = True
    #: None: assigned before the disable
    added_at: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class HeldSession:
    """A sign-in session the leaver holds at the disable, and the CLI logged in with it."""

    issued_at: datetime
    #: the last time Identity Center validated it (the user still enabled)
    validated_at: datetime
    #: the last time the CLI's token was validated
    cli_validated_at: datetime


@dataclass(frozen=True, kw_only=True)
class Drift:
    """The user re-enabled in Identity Center (and maybe in the IdP), then disabled again."""

    enabled_at: datetime
    #: the IdP re-activated as well (the leaver can sign in anew), and deactivated again
    idp_reactivated: bool
    idp_redeactivated_at: datetime
    redisabled_at: datetime
    redisable_seen_at: datetime


@dataclass(frozen=True, kw_only=True)
class Scenario:
    #: the true moment the Identity Center user became disabled, and when the worker saw it
    disabled_at: datetime
    disable_seen_at: datetime
    idp_deactivated_at: datetime
    sessions: tuple[HeldSession, ...]
    permission_sets: tuple[PermissionSetSpec, ...]
    applications: tuple[ApplicationSpec, ...]
    #: whether ListApplicationAssignmentsForPrincipal could be read at all
    applications_readable: bool
    #: the instance's background-session duration (the worker is configured with it)
    background_session: timedelta
    portal_deleted_at: datetime | None
    portal_seen_at: datetime | None
    #: when the deny step starts (it reads the inventory first), if it runs
    deny_started_at: datetime | None
    #: per permission set (same order) how long after it is known its deny succeeds
    deny_spread: tuple[timedelta, ...]
    deny_propagation: timedelta
    #: when the removal step starts (it snapshots the inventory first), if it runs
    removal_started_at: datetime | None
    #: per removal (direct assignment, then membership) how long after the start it lands
    removal_spread: tuple[timedelta, ...]
    assignment_propagation: timedelta
    #: how late the worker sees a step's result
    seen_after: timedelta
    drift: Drift | None
    #: whether the operator runs cleanup (only with the deny)
    cleanup: bool
    #: how the worker restarts: recompute from the persisted countdown or from the evidence
    restarts: tuple[str, ...]
    step: timedelta

    @property
    def with_deny(self) -> bool:
        return self.deny_started_at is not None

    @property
    def groups(self) -> tuple[str, ...]:
        """The groups the user is a member of (every one something is assigned to)."""
        used = {g for ps in self.permission_sets for g in ps.groups}
        used |= {a.principal for a in self.applications if a.principal in GROUPS}
        return tuple(sorted(used))

    @property
    def facts(self) -> AwsSessionFacts:
        return AwsSessionFacts(
            deny_propagation=self.deny_propagation,
            assignment_propagation=self.assignment_propagation,
            background_session_duration=self.background_session,
        )

    @property
    def durations_known(self) -> bool:
        """Every duration the countdown needed could be read."""
        return (
            all(ps.known for ps in self.permission_sets)
            and self.applications_readable
            and all(a.known for a in self.applications if a.principal != "open")
        )

    @property
    def world_changes(self) -> bool:
        return (
            any(ps.added_at or ps.changed_to for ps in self.permission_sets)
            or any(a.added_at or a.background_since for a in self.applications)
            or self.drift is not None
        )

    @property
    def last_disabled_at(self) -> datetime:
        return self.disabled_at if self.drift is None else self.drift.redisabled_at


def draw_scenario(draw: Draw, settings: SessionSettings | None = None) -> Scenario:
    """One leaver; true times first, then what the worker observes (true + 0-5 min)."""
    settings = settings or SessionSettings()

    def observed(true: datetime) -> datetime:
        return true + _edgy_seconds(draw, 0, MAX_OBSERVATION_DELAY)

    disabled_at = BASE + _seconds(draw, 0, 24 * 3600 - 1)
    disable_seen_at = observed(disabled_at)
    # New sessions can start until the disable's cache runs out: world changes inside that
    # window are the ones that matter (and the ones the re-reads must catch).
    window = int(settings.signin_cache.total_seconds())

    def in_window() -> datetime:
        return disabled_at + _edgy_seconds(draw, 0, window)

    sessions = []
    for _ in range(draw.integer(1, 2)):
        validated_at = disabled_at - _edgy_seconds(draw, 0, 3600)
        sessions.append(
            HeldSession(
                # sometimes so old that the 8 h portal session runs out first
                issued_at=validated_at - _seconds(draw, 0, 8 * 3600 - 60),
                validated_at=validated_at,
                cli_validated_at=disabled_at - _edgy_seconds(draw, 0, 3600),
            )
        )

    sets = []
    for index in range(draw.integer(1, 4)):
        first = draw.integer(0, len(ACCOUNTS) - 1)
        accounts = tuple(ACCOUNTS[(first + k) % len(ACCOUNTS)] for k in range(draw.integer(1, 2)))
        reach = draw.integer(0, 2)  # 0 direct, 1 through a group only, 2 both
        groups = () if reach == 0 else (GROUPS[draw.integer(0, len(GROUPS) - 1)],)
        duration = timedelta(minutes=30 * (24 if draw.integer(0, 3) == 0 else draw.integer(2, 24)))
        change = draw.integer(0, 4)  # 0: assigned late, 1: duration changed, else neither
        sets.append(
            PermissionSetSpec(
                arn=arn(index + 1),
                name=f"Set{index + 1}",
                # 1-12 h in whole or half hours; the 12 h maximum more often
                duration=duration,
                known=draw.integer(0, 3) > 0,
                accounts=accounts,
                direct=reach != 1,
                groups=groups,
                added_at=in_window() if change == 0 and index > 0 else None,
                # after the first read: one lowered before it is out of sight (the sessions
                # issued under the longer duration are, like removed assignments, not covered)
                changed_to=(
                    timedelta(minutes=30 * draw.integer(2, 24)),
                    disable_seen_at + SECOND + _edgy_seconds(draw, 0, window),
                )
                if change == 1
                else None,
            )
        )

    applications = []
    for index in range(draw.integer(0, 2)):
        principal = ("open", "USER", *GROUPS)[draw.integer(0, 1 + len(GROUPS))]
        # an application that needs no assignment is not listed for the user: one with
        # background sessions would be out of sight, so the sandbox keeps those off
        background = principal != "open" and draw.integer(0, 2) == 0
        applications.append(
            ApplicationSpec(
                app_id=app_arn(index + 1),
                name=f"App{index + 1}",
                principal=principal,
                background=background,
                background_since=in_window() if background and draw.integer(0, 3) == 0 else None,
                known=draw.integer(0, 7) > 0,
                added_at=in_window() if principal != "open" and draw.integer(0, 3) == 0 else None,
            )
        )

    portal_deleted_at = portal_seen_at = None
    if draw.integer(0, 1):
        portal_deleted_at = disable_seen_at + _seconds(draw, 0, 2 * 3600)
        portal_seen_at = observed(portal_deleted_at)

    deny_started_at = None
    deny_spread: tuple[timedelta, ...] = ()
    deny_propagation = _edgy_seconds(draw, 0, int(settings.deny_propagation.total_seconds()))
    if draw.integer(0, 1):
        deny_started_at = disable_seen_at + _edgy_seconds(draw, 0, MAX_STEP_GAP)
        deny_spread = tuple(_edgy_seconds(draw, 0, MAX_SPREAD) for _ in sets)

    removal_started_at = None
    removal_spread: tuple[timedelta, ...] = ()
    assignment_propagation = _edgy_seconds(
        draw, 0, int(settings.unassign_propagation.total_seconds())
    )
    if draw.integer(0, 1):
        removal_started_at = disable_seen_at + _edgy_seconds(draw, 0, MAX_STEP_GAP)
        removal_spread = tuple(
            _edgy_seconds(draw, 0, MAX_SPREAD)
            for _ in range(sum(len(ps.accounts) for ps in sets) + len(GROUPS) + 1)
        )
    seen_after = _edgy_seconds(draw, 0, MAX_OBSERVATION_DELAY)

    drift = None
    if draw.integer(0, 3) == 0:
        # after the first epoch's steps were seen (the watchdog finds it while counting)
        settled = max(
            t + 2 * MAX_SPREAD * SECOND
            for t in (disable_seen_at + HOUR, portal_seen_at, deny_started_at, removal_started_at)
            if t is not None
        )
        enabled_at = settled + _seconds(draw, 0, 3 * 3600)
        redisabled_at = enabled_at + _edgy_seconds(draw, 60, 30 * 60)
        drift = Drift(
            enabled_at=enabled_at,
            idp_reactivated=draw.integer(0, 1) == 1,
            # the playbook's order again: the IdP first
            idp_redeactivated_at=redisabled_at - _seconds(draw, 0, 60),
            redisabled_at=redisabled_at,
            redisable_seen_at=observed(redisabled_at),
        )

    restarts = tuple(
        RESTART_KINDS[draw.integer(0, len(RESTART_KINDS) - 1)] for _ in range(draw.integer(0, 3))
    )
    return Scenario(
        disabled_at=disabled_at,
        disable_seen_at=disable_seen_at,
        # the playbook deactivates in the IdP first: the leaver cannot sign in again
        idp_deactivated_at=min(min(s.validated_at, s.cli_validated_at) for s in sessions)
        - 10 * MINUTE,
        sessions=tuple(sessions),
        permission_sets=tuple(sets),
        applications=tuple(applications),
        applications_readable=draw.integer(0, 9) > 0,
        # the instance setting: 15 min to a few hours here (days would only slow the bench)
        background_session=timedelta(minutes=15 * draw.integer(1, 16)),
        portal_deleted_at=portal_deleted_at,
        portal_seen_at=portal_seen_at,
        deny_started_at=deny_started_at,
        deny_spread=deny_spread,
        deny_propagation=deny_propagation,
        removal_started_at=removal_started_at,
        removal_spread=removal_spread,
        assignment_propagation=assignment_propagation,
        seen_after=seen_after,
        drift=drift,
        cleanup=deny_started_at is not None and draw.integer(0, 3) > 0,
        restarts=restarts,
        step=draw.integer(1, 2) * MINUTE,
    )


# ---------------------------------------------------------------- the world, step by step


@dataclass(frozen=True, kw_only=True)
class Removals:
    """What the removal step takes away, and when each removal lands (true times)."""

    assignments: dict[tuple[str, str], datetime]
    memberships: dict[str, datetime]
    seen_at: datetime | None


def removals(scenario: Scenario) -> Removals:
    """The removal step snapshots at its start and removes what the user has then: their
    direct assignments and their memberships (never the groups' own assignments)."""
    s = scenario
    if s.removal_started_at is None:
        return Removals(assignments={}, memberships={}, seen_at=None)
    # the snapshot is read at the start; the first removal lands after it
    start = s.removal_started_at
    spread = (SECOND + d for d in s.removal_spread)
    assignments = {
        (ps.arn, account): start + next(spread)
        for ps in s.permission_sets
        if ps.direct and (ps.added_at is None or ps.added_at <= start)
        for account in ps.accounts
    }
    memberships = {group: start + next(spread) for group in s.groups}
    done = max([*assignments.values(), *memberships.values()], default=start)
    return Removals(assignments=assignments, memberships=memberships, seen_at=done + s.seen_after)


#: how long the worker keeps reading a group it removed the user from (its margin)
UNASSIGN_MARGIN = SessionSettings().unassign_propagation


def groups_read(scenario: Scenario, at: datetime) -> set[str]:
    """The groups whose assignments a read at `at` lists: the user's memberships, and the
    groups the removal step took them out of until it was seen plus the margin; a group
    assignment made while the removal propagates still reaches the user."""
    gone = removals(scenario)
    return {
        g
        for g in scenario.groups
        if g not in gone.memberships
        or gone.memberships[g] > at
        or (gone.seen_at is not None and at < gone.seen_at + UNASSIGN_MARGIN)
    }


def read_sets(scenario: Scenario, at: datetime) -> tuple[ReachablePermissionSet, ...]:
    """What the adapter lists at `at`: a removed assignment or membership is gone from the
    listing at once (it may still grant sessions while it propagates)."""
    gone = removals(scenario)
    member = groups_read(scenario, at)
    found = []
    for ps in scenario.permission_sets:
        if ps.added_at is not None and ps.added_at > at:
            continue
        accounts = tuple(
            account
            for account in ps.accounts
            if (
                ps.direct
                and not (
                    (ps.arn, account) in gone.assignments
                    and gone.assignments[(ps.arn, account)] <= at
                )
            )
            or any(g in member for g in ps.groups)
        )
        if accounts:
            found.append(
                ReachablePermissionSet(
                    arn=ps.arn,
                    name=ps.name,
                    session_duration=ps.duration_at(at) if ps.known else None,
                    accounts=accounts,
                    via=ps.via,
                )
            )
    return tuple(found)


def describe(
    scenario: Scenario, arns: set[str], at: datetime
) -> tuple[ReachablePermissionSet, ...]:
    """DescribePermissionSet at `at` on each of `arns`: the duration in force then."""
    return tuple(
        ReachablePermissionSet(
            arn=ps.arn,
            name=ps.name,
            session_duration=ps.duration_at(at) if ps.known else None,
            accounts=(),
            via=(),
        )
        for ps in scenario.permission_sets
        if ps.arn in arns
    )


def read_applications(scenario: Scenario, at: datetime) -> tuple[ReachableApplication, ...] | None:
    if not scenario.applications_readable:
        return None
    member = groups_read(scenario, at)
    found = []
    for app in scenario.applications:
        if app.principal == "open" or (app.added_at is not None and app.added_at > at):
            continue
        if app.principal != "USER" and app.principal not in member:
            continue
        enabled = app.background and (app.background_since is None or app.background_since <= at)
        found.append(
            ReachableApplication(
                arn=app.app_id,
                name=app.name,
                background_sessions=enabled if app.known else None,
                via=("USER",) if app.principal == "USER" else (f"GROUP:{app.principal}",),
            )
        )
    return tuple(found)


def union_applications(
    *reads: tuple[ReachableApplication, ...] | None,
) -> tuple[ReachableApplication, ...] | None:
    """Every application any read saw; background sessions ENABLED if any read said so,
    unknown if any read could not tell; None if some read could not list them at all."""
    merged: dict[str, ReachableApplication] = {}
    for read in reads:
        if read is None:
            return None
        for app in read:
            seen = merged.get(app.arn)
            if seen is None:
                merged[app.arn] = app
                continue
            states = {seen.background_sessions, app.background_sessions}
            status = True if True in states else None if None in states else False
            merged[app.arn] = replace(
                seen, background_sessions=status, via=tuple(sorted({*seen.via, *app.via}))
            )
    return tuple(merged[a] for a in sorted(merged))


# ---------------------------------------------------------------- the worker's view


@dataclass(frozen=True, kw_only=True)
class Observation:
    """What the worker records, and the true moments its own changes landed."""

    inputs: CountdownInputs
    #: permission set -> when its deny statement was provisioned (true success)
    deny_succeeded: dict[str, datetime]
    #: when the worker read the inventory (both epochs)
    reads: tuple[datetime, ...]


def _window_reads(start: datetime, end: datetime, interval: timedelta) -> list[datetime]:
    """At `start`, every interval until `end`, and once at it."""
    times = []
    at = start
    while at < end:
        times.append(at)
        at += interval
    return [*times, end]


def _epoch(
    scenario: Scenario,
    settings: SessionSettings,
    weaken: Weakening | None,
    *,
    disable_seen: datetime,
    portal_seen: datetime | None,
    extra_reads: Sequence[datetime],
) -> tuple[
    list[datetime], tuple[ReachablePermissionSet, ...], tuple[ReachableApplication, ...] | None
]:
    """The reads of one epoch and their union (sets, applications)."""
    new_sessions_end = disable_seen + settings.signin_cache
    if portal_seen is not None:
        new_sessions_end = min(new_sessions_end, portal_seen + settings.cli_lag)
    times = _window_reads(disable_seen, new_sessions_end, settings.reread_interval)
    times = sorted({*times, *(t for t in extra_reads if t <= new_sessions_end)})
    if weaken is Weakening.READ_ONCE:
        times = [disable_seen]
    set_reads: list[tuple[ReachablePermissionSet, ...]] = []
    for t in times:
        # every set seen before is described again, listed or not: one whose assignment
        # was removed still grants sessions while the removal propagates
        seen = {ps.arn for read in set_reads for ps in read}
        set_reads.append(read_sets(scenario, t) + describe(scenario, seen, t))
    app_reads = [read_applications(scenario, t) for t in times]
    if weaken is Weakening.LATEST_READ:
        set_reads, app_reads = set_reads[-1:], app_reads[-1:]
    apps = () if weaken is Weakening.NO_APPLICATIONS else union_applications(*app_reads)
    return times, union_sets(*set_reads), apps


def observe(
    scenario: Scenario, settings: SessionSettings, weaken: Weakening | None = None
) -> Observation:
    """The worker's inputs under the contract, from the scenario's true times."""
    s = scenario
    extra = [t for t in (s.deny_started_at, s.removal_started_at) if t is not None]
    times, sets, apps = _epoch(
        s,
        settings,
        weaken,
        disable_seen=s.disable_seen_at,
        portal_seen=s.portal_seen_at,
        extra_reads=extra,
    )
    gone = removals(s)
    unassigned = gone.seen_at
    if (
        unassigned is not None
        and weaken is not Weakening.KEEP_UNASSIGNED
        and any(read_sets(s, t) for t in times if t >= unassigned)
    ):
        unassigned = None  # something reachable after the removal: it is not complete

    deny_succeeded: dict[str, datetime] = {}
    deny_seen = None
    if s.deny_started_at is not None:
        start = s.deny_started_at
        spread = dict(zip((ps.arn for ps in s.permission_sets), s.deny_spread, strict=True))
        known_at_start = union_sets(
            *(read_sets(s, t) for t in times if t <= start), read_sets(s, start)
        )
        for ps in known_at_start:
            deny_succeeded[ps.arn] = start + spread[ps.arn]
        if weaken is not Weakening.DENY_IGNORES_LATE_SETS:
            # sets found by a later read get the deny merged and provisioned then
            for t in times:
                for ps in read_sets(s, t):
                    if t > start and ps.arn not in deny_succeeded:
                        deny_succeeded[ps.arn] = t + spread[ps.arn]
        covered = all(ps.arn in deny_succeeded for ps in sets)
        if covered or weaken is Weakening.DENY_IGNORES_LATE_SETS:
            if deny_succeeded:
                deny_seen = max(deny_succeeded.values()) + s.seen_after

    inputs = CountdownInputs(
        ic_disabled_at=s.disable_seen_at,
        permission_sets=sets,
        portal_revoked_at=s.portal_seen_at,
        unassigned_at=unassigned,
        deny_provisioned_at=deny_seen,
        applications=apps,
    )
    if s.drift is not None:
        floor = compute(inputs, settings).all_lapsed
        more, sets2, apps2 = _epoch(
            s,
            settings,
            weaken,
            disable_seen=s.drift.redisable_seen_at,
            portal_seen=None,
            extra_reads=(),
        )
        times += more
        drop = weaken in (Weakening.DRIFT_DROPS_EPOCH, Weakening.DRIFT_FORGETS)
        forget_floor = weaken in (Weakening.NO_FLOOR, Weakening.DRIFT_FORGETS)
        # portal revocation, removal and deny are not trusted from before the drift
        inputs = CountdownInputs(
            ic_disabled_at=s.drift.redisable_seen_at,
            permission_sets=sets2 if drop else union_sets(sets, sets2),
            applications=apps2 if drop else union_applications(apps, apps2),
            floor=None if forget_floor else floor,
        )
    return Observation(inputs=inputs, deny_succeeded=deny_succeeded, reads=tuple(times))


def settings_for(scenario: Scenario, settings: SessionSettings | None = None) -> SessionSettings:
    """The worker configured with the instance's background-session duration."""
    return replace(settings or SessionSettings(), background_session=scenario.background_session)


def evidence_of(inputs: CountdownInputs) -> dict[str, dict[str, Any]]:
    """The done steps' evidence as the step handlers write it (only the keys read back),
    keyed as the engine gives it to the countdown."""
    evidence: dict[str, dict[str, Any]] = {
        CountdownInput.IC_DISABLED: {
            "verified_at": utc_iso(inputs.ic_disabled_at),
            "permission_sets": [ps.as_json() for ps in inputs.permission_sets],
        }
    }
    if inputs.portal_revoked_at is not None:
        evidence[CountdownInput.PORTAL_REVOKED] = {
            "confirmed_at": utc_iso(inputs.portal_revoked_at)
        }
    if inputs.unassigned_at is not None:
        evidence[CountdownInput.UNASSIGNED] = {"verified_at": utc_iso(inputs.unassigned_at)}
    if inputs.deny_provisioned_at is not None:
        evidence[CountdownInput.DENY_PROVISIONED] = {
            "provisioned_at": utc_iso(inputs.deny_provisioned_at)
        }
    return evidence


def restartable_from_evidence(inputs: CountdownInputs) -> bool:
    """Whether the evidence as the step handlers of c4770d4 write it can carry these
    inputs: applications and an earlier epoch's floor are the engine's to persist."""
    return inputs.applications == () and inputs.floor is None


def restart(countdown: Countdown, how: str) -> Countdown:
    """A worker restart: recompute from what was persisted (through JSON, as the store)."""
    if how == "json":
        persisted = json.loads(json.dumps(countdown.as_json()))
        inputs = inputs_from_json(persisted["inputs"])
    elif how == "evidence":
        found = inputs_from_evidence(json.loads(json.dumps(evidence_of(countdown.inputs))))
        assert found is not None, "the disable's evidence is there"
        inputs = found
    else:
        raise ValueError(f"unknown restart {how!r}")
    return compute(inputs, countdown.settings)


def milestone_times(countdown: Countdown) -> tuple[tuple[str, datetime], ...]:
    return tuple((m.name, m.at) for m in countdown.milestones)


# ---------------------------------------------------------------- the model's truth


def build_timeline(
    scenario: Scenario, observation: Observation, cleanup_at: datetime | None
) -> Timeline:
    s = scenario
    open_apps = [a.app_id for a in s.applications if a.principal == "open"]
    timeline = Timeline(s.facts, open_applications=open_apps)
    gone = removals(s)
    for ps in s.permission_sets:
        timeline.define_permission_set(ps.arn, ps.duration)
        if ps.changed_to is not None:
            timeline.change_session_duration(ps.arn, *ps.changed_to)
        for account in ps.accounts:
            if ps.direct:
                timeline.assign(
                    USER,
                    ps.arn,
                    account,
                    at=ps.added_at,
                    removed_at=gone.assignments.get((ps.arn, account)),
                )
            for group in ps.groups:
                timeline.assign(group, ps.arn, account, at=ps.added_at)  # the group's: it stays
    for group in s.groups:
        timeline.add_member(group, USER, removed_at=gone.memberships.get(group))
    for app in s.applications:
        if app.principal != "open":
            principal = USER if app.principal == "USER" else app.principal
            timeline.assign_application(principal, app.app_id, at=app.added_at)
        if app.background:
            timeline.set_background_sessions(app.app_id, True, at=app.background_since)
    timeline.deactivate_in_idp(USER, s.idp_deactivated_at)
    timeline.disable_user(USER, s.disabled_at)
    if s.portal_deleted_at is not None:
        timeline.delete_sign_in_sessions(USER, s.portal_deleted_at)
    for arn_, succeeded in observation.deny_succeeded.items():
        timeline.provision(arn_, succeeded, denied_user_ids=[USER])
        if cleanup_at is not None:
            # cleanup: the statement taken off, provisioned again without it
            timeline.provision(arn_, max(cleanup_at, succeeded))
    if s.drift is not None:
        if s.drift.idp_reactivated:
            timeline.set_idp_allows_sign_in(USER, True, s.drift.enabled_at)
            timeline.deactivate_in_idp(USER, s.drift.idp_redeactivated_at)
        timeline.enable_user(USER, s.drift.enabled_at)
        timeline.disable_user(USER, s.drift.redisabled_at)
    return timeline


def simulate(
    scenario: Scenario, until: datetime, observation: Observation, cleanup_at: datetime | None
) -> LeaverReport:
    """The leaver, holding its sessions from before the disable, tries everything."""
    model = SessionModel(build_timeline(scenario, observation, cleanup_at))
    for held in scenario.sessions:
        session = model.add_sign_in_session(
            USER, issued_at=held.issued_at, validated_at=held.validated_at
        )
        model.attach_cli(session, validated_at=held.cli_validated_at)
    start = min(
        min(h.validated_at, h.cli_validated_at, scenario.disabled_at) for h in scenario.sessions
    )
    return SimulatedLeaver(model, USER, step=scenario.step).run(start, until)


# ---------------------------------------------------------------- prediction vs truth

#: milestone -> the kinds of access it bounds (None: every kind)
BOUNDS: tuple[tuple[str, AccessKind | None], ...] = (
    ("new-sessions-end", AccessKind.SESSION_START),
    ("applications-lapse", AccessKind.APPLICATION),
    ("role-sessions-lapse", AccessKind.AWS_ACCOUNT),
    ("background-sessions-lapse", AccessKind.BACKGROUND),
    ("all-lapsed", None),
)


def not_covered(countdown: Countdown) -> frozenset[str]:
    """The applications whose background sessions the countdown says it does not bound."""
    apps = countdown.inputs.applications
    if apps is None:
        return frozenset({"*"})
    return frozenset(a.arn for a in apps if a.background_sessions is None)


def last_covered(
    report: LeaverReport, kind: AccessKind | None, excluded: frozenset[str]
) -> datetime | None:
    """The last access of `kind`, leaving out background sessions said to be not covered."""
    times = [
        a.at
        for a in report.accesses
        if (kind is None or a.kind == kind)
        and not (a.kind == AccessKind.BACKGROUND and ("*" in excluded or a.target in excluded))
    ]
    return max(times, default=None)


@dataclass(frozen=True, kw_only=True)
class Outcome:
    scenario: Scenario
    countdown: Countdown
    report: LeaverReport
    violations: tuple[str, ...]
    cleanup_at: datetime | None

    @property
    def true_last(self) -> datetime:
        return last_covered(self.report, None, not_covered(self.countdown)) or (
            self.scenario.disabled_at
        )

    @property
    def all_lapsed_slack(self) -> timedelta:
        """How much later than the true last access the prediction of all-lapsed is."""
        return self.countdown.all_lapsed - self.true_last


def evaluate(
    scenario: Scenario,
    settings: SessionSettings | None = None,
    weaken: Weakening | None = None,
) -> Outcome:
    settings = settings_for(scenario, settings)
    violations: list[str] = []
    observation = observe(scenario, settings, weaken)
    countdown = compute(observation.inputs, settings)
    for how in scenario.restarts:
        if how == "evidence" and not restartable_from_evidence(countdown.inputs):
            continue
        again = restart(countdown, how)
        if milestone_times(again) != milestone_times(countdown):
            violations.append(
                f"restart via {how} moved the milestones: "
                f"{milestone_times(countdown)} -> {milestone_times(again)}"
            )
        countdown = again

    cleanup_at = None
    if scenario.cleanup and countdown.deny_removable_at is not None:
        cleanup_at = (
            countdown.all_lapsed
            if weaken is Weakening.CLEANUP_AT_ALL_LAPSED
            else countdown.deny_removable_at
        )
    # Past the prediction by a few steps, so an access it misses would be seen; past the
    # cleanup too, so a role session it revives would be.
    until = max(countdown.all_lapsed, cleanup_at or countdown.all_lapsed) + 3 * scenario.step
    report = simulate(scenario, until, observation, cleanup_at)
    excluded = not_covered(countdown)
    for name, kind in BOUNDS:
        found = [m for m in countdown.milestones if m.name == name]
        truth = last_covered(report, kind, excluded)
        if not found:
            if kind is AccessKind.BACKGROUND and truth is not None:
                violations.append(f"background session at {utc_iso(truth)} with no milestone")
            continue
        predicted = found[0].at
        if truth is not None and truth > predicted:
            violations.append(
                f"{name} predicted {utc_iso(predicted)} but {kind or 'an access'} "
                f"at {utc_iso(truth)} ({(truth - predicted) / MINUTE:.1f} min later)"
            )
    named = " ".join(countdown.out_of_model)
    for app in countdown.inputs.applications or ():
        if app.background_sessions is None and (app.name or app.arn) not in named:
            violations.append(f"{app.arn}: background sessions neither bounded nor named")
    if "*" in excluded and "could not be read" not in named:
        violations.append("applications unreadable yet not said so")
    signed_in = report.last(AccessKind.SIGN_IN)
    if signed_in is not None and signed_in >= scenario.last_disabled_at:
        violations.append(f"signed in at {utc_iso(signed_in)}, after the disable")
    return Outcome(
        scenario=scenario,
        countdown=countdown,
        report=report,
        violations=tuple(violations),
        cleanup_at=cleanup_at,
    )


# ---------------------------------------------------------------- the script


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def summary(label: str, slacks: Sequence[timedelta]) -> str:
    if not slacks:
        return f"  {label:<22} n=0"
    minutes = [s / MINUTE for s in slacks]
    return (
        f"  {label:<22} n={len(minutes):<5} median {statistics.median(minutes):7.1f}  "
        f"p90 {percentile(minutes, 0.9):7.1f}  max {max(minutes):7.1f}  (minutes)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--show", type=int, default=3, help="violations to print in full")
    parser.add_argument(
        "--weaken",
        choices=[w.value for w in Weakening],
        help="take one mechanism of the contract away (violations expected)",
    )
    args = parser.parse_args(argv)
    weaken = Weakening(args.weaken) if args.weaken else None

    draw = RandomDraw(random.Random(args.seed))
    began = time.perf_counter()
    outcomes = [evaluate(draw_scenario(draw), weaken=weaken) for _ in range(args.samples)]
    elapsed = time.perf_counter() - began

    bad = [o for o in outcomes if o.violations]
    print(f"samples:    {len(outcomes)} (seed {args.seed}, {elapsed:.1f} s)")
    if weaken is not None:
        print(f"weakened:   {weaken.value}")
    print(f"violations: {len(bad)}")
    for outcome in bad[: args.show]:
        print(f"  {outcome.scenario}")
        for line in outcome.violations:
            print(f"    {line}")
    print("all-lapsed: prediction later than the true last access by")
    print(summary("overall", [o.all_lapsed_slack for o in outcomes]))
    known = [o for o in outcomes if o.scenario.durations_known]
    print(summary("durations all known", [o.all_lapsed_slack for o in known]))
    steady = [o for o in known if o.scenario.drift is None]
    print(summary("  known, no drift", [o.all_lapsed_slack for o in steady]))
    still = [o for o in steady if not o.scenario.world_changes]
    print(summary("  known, world still", [o.all_lapsed_slack for o in still]))
    print(summary("with deny", [o.all_lapsed_slack for o in outcomes if o.scenario.with_deny]))
    print(
        summary("without deny", [o.all_lapsed_slack for o in outcomes if not o.scenario.with_deny])
    )
    print(
        summary(
            "with world changes", [o.all_lapsed_slack for o in outcomes if o.scenario.world_changes]
        )
    )
    print(summary("with drift", [o.all_lapsed_slack for o in outcomes if o.scenario.drift]))
    print(
        summary(
            "with background",
            [
                o.all_lapsed_slack
                for o in outcomes
                if any(m.name == "background-sessions-lapse" for m in o.countdown.milestones)
            ],
        )
    )
    reads = [len(observe(o.scenario, settings_for(o.scenario)).reads) for o in outcomes]
    print(f"reads per person: median {statistics.median(reads):.0f}, max {max(reads)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
