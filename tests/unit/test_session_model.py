"""The session model against the worked examples in AWS's documents.

"Authentication sessions" (IAM Identity Center user guide): after a disable, no new sign-in;
new application and role sessions for up to 1 h; applications up to 2 h; AWS accounts up to
13 h with a 12 h permission set. The session-management blog post: deleting a portal session
does not end role sessions, the CLI goes on for up to 1 h. The reference notes: a deny keyed
on identitystore:userId bites within minutes of provisioning; removing an assignment does not
end role sessions.

The leaver samples on a grid, so a "last access" sits at most one step before the moment it
stops being possible (a session valid until T is last used at the step before T).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.clock import ManualClock, parse_iso
from worker.sandbox.common import AuditLog, FaultPlan, serve_on_loopback
from worker.sandbox.identity_center import SANDBOX_APPLICATION, IdentityCenterEmulator
from worker.sandbox.sessions import (
    AccessKind,
    AwsSessionFacts,
    Entitlement,
    LeaverReport,
    SessionModel,
    SimulatedLeaver,
    Timeline,
    denial_in_policy,
)

D = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)  # the disable, or the event under test
H = timedelta(hours=1)
MIN = timedelta(minutes=1)
STEP = MIN
USER = "9067c0ffee-alice"
PS = "arn:aws:sso:::permissionSet/ssoins-7223c0ffee000001/ps-0000000000000001"
ACCOUNT = "111111111111"
OTHER_ACCOUNT = "222222222222"
APP = "managed-app"
TARGET = f"{ACCOUNT}/{PS}"


def deny_policy(user_id: str) -> str:
    """The statement the reference recommends, as the worker writes it."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Deny",
                    "Action": "*",
                    "Resource": "*",
                    "Condition": {"StringEquals": {"identitystore:userId": user_id}},
                }
            ],
        }
    )


def world(duration: timedelta = 12 * H, facts: AwsSessionFacts | None = None) -> Timeline:
    timeline = Timeline(facts, open_applications=[APP])
    timeline.define_permission_set(PS, duration)
    timeline.assign(USER, PS, ACCOUNT)
    return timeline


def leave(
    timeline: Timeline,
    *,
    validated_at: datetime | None,
    start: datetime = D,
    until: datetime = D + 14 * H,
    step: timedelta = STEP,
) -> tuple[LeaverReport, SessionModel]:
    """Seed one sign-in session (if `validated_at`), then let the leaver try everything."""
    model = SessionModel(timeline)
    if validated_at is not None:
        model.add_sign_in_session(USER, issued_at=validated_at - 3 * H, validated_at=validated_at)
    return SimulatedLeaver(model, USER, step=step).run(start, until), model


def last(report: LeaverReport, kind: AccessKind, **filters: str) -> datetime:
    when = report.last(kind, **filters)
    assert when is not None, f"no {kind} access at all"
    return when


# ---------------------------------------------------------------- the documented table


def test_disable_with_a_freshly_validated_session_follows_the_table() -> None:
    timeline = world()
    timeline.disable_user(USER, D)
    # The worst phase: the session's cache was refreshed at the very moment of the disable.
    report, _ = leave(timeline, validated_at=D)

    assert report.last(AccessKind.SIGN_IN) is None  # "None (effective immediately)"
    assert D + H - STEP < last(report, AccessKind.SESSION_START) <= D + H  # "up to 1 hour"
    assert D + 2 * H - STEP <= last(report, AccessKind.APPLICATION) < D + 2 * H  # "up to 2 h"
    aws = last(report, AccessKind.AWS_ACCOUNT)
    assert D + 13 * H - STEP <= aws < D + 13 * H  # "up to 13 hours" with a 12 h set
    assert report.last_access == aws
    assert report.by_kind[AccessKind.AWS_ACCOUNT] == aws


