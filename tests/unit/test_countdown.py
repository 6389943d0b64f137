"""The residual-access countdown: AWS's worked examples, and never earlier than the truth.

The table in AWS's "Authentication sessions" page (seed 002): after a disable, no new
sign-in; new application and role sessions for up to 1 h; applications up to 2 h; AWS
accounts up to 1 h + the permission set's session duration (13 h with 12 h).

The truth is the mechanistic session model (worker.sandbox.sessions): a leaver who tries
every way in, every step. Its propagation delays are at most the worker's configured
margins (the real-world assumption), and the worker only ever sees a change after it
happened, so each prediction must be at or after the model's last access of its kind.
The random leavers come from bench/countdown_tightness.py (one generator for both).
"""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from contextlib import redirect_stdout
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.countdown_tightness import (
    ACCOUNTS,
    BOUNDS,
    ApplicationSpec,
    Drift,
    HeldSession,
    Outcome,
    PermissionSetSpec,
    RandomDraw,
    Scenario,
    Weakening,
    app_arn,
    arn,
    draw_scenario,
    evaluate,
    evidence_of,
    last_covered,
    main,
    milestone_times,
    not_covered,
    observe,
    restart,
    settings_for,
)
from worker.countdown import (
    Countdown,
    CountdownInput,
    CountdownInputs,
    ReachablePermissionSet,
    SessionSettings,
    compute,
    inputs_from_evidence,
    inputs_from_json,
    iso_duration,
    parse_iso_duration,
    parse_session_duration,
)
from worker.sandbox.sessions import AccessKind

D = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)  # the disable, as the worker verified it
H = timedelta(hours=1)
MIN = timedelta(minutes=1)
STEP = MIN
SETTINGS = SessionSettings()
MILESTONES = ("new-sessions-end", "applications-lapse", "role-sessions-lapse", "all-lapsed")


def permission_set(
    duration: timedelta | None, *, index: int = 1, via: tuple[str, ...] = ("USER",)
) -> ReachablePermissionSet:
    return ReachablePermissionSet(
        arn=arn(index),
        name=f"Set{index}",
        session_duration=duration,
        accounts=(ACCOUNTS[0],),
        via=via,
    )


def predict(
    *sets: ReachablePermissionSet,
    portal: datetime | None = None,
    unassigned: datetime | None = None,
    deny: datetime | None = None,
) -> Countdown:
    return compute(
        CountdownInputs(
            ic_disabled_at=D,
            permission_sets=sets,
            portal_revoked_at=portal,
            unassigned_at=unassigned,
            deny_provisioned_at=deny,
        ),
        SETTINGS,
    )


def times(countdown: Countdown) -> dict[str, datetime]:
    return {m.name: m.at for m in countdown.milestones}


# ---------------------------------------------------------------- the worked examples


def test_a_12h_permission_set_without_hardening_follows_the_table() -> None:
    countdown = predict(permission_set(12 * H))
    assert times(countdown) == {
        "new-sessions-end": D + H,  # "up to 1 hour"
        "applications-lapse": D + 2 * H,  # "up to 2 hours"
        "role-sessions-lapse": D + 13 * H,  # "up to 13 hours"
        "all-lapsed": D + 13 * H,
    }
    assert [m.name for m in countdown.milestones] == list(MILESTONES)
    assert countdown.all_lapsed == D + 13 * H
    assert "longest reachable role session: Set1 (12 h)" in countdown.reasons
    # Both hardening steps are offered, with what they would change.
    assert len(countdown.would_shorten) == 2
    assert "deny_role_sessions" in countdown.would_shorten[0]
    assert "2026-03-03T03:00:00.000Z" in countdown.would_shorten[0]
    assert "remove_access" in countdown.would_shorten[1]


