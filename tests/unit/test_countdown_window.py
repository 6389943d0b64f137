"""Issue 13 on the in-memory doubles: the countdown tells the truth while the world
changes. The inventory is read again until new sessions end (a set assigned later, a
duration raised later), the deny covers sets found later, drift keeps every epoch,
and applications with background sessions are counted (or said not covered).

Each test here failed on the code before issue 13 (c4770d4)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.unit.test_engine_doubles import PLAYBOOK, World, build, drive, run_once
from worker import evidence, report
from worker.clock import parse_iso
from worker.domain import Case, CaseStatus, NewCase
from worker.errors import PermanentError, TransientError
from worker.notify import Notification, slack_message
from worker.playbook import Playbook, parse_playbook
from worker.testing import InMemoryStore
from worker.watchdog import check_case
from worker.web import ui
from worker.window import on_timer

H = timedelta(hours=1)

#: the containment steps every playbook here starts with
CONTAIN = """
  - {id: idp-deactivate, action: idp.deactivate_user, verify: idp.user_status}
  - id: ic-disable
    action: identity_center.disable_user
    verify: identity_center.user_status
  - id: portal-sessions
    action: identity_center.portal_sessions
    verify: operator.confirmation
"""
#: containment without hardening: the countdown rests on the inventory alone
LEAVER = parse_playbook("name: leaver\nsteps:" + CONTAIN, "leaver playbook")
#: with the deny on every reachable permission set
INCIDENT = parse_playbook(
    "name: incident\nsteps:"
    + CONTAIN
    + """  - id: deny-role-sessions
    action: identity_center.deny_role_sessions
    verify: identity_center.deny_provisioned
""",
    "incident playbook",
)


@pytest.fixture(autouse=True)
def logs() -> Iterator[list[dict[str, Any]]]:
    with capture_logs() as captured:
        yield captured


@pytest.fixture
def world(memory_store: InMemoryStore) -> World:
    return build(memory_store)


async def contain(world: World, playbook: Playbook) -> Case:
    case, _ = await world.store.create_case(
        NewCase(
            playbook=playbook.name,
            subject="leaver@example.com",
            steps=playbook.steps,
            trigger={"source": "test"},
            priority=playbook.priority,
        ),
        world.clock.now(),
    )
    assert (await drive(world, case.id))[-1] is CaseStatus.CONTAINED
    return await world.store.get_case(case.id)


async def run_timers_until(world: World, until: datetime) -> None:
    """The worker's timer loop, minute by minute: every due timer fires and does its work."""
    while world.clock.now() < until:
        world.clock.advance(60)
        while (timer := await world.store.claim_due_timer("w1", world.clock.now())) is not None:
            await on_timer(world.engine, timer)


def at(countdown: dict[str, Any], name: str) -> datetime:
    return parse_iso(next(m["at"] for m in countdown["milestones"] if m["name"] == name))


async def countdown_of(world: World, case: Case) -> dict[str, Any]:
    countdown = (await world.store.get_case(case.id)).countdown
    assert countdown is not None
    return countdown


# flow 2: a 12 h set assigned to the person's group ten minutes after the disable


async def test_a_set_assigned_to_the_group_after_the_disable_is_counted(world: World) -> None:
    case = await contain(world, LEAVER)
    before = await countdown_of(world, case)
    disabled = parse_iso(before["inputs"]["ic_disabled_at"])
    assert at(before, "all-lapsed") == disabled + H + 8 * H  # ReadOnly, 8 h

    world.clock.set(disabled + timedelta(minutes=10))
    late = world.ic.add_permission_set("LateAdmin", 12 * H)
    world.ic.assign("GROUP", "g-engineers", "333333333333", late.arn)
    await run_timers_until(world, disabled + 2 * H)

    after = await countdown_of(world, case)
    names = {p["name"] for p in after["inputs"]["permission_sets"]}
    assert names == {"Admin", "ReadOnly", "LateAdmin"}
    assert at(after, "all-lapsed") == disabled + H + 12 * H
    extended = [e for e in await world.store.events(case.id) if e.kind == "countdown_extended"]
    assert len(extended) == 1
    assert "LateAdmin" in extended[0].data["reasons"][0]
    # extended at once: at the first re-read after the assignment (every 5 min)
    assert extended[0].at <= disabled + timedelta(minutes=15)
    sent = [n for n in world.notifier.sent if n.kind == "countdown_extended"]
    assert len(sent) == 1 and sent[0].data["all_lapsed"] == after["milestones"][-1]["at"]