@pytest.mark.parametrize("phase", [timedelta(0), timedelta(seconds=1), 17 * MIN, 59 * MIN])
def test_the_phase_of_the_last_validation_moves_everything(phase: timedelta) -> None:
    """Validated `phase` before the disable: the cache, and all that hangs on it, ends earlier."""
    timeline = world()
    timeline.disable_user(USER, D)
    report, _ = leave(timeline, validated_at=D - phase)

    end_of_cache = D - phase + H
    assert end_of_cache - STEP < last(report, AccessKind.SESSION_START) <= end_of_cache
    assert end_of_cache + H - 2 * STEP < last(report, AccessKind.APPLICATION) < end_of_cache + H
    aws = last(report, AccessKind.AWS_ACCOUNT)
    assert end_of_cache + 12 * H - 2 * STEP < aws < end_of_cache + 12 * H


@settings(max_examples=40, deadline=None)
@given(
    phase_minutes=st.integers(min_value=0, max_value=60),
    duration_hours=st.integers(min_value=1, max_value=12),
    step_seconds=st.sampled_from([30, 60, 300]),
    start_before_minutes=st.integers(min_value=0, max_value=180),
)
def test_never_beyond_the_table(
    phase_minutes: int, duration_hours: int, step_seconds: int, start_before_minutes: int
) -> None:
    """Whatever the phase, the duration, the grid, or how long the leaver was signed in."""
    timeline = world(duration_hours * H)
    timeline.disable_user(USER, D)
    report, _ = leave(
        timeline,
        validated_at=D - phase_minutes * MIN,
        start=D - start_before_minutes * MIN,
        until=D + 14 * H,
        step=timedelta(seconds=step_seconds),
    )
    assert last(report, AccessKind.SESSION_START) <= D + H
    assert last(report, AccessKind.APPLICATION) < D + 2 * H
    assert last(report, AccessKind.AWS_ACCOUNT) < D + H + duration_hours * H
    signed_in = report.last(AccessKind.SIGN_IN)
    assert signed_in is None or signed_in < D


def test_a_disabled_user_cannot_sign_in() -> None:
    timeline = world()
    timeline.disable_user(USER, D)
    model = SessionModel(timeline)
    assert model.sign_in(USER, D - MIN) is not None
    assert model.sign_in(USER, D) is None
    assert model.sign_in(USER, D + 5 * H) is None

    report, _ = leave(timeline, validated_at=None)
    assert report.accesses == ()

    timeline.enable_user(USER, D + 2 * H)
    assert model.sign_in(USER, D + 2 * H) is not None


def test_the_idp_alone_stops_new_sign_ins_but_not_sessions() -> None:
    timeline = world()
    timeline.deactivate_in_idp(USER, D)
    report, _ = leave(timeline, validated_at=D - 10 * MIN, until=D + 3 * H)
    assert report.last(AccessKind.SIGN_IN) is None
    # Identity Center still has the user enabled, so re-validations keep succeeding.
    assert last(report, AccessKind.SESSION_START) == D + 3 * H


# ---------------------------------------------------------------- the mechanisms


def test_a_sign_in_session_asks_the_directory_only_when_its_cache_is_stale() -> None:
    timeline = world()
    timeline.disable_user(USER, D)
    model = SessionModel(timeline)
    session = model.add_sign_in_session(USER, issued_at=D - 2 * H, validated_at=D - 30 * MIN)

    assert model.check_sign_in(session, D + 29 * MIN)
    assert session.last_validated_at == D - 30 * MIN  # served from the cache
    assert model.check_sign_in(session, D + 30 * MIN)  # "older than" an hour: not yet
    assert not model.check_sign_in(session, D + 31 * MIN)
    assert session.ended_at == D + 31 * MIN

    timeline.enable_user(USER, D + 40 * MIN)
    assert not model.check_sign_in(session, D + 41 * MIN)  # a refused session stays refused