def test_a_deny_five_minutes_after_the_disable_cuts_role_sessions_to_minutes() -> None:
    deny = D + 5 * MIN
    countdown = predict(permission_set(12 * H), deny=deny)
    at = times(countdown)
    # Role sessions end a margin after the deny, no longer hours after the disable ...
    assert at["role-sessions-lapse"] == deny + 15 * MIN == D + 20 * MIN
    # ... but a deny on permission sets does not touch applications: still up to 2 h.
    assert at["applications-lapse"] == D + 2 * H
    assert at["new-sessions-end"] == D + H
    # So all-lapsed is the later of the two: the applications, at disable + 2 h.
    assert at["all-lapsed"] == max(at["applications-lapse"], at["role-sessions-lapse"])
    assert at["all-lapsed"] == D + 2 * H
    assert any("deny statement provisioned" in r for r in countdown.reasons)
    assert not any("deny_role_sessions" in s for s in countdown.would_shorten)


def test_a_late_deny_is_what_all_lapsed_waits_for() -> None:
    deny = D + 3 * H
    at = times(predict(permission_set(12 * H), deny=deny))
    assert at["role-sessions-lapse"] == deny + 15 * MIN
    assert at["all-lapsed"] == at["role-sessions-lapse"] == D + 3 * H + 15 * MIN
    # A deny after the sessions have lapsed on their own changes nothing.
    short = times(predict(permission_set(2 * H), deny=D + 5 * H))
    assert short["role-sessions-lapse"] == D + 3 * H
    assert short["all-lapsed"] == D + 3 * H


def test_an_unknown_duration_counts_as_12_hours() -> None:
    unknown = predict(permission_set(None))
    assert times(unknown) == times(predict(permission_set(12 * H)))
    assert unknown.all_lapsed == D + 13 * H
    # Even beside a known, shorter set; and the longest one is named.
    mixed = predict(permission_set(4 * H, index=1), permission_set(None, index=2))
    assert mixed.milestone("role-sessions-lapse").at == D + 13 * H
    assert "longest reachable role session: Set2 (12 h)" in mixed.reasons
    # A configured maximum is what "unknown" means.
    longer = compute(unknown.inputs, replace(SETTINGS, max_role_session=14 * H))
    assert longer.all_lapsed == D + 15 * H


def test_the_longest_reachable_set_decides() -> None:
    countdown = predict(
        permission_set(H, index=1),
        permission_set(4 * H + 30 * MIN, index=2, via=("GROUP:engineers",)),
        permission_set(2 * H, index=3, via=("USER", "GROUP:oncall")),
    )
    assert countdown.milestone("role-sessions-lapse").at == D + 5 * H + 30 * MIN
    assert countdown.all_lapsed == D + 5 * H + 30 * MIN
    assert "longest reachable role session: Set2 (4 h 30 min)" in countdown.reasons


def test_no_permission_sets() -> None:
    countdown = predict()
    at = times(countdown)
    # No role session can outlive the new ones; the applications are what is left.
    assert at["role-sessions-lapse"] == at["new-sessions-end"] == D + H
    assert at["applications-lapse"] == at["all-lapsed"] == D + 2 * H
    assert countdown.would_shorten == ()
    assert any("no permission set reachable" in r for r in countdown.reasons)
    # A deny has nothing to cut; a removal only moves the (empty) role milestone earlier.
    assert times(predict(deny=D + 5 * MIN)) == at
    removed = times(predict(unassigned=D + 5 * MIN))
    assert removed["role-sessions-lapse"] == D + 20 * MIN
    assert removed["all-lapsed"] == at["all-lapsed"]


def test_removing_access_shortens_new_role_sessions_only() -> None:
    unassigned = D + 10 * MIN
    at = times(predict(permission_set(12 * H), unassigned=unassigned))
    # No new role session after the removal's margin; each lives its full 12 h.
    assert at["role-sessions-lapse"] == unassigned + 15 * MIN + 12 * H == D + 12 * H + 25 * MIN
    assert at["all-lapsed"] == at["role-sessions-lapse"]
    # Applications hang on the sign-in session, not on account assignments.
    assert at["new-sessions-end"] == D + H
    assert at["applications-lapse"] == D + 2 * H
    # Removed late (after the cached sign-in session is gone anyway): nothing changes.
    late = times(predict(permission_set(12 * H), unassigned=D + 50 * MIN))
    assert late == times(predict(permission_set(12 * H)))
    # With a deny as well, the deny wins for role sessions.
    both = times(predict(permission_set(12 * H), unassigned=unassigned, deny=D + 5 * MIN))
    assert both["role-sessions-lapse"] == D + 20 * MIN
    assert both["all-lapsed"] == D + 2 * H