async def test_a_set_found_after_the_deny_step_is_denied_too(world: World) -> None:
    case = await contain(world, INCIDENT)
    before = await countdown_of(world, case)
    disabled = parse_iso(before["inputs"]["ic_disabled_at"])
    assert before["inputs"]["deny_provisioned_at"] is not None

    world.clock.set(disabled + timedelta(minutes=10))
    late = world.ic.add_permission_set("LateAdmin", 12 * H)
    world.ic.assign("GROUP", "g-engineers", "333333333333", late.arn)
    await run_timers_until(world, disabled + 2 * H)

    # the late set carries the statement, provisioned through the deny step's ledger
    assert "OffboardDeny" in world.ic.provisionings[late.arn][-1]
    extended = [e for e in await world.store.events(case.id) if e.kind == "deny_extended"]
    assert [e.data["permission_sets"] for e in extended] == [[late.arn]]
    after = await countdown_of(world, case)
    covered_at = parse_iso(extended[0].data["provisioned_at"])
    # the deny bound holds again once it covers the whole inventory, from then on
    assert parse_iso(after["inputs"]["deny_provisioned_at"]) == covered_at
    assert at(after, "role-sessions-lapse") == covered_at + timedelta(minutes=15)
    # the deny may come off only once the late 12 h set's sessions have ended
    assert parse_iso(after["deny_removable_at"]) == disabled + H + 12 * H


async def test_a_deny_step_after_a_reread_covers_what_the_reread_found(world: World) -> None:
    case, _ = await world.store.create_case(
        NewCase(
            playbook=INCIDENT.name,
            subject="leaver@example.com",
            steps=INCIDENT.steps,
            trigger={"source": "test"},
            priority=INCIDENT.priority,
        ),
        world.clock.now(),
    )
    # the deny step is deferred (issue 14: it no longer waits behind the portal task,
    # so only a provider that keeps failing puts a re-read before it)
    world.ic.fail("merge_deny", TransientError("sso-admin", "503"), times=None)
    assert await run_once(world, case.id) is CaseStatus.PENDING
    disabled = parse_iso((await countdown_of(world, case))["inputs"]["ic_disabled_at"])
    late = world.ic.add_permission_set("LateAdmin", 12 * H)
    world.ic.assign("GROUP", "g-engineers", "333333333333", late.arn)
    await run_timers_until(world, disabled + timedelta(minutes=6))  # one re-read
    world.ic.faults.clear()
    # the deny step, when it runs, covers the set the re-read found
    assert await run_once(world, case.id) is CaseStatus.WAITING  # the portal task
    await world.store.confirm_task(case.id, "portal-sessions", "ops", world.clock.now())
    assert await run_once(world, case.id) is CaseStatus.CONTAINED

    deny = (await world.store.steps(case.id))[-1]
    assert late.arn in deny.evidence["permission_sets"]
    countdown = await countdown_of(world, case)
    assert countdown["inputs"]["deny_provisioned_at"] == deny.evidence["provisioned_at"]


async def test_a_set_the_deny_does_not_cover_takes_the_deny_bound_away(world: World) -> None:
    case = await contain(world, INCIDENT)
    disabled = parse_iso((await countdown_of(world, case))["inputs"]["ic_disabled_at"])
    late = world.ic.add_permission_set("LateAdmin", 12 * H)
    world.ic.assign("GROUP", "g-engineers", "333333333333", late.arn)
    world.ic.fail("merge_deny", PermanentError("sso-admin", "AccessDenied"), times=None)
    world.clock.set(disabled + timedelta(minutes=4))
    await run_timers_until(world, disabled + timedelta(minutes=6))

    after = await countdown_of(world, case)
    assert "LateAdmin" in {p["name"] for p in after["inputs"]["permission_sets"]}
    assert after["inputs"]["deny_provisioned_at"] is None
    assert at(after, "role-sessions-lapse") == disabled + H + 12 * H


# flow 3: a set's SessionDuration raised from 1 h to 12 h after the disable