def test_an_enabled_users_session_is_revalidated_and_goes_on() -> None:
    model = SessionModel(world())
    session = model.add_sign_in_session(USER, issued_at=D, validated_at=D)
    assert model.check_sign_in(session, D + 61 * MIN)
    assert session.last_validated_at == D + 61 * MIN
    assert not model.check_sign_in(session, D + 8 * H)  # the portal session duration
    assert session.ended_at == D + 8 * H


def test_an_application_session_needs_its_sign_in_session_to_refresh() -> None:
    timeline = world()
    timeline.disable_user(USER, D)
    model = SessionModel(timeline)
    session = model.add_sign_in_session(USER, issued_at=D - H, validated_at=D - 10 * MIN)
    app = model.start_application_session(session, APP, D)
    assert app is not None
    assert model.refresh_application_session(app, D + 50 * MIN)
    assert app.valid_until == D + 110 * MIN

    assert not model.refresh_application_session(app, D + 51 * MIN)  # the sign-in is gone
    assert app.ended_at is None  # but the application session lives out its hour
    assert model.use_application_session(app, D + 109 * MIN)
    assert not model.use_application_session(app, D + 110 * MIN)
    assert app.ended_at == D + 110 * MIN
    assert model.start_application_session(session, APP, D + 52 * MIN) is None


def test_role_sessions_outlive_disable_and_deletion_but_not_their_duration() -> None:
    timeline = world(4 * H)
    timeline.disable_user(USER, D)
    timeline.delete_sign_in_sessions(USER, D)
    model = SessionModel(timeline)
    session = model.add_sign_in_session(USER, issued_at=D - H, validated_at=D - MIN)
    role = model.start_role_session(session, Entitlement(PS, ACCOUNT, 4 * H), D + 58 * MIN)
    assert role is not None
    assert model.use_role_session(role, D + 4 * H + 57 * MIN)
    assert not model.use_role_session(role, D + 4 * H + 58 * MIN)
    unassigned = Entitlement(PS, OTHER_ACCOUNT, 4 * H)
    assert model.start_role_session(session, unassigned, D + 10 * MIN) is None


# ---------------------------------------------------------------- deny, removal, deletion


def test_a_provisioned_deny_ends_role_access_after_propagation() -> None:
    timeline = world()
    timeline.disable_user(USER, D)
    provisioned = D + 10 * MIN
    timeline.provision_policy(PS, deny_policy(USER), provisioned)
    bites = provisioned + timeline.facts.deny_propagation
    assert timeline.deny_effective_at(USER, PS, ACCOUNT) == bites
    report, model = leave(timeline, validated_at=D)

    assert bites - STEP <= last(report, AccessKind.AWS_ACCOUNT) < bites
    # Credentials can still be fetched while the sign-in session lasts; they are useless.
    assert last(report, AccessKind.SESSION_START, target=TARGET) == D + H
    assert model.role_sessions(USER)[-1].expires_at == D + 13 * H
    # Applications are not role sessions: the deny does not touch them.
    assert last(report, AccessKind.APPLICATION) == D + 2 * H - STEP


def test_a_deny_covers_only_the_accounts_it_was_provisioned_to() -> None:
    timeline = world()
    timeline.assign(USER, PS, OTHER_ACCOUNT)
    timeline.disable_user(USER, D)
    timeline.provision_policy(PS, deny_policy(USER), D + 10 * MIN, accounts=[ACCOUNT])
    report, _ = leave(timeline, validated_at=D)
    assert last(report, AccessKind.AWS_ACCOUNT, target=TARGET) < D + 15 * MIN
    other = last(report, AccessKind.AWS_ACCOUNT, target=f"{OTHER_ACCOUNT}/{PS}")
    assert other == D + 13 * H - STEP


def test_a_later_provisioning_without_the_deny_lifts_it() -> None:
    timeline = world()
    timeline.provision(PS, D, denied_user_ids=[USER])
    timeline.provision(PS, D + H, denied_user_ids=["someone-else"])
    report, _ = leave(timeline, validated_at=D, until=D + 2 * H)
    used = {a.at for a in report.accesses if a.kind == AccessKind.AWS_ACCOUNT}
    assert D + 4 * MIN in used
    assert not any(D + 5 * MIN <= at < D + H for at in used)
    assert D + H in used
    assert timeline.deny_effective_at(USER, PS, ACCOUNT) is None