def test_portal_sessions_deleted_after_the_disable_change_nothing() -> None:
    """The disabled user's cached sign-in sessions already end within the hour."""
    alone = times(predict(permission_set(12 * H)))
    assert times(predict(permission_set(12 * H), portal=D + 2 * MIN)) == alone
    # Deleted before the disable (confirmed earlier): the CLI stops an hour after that.
    early = times(predict(permission_set(12 * H), portal=D - 30 * MIN))
    assert early["new-sessions-end"] == D + 30 * MIN
    assert early["applications-lapse"] == D + 90 * MIN
    assert early["role-sessions-lapse"] == D + 12 * H + 30 * MIN


# ---------------------------------------------------------------- durations and JSON


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("PT1H", H),
        ("PT12H", 12 * H),
        ("PT90M", 90 * MIN),
        ("PT1H30M", 90 * MIN),
        ("PT30S", timedelta(seconds=30)),
        ("PT1H0M30S", H + timedelta(seconds=30)),
        ("PT0.5H", 30 * MIN),
        # days: user background sessions last 7 days by default (P7D)
        ("P1D", 24 * H),
        ("P7D", 7 * 24 * H),
        ("P1DT1H", 25 * H),
    ],
)
def test_parse_iso_duration(text: str, expected: timedelta) -> None:
    assert parse_iso_duration(text) == expected
    assert parse_iso_duration(str(iso_duration(expected))) == expected


@pytest.mark.parametrize(
    "text", ["PT", "P", "P1DT", "1H", "PT-1H", "", "PTH", "PT1X", "PT1H30", "PT0S", "PT0H", "P1Y"]
)
def test_parse_iso_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="not an ISO-8601 duration"):
        parse_iso_duration(text)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("PT4H", 4 * H),  # AWS
        (3600, H),  # moto, for a set created without one
        ("3600", H),
        (5400.0, 90 * MIN),
        (None, None),
        ("", None),
        ("soon", None),
        (0, None),
        (True, None),
    ],
)
def test_session_durations_are_read_in_any_shape(value: object, expected: timedelta | None) -> None:
    assert parse_session_duration(value) == expected


def test_iso_duration_writes_what_aws_writes() -> None:
    assert iso_duration(None) is None
    assert iso_duration(H) == "PT1H"
    assert iso_duration(12 * H) == "PT12H"
    assert iso_duration(90 * MIN) == "PT1H30M"
    assert iso_duration(45 * MIN) == "PT45M"
    assert iso_duration(H + timedelta(seconds=5)) == "PT1H5S"


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(seconds=st.integers(min_value=1, max_value=7 * 24 * 3600))
def test_iso_duration_round_trips(seconds: int) -> None:
    delta = timedelta(seconds=seconds)
    text = iso_duration(delta)
    assert text is not None
    assert parse_iso_duration(text) == delta
    assert iso_duration(parse_iso_duration(text)) == text


def test_permission_set_json_round_trip() -> None:
    for duration in (None, 12 * H, 90 * MIN):
        ps = permission_set(duration, via=("USER", "GROUP:engineers"))
        assert ReachablePermissionSet.from_json(ps.as_json()) == ps
    assert permission_set(None).as_json()["session_duration"] is None


def test_restarts_recompute_the_same_milestones() -> None:
    countdown = predict(
        permission_set(None, index=1),
        permission_set(4 * H, index=2, via=("GROUP:engineers",)),
        portal=D + 3 * MIN,
        unassigned=D + 20 * MIN,
        deny=D + 7 * MIN,
    )
    for how in ("json", "evidence"):
        again = restart(countdown, how)
        assert again.inputs == countdown.inputs
        assert milestone_times(again) == milestone_times(countdown)
    assert inputs_from_json(countdown.as_json()["inputs"]) == countdown.inputs
    assert inputs_from_evidence(evidence_of(countdown.inputs)) == countdown.inputs


