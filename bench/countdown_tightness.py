"""How tight the residual-access countdown is, measured against the session model.

Draws random leavers (permission sets reached directly and through groups, the phase of
the last sign-in validation before the disable, optional portal deletion, deny and
removal of access with a random true propagation no longer than the configured margin),
computes the worker's prediction from what it would OBSERVE (every verification comes
0-5 min after the true change), restarts the computation from the persisted inputs, and
lets `SimulatedLeaver` try every kind of access to find the TRUE last access.

A violation is a prediction earlier than the truth (or a restart that moves a
milestone); there must be none. The rest is how much later than the truth the
prediction of "all lapsed" is: the price of the promise "never earlier".

    .venv/bin/python bench/countdown_tightness.py --samples 500 --seed 1

The generator (`draw_scenario`) is shared with tests/unit/test_countdown.py: it takes
its choices from a `Draw`, which here is `random.Random` and there is Hypothesis.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from worker.clock import utc_iso
from worker.countdown import (
    Countdown,
    CountdownInput,
    CountdownInputs,
    ReachablePermissionSet,
    SessionSettings,
    compute,
    inputs_from_evidence,
    inputs_from_json,
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


# ---------------------------------------------------------------- scenarios


@dataclass(frozen=True, kw_only=True)
class PermissionSetSpec:
    arn: str
    name: str
    #: the true SessionDuration
    duration: timedelta
    #: whether the worker could read the duration (if not, it counts 12 h)
    known: bool
    accounts: tuple[str, ...]
    #: assigned to the user directly
    direct: bool
    #: assigned to these groups, of which the user is a member
    groups: tuple[str, ...]

    @property
    def via(self) -> tuple[str, ...]:
        return (("USER",) if self.direct else ()) + tuple(f"GROUP:{g}" for g in self.groups)


@dataclass(frozen=True, kw_only=True)
class HeldSession:
    """A sign-in session the leaver holds at the disable, and the CLI logged in with it."""

    issued_at: datetime
    #: the last time Identity Center validated it (the user still enabled)
    validated_at: datetime
    #: the last time the CLI's token was validated
    cli_validated_at: datetime


@dataclass(frozen=True, kw_only=True)
class Scenario:
    #: the true moment the Identity Center user became disabled, and when the worker saw it
    disabled_at: datetime
    disable_seen_at: datetime
    idp_deactivated_at: datetime
    sessions: tuple[HeldSession, ...]
    permission_sets: tuple[PermissionSetSpec, ...]
    #: (application id, "open" | "USER" | group id)
    applications: tuple[tuple[str, str], ...]
    portal_deleted_at: datetime | None
    portal_seen_at: datetime | None
    #: per permission set (same order) the moment its deny provisioning SUCCEEDED
    deny_succeeded: tuple[datetime, ...]
    deny_seen_at: datetime | None
    deny_propagation: timedelta
    #: (arn, account, removed at) for the user's direct assignments, when removed
    assignments_removed: tuple[tuple[str, str, datetime], ...]
    #: (group, removed at) for the user's memberships, when removed
    memberships_removed: tuple[tuple[str, datetime], ...]
    removal_seen_at: datetime | None
    assignment_propagation: timedelta
    #: how the worker restarts: recompute from the persisted countdown or from the evidence
    restarts: tuple[str, ...]
    step: timedelta

    @property
    def with_deny(self) -> bool:
        return self.deny_seen_at is not None

    @property
    def groups(self) -> tuple[str, ...]:
        """The groups the user is a member of (every one something is assigned to)."""
        return _groups(self.permission_sets, self.applications)

    @property
    def facts(self) -> AwsSessionFacts:
        return AwsSessionFacts(
            deny_propagation=self.deny_propagation,
            assignment_propagation=self.assignment_propagation,
        )


def _groups(
    sets: Sequence[PermissionSetSpec], applications: Sequence[tuple[str, str]]
) -> tuple[str, ...]:
    used = {g for ps in sets for g in ps.groups} | {p for _, p in applications if p in GROUPS}
    return tuple(sorted(used))


def draw_scenario(draw: Draw, settings: SessionSettings | None = None) -> Scenario:
    """One leaver; true times first, then what the worker observes (true + 0-5 min)."""
    settings = settings or SessionSettings()

    def observed(true: datetime) -> datetime:
        return true + _edgy_seconds(draw, 0, MAX_OBSERVATION_DELAY)

    disabled_at = BASE + _seconds(draw, 0, 24 * 3600 - 1)
    disable_seen_at = observed(disabled_at)

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
        sets.append(
            PermissionSetSpec(
                arn=arn(index + 1),
                name=f"Set{index + 1}",
                # 1-12 h in whole or half hours; the 12 h maximum more often
                duration=timedelta(
                    minutes=30 * (24 if draw.integer(0, 3) == 0 else draw.integer(2, 24))
                ),
                known=draw.integer(0, 3) > 0,
                accounts=accounts,
                direct=reach != 1,
                groups=groups,
            )
        )

    applications = []
    for index in range(draw.integer(0, 2)):
        principal = ("open", "USER", *GROUPS)[draw.integer(0, 1 + len(GROUPS))]
        applications.append((f"app-{index + 1}", principal))

    portal_deleted_at = portal_seen_at = None
    if draw.integer(0, 1):
        portal_deleted_at = disable_seen_at + _seconds(draw, 0, 2 * 3600)
        portal_seen_at = observed(portal_deleted_at)

    deny_succeeded: tuple[datetime, ...] = ()
    deny_seen_at = None
    deny_propagation = _edgy_seconds(draw, 0, int(settings.deny_propagation.total_seconds()))
    if draw.integer(0, 1):
        start = disable_seen_at + _edgy_seconds(draw, 0, MAX_STEP_GAP)
        deny_succeeded = tuple(start + _edgy_seconds(draw, 0, MAX_SPREAD) for _ in sets)
        deny_seen_at = observed(max(deny_succeeded))

    assignments_removed: tuple[tuple[str, str, datetime], ...] = ()
    memberships_removed: tuple[tuple[str, datetime], ...] = ()
    removal_seen_at = None
    assignment_propagation = _edgy_seconds(
        draw, 0, int(settings.unassign_propagation.total_seconds())
    )
    if draw.integer(0, 1):
        start = disable_seen_at + _edgy_seconds(draw, 0, MAX_STEP_GAP)
        assignments_removed = tuple(
            (ps.arn, account, start + _edgy_seconds(draw, 0, MAX_SPREAD))
            for ps in sets
            if ps.direct
            for account in ps.accounts
        )
        memberships_removed = tuple(
            (g, start + _edgy_seconds(draw, 0, MAX_SPREAD)) for g in _groups(sets, applications)
        )
        removal_seen_at = observed(
            max([at for *_, at in assignments_removed] + [at for _, at in memberships_removed])
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
        portal_deleted_at=portal_deleted_at,
        portal_seen_at=portal_seen_at,
        deny_succeeded=deny_succeeded,
        deny_seen_at=deny_seen_at,
        deny_propagation=deny_propagation,
        assignments_removed=assignments_removed,
        memberships_removed=memberships_removed,
        removal_seen_at=removal_seen_at,
        assignment_propagation=assignment_propagation,
        restarts=restarts,
        step=draw.integer(1, 2) * MINUTE,
    )


# ---------------------------------------------------------------- the worker's view


def observed_inputs(scenario: Scenario) -> CountdownInputs:
    """What the worker records: verification times and the inventory read at the disable."""
    return CountdownInputs(
        ic_disabled_at=scenario.disable_seen_at,
        permission_sets=tuple(
            ReachablePermissionSet(
                arn=ps.arn,
                name=ps.name,
                session_duration=ps.duration if ps.known else None,
                accounts=ps.accounts,
                via=ps.via,
            )
            for ps in scenario.permission_sets
        ),
        portal_revoked_at=scenario.portal_seen_at,
        unassigned_at=scenario.removal_seen_at,
        deny_provisioned_at=scenario.deny_seen_at,
    )


def _opt_iso(when: datetime | None) -> str | None:
    return None if when is None else utc_iso(when)


def evidence_of(inputs: CountdownInputs) -> dict[str, dict[str, Any]]:
    (
        """The done steps' evidence as the step handlers write it (only the keys read back),
    keyed as the engine gives it to the countdown."""
        ""
    )
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


def build_timeline(scenario: Scenario) -> Timeline:
    s = scenario
    open_apps = [app for app, principal in s.applications if principal == "open"]
    timeline = Timeline(s.facts, open_applications=open_apps)
    removed = {(a, account): at for a, account, at in s.assignments_removed}
    left = dict(s.memberships_removed)
    for ps in s.permission_sets:
        timeline.define_permission_set(ps.arn, ps.duration)
        for account in ps.accounts:
            if ps.direct:
                timeline.assign(USER, ps.arn, account, removed_at=removed.get((ps.arn, account)))
            for group in ps.groups:
                timeline.assign(group, ps.arn, account)  # the group's: it stays
    for group in s.groups:
        timeline.add_member(group, USER, removed_at=left.get(group))
    for app, principal in s.applications:
        if principal != "open":
            timeline.assign_application(USER if principal == "USER" else principal, app)
    timeline.deactivate_in_idp(USER, s.idp_deactivated_at)
    timeline.disable_user(USER, s.disabled_at)
    if s.portal_deleted_at is not None:
        timeline.delete_sign_in_sessions(USER, s.portal_deleted_at)
    for ps, succeeded in zip(s.permission_sets, s.deny_succeeded, strict=False):
        timeline.provision(ps.arn, succeeded, denied_user_ids=[USER])
    return timeline


def simulate(scenario: Scenario, until: datetime) -> LeaverReport:
    """The leaver, holding its sessions from before the disable, tries everything."""
    model = SessionModel(build_timeline(scenario))
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
    ("all-lapsed", None),
)


@dataclass(frozen=True, kw_only=True)
class Outcome:
    scenario: Scenario
    countdown: Countdown
    report: LeaverReport
    violations: tuple[str, ...]

    @property
    def all_lapsed_slack(self) -> timedelta:
        """How much later than the true last access the prediction of all-lapsed is."""
        truth = self.report.last_access or self.scenario.disabled_at
        return self.countdown.all_lapsed - truth


def evaluate(scenario: Scenario, settings: SessionSettings | None = None) -> Outcome:
    settings = settings or SessionSettings()
    violations: list[str] = []
    countdown = compute(observed_inputs(scenario), settings)
    for how in scenario.restarts:
        again = restart(countdown, how)
        if milestone_times(again) != milestone_times(countdown):
            violations.append(
                f"restart via {how} moved the milestones: "
                f"{milestone_times(countdown)} -> {milestone_times(again)}"
            )
        countdown = again

    # Past the prediction by a few steps, so an access it misses would be seen.
    report = simulate(scenario, countdown.all_lapsed + 3 * scenario.step)
    for name, kind in BOUNDS:
        predicted = countdown.milestone(name).at
        truth = report.last(kind)
        if truth is not None and truth > predicted:
            violations.append(
                f"{name} predicted {utc_iso(predicted)} but {kind or 'an access'} "
                f"at {utc_iso(truth)} ({(truth - predicted) / MINUTE:.1f} min later)"
            )
    signed_in = report.last(AccessKind.SIGN_IN)
    if signed_in is not None and signed_in >= scenario.disabled_at:
        violations.append(f"signed in at {utc_iso(signed_in)}, after the disable")
    return Outcome(
        scenario=scenario, countdown=countdown, report=report, violations=tuple(violations)
    )


# ---------------------------------------------------------------- the script


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def summary(label: str, slacks: Sequence[timedelta]) -> str:
    if not slacks:
        return f"  {label:<14} n=0"
    minutes = [s / MINUTE for s in slacks]
    return (
        f"  {label:<14} n={len(minutes):<5} median {statistics.median(minutes):7.1f}  "
        f"p90 {percentile(minutes, 0.9):7.1f}  max {max(minutes):7.1f}  (minutes)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--show", type=int, default=3, help="violations to print in full")
    args = parser.parse_args(argv)

    draw = RandomDraw(random.Random(args.seed))
    began = time.perf_counter()
    outcomes = [evaluate(draw_scenario(draw)) for _ in range(args.samples)]
    elapsed = time.perf_counter() - began

    bad = [o for o in outcomes if o.violations]
    print(f"samples:    {len(outcomes)} (seed {args.seed}, {elapsed:.1f} s)")
    print(f"violations: {len(bad)}")
    for outcome in bad[: args.show]:
        print(f"  {outcome.scenario}")
        for line in outcome.violations:
            print(f"    {line}")
    print("all-lapsed: prediction later than the true last access by")
    print(summary("overall", [o.all_lapsed_slack for o in outcomes]))
    print(summary("with deny", [o.all_lapsed_slack for o in outcomes if o.scenario.with_deny]))
    print(
        summary("without deny", [o.all_lapsed_slack for o in outcomes if not o.scenario.with_deny])
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