@pytest.mark.parametrize("through", ["assignment", "group"])
def test_removing_access_stops_new_role_sessions_only(through: str) -> None:
    timeline = Timeline(open_applications=[APP])
    timeline.define_permission_set(PS, 12 * H)
    removed = D + 20 * MIN
    if through == "assignment":
        timeline.assign(USER, PS, ACCOUNT, removed_at=removed)
    else:
        timeline.assign("engineers", PS, ACCOUNT)
        timeline.add_member("engineers", USER)
        timeline.remove_member("engineers", USER, removed)
    timeline.disable_user(USER, D)
    report, model = leave(timeline, validated_at=D)

    refused_from = removed + timeline.facts.assignment_propagation
    assert refused_from - STEP <= last(report, AccessKind.SESSION_START, target=TARGET)
    assert last(report, AccessKind.SESSION_START, target=TARGET) < refused_from
    # The existing role sessions live their whole duration.
    newest = max(model.role_sessions(USER), key=lambda r: r.issued_at)
    assert newest.issued_at == refused_from - STEP
    assert last(report, AccessKind.AWS_ACCOUNT) == newest.expires_at - STEP
    # The sign-in session itself still opens applications until its cache goes stale.
    assert last(report, AccessKind.SESSION_START, target=APP) == D


def test_deleting_portal_sessions_without_a_disable() -> None:
    """IdP first (no new sign-in), then the console deletes the sessions; IC user enabled."""
    timeline = world(4 * H)
    timeline.deactivate_in_idp(USER, D - H)
    timeline.delete_sign_in_sessions(USER, D)
    model = SessionModel(timeline)
    session = model.add_sign_in_session(USER, issued_at=D - 2 * H, validated_at=D - 10 * MIN)
    model.attach_cli(session, validated_at=D)  # the CLI's own cache, refreshed at the deletion
    report = SimulatedLeaver(model, USER, step=STEP).run(D - 30 * MIN, D + 6 * H)

    assert report.last(AccessKind.SIGN_IN) is None
    # The CLI keeps fetching role credentials for up to an hour after the deletion ...
    assert last(report, AccessKind.SESSION_START, via="cli") == D + H
    # ... the browser session until its own (older) cache goes stale.
    assert last(report, AccessKind.SESSION_START, via="portal") == D + 50 * MIN
    assert session.deleted_at == D
    # Role sessions started before the deletion are not ended by it.
    before = [r for r in model.role_sessions(USER) if r.issued_at < D]
    assert before
    assert model.use_role_session(before[-1], D + 3 * H)
    # The last CLI credentials live the permission set's 4 h.
    assert last(report, AccessKind.AWS_ACCOUNT, via="cli") == D + 5 * H - STEP


def test_the_leaver_keeps_every_validation_phase_it_can() -> None:
    """IdP off at D, IC disabled 40 min later: some held session re-validated just before."""
    timeline = world()
    timeline.deactivate_in_idp(USER, D)
    timeline.disable_user(USER, D + 40 * MIN)
    report, _ = leave(timeline, validated_at=None, start=D - 3 * H, until=D + 15 * H)
    assert last(report, AccessKind.SIGN_IN) == D - STEP
    # Signed in every minute up to D, the leaver holds a session whose cache was refreshed
    # at D + 39 min, the last step the directory still said "enabled".
    assert last(report, AccessKind.SESSION_START) == D + 39 * MIN + H
    assert last(report, AccessKind.AWS_ACCOUNT) == D + 39 * MIN + 13 * H - STEP


# ---------------------------------------------------------------- a world that changes