def test_evidence_without_a_verified_disable_has_no_countdown() -> None:
    assert inputs_from_evidence({}) is None
    assert inputs_from_evidence({CountdownInput.IC_DISABLED: {"method": "console"}}) is None


def test_after_drift_the_countdown_restarts_from_the_new_disable_without_hardening() -> None:
    inputs = predict(permission_set(12 * H), deny=D + 5 * MIN, unassigned=D + 6 * MIN).inputs
    drift = {
        "redisabled_at": "2026-03-02T16:00:00.000Z",
        "permission_sets": [permission_set(2 * H).as_json()],
    }
    after = inputs_from_evidence(evidence_of(inputs), drift)
    assert after is not None
    assert after.ic_disabled_at == D + 2 * H
    assert after.deny_provisioned_at is None and after.unassigned_at is None
    # issue 13: the earlier epoch's 12 h set stays counted (a session it issued before
    # the drift lives on); before, the drift's 2 h read replaced it (D + 2 h + 3 h)
    assert compute(after, SETTINGS).all_lapsed == D + 2 * H + 1 * H + 12 * H


# ---------------------------------------------------------------- the model agrees


def worked(
    durations: Sequence[timedelta],
    *,
    known: bool = True,
    deny: datetime | None = None,
    unassigned: datetime | None = None,
    applications: tuple[ApplicationSpec, ...] = (
        ApplicationSpec(app_id="app-1", name="app-1", principal="open", background=False),
    ),
    cleanup: bool = False,
) -> Scenario:
    """A worked example in the worst phase: the session validated at the very disable,
    every change seen the moment it happened, true propagation equal to the margin."""
    sets = tuple(
        PermissionSetSpec(
            arn=arn(i + 1),
            name=f"Set{i + 1}",
            duration=d,
            known=known,
            accounts=(ACCOUNTS[0],),
            direct=True,
            groups=(),
        )
        for i, d in enumerate(durations)
    )
    return Scenario(
        disabled_at=D,
        disable_seen_at=D,
        idp_deactivated_at=D - 2 * H,
        sessions=(HeldSession(issued_at=D - 3 * H, validated_at=D, cli_validated_at=D),),
        permission_sets=sets,
        applications=applications,
        applications_readable=True,
        background_session=7 * 24 * H,
        portal_deleted_at=None,
        portal_seen_at=None,
        deny_started_at=deny,
        deny_spread=tuple(timedelta(0) for _ in sets) if deny else (),
        deny_propagation=SETTINGS.deny_propagation,
        # the snapshot at the start; each removal lands a second later, seen at once
        removal_started_at=unassigned - timedelta(seconds=1) if unassigned else None,
        removal_spread=tuple(timedelta(0) for _ in sets) if unassigned else (),
        assignment_propagation=SETTINGS.unassign_propagation,
        seen_after=timedelta(0),
        drift=None,
        cleanup=cleanup,
        restarts=("json", "evidence"),
        step=STEP,
    )


def true_last(outcome: Outcome, kind: AccessKind | None) -> datetime:
    when = outcome.report.last(kind)
    assert when is not None, f"no {kind or 'access'} at all"
    return when


def assert_tight(outcome: Outcome, name: str, kind: AccessKind | None) -> None:
    """At or before the prediction, and within two steps of it."""
    predicted = outcome.countdown.milestone(name).at
    assert predicted - 2 * STEP <= true_last(outcome, kind) <= predicted, name


def test_the_model_agrees_on_a_12h_set_without_hardening() -> None:
    outcome = evaluate(worked([12 * H]))
    assert outcome.violations == ()
    assert outcome.countdown.all_lapsed == D + 13 * H
    assert_tight(outcome, "new-sessions-end", AccessKind.SESSION_START)
    assert_tight(outcome, "applications-lapse", AccessKind.APPLICATION)
    assert_tight(outcome, "role-sessions-lapse", AccessKind.AWS_ACCOUNT)
    assert_tight(outcome, "all-lapsed", None)
    assert outcome.report.last(AccessKind.SIGN_IN) is None