async def test_a_duration_raised_after_the_disable_extends_the_countdown(world: World) -> None:
    for arn, ps in world.ic.permission_sets.items():
        world.ic.permission_sets[arn] = replace(ps, session_duration=H)
    case = await contain(world, LEAVER)
    before = await countdown_of(world, case)
    disabled = parse_iso(before["inputs"]["ic_disabled_at"])
    assert at(before, "role-sessions-lapse") == disabled + 2 * H

    world.clock.set(disabled + timedelta(minutes=20))
    reader = next(ps for ps in world.ic.permission_sets.values() if ps.name == "ReadOnly")
    world.ic.permission_sets[reader.arn] = replace(reader, session_duration=12 * H)
    await run_timers_until(world, disabled + 2 * H)

    after = await countdown_of(world, case)
    durations = {p["name"]: p["session_duration"] for p in after["inputs"]["permission_sets"]}
    assert durations == {"Admin": "PT1H", "ReadOnly": "PT12H"}
    assert at(after, "all-lapsed") == disabled + H + 12 * H
    (extended,) = [e for e in await world.store.events(case.id) if e.kind == "countdown_extended"]
    assert extended.data["reasons"] == ["session duration of ReadOnly raised"]


async def test_a_duration_lowered_later_keeps_the_longest_seen(world: World) -> None:
    case = await contain(world, LEAVER)
    disabled = parse_iso((await countdown_of(world, case))["inputs"]["ic_disabled_at"])
    world.clock.set(disabled + timedelta(minutes=20))
    for arn, ps in world.ic.permission_sets.items():
        world.ic.permission_sets[arn] = replace(ps, session_duration=H)
    await run_timers_until(world, disabled + 2 * H)

    # a session started with 8 h before the change keeps its 8 h
    assert at(await countdown_of(world, case), "all-lapsed") == disabled + H + 8 * H


async def test_rereads_run_until_new_sessions_end_and_once_at_it(world: World) -> None:
    case = await contain(world, LEAVER)
    countdown = await countdown_of(world, case)
    disabled = parse_iso(countdown["inputs"]["ic_disabled_at"])
    world.calls.clear()
    await run_timers_until(world, disabled + 3 * H)

    reads = [e for e in await world.store.events(case.id) if e.kind == "inventory_read"]
    new_sessions_end = at(countdown, "new-sessions-end")
    assert [e.data["timer"] for e in reads][-1] == "reread-final"
    assert len(reads) == 12  # 11 every 5 min, the last at new-sessions-end (+1 h)
    assert all(e.at <= new_sessions_end + timedelta(minutes=1) for e in reads)
    events = await world.store.events(case.id)
    reached = [e.data["milestone"] for e in events if e.kind == "milestone_reached"]
    assert not [name for name in reached if name.startswith("reread")]
    assert [n.kind for n in world.notifier.sent if "reread" in n.title] == []
    # what the window costs per person: each read is the fake's 7 calls (the
    # memberships once, 2 principals' assignments, 2 sets described, the applications,
    # and its own entry for the whole read); on AWS the same 7 requests, as the
    # applications are listed per principal (2) and this leaver has none to describe
    ic_calls = [c.name for c in world.calls if c.name.startswith("identity_center.")]
    assert len(ic_calls) == 12 * 7, ic_calls[:8]


async def test_a_restarted_worker_catches_up_on_missed_rereads(world: World) -> None:
    case = await contain(world, LEAVER)
    disabled = parse_iso((await countdown_of(world, case))["inputs"]["ic_disabled_at"])
    late = world.ic.add_permission_set("LateAdmin", 12 * H)
    world.ic.assign("USER", world.ic_user_id, "333333333333", late.arn)
    # no worker ran for three hours: the durable timers are all due at once
    world.clock.set(disabled + 3 * H)
    while (timer := await world.store.claim_due_timer("w1", world.clock.now())) is not None:
        await on_timer(world.engine, timer)
    assert at(await countdown_of(world, case), "all-lapsed") == disabled + H + 12 * H


# applications: background sessions counted, unreadable ones said not covered


async def test_an_application_with_background_sessions_adds_its_milestone(world: World) -> None:
    world.ic.assign_application(
        "GROUP", "g-engineers", "arn:aws:sso::app/studio", name="Studio", background_sessions=True
    )
    case = await contain(world, LEAVER)
    countdown = await countdown_of(world, case)
    disabled = parse_iso(countdown["inputs"]["ic_disabled_at"])
    assert at(countdown, "background-sessions-lapse") == disabled + H + 7 * 24 * H
    assert at(countdown, "all-lapsed") == disabled + H + 7 * 24 * H
    assert [a["name"] for a in countdown["inputs"]["applications"]] == ["Studio"]