def test_a_role_session_takes_the_duration_in_force_when_issued() -> None:
    """A set raised from 1 h to 12 h after the disable: sessions issued after the change
    live 12 h, those issued before keep their 1 h."""
    timeline = world(H)
    timeline.disable_user(USER, D)
    raised = D + 20 * MIN
    timeline.change_session_duration(PS, 12 * H, raised)
    assert timeline.session_duration(PS, raised - STEP) == H
    assert timeline.session_duration(PS, raised) == 12 * H
    assert timeline.session_duration(PS) == 12 * H
    report, model = leave(timeline, validated_at=D)
    issued = {r.issued_at: r.expires_at - r.issued_at for r in model.role_sessions(USER)}
    assert issued[D] == H
    assert issued[raised] == 12 * H
    assert D + 13 * H - STEP <= last(report, AccessKind.AWS_ACCOUNT) < D + 13 * H
    # Lowered instead: what was issued before the change keeps the longer duration.
    timeline = world(12 * H)
    timeline.disable_user(USER, D)
    timeline.change_session_duration(PS, H, D + 20 * MIN)
    report, _ = leave(timeline, validated_at=D)
    assert D + 12 * H + 20 * MIN - 2 * STEP <= last(report, AccessKind.AWS_ACCOUNT)
    assert last(report, AccessKind.AWS_ACCOUNT) < D + 12 * H + 20 * MIN


@pytest.mark.parametrize("through", ["user", "group"])
def test_an_assignment_added_after_the_disable_is_used_while_sessions_can_start(
    through: str,
) -> None:
    timeline = Timeline(open_applications=[APP])
    timeline.define_permission_set(PS, 12 * H)
    added = D + 10 * MIN
    if through == "user":
        timeline.assign(USER, PS, ACCOUNT, at=added)
    else:
        timeline.add_member("engineers", USER)
        timeline.assign("engineers", PS, ACCOUNT, at=added)
    timeline.disable_user(USER, D)
    report, model = leave(timeline, validated_at=D)
    first = min(r.issued_at for r in model.role_sessions(USER))
    assert first == added
    assert last(report, AccessKind.SESSION_START, target=TARGET) == D + H
    assert D + 13 * H - STEP <= last(report, AccessKind.AWS_ACCOUNT) < D + 13 * H
    # Added after the sign-in session's cache ran out: nothing can use it.
    late = Timeline(open_applications=[APP])
    late.define_permission_set(PS, 12 * H)
    late.assign(USER, PS, ACCOUNT, at=D + H + STEP)
    late.disable_user(USER, D)
    report, _ = leave(late, validated_at=D)
    assert report.last(AccessKind.AWS_ACCOUNT) is None


def background_world(duration: timedelta = 3 * H) -> Timeline:
    timeline = world(H, AwsSessionFacts(background_session_duration=duration))
    timeline.assign_application(USER, "studio")
    timeline.set_background_sessions("studio", True)
    return timeline


def test_a_background_session_outlives_sign_out_and_the_disable() -> None:
    timeline = background_world()
    timeline.disable_user(USER, D)
    timeline.delete_sign_in_sessions(USER, D + 5 * MIN)  # signed out everywhere
    report, model = leave(timeline, validated_at=D)
    # Started while application sessions could be (the sign-in session's cache) ...
    assert last(report, AccessKind.SESSION_START, target="background:studio") == D + H
    # ... each lives the instance's duration from its start, whatever the sign-in does.
    background = last(report, AccessKind.BACKGROUND, target="studio")
    assert D + 4 * H - STEP <= background < D + 4 * H
    assert report.last_access == background
    assert max(b.expires_at for b in model.background_sessions(USER)) == D + 4 * H
    # The sign-in session itself is long gone.
    assert last(report, AccessKind.APPLICATION) < D + 2 * H