def test_the_model_agrees_on_a_deny_five_minutes_after_the_disable() -> None:
    outcome = evaluate(worked([12 * H], deny=D + 5 * MIN))
    assert outcome.violations == ()
    assert outcome.countdown.milestone("role-sessions-lapse").at == D + 20 * MIN
    assert_tight(outcome, "role-sessions-lapse", AccessKind.AWS_ACCOUNT)
    # The last access of all is an application, just before disable + 2 h.
    assert_tight(outcome, "applications-lapse", AccessKind.APPLICATION)
    assert_tight(outcome, "all-lapsed", None)
    assert outcome.report.last_access == outcome.report.last(AccessKind.APPLICATION)
    # With the model's own (shorter) propagation the truth comes sooner, never later.
    quicker = evaluate(replace(worked([12 * H], deny=D + 5 * MIN), deny_propagation=5 * MIN))
    assert quicker.violations == ()
    assert true_last(quicker, AccessKind.AWS_ACCOUNT) < D + 10 * MIN


def test_the_model_agrees_on_an_unknown_duration() -> None:
    outcome = evaluate(worked([12 * H], known=False))
    assert outcome.violations == ()
    assert outcome.countdown.all_lapsed == D + 13 * H
    assert_tight(outcome, "role-sessions-lapse", AccessKind.AWS_ACCOUNT)
    # Really one hour: the 12 h assumption is safe, and loose by 11 h.
    short = evaluate(worked([H], known=False))
    assert short.violations == ()
    assert short.countdown.all_lapsed - true_last(short, None) >= 11 * H


def test_the_model_agrees_without_permission_sets() -> None:
    outcome = evaluate(worked([]))
    assert outcome.violations == ()
    assert outcome.report.last(AccessKind.AWS_ACCOUNT) is None
    # The one application session opened at once is refreshed, not started again.
    assert true_last(outcome, AccessKind.SESSION_START) <= D + H
    assert_tight(outcome, "applications-lapse", AccessKind.APPLICATION)
    assert_tight(outcome, "all-lapsed", None)
    assert outcome.countdown.all_lapsed == D + 2 * H


def test_the_model_agrees_on_removed_access() -> None:
    outcome = evaluate(worked([12 * H], unassigned=D + 10 * MIN))
    assert outcome.violations == ()
    assert outcome.countdown.all_lapsed == D + 12 * H + 25 * MIN
    assert_tight(outcome, "role-sessions-lapse", AccessKind.AWS_ACCOUNT)
    assert_tight(outcome, "all-lapsed", None)
    # The last new role session: just before the removal's margin ran out.
    last_start = true_last(outcome, AccessKind.SESSION_START)
    assert D + 25 * MIN - 2 * STEP <= last_start < D + 25 * MIN
    assert last_start <= outcome.countdown.milestone("new-sessions-end").at
    # Applications go on off the sign-in session.
    assert_tight(outcome, "applications-lapse", AccessKind.APPLICATION)


# ---------------------------------------------------------------- the world changes


def with_set(scenario: Scenario, spec: PermissionSetSpec) -> Scenario:
    """One more set; its deny and removal, if any, land with the others'."""
    return replace(
        scenario,
        permission_sets=(*scenario.permission_sets, spec),
        deny_spread=scenario.deny_spread + scenario.deny_spread[:1],
        removal_spread=scenario.removal_spread + (timedelta(0),) * 2,
    )


def assert_safe_and_needed(scenario: Scenario, weakening: Weakening) -> Outcome:
    """No violation under the contract; one once `weakening` takes a mechanism away."""
    outcome = evaluate(scenario, SETTINGS)
    assert outcome.violations == (), outcome.violations
    weakened = evaluate(scenario, SETTINGS, weakening)
    assert weakened.violations, f"{weakening} changed nothing"
    return outcome