async def test_an_application_with_background_sessions_assigned_later_extends(
    world: World,
) -> None:
    case = await contain(world, LEAVER)
    disabled = parse_iso((await countdown_of(world, case))["inputs"]["ic_disabled_at"])
    world.clock.set(disabled + timedelta(minutes=7))
    world.ic.assign_application(
        "USER", world.ic_user_id, "arn:aws:sso::app/emr", name="EMR", background_sessions=True
    )
    await run_timers_until(world, disabled + 2 * H)
    assert at(await countdown_of(world, case), "all-lapsed") == disabled + H + 7 * 24 * H
    (extended,) = [e for e in await world.store.events(case.id) if e.kind == "countdown_extended"]
    assert extended.data["reasons"] == ["application EMR keeps background sessions"]


async def test_unreadable_applications_are_not_covered_and_do_not_halt(world: World) -> None:
    world.ic.fail(
        "reachable_applications",
        PermanentError("sso-admin", "AccessDeniedException", code="AccessDeniedException"),
        times=None,
    )
    case = await contain(world, LEAVER)
    countdown = await countdown_of(world, case)
    assert countdown["inputs"]["applications"] is None
    assert any("could not be read" in item for item in countdown["out_of_model"])


async def test_the_background_sessions_step_reports_how_to_end_them(world: World) -> None:
    world.ic.assign_application(
        "GROUP", "g-engineers", "arn:aws:sso::app/studio", name="Studio", background_sessions=True
    )
    world.ic.assign_application("USER", world.ic_user_id, "arn:aws:sso::app/q", name="Q")
    playbook = parse_playbook(
        "name: incident-bg\nsteps:\n"
        + "".join(
            f"  - {{id: {s.id}, action: {s.action}, verify: {s.verify}}}\n" for s in INCIDENT.steps
        )
        + "  - id: background-sessions\n"
        "    action: identity_center.background_sessions\n"
        "    verify: identity_center.background_sessions_reported\n",
        "test playbook",
    )
    case = await contain(world, playbook)
    step = (await world.store.steps(case.id))[-1]
    assert step.evidence["ended_by_this_step"] is False
    assert [a["name"] for a in step.evidence["applications"]] == ["Studio"]
    assert "Studio" in step.evidence["how_to_end"][0]
    # nothing was changed to pretend otherwise
    assert not [c for c in world.calls if "application" in c.name and "put" in c.name.lower()]


# flow 4: drift after remove_access drops the earlier sets


async def test_drift_after_remove_access_keeps_the_earlier_epochs_sets(world: World) -> None:
    case = await contain(world, PLAYBOOK)  # with remove_access: the user reaches nothing
    before = await countdown_of(world, case)
    disabled = parse_iso(before["inputs"]["ic_disabled_at"])
    await run_timers_until(world, disabled + timedelta(minutes=20))

    world.idp.users[world.idp_user_id].status = "ACTIVE"
    world.ic.users[world.ic_user_id].status = "ENABLED"
    assert await check_case(world.engine, await world.store.get_case(case.id))

    after = await countdown_of(world, case)
    redisabled = parse_iso(after["inputs"]["ic_disabled_at"])
    assert after["epoch"] == 1 and redisabled > disabled
    names = {p["name"] for p in after["inputs"]["permission_sets"]}
    assert names == {"Admin", "ReadOnly"}
    # the deny and the removal are not trusted after a re-enable: a ReadOnly session
    # (8 h) started while re-enabled lives on
    assert at(after, "all-lapsed") >= redisabled + H + 8 * H
    assert after["inputs"]["floor"] == before["milestones"][-1]["at"]
    assert at(after, "all-lapsed") >= at(before, "all-lapsed")


# what people see: status, /ui and the evidence export


