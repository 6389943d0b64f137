"""Reads many cases share (a group's assignments, a permission set's duration) are made
once within the shared-read TTL; the user's own reads never are; a read after the TTL,
or one that asks for nothing older than a moment (the countdown's re-reads), sees a
change. Counted by the Identity Center emulator's audit log."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import aiohttp
import pytest

from worker.clock import ManualClock
from worker.config import IdentityCenterConfig
from worker.providers.identity_center import AwsIdentityCenter
from worker.sandbox import Sandbox
from worker.sandbox.common import FaultRule

ACCOUNT = "111122223333"
LIST = "sso-admin.ListAccountAssignmentsForPrincipal"
LIST_APPS = "sso-admin.ListApplicationAssignmentsForPrincipal"
DESCRIBE = "sso-admin.DescribePermissionSet"


@dataclass
class Team:
    group: str
    alice: str
    bob: str
    readonly: str
    admin: str


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def team(sandbox: Sandbox) -> Team:
    ic = sandbox.identity_center
    readonly = ic.add_permission_set("ReadOnly", session_duration="PT4H")
    admin = ic.add_permission_set("Admin", session_duration="PT12H")
    group = ic.add_group("team")
    alice = ic.add_user("alice@example.com", display_name="Alice", email="alice@example.com")
    bob = ic.add_user("bob@example.com", display_name="Bob", email="bob@example.com")
    for user in (alice, bob):
        ic.add_membership(group, user)
    ic.add_account_assignment(
        account_id=ACCOUNT, permission_set_arn=readonly, principal_type="GROUP", principal_id=group
    )
    return Team(group=group, alice=alice, bob=bob, readonly=readonly, admin=admin)


@pytest.fixture
async def ic(sandbox: Sandbox, clock: ManualClock) -> AsyncIterator[AwsIdentityCenter]:
    data = sandbox.config_data(sqlite_path="unused.db")["identity_center"]
    config = IdentityCenterConfig.model_validate({**data, "shared_read_ttl": "PT30S"})
    async with (
        aiohttp.ClientSession() as http,
        AwsIdentityCenter(config, http, clock=clock) as adapter,
    ):
        yield adapter


def calls(sandbox: Sandbox, endpoint: str) -> int:
    return sandbox.audit.calls[endpoint]


LIST_APPLICATIONS = "sso-admin.ListApplications"


async def test_without_applications_nobody_is_listed_for_one(
    sandbox: Sandbox, ic: AwsIdentityCenter, team: Team, clock: ManualClock
) -> None:
    for user in (team.alice, team.bob):
        assert await ic.reachable_applications(user, groups=[team.group]) == []
    # one ListApplications for both cases says the instance has none: no listing per person
    assert (calls(sandbox, LIST_APPLICATIONS), calls(sandbox, LIST_APPS)) == (1, 0)
    # an application added later is seen by a re-read due after it
    wiki = sandbox.identity_center.add_application("Wiki")
    sandbox.identity_center.assign_application(wiki, principal_type="USER", principal_id=team.alice)
    clock.advance(timedelta(seconds=1))
    [app] = await ic.reachable_applications(team.alice, since=clock.now(), groups=[team.group])
    assert (app.arn, app.via) == (wiki, ("USER",))


async def test_two_cases_share_one_read_of_their_group(
    sandbox: Sandbox, ic: AwsIdentityCenter, team: Team
) -> None:
    sandbox.identity_center.add_application("Wiki")  # assigned to nobody here
    for user in (team.alice, team.bob):
        [reached] = await ic.reachable_permission_sets(user, groups=[team.group])
        assert (reached.arn, reached.via) == (team.readonly, (f"GROUP:{team.group}",))
        assert await ic.reachable_applications(user, groups=[team.group]) == []
    # each user's own listing, and the group's once: 3, not 4
    assert calls(sandbox, LIST) == 3
    assert calls(sandbox, LIST_APPS) == 3
    assert calls(sandbox, DESCRIBE) == 1


async def test_a_read_after_the_ttl_sees_a_change(
    sandbox: Sandbox, ic: AwsIdentityCenter, team: Team, clock: ManualClock
) -> None:
    assert await ic.assignments("GROUP", team.group) == [(ACCOUNT, team.readonly)]
    sandbox.identity_center.add_account_assignment(
        account_id=ACCOUNT,
        permission_set_arn=team.admin,
        principal_type="GROUP",
        principal_id=team.group,
    )
    sandbox.identity_center.set_session_duration(team.readonly, "PT8H")
    clock.advance(timedelta(seconds=29))
    # within the TTL: the earlier read answers
    assert await ic.assignments("GROUP", team.group) == [(ACCOUNT, team.readonly)]
    clock.advance(timedelta(seconds=2))
    assert sorted(await ic.assignments("GROUP", team.group)) == sorted(
        [(ACCOUNT, team.readonly), (ACCOUNT, team.admin)]
    )
    assert await ic.permission_set(team.readonly) == ("ReadOnly", timedelta(hours=8))


async def test_a_reread_takes_nothing_read_before_its_due_time(
    sandbox: Sandbox, ic: AwsIdentityCenter, team: Team, clock: ManualClock
) -> None:
    await ic.reachable_permission_sets(team.alice, groups=[team.group])
    clock.advance(timedelta(seconds=5))
    sandbox.identity_center.set_session_duration(team.readonly, "PT8H")
    due = clock.now()
    # within the TTL, but a re-read due now must see the change made before it
    [reached] = await ic.reachable_permission_sets(team.alice, since=due, groups=[team.group])
    assert reached.session_duration == timedelta(hours=8)
    # and Bob's re-read of the same tick shares that read: no further group read
    before = calls(sandbox, LIST), calls(sandbox, DESCRIBE)
    await ic.reachable_permission_sets(team.bob, since=due, groups=[team.group])
    assert (calls(sandbox, LIST), calls(sandbox, DESCRIBE)) == (before[0] + 1, before[1])


async def test_the_users_own_reads_are_never_shared(
    sandbox: Sandbox, ic: AwsIdentityCenter, team: Team
) -> None:
    assert await ic.assignments("USER", team.alice) == []
    assert await ic.group_memberships(team.alice) != []
    sandbox.identity_center.add_account_assignment(
        account_id=ACCOUNT,
        permission_set_arn=team.admin,
        principal_type="USER",
        principal_id=team.alice,
    )
    second = sandbox.identity_center.add_group("second")
    sandbox.identity_center.add_membership(second, team.alice)
    # no time has passed: still read anew
    assert await ic.assignments("USER", team.alice) == [(ACCOUNT, team.admin)]
    assert second in [group for _, group in await ic.group_memberships(team.alice)]
    reach = {r.arn: r.via for r in await ic.reachable_permission_sets(team.alice)}
    assert reach[team.admin] == ("USER",)


MEMBERS_FOR = "identitystore.ListGroupMembershipsForMember"
LIST_GROUPS = "identitystore.ListGroups"
MEMBERS_OF = "identitystore.ListGroupMemberships"


async def test_grid_rereads_of_many_users_list_the_groups_once(
    sandbox: Sandbox, ic: AwsIdentityCenter, team: Team, clock: ManualClock
) -> None:
    """A grid tick that many users re-read at: when more users asked in the last hour
    (their containment) than the store's groups cost to list, the tick lists every
    group's members once (sent at or after its due time) instead of each user's
    memberships; a membership added before the tick is seen, for a user in no group
    any other leaver is in."""
    store = sandbox.identity_center
    users = [team.alice, team.bob] + [
        store.add_user(f"u{i}@example.com", display_name=f"U{i}", email=f"u{i}@example.com")
        for i in range(4)
    ]
    for user in users:
        await ic.group_memberships(user)  # the containment's own reads
    assert (calls(sandbox, MEMBERS_FOR), calls(sandbox, LIST_GROUPS)) == (6, 0)

    lonely = store.add_group("lonely")
    store.add_membership(lonely, users[5])
    clock.advance(timedelta(minutes=5))
    due = clock.now()
    found = {
        user: [g for _, g in await ic.group_memberships(user, since=due, run_wide=True)]
        for user in users
    }
    # one ListGroups page and one ListGroupMemberships per group (team, lonely): 3 < 6
    assert calls(sandbox, MEMBERS_FOR) == 6
    assert (calls(sandbox, LIST_GROUPS), calls(sandbox, MEMBERS_OF)) == (1, 2)
    assert found[team.alice] == [team.group] and found[users[2]] == []
    assert found[users[5]] == [lonely]
    # the membership ids come with it: what the removal step deletes
    assert await ic.group_memberships(users[5]) == [
        (m, lonely) for m, _ in await ic.group_memberships(users[5], since=due, run_wide=True)
    ]


async def test_few_users_in_a_store_of_many_groups_read_their_own(
    sandbox: Sandbox, ic: AwsIdentityCenter, team: Team, clock: ManualClock
) -> None:
    for i in range(5):
        sandbox.identity_center.add_group(f"other-{i}")
    for _ in range(3):
        due = clock.now()
        for user in (team.alice, team.bob):
            await ic.group_memberships(user, since=due, run_wide=True)
        clock.advance(timedelta(minutes=5))
    # listing 6 groups costs more than two users' own reads: never listed
    assert (calls(sandbox, MEMBERS_FOR), calls(sandbox, MEMBERS_OF)) == (6, 0)


LIST_SETS = "sso-admin.ListPermissionSets"
PROVISIONED = "sso-admin.ListAccountsForProvisionedPermissionSet"
PAIR = "sso-admin.ListAccountAssignments"


async def test_grid_rereads_of_many_users_list_every_assignment_once(
    sandbox: Sandbox, ic: AwsIdentityCenter, team: Team, clock: ManualClock
) -> None:
    """As for memberships: with more users contained in the last hour than the listing
    costs, a tick reads every (account, permission set) pair's assignments once, sent
    at or after its due time; a set assigned to one user directly before the tick, on a
    pair nobody else has, is seen, with no ListAccountAssignmentsForPrincipal."""
    store = sandbox.identity_center
    users = [team.alice, team.bob] + [
        store.add_user(f"u{i}@example.com", display_name=f"U{i}", email=f"u{i}@example.com")
        for i in range(6)
    ]
    for user in users:
        await ic.reachable_permission_sets(user, groups=[])  # the containment's
    assert calls(sandbox, LIST) == 8

    store.add_account_assignment(
        account_id=ACCOUNT,
        permission_set_arn=team.admin,
        principal_type="USER",
        principal_id=users[5],
    )
    clock.advance(timedelta(minutes=5))
    due = clock.now()
    reach = {
        user: {
            r.arn: r.via
            for r in await ic.reachable_permission_sets(
                user, since=due, groups=[team.group] if user == team.alice else [], run_wide=True
            )
        }
        for user in users
    }
    assert calls(sandbox, LIST) == 8
    assert (calls(sandbox, LIST_SETS), calls(sandbox, PROVISIONED), calls(sandbox, PAIR)) == (
        1,
        2,
        2,
    )
    assert reach[users[5]] == {team.admin: ("USER",)}
    assert reach[team.alice] == {team.readonly: (f"GROUP:{team.group}",)}
    assert reach[users[2]] == {}


async def test_a_refused_run_wide_listing_falls_back_to_each_users_reads(
    sandbox: Sandbox, ic: AwsIdentityCenter, team: Team, clock: ManualClock
) -> None:
    """An IAM policy without identitystore:ListGroups: the re-read still reads the user's
    own memberships (and does not try the listing again)."""
    store = sandbox.identity_center
    users = [team.alice, team.bob] + [
        store.add_user(f"u{i}@example.com", display_name=f"U{i}", email=f"u{i}@example.com")
        for i in range(4)
    ]
    for user in users:
        await ic.group_memberships(user)
    sandbox.faults.add(FaultRule(endpoint=LIST_GROUPS, kind="error", count=1, status=403))
    for _ in range(2):
        clock.advance(timedelta(minutes=5))
        due = clock.now()
        found = {
            user: [g for _, g in await ic.group_memberships(user, since=due, run_wide=True)]
            for user in users
        }
        assert found[team.alice] == [team.group]
    assert (calls(sandbox, LIST_GROUPS), calls(sandbox, MEMBERS_FOR)) == (1, 6 + 2 * 6)