def test_cleanup_waits_for_the_role_bound_without_the_deny() -> None:
    """Flow 1: a cleanup at all-lapsed (+2 h) revives 12 h role sessions until +13 h."""
    outcome = assert_safe_and_needed(
        worked([12 * H], deny=D + 5 * MIN, cleanup=True), Weakening.CLEANUP_AT_ALL_LAPSED
    )
    assert outcome.countdown.all_lapsed == D + 2 * H
    assert outcome.cleanup_at == outcome.countdown.deny_removable_at == D + 13 * H
    # Nothing after the deny bit, and nothing after the cleanup: the sessions had expired.
    assert true_last(outcome, AccessKind.AWS_ACCOUNT) < D + 20 * MIN
    weakened = evaluate(outcome.scenario, SETTINGS, Weakening.CLEANUP_AT_ALL_LAPSED)
    assert weakened.cleanup_at == D + 2 * H
    assert true_last(weakened, AccessKind.AWS_ACCOUNT) > weakened.cleanup_at  # revived


def group_set(index: int, duration: timedelta, added_at: datetime | None) -> PermissionSetSpec:
    return PermissionSetSpec(
        arn=arn(index),
        name=f"Set{index}",
        duration=duration,
        known=True,
        accounts=(ACCOUNTS[1],),
        direct=False,
        groups=("engineers",),
        added_at=added_at,
    )


def test_a_set_assigned_to_the_group_after_the_disable_is_read_and_denied() -> None:
    """Flow 2: a 12 h set given to the person's group ten minutes after the disable."""
    scenario = with_set(worked([H], deny=D + 5 * MIN), group_set(2, 12 * H, D + 10 * MIN))
    outcome = assert_safe_and_needed(scenario, Weakening.READ_ONCE)
    observation = observe(scenario, settings_for(scenario, SETTINGS))
    assert {ps.arn for ps in outcome.countdown.inputs.permission_sets} == {arn(1), arn(2)}
    # The re-read at +10 min found it; the deny was merged and provisioned on it then.
    assert observation.deny_succeeded[arn(2)] == D + 10 * MIN
    assert outcome.countdown.inputs.deny_provisioned_at == D + 10 * MIN
    assert outcome.countdown.milestone("role-sessions-lapse").at == D + 25 * MIN
    # A deny step that ignores the late set must not count as covering it.
    assert evaluate(scenario, SETTINGS, Weakening.DENY_IGNORES_LATE_SETS).violations
    # Without a deny the 12 h set is in the bound: disable + 1 h + 12 h.
    bare = assert_safe_and_needed(
        with_set(worked([H]), group_set(2, 12 * H, D + 10 * MIN)), Weakening.READ_ONCE
    )
    assert bare.countdown.all_lapsed == D + 13 * H


def test_a_duration_raised_after_the_disable_counts() -> None:
    """Flow 3: a set raised from 1 h to 12 h after the disable keeps no 1 h."""
    base = worked([H])
    raised = replace(base.permission_sets[0], changed_to=(12 * H, D + 10 * MIN))
    outcome = assert_safe_and_needed(replace(base, permission_sets=(raised,)), Weakening.READ_ONCE)
    assert outcome.countdown.all_lapsed == D + 13 * H
    # A role session issued after the change got the new duration: used until about +13 h.
    assert D + 12 * H < true_last(outcome, AccessKind.AWS_ACCOUNT) <= D + 13 * H
    # Lowered instead: the sessions issued before keep 12 h; the union keeps the longest.
    base = worked([12 * H])
    lowered = replace(base.permission_sets[0], changed_to=(H, D + 30 * MIN))
    outcome = assert_safe_and_needed(
        replace(base, permission_sets=(lowered,)), Weakening.LATEST_READ
    )
    assert outcome.countdown.all_lapsed == D + 13 * H


def drifted(scenario: Scenario, enabled_at: datetime, *, idp: bool = False) -> Scenario:
    return replace(
        scenario,
        drift=Drift(
            enabled_at=enabled_at,
            idp_reactivated=idp,
            idp_redeactivated_at=enabled_at + 9 * MIN,
            redisabled_at=enabled_at + 10 * MIN,
            redisable_seen_at=enabled_at + 10 * MIN,
        ),
    )