def test_background_sessions_need_the_application_setting() -> None:
    timeline = world(H, AwsSessionFacts(background_session_duration=3 * H))
    timeline.assign_application(USER, "studio")
    timeline.disable_user(USER, D)
    report, _ = leave(timeline, validated_at=D)
    assert report.last(AccessKind.BACKGROUND) is None
    # Enabled half an hour after the disable: from then on, while sessions can start.
    timeline.set_background_sessions("studio", True, at=D + 30 * MIN)
    report, model = leave(timeline, validated_at=D)
    assert min(b.started_at for b in model.background_sessions(USER)) == D + 30 * MIN
    # Disabled again later: the sessions already running are not ended (undocumented:
    # the conservative reading).
    timeline.set_background_sessions("studio", False, at=D + 40 * MIN)
    report, _ = leave(timeline, validated_at=D)
    assert last(report, AccessKind.SESSION_START, target="background:studio") < D + 40 * MIN
    assert D + 40 * MIN + 3 * H - 2 * STEP <= last(report, AccessKind.BACKGROUND)
    assert last(report, AccessKind.BACKGROUND) < D + 40 * MIN + 3 * H


def test_re_enable_and_re_disable_extend_the_sessions() -> None:
    """Drift: re-enabled in Identity Center for ten minutes at +3 h, disabled again."""
    timeline = world()
    timeline.disable_user(USER, D)
    report, _ = leave(timeline, validated_at=D - 30 * MIN)
    assert last(report, AccessKind.SESSION_START) <= D + 30 * MIN  # the cache's end
    # The sessions ended before the re-enable stay ended; the CLI, validated separately
    # and later, is still within its cache: re-validated in the window, it goes on.
    drifted = world()
    drifted.deactivate_in_idp(USER, D - H)  # the playbook's first step
    drifted.disable_user(USER, D)
    drifted.enable_user(USER, D + 40 * MIN)
    drifted.disable_user(USER, D + 50 * MIN)
    model = SessionModel(drifted)
    session = model.add_sign_in_session(USER, issued_at=D - 3 * H, validated_at=D - 30 * MIN)
    model.attach_cli(session, validated_at=D - 15 * MIN)
    report = SimulatedLeaver(model, USER, step=STEP).run(D, D + 15 * H)
    assert (
        D + 45 * MIN - STEP < last(report, AccessKind.SESSION_START, via="cli") <= D + 50 * MIN + H
    )
    assert report.last(AccessKind.SIGN_IN) is None  # the IdP still refuses
    # With the IdP re-activated too, the leaver signs in anew inside the window.
    drifted.set_idp_allows_sign_in(USER, True, D + 40 * MIN)
    drifted.deactivate_in_idp(USER, D + 49 * MIN)
    report, _ = leave(drifted, validated_at=D - 30 * MIN)
    assert D + 40 * MIN <= last(report, AccessKind.SIGN_IN) < D + 49 * MIN
    assert D + 50 * MIN < last(report, AccessKind.SESSION_START) <= D + 49 * MIN + H


def test_cleanup_revives_role_sessions_still_inside_their_duration() -> None:
    """The deny taken off (provisioned again without it): what had not expired works."""
    timeline = world()
    timeline.disable_user(USER, D)
    timeline.provision_policy(PS, deny_policy(USER), D + 5 * MIN)
    timeline.provision_policy(PS, "", D + 3 * H)  # cleanup at +3 h
    report, _ = leave(timeline, validated_at=D)
    used = sorted(a.at for a in report.accesses if a.kind == AccessKind.AWS_ACCOUNT)
    bites = D + 5 * MIN + timeline.facts.deny_propagation
    assert not [at for at in used if bites <= at < D + 3 * H]
    assert D + 3 * H in used
    assert D + 13 * H - STEP <= used[-1] < D + 13 * H
    # Taken off only once the last session issued without it had expired: nothing revives.
    safe = world()
    safe.disable_user(USER, D)
    safe.provision_policy(PS, deny_policy(USER), D + 5 * MIN)
    safe.provision_policy(PS, "", D + 13 * H)
    report, _ = leave(safe, validated_at=D)
    assert last(report, AccessKind.AWS_ACCOUNT) < bites