async def test_status_ui_and_evidence_show_every_milestone_with_reasons(world: World) -> None:
    world.ic.assign_application(
        "USER", world.ic_user_id, "arn:aws:sso::app/studio", name="Studio", background_sessions=True
    )
    case = await contain(world, INCIDENT)
    countdown = await countdown_of(world, case)
    now = world.clock.now()
    names = [m["name"] for m in countdown["milestones"]]
    assert "background-sessions-lapse" in names

    status = report.countdown_text(countdown, now)
    page = ui._milestones(countdown, now) + ui._countdown_inputs(countdown)
    exported = json.loads(await evidence.export(world.store, case.id, "json"))["countdown"]
    for name in names:
        assert name in status and name in page
    assert [m["name"] for m in exported["milestones"]] == names
    for reason in countdown["reasons"]:
        assert reason in status and ui.e(reason) in page
    assert exported["reasons"] == countdown["reasons"]
    assert any("customer-managed" in item for item in exported["not_covered"])
    assert "customer-managed" in status and "customer-managed" in page
    assert exported["deny_removable_at"] == countdown["deny_removable_at"] is not None
    assert f"deny removable at {countdown['deny_removable_at']}" in status
    assert "deny statement removable" in page
    assert "application Studio: background sessions enabled" in status


def test_an_extension_reads_well_in_slack() -> None:
    message = slack_message(
        Notification(
            kind="countdown_extended",
            case_id="c-1",
            subject="leaver@example.com",
            title="leaver@example.com: access may last until 2026-01-05T22:00:00.000Z",
            data={
                "reasons": ["permission set LateAdmin reachable since the disable"],
                "all_lapsed_before": "2026-01-05T18:00:00.000Z",
                "all_lapsed": "2026-01-05T22:00:00.000Z",
            },
        )
    )
    assert "until 2026-01-05T22:00:00.000Z (was 2026-01-05T18:00:00.000Z)" in message["text"]
    assert "LateAdmin reachable since the disable" in message["text"]


# a set assigned after remove_access: the removal no longer stops new role sessions

REMOVE = parse_playbook(
    "name: leaver-remove\nsteps:"
    + CONTAIN
    + """  - id: remove-access
    action: identity_center.remove_access
    verify: identity_center.access_removed
""",
    "leaver playbook with removal",
)


async def test_a_set_assigned_after_the_removal_voids_the_removal(world: World) -> None:
    case = await contain(world, REMOVE)
    assert (await countdown_of(world, case))["inputs"]["unassigned_at"] is not None

    world.clock.advance(600)
    late = world.ic.add_permission_set("LateAdmin", 12 * H)
    world.ic.assign("USER", world.ic_user_id, "999", late.arn)
    await run_timers_until(world, world.clock.now() + 2 * H)

    after = await countdown_of(world, case)
    # until new sessions end the person can start a 12 h role session on the late set
    assert after["inputs"]["unassigned_at"] is None
    assert at(after, "role-sessions-lapse") >= at(after, "new-sessions-end") + 12 * H
    assert at(after, "all-lapsed") >= at(after, "role-sessions-lapse")


async def test_a_removed_set_is_described_again_until_new_sessions_end(world: World) -> None:
    """remove_access took the Admin assignment away, but role sessions can start on it
    while the removal propagates: a longer duration set then still counts."""
    case = await contain(world, REMOVE)
    before = await countdown_of(world, case)
    removed_at = parse_iso(before["inputs"]["unassigned_at"])
    admin = next(p for p in world.ic.permission_sets.values() if p.name == "Admin")

    world.clock.advance(120)
    world.ic.permission_sets[admin.arn] = replace(admin, session_duration=12 * H)
    await run_timers_until(world, world.clock.now() + 2 * H)

    after = await countdown_of(world, case)
    propagation = timedelta(minutes=15)
    assert at(after, "role-sessions-lapse") >= removed_at + propagation + 12 * H


async def test_a_set_given_to_a_group_just_left_is_counted(world: World) -> None:
    """A group the person left by remove_access still reaches them while the removal
    propagates: a set assigned to it then can start a role session."""
    case = await contain(world, REMOVE)
    removed_at = parse_iso((await countdown_of(world, case))["inputs"]["unassigned_at"])

    world.clock.advance(120)
    late = world.ic.add_permission_set("GroupAdmin", 12 * H)
    world.ic.assign("GROUP", "g-engineers", "333333333333", late.arn)
    await run_timers_until(world, world.clock.now() + 2 * H)

    after = await countdown_of(world, case)
    assert late.arn in {p["arn"] for p in after["inputs"]["permission_sets"]}
    assert at(after, "role-sessions-lapse") >= removed_at + timedelta(minutes=15) + 12 * H