def test_after_drift_every_epoch_counts() -> None:
    """Flow 4: re-enabled after remove_access, disabled again: the fresh read is empty,
    yet the 12 h role sessions issued before the drift are still in the bound."""
    scenario = drifted(worked([12 * H], unassigned=D + 10 * MIN), D + 3 * H)
    outcome = evaluate(scenario, SETTINGS)
    assert outcome.violations == ()
    inputs = outcome.countdown.inputs
    assert [ps.arn for ps in inputs.permission_sets] == [arn(1)]
    assert inputs.floor == D + 12 * H + 25 * MIN
    assert inputs.ic_disabled_at == D + 3 * H + 10 * MIN
    # removal is not trusted from before the drift: the union's set bounds the new epoch
    assert outcome.countdown.all_lapsed == D + 3 * H + 10 * MIN + 13 * H
    # The union and the floor each keep the earlier sessions (the union: a set no longer
    # listed; the floor: the earlier bound); with neither, as before, they drop out.
    forgot = evaluate(scenario, SETTINGS, Weakening.DRIFT_FORGETS)
    assert forgot.countdown.inputs.permission_sets == ()
    assert forgot.violations
    assert true_last(forgot, AccessKind.AWS_ACCOUNT) > forgot.countdown.all_lapsed


def test_after_drift_with_a_deny_the_floor_holds() -> None:
    """A deny kept the first epoch short; the re-enable let the leaver sign in again."""
    scenario = drifted(worked([2 * H], deny=D + 5 * MIN, cleanup=True), D + 90 * MIN, idp=True)
    outcome = evaluate(scenario, SETTINGS)
    assert outcome.violations == ()
    assert outcome.countdown.inputs.floor == D + 2 * H
    assert outcome.report.last(AccessKind.SIGN_IN) is not None  # in the re-enabled window
    assert outcome.countdown.inputs.deny_provisioned_at is None  # not trusted after drift


def background_app(**changes: object) -> ApplicationSpec:
    spec = ApplicationSpec(app_id=app_arn(1), name="Studio", principal="USER", background=True)
    return replace(spec, **changes)  # type: ignore[arg-type]


def test_background_sessions_get_their_own_milestone() -> None:
    scenario = replace(worked([H]), applications=(background_app(),), background_session=3 * H)
    outcome = assert_safe_and_needed(scenario, Weakening.NO_APPLICATIONS)
    lapse = outcome.countdown.milestone("background-sessions-lapse").at
    assert lapse == D + H + 3 * H == outcome.countdown.all_lapsed
    # started until new sessions end, each living the instance's 3 h past the disable
    last = true_last(outcome, AccessKind.BACKGROUND)
    assert lapse - 2 * STEP <= last < lapse
    # Enabled and assigned late, in the window: the re-reads find it.
    late_app = replace(scenario, applications=(background_app(added_at=D + 20 * MIN),))
    assert_safe_and_needed(late_app, Weakening.READ_ONCE)
    enabled_late = replace(scenario, applications=(background_app(background_since=D + 20 * MIN),))
    assert_safe_and_needed(enabled_late, Weakening.READ_ONCE)


def test_background_sessions_that_cannot_be_read_are_named_not_covered() -> None:
    unread = replace(
        worked([H]), applications=(background_app(known=False),), background_session=3 * H
    )
    outcome = evaluate(unread, SETTINGS)
    assert outcome.violations == ()
    assert not any(m.name == "background-sessions-lapse" for m in outcome.countdown.milestones)
    assert any("Studio" in line for line in outcome.countdown.out_of_model)
    # The truth has them past all-lapsed: that is exactly what "not covered" says.
    assert outcome.report.last(AccessKind.BACKGROUND) is not None
    assert outcome.report.last(AccessKind.BACKGROUND) > outcome.countdown.all_lapsed
    nothing = evaluate(replace(unread, applications_readable=False), SETTINGS)
    assert nothing.violations == ()
    assert nothing.countdown.inputs.applications is None