def test_policy_reading() -> None:
    assert denial_in_policy(deny_policy(USER)) == (frozenset({USER}), False)
    many = {
        "Statement": {
            "Effect": "Deny",
            "Action": ["*"],
            "Resource": "*",
            "Condition": {"StringEquals": {"IdentityStore:UserId": ["a", "b"]}},
        }
    }
    assert denial_in_policy(json.dumps(many)) == (frozenset({"a", "b"}), False)
    everyone = {"Statement": [{"Effect": "Deny", "Action": "*", "Resource": "*"}]}
    assert denial_in_policy(json.dumps(everyone)) == (frozenset(), True)
    narrow = [
        {"Effect": "Deny", "Action": "s3:*", "Resource": "*"},
        {"Effect": "Allow", "Action": "*", "Resource": "*"},
        {"Effect": "Deny", "NotAction": "iam:*", "Action": "*", "Resource": "*"},
        {
            "Effect": "Deny",
            "Action": "*",
            "Resource": "*",
            "Condition": {"StringEquals": {"identitystore:userId": USER, "aws:Region": "x"}},
        },
        {
            "Effect": "Deny",
            "Action": "*",
            "Resource": "*",
            "Condition": {"StringLike": {"identitystore:userId": USER}},
        },
    ]
    assert denial_in_policy(json.dumps({"Statement": narrow})) == (frozenset(), False)
    assert denial_in_policy("") == (frozenset(), False)
    assert denial_in_policy("{not json") == (frozenset(), False)


def test_facts_are_checked() -> None:
    with pytest.raises(ValueError, match="signin_validation_cache"):
        AwsSessionFacts(signin_validation_cache=timedelta(0))
    with pytest.raises(ValueError, match="deny_propagation"):
        AwsSessionFacts(deny_propagation=-MIN)


# ---------------------------------------------------------------- the emulator, over HTTP

SCIM_TOKEN = "scim-sandbox-token"
SECRET = "sandbox-secret"
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


@dataclass
class Served:
    emulator: IdentityCenterEmulator
    clock: ManualClock
    url: str
    http: aiohttp.ClientSession


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    clock = ManualClock(T0)
    emulator = IdentityCenterEmulator(
        audit=AuditLog(clock),
        faults=FaultPlan(seed=1),
        clock=clock,
        scim_token=SCIM_TOKEN,
        provisioning_delay=30.0,
        secret_access_key=SECRET,
    )
    server = await serve_on_loopback(emulator.app())
    try:
        async with aiohttp.ClientSession() as http:
            yield Served(emulator, clock, server.url, http)
    finally:
        await server.close()


async def simulate(served: Served, user_id: str, until: datetime, step: int = 60) -> Any:
    url = f"{served.url}/_sandbox/identity-center/users/{user_id}/simulate"
    body = {"until": until.isoformat(), "step_seconds": step}
    async with served.http.post(url, json=body) as response:
        assert response.status == 200, await response.text()
        return await response.json()


def at(text: str | None) -> timedelta | None:
    return None if text is None else parse_iso(text) - T0