def test_an_assignment_after_the_removal_voids_it() -> None:
    """A set given to the user after remove_access: new role sessions go on."""
    base = worked([H], unassigned=D + 10 * MIN)
    again = replace(base.permission_sets[0], arn=arn(2), name="Set2", added_at=D + 20 * MIN)
    scenario = with_set(base, replace(again, duration=12 * H))
    outcome = assert_safe_and_needed(scenario, Weakening.KEEP_UNASSIGNED)
    assert outcome.countdown.inputs.unassigned_at is None


# ---------------------------------------------------------------- the property


class HypothesisDraw:
    """The bench generator's `Draw`, taking its choices from Hypothesis (so they shrink)."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def integer(self, low: int, high: int) -> int:
        return self.data.draw(st.integers(min_value=low, max_value=high))


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_never_earlier_than_the_truth(data: st.DataObject) -> None:
    """Random leavers: sets direct and through groups, any phase, hardening or not,
    true delays within the margins, observed late, restarts in between; and a world that
    changes meanwhile: late user and group assignments, durations changed, applications
    with background sessions, drift, cleanup at deny_removable_at."""
    scenario = draw_scenario(HypothesisDraw(data), SETTINGS)
    settings_ = settings_for(scenario, SETTINGS)
    # The real-world assumption: AWS's true delays are within the configured margins.
    assert scenario.facts.deny_propagation <= settings_.deny_propagation
    assert scenario.facts.assignment_propagation <= settings_.unassign_propagation
    assert scenario.facts.background_session_duration <= settings_.background_session
    # The worker observes every change at or after it happened.
    assert scenario.disable_seen_at >= scenario.disabled_at
    observation = observe(scenario, settings_)
    for arn_, succeeded in observation.deny_succeeded.items():
        seen = observation.inputs.deny_provisioned_at
        assert seen is None or seen >= succeeded, arn_

    outcome = evaluate(scenario, SETTINGS)

    # Restarting from the persisted inputs gives back the very same countdown.
    assert outcome.countdown.inputs == observation.inputs
    first = compute(observation.inputs, settings_)
    assert milestone_times(outcome.countdown) == milestone_times(first)

    at, report = times(outcome.countdown), outcome.report
    excluded = not_covered(outcome.countdown)
    for name, kind in BOUNDS:
        truth = last_covered(report, kind, excluded)
        if name not in at:
            assert truth is None, (name, truth)
            continue
        assert truth is None or truth <= at[name], (name, truth, at[name])
    signed_in = report.last(AccessKind.SIGN_IN)
    assert signed_in is None or signed_in < scenario.last_disabled_at
    lapses = [at[n] for n in at if n.endswith("-lapse")]
    floor = outcome.countdown.inputs.floor
    assert at["all-lapsed"] == max([*lapses, *([floor] if floor else [])])
    if outcome.cleanup_at is not None:
        assert outcome.cleanup_at == outcome.countdown.deny_removable_at
    assert outcome.violations == ()


def test_the_generator_draws_every_world_change() -> None:
    """The property's timelines include each change often enough to matter."""
    draw = RandomDraw(random.Random(13))
    scenarios = [draw_scenario(draw, SETTINGS) for _ in range(300)]

    def share(test: object) -> float:
        return sum(1 for s in scenarios if test(s)) / len(scenarios)  # type: ignore[operator]

    assert share(lambda s: any(p.added_at and p.groups for p in s.permission_sets)) > 0.1
    assert share(lambda s: any(p.added_at and p.direct for p in s.permission_sets)) > 0.1
    assert share(lambda s: any(p.changed_to for p in s.permission_sets)) > 0.2
    assert share(lambda s: any(a.background for a in s.applications)) > 0.1
    assert share(lambda s: s.drift is not None) > 0.15
    assert share(lambda s: s.cleanup) > 0.25
    assert share(lambda s: s.removal_started_at is not None) > 0.3
    assert share(lambda s: s.portal_seen_at is not None) > 0.3


def test_the_bench_runs_tiny() -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["--samples", "5", "--seed", "1"]) == 0
    text = out.getvalue()
    assert "samples:    5" in text
    assert "violations: 0" in text
    for label in ("overall", "durations all known", "with deny", "without deny", "with drift"):
        assert label in text