async def test_emulator_scim_disable_and_console_deletion_then_simulate(served: Served) -> None:
    emulator = served.emulator
    user_id = emulator.add_user("alice@example.com")
    ps = emulator.add_permission_set("Admin", session_duration="PT12H")
    emulator.add_account_assignment(
        account_id=ACCOUNT, permission_set_arn=ps, principal_type="USER", principal_id=user_id
    )
    emulator.open_portal_session(user_id)  # signed in, validated at T0

    served.clock.advance(timedelta(minutes=20))
    patch = {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "replace", "path": "active", "value": False}],
    }
    async with served.http.patch(
        f"{served.url}/scim/v2/Users/{user_id}",
        json=patch,
        headers={"Authorization": f"Bearer {SCIM_TOKEN}"},
    ) as response:
        assert response.status == 200
    served.clock.advance(timedelta(minutes=1))
    async with served.http.delete(
        f"{served.url}/_console/users/{user_id}/portal-sessions"
    ) as response:
        assert await response.json() == {"deleted": 1}
    served.clock.advance(timedelta(minutes=1))  # D = T0 + 20 min; now T0 + 22 min

    result = await simulate(served, user_id, served.clock.now() + 14 * H)
    by_kind = {kind: at(when) for kind, when in result["by_kind"].items()}
    assert by_kind == {
        "sign_in": None,
        "session_start": H,  # the session's cache, refreshed at T0, lasts to T0 + 1 h
        "application": 2 * H - MIN,
        "aws_account": 13 * H - MIN,
        "background": None,  # no application here keeps user background sessions
    }
    assert at(result["last_access"]) == 13 * H - MIN
    assert result["accesses"] > 0
    # A what-if: the emulator's own sessions are not moved by it.
    assert await simulate(served, user_id, served.clock.now() + 14 * H) == result
    [seeded] = emulator.sessions.sign_in_sessions(user_id)
    assert seeded.last_validated_at == T0 and seeded.ended_at is None

    base = f"{served.url}/_sandbox/identity-center/users"
    for user, body, status in [
        ("nobody", {"until": "2026-01-06T00:00:00Z"}, 404),
        (user_id, {"until": "yesterday"}, 400),
        (user_id, {"until": "2026-01-05T08:00:00Z"}, 400),
        (user_id, {"until": "2026-01-06T00:00:00Z", "step_seconds": 0}, 400),
        (user_id, {}, 400),
    ]:
        async with served.http.post(f"{base}/{user}/simulate", json=body) as response:
            assert response.status == status, body


async def test_emulator_deny_through_sso_admin_then_simulate(served: Served) -> None:
    emulator = served.emulator
    user_id = emulator.add_user("bob@example.com")
    group_id = emulator.add_group("engineers")
    emulator.add_membership(group_id, user_id)
    ps = emulator.add_permission_set("Admin", session_duration="PT8H")
    emulator.add_account_assignment(
        account_id=ACCOUNT, permission_set_arn=ps, principal_type="GROUP", principal_id=group_id
    )
    emulator.open_portal_session(user_id)
    served.clock.advance(timedelta(minutes=10))
    async with served.http.post(f"{served.url}/_console/users/{user_id}/disable") as response:
        assert response.status == 200

    async with get_session().create_client(
        "sso-admin",
        region_name="us-east-1",
        endpoint_url=served.url,
        aws_access_key_id=emulator.access_key_id,
        aws_secret_access_key=SECRET,
        config=AioConfig(retries={"total_max_attempts": 1}),
    ) as admin:
        await admin.put_inline_policy_to_permission_set(
            InstanceArn=emulator.instance_arn,
            PermissionSetArn=ps,
            InlinePolicy=deny_policy(user_id),
        )
        answer = await admin.provision_permission_set(
            InstanceArn=emulator.instance_arn,
            PermissionSetArn=ps,
            TargetType="ALL_PROVISIONED_ACCOUNTS",
        )
        assert answer["PermissionSetProvisioningStatus"]["Status"] == "IN_PROGRESS"

    # Provisioning succeeds 30 s later (T0 + 10.5 min); the deny bites 5 min after that.
    deny_bites = timedelta(minutes=15, seconds=30)
    assert emulator.session_timeline.deny_effective_at(user_id, ps, ACCOUNT) == T0 + deny_bites
    result = await simulate(served, user_id, served.clock.now() + 10 * H)
    assert at(result["by_kind"]["aws_account"]) == 15 * MIN  # the last step before it bites
    assert at(result["by_kind"]["session_start"]) == H
    assert at(result["by_kind"]["application"]) == 2 * H - MIN
    assert SANDBOX_APPLICATION in emulator.session_timeline.open_applications
