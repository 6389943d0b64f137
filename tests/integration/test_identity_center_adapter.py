"""The Identity Center adapter (worker.providers.identity_center) against two backends.

One set of assertions about the reads that feed the countdown, and about the writes that
cut access, runs against our emulator and against moto's server. Both worlds hold the same
thing: a leaver in one group, a PT12H permission set assigned to the leaver directly and
carrying an inline policy, and a PT4H one assigned to the group.

Where moto 5.2.5 lacks something, the test asserts what the adapter does about it: it must
refuse or fail loudly, never claim a verification it could not make. Faults (throttling,
server errors) can only be injected into our emulator, so those tests use it alone.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import aiohttp
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError
from moto.server import ThreadedMotoServer

from worker.clock import ManualClock
from worker.config import IdentityCenterConfig
from worker.countdown import ReachableApplication, ReachablePermissionSet
from worker.errors import PermanentError, TransientError
from worker.providers.identity_center import AwsIdentityCenter, _Budget
from worker.resolve import Resolution, RetryingReader, resolve_person
from worker.retry import RetryPolicy
from worker.sandbox import Sandbox
from worker.sandbox.common import FaultRule
from worker.testing import FakeIdentityProvider

Client = Any  # aiobotocore clients are generated at run time

LEAVER = "leaver@example.com"
REGION = "us-east-1"
ADMIN_ACCOUNT = "111122223333"
READONLY_ACCOUNT = "444455556666"
#: moto generates "d-" and ten of [a-z0-9], which AWS's (and our config's) pattern refuses;
#: moto's identitystore keeps a store for any id, so the moto world uses an AWS-shaped one.
MOTO_STORE_ID = "d-9067ab12cd"
MOTO_ENV = "OFFBOARD_MOTO_TEST_"
DENY_ALL = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Sid": "Seed", "Effect": "Deny", "Action": "*", "Resource": "*"}],
    }
)
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
#: both backends page at 100 items when no MaxResults is sent (the adapter sends none)
PAGE = 100


class Seeder(Protocol):
    """Creates state in one backend, the way that backend is fed."""

    async def user(self, user_name: str) -> str: ...

    async def group(self, name: str) -> str: ...

    async def membership(self, group_id: str, user_id: str) -> str: ...

    async def permission_set(self, name: str, duration: str, policy: str = "") -> str: ...

    async def assign(
        self, account_id: str, arn: str, principal_type: str, principal_id: str
    ) -> None: ...


@dataclass
class World:
    backend: str  # "sandbox" or "moto"
    config: IdentityCenterConfig
    seed: Seeder
    store: Client  # raw identitystore client, for proofs about the backend itself
    admin: Client  # raw sso-admin client
    user_id: str
    group_id: str
    membership_id: str
    admin_arn: str  # AdministratorAccess, PT12H, USER on ADMIN_ACCOUNT, with DENY_ALL
    readonly_arn: str  # ReadOnly, PT4H, GROUP on READONLY_ACCOUNT, no inline policy

    @property
    def moto(self) -> bool:
        return self.backend == "moto"


async def build_world(
    backend: str,
    config: IdentityCenterConfig,
    seed: Seeder,
    store: Client,
    admin: Client,
) -> World:
    """The leaver of Sandbox.seed_leaver, plus an inline policy, in either backend."""
    user_id = await seed.user(LEAVER)
    admin_arn = await seed.permission_set("AdministratorAccess", "PT12H", DENY_ALL)
    readonly_arn = await seed.permission_set("ReadOnly", "PT4H")
    group_id = await seed.group("engineering-leaver")
    membership_id = await seed.membership(group_id, user_id)
    await seed.assign(ADMIN_ACCOUNT, admin_arn, "USER", user_id)
    await seed.assign(READONLY_ACCOUNT, readonly_arn, "GROUP", group_id)
    return World(
        backend=backend,
        config=config,
        seed=seed,
        store=store,
        admin=admin,
        user_id=user_id,
        group_id=group_id,
        membership_id=membership_id,
        admin_arn=admin_arn,
        readonly_arn=readonly_arn,
    )


def raw_client(service: str, url: str, key: str, secret: str) -> Any:
    return get_session().create_client(
        service,
        region_name=REGION,
        endpoint_url=url,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=AioConfig(retries={"total_max_attempts": 1}),
    )


# ---------------------------------------------------------------- the sandbox backend


class SandboxSeeder:
    def __init__(self, sandbox: Sandbox) -> None:
        self.emulator = sandbox.identity_center

    async def user(self, user_name: str) -> str:
        return self.emulator.add_user(user_name, display_name="Leaver", email=user_name)

    async def group(self, name: str) -> str:
        return self.emulator.add_group(name)

    async def membership(self, group_id: str, user_id: str) -> str:
        return self.emulator.add_membership(group_id, user_id)

    async def permission_set(self, name: str, duration: str, policy: str = "") -> str:
        return self.emulator.add_permission_set(
            name, session_duration=duration, inline_policy=policy
        )

    async def assign(
        self, account_id: str, arn: str, principal_type: str, principal_id: str
    ) -> None:
        self.emulator.add_account_assignment(
            account_id=account_id,
            permission_set_arn=arn,
            principal_type=principal_type,
            principal_id=principal_id,
        )


async def sandbox_world(sandbox: Sandbox, stack: AsyncExitStack) -> World:
    # The worker's own configuration for the sandbox (SCIM included); secrets come from
    # the environment the conftest fixture set.
    data = sandbox.config_data(sqlite_path="unused.db")["identity_center"]
    config = IdentityCenterConfig.model_validate(data)
    creds = sandbox.credentials
    url = sandbox.identity_center_url
    store = await stack.enter_async_context(
        raw_client("identitystore", url, creds.aws_access_key_id, creds.aws_secret_access_key)
    )
    admin = await stack.enter_async_context(
        raw_client("sso-admin", url, creds.aws_access_key_id, creds.aws_secret_access_key)
    )
    return await build_world("sandbox", config, SandboxSeeder(sandbox), store, admin)


# ---------------------------------------------------------------- the moto backend


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


class MotoSeeder:
    def __init__(self, store: Client, admin: Client, store_id: str, instance_arn: str) -> None:
        self.store, self.admin = store, admin
        self.store_id, self.instance_arn = store_id, instance_arn

    async def user(self, user_name: str) -> str:
        created = await self.store.create_user(
            IdentityStoreId=self.store_id,
            UserName=user_name,
            DisplayName="Leaver",
            Name={"GivenName": "Leaver", "FamilyName": "Example"},
            Emails=[{"Value": user_name, "Type": "work", "Primary": True}],
        )
        return str(created["UserId"])

    async def group(self, name: str) -> str:
        created = await self.store.create_group(IdentityStoreId=self.store_id, DisplayName=name)
        return str(created["GroupId"])

    async def membership(self, group_id: str, user_id: str) -> str:
        created = await self.store.create_group_membership(
            IdentityStoreId=self.store_id, GroupId=group_id, MemberId={"UserId": user_id}
        )
        return str(created["MembershipId"])

    async def permission_set(self, name: str, duration: str, policy: str = "") -> str:
        created = await self.admin.create_permission_set(
            InstanceArn=self.instance_arn, Name=name, SessionDuration=duration
        )
        arn = str(created["PermissionSet"]["PermissionSetArn"])
        if policy:
            await self.admin.put_inline_policy_to_permission_set(
                InstanceArn=self.instance_arn, PermissionSetArn=arn, InlinePolicy=policy
            )
        return arn

    async def assign(
        self, account_id: str, arn: str, principal_type: str, principal_id: str
    ) -> None:
        await self.admin.create_account_assignment(
            InstanceArn=self.instance_arn,
            TargetId=account_id,
            TargetType="AWS_ACCOUNT",
            PermissionSetArn=arn,
            PrincipalType=principal_type,
            PrincipalId=principal_id,
        )


async def moto_world(
    moto_url: str, monkeypatch: pytest.MonkeyPatch, stack: AsyncExitStack
) -> World:
    # moto keeps its state in this process: start every test from an empty world.
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{moto_url}/moto-api/reset") as reset,
    ):
        assert reset.status == 200
    key, secret = "AKIAMOTOADAPTER00001", "moto-adapter-secret"
    monkeypatch.setenv(f"{MOTO_ENV}AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv(f"{MOTO_ENV}AWS_SECRET_ACCESS_KEY", secret)
    store = await stack.enter_async_context(raw_client("identitystore", moto_url, key, secret))
    admin = await stack.enter_async_context(raw_client("sso-admin", moto_url, key, secret))
    [instance] = (await admin.list_instances())["Instances"]
    config = IdentityCenterConfig.model_validate(
        {
            "region": REGION,
            "identity_store_id": MOTO_STORE_ID,
            "instance_arn": instance["InstanceArn"],
            # moto has no SCIM endpoint: the directory source, disabled in the console
            "identity_source": "directory",
            "endpoint_url": moto_url,
            "credentials": {
                "access_key_id": {"env": f"{MOTO_ENV}AWS_ACCESS_KEY_ID"},
                "secret_access_key": {"env": f"{MOTO_ENV}AWS_SECRET_ACCESS_KEY"},
            },
        }
    )
    seeder = MotoSeeder(store, admin, MOTO_STORE_ID, instance["InstanceArn"])
    return await build_world("moto", config, seeder, store, admin)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(params=["sandbox", "moto"])
def backend(request: pytest.FixtureRequest) -> Sandbox | str:
    """The running sandbox, or moto's URL. A plain fixture: pytest-asyncio cannot resolve
    an async fixture by name from inside another async fixture."""
    if request.param == "sandbox":
        sandbox: Sandbox = request.getfixturevalue("sandbox")
        return sandbox
    moto_url: str = request.getfixturevalue("moto_url")
    return moto_url


@pytest.fixture
async def world(backend: Sandbox | str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[World]:
    async with AsyncExitStack() as stack:
        if isinstance(backend, Sandbox):
            yield await sandbox_world(backend, stack)
        else:
            yield await moto_world(backend, monkeypatch, stack)


@pytest.fixture
async def ic(world: World) -> AsyncIterator[AwsIdentityCenter]:
    async with (
        aiohttp.ClientSession() as http,
        AwsIdentityCenter(world.config, http) as adapter,
    ):
        yield adapter


@pytest.fixture
async def sandbox_world_only(sandbox: Sandbox) -> AsyncIterator[World]:
    async with AsyncExitStack() as stack:
        yield await sandbox_world(sandbox, stack)


@pytest.fixture
async def sandbox_ic(sandbox_world_only: World) -> AsyncIterator[AwsIdentityCenter]:
    async with (
        aiohttp.ClientSession() as http,
        AwsIdentityCenter(sandbox_world_only.config, http) as adapter,
    ):
        yield adapter


# ---------------------------------------------------------------- users


async def test_find_user_reports_status_or_refuses_to_guess(
    world: World, ic: AwsIdentityCenter
) -> None:
    if world.moto:
        # moto's DescribeUser has no UserStatus: the adapter must not claim ENABLED/DISABLED.
        for read in (lambda: ic.get_user(world.user_id), lambda: ic.find_user(LEAVER)):
            with pytest.raises(PermanentError) as err:
                await read()
            assert "UserStatus" in str(err.value)
            assert world.user_id in str(err.value)
            assert err.value.provider == "identitystore"
        return
    found = await ic.find_user(LEAVER)
    assert (found.user_id, found.user_name, found.status) == (world.user_id, LEAVER, "ENABLED")
    assert not found.disabled
    assert await ic.get_user(world.user_id) == found


async def test_disable_user_through_scim_or_refuse_without_it(
    world: World, ic: AwsIdentityCenter
) -> None:
    if world.moto:
        # moto has no SCIM endpoint, so its world is a "directory" source: no disable API.
        with pytest.raises(PermanentError, match="no disable API"):
            await ic.disable_user(world.user_id)
        return
    await ic.disable_user(world.user_id)
    after = await ic.get_user(world.user_id)
    assert after.status == "DISABLED"
    assert after.disabled
    await ic.disable_user(world.user_id)  # a repeat is harmless
    assert (await ic.get_user(world.user_id)).status == "DISABLED"


async def test_unknown_user_name_is_permanent_resource_not_found(
    world: World, ic: AwsIdentityCenter
) -> None:
    with pytest.raises(PermanentError) as err:
        await ic.find_user("nobody@example.com")
    # issue 14: the message now also says where it looked (GetUserId, then ListUsers)
    assert str(err.value).startswith(
        "identitystore: no Identity Center user with userName 'nobody@example.com' (searched: "
    )
    assert "GetUserId on userName and emails.value" in str(err.value)
    assert "case-insensitively" in str(err.value)
    # The reworded error keeps AWS's code: callers decide on `code`, as steps.py does.
    assert err.value.code == "ResourceNotFoundException"


async def _found_id(world: World, ic: AwsIdentityCenter, address: str) -> str:
    """The id the adapter resolves `address` to; moto's DescribeUser has no UserStatus,
    so there the adapter refuses to guess a status and names the id it resolved."""
    if world.moto:
        with pytest.raises(PermanentError, match="UserStatus") as err:
            await ic.find_user(address)
        found = UUID.search(str(err.value).split("DescribeUser for ")[1][:36])
        assert found is not None, str(err.value)
        return found.group(0)
    return (await ic.find_user(address)).user_id


async def test_a_user_name_in_another_case_is_found(world: World, ic: AwsIdentityCenter) -> None:
    """issue 14: `run --user Bob@Example.com` found Bob in Okta but not in Identity Center,
    and the case halted after the IdP was changed. GetUserId matches exactly (on our
    emulator; AWS does not document it), so the adapter falls back to ListUsers."""
    bob = await world.seed.user("Bob.Mixed@Example.com")
    assert await _found_id(world, ic, "bob.mixed@example.com") == bob
    assert await _found_id(world, ic, "BOB.MIXED@EXAMPLE.COM") == bob
    assert await _found_id(world, ic, LEAVER.upper()) == world.user_id


async def test_a_user_is_found_by_primary_email_when_the_user_name_differs(
    world: World, ic: AwsIdentityCenter
) -> None:
    """issue 14: where the IdP's SCIM sync sets userName to something else (an employee
    number), the address is the user's primary email: GetUserId on emails.value, then
    ListUsers case-insensitively."""
    if world.moto:
        created = await world.store.create_user(
            IdentityStoreId=world.config.identity_store_id,
            UserName="E-10042",
            DisplayName="Carol",
            Name={"GivenName": "Carol", "FamilyName": "Example"},
            Emails=[{"Value": "Carol.Email@Example.com", "Type": "work", "Primary": True}],
        )
        carol = str(created["UserId"])
    else:
        assert isinstance(world.seed, SandboxSeeder)
        carol = world.seed.emulator.add_user("E-10042", email="Carol.Email@Example.com")
    assert await _found_id(world, ic, "Carol.Email@Example.com") == carol
    assert await _found_id(world, ic, "carol.email@example.com") == carol


async def test_two_users_matching_in_another_case_is_ambiguous(
    world: World, ic: AwsIdentityCenter
) -> None:
    """issue 14: two matches are a permanent error naming both, before anything changes."""
    first = await world.seed.user("Twin@Example.com")
    second = await world.seed.user("TWIN@example.com")
    with pytest.raises(PermanentError) as err:
        await ic.find_user("twin@example.com")
    assert err.value.code == "AmbiguousUser"
    message = str(err.value)
    assert first in message and second in message and "nothing was changed" in message


async def test_unknown_user_id_is_permanent_resource_not_found(
    world: World, ic: AwsIdentityCenter
) -> None:
    with pytest.raises(PermanentError) as err:
        await ic.get_user("00000000-0000-4000-8000-000000000000")
    assert err.value.code == "ResourceNotFoundException"
    assert err.value.status == 400
    assert str(err.value).startswith("identitystore: DescribeUser failed: ResourceNotFound")


# ---------------------------------------------------------------- the reads of the countdown


async def test_group_memberships_and_assignments(world: World, ic: AwsIdentityCenter) -> None:
    assert await ic.group_memberships(world.user_id) == [(world.membership_id, world.group_id)]
    assert await ic.assignments("USER", world.user_id) == [(ADMIN_ACCOUNT, world.admin_arn)]
    # a user's own listing does not expand its groups' assignments (both backends, as AWS)
    assert await ic.assignments("GROUP", world.group_id) == [(READONLY_ACCOUNT, world.readonly_arn)]
    assert await ic.assignments("USER", "00000000-0000-4000-8000-000000000000") == []


async def test_permission_set_name_and_duration(world: World, ic: AwsIdentityCenter) -> None:
    assert await ic.permission_set(world.admin_arn) == (
        "AdministratorAccess",
        timedelta(hours=12),
    )
    assert await ic.permission_set(world.readonly_arn) == ("ReadOnly", timedelta(hours=4))


async def test_reachable_permission_sets_directly_and_through_the_group(
    world: World, ic: AwsIdentityCenter
) -> None:
    expected = [
        ReachablePermissionSet(
            arn=world.admin_arn,
            name="AdministratorAccess",
            session_duration=timedelta(hours=12),
            accounts=(ADMIN_ACCOUNT,),
            via=("USER",),
        ),
        ReachablePermissionSet(
            arn=world.readonly_arn,
            name="ReadOnly",
            session_duration=timedelta(hours=4),
            accounts=(READONLY_ACCOUNT,),
            via=(f"GROUP:{world.group_id}",),
        ),
    ]
    assert await ic.reachable_permission_sets(world.user_id) == sorted(
        expected, key=lambda r: r.arn
    )


async def test_one_set_reached_both_ways_is_one_entry(world: World, ic: AwsIdentityCenter) -> None:
    other_account = "777788889999"
    await world.seed.assign(other_account, world.admin_arn, "GROUP", world.group_id)
    reach = {r.arn: r for r in await ic.reachable_permission_sets(world.user_id)}
    assert set(reach) == {world.admin_arn, world.readonly_arn}
    assert reach[world.admin_arn].accounts == (ADMIN_ACCOUNT, other_account)
    assert reach[world.admin_arn].via == (f"GROUP:{world.group_id}", "USER")


async def test_a_user_without_access_reaches_nothing(world: World, ic: AwsIdentityCenter) -> None:
    loner = await world.seed.user("loner@example.com")
    assert await ic.group_memberships(loner) == []
    assert await ic.reachable_permission_sets(loner) == []


async def test_reachable_applications_directly_and_through_the_group(
    world: World, ic: AwsIdentityCenter
) -> None:
    if world.moto:
        # moto 5.2.6 implements none of the application operations: each is an HTML 500
        # from a NotImplementedError inside moto. The adapter fails loudly (a 500 is
        # transient for AWS; the engine must bound its retries and say "not covered").
        with pytest.raises(TransientError) as err:
            await ic.reachable_applications(world.user_id)
        # (the first application operation is ListApplications: does the instance have any)
        assert str(err.value).startswith("sso-admin: ListApplications failed: 500:")
        assert (err.value.status, err.value.code) == (500, "500")
        # Nor can moto hold an application, so the sandbox's assertions cannot run there.
        with pytest.raises(ClientError) as created:
            await world.admin.create_application(
                InstanceArn=world.config.instance_arn,
                Name="Studio",
                ApplicationProviderArn="arn:aws:sso::aws:applicationProvider/custom",
            )
        assert created.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
        return
    assert isinstance(world.seed, SandboxSeeder)
    emulator = world.seed.emulator
    studio = emulator.add_application("Studio", provider="sagemaker", background_sessions=True)
    wiki = emulator.add_application("Wiki")
    emulator.assign_application(studio, principal_type="GROUP", principal_id=world.group_id)
    emulator.assign_application(wiki, principal_type="USER", principal_id=world.user_id)
    emulator.assign_application(wiki, principal_type="GROUP", principal_id=world.group_id)
    expected = [
        ReachableApplication(
            arn=studio,
            name="Studio",
            background_sessions=True,
            via=(f"GROUP:{world.group_id}",),
        ),
        ReachableApplication(
            arn=wiki,
            name="Wiki",
            background_sessions=False,
            via=(f"GROUP:{world.group_id}", "USER"),
        ),
    ]
    assert await ic.reachable_applications(world.user_id) == sorted(expected, key=lambda a: a.arn)
    # Read again after a change, as a re-read does (nothing shared from before it):
    # the setting is read, not remembered.
    emulator.set_background_sessions(wiki, True)
    after = datetime.now(UTC)
    reach = {a.arn: a for a in await ic.reachable_applications(world.user_id, since=after)}
    assert reach[wiki].background_sessions is True
    loner = await world.seed.user("loner@example.com")
    assert await ic.reachable_applications(loner) == []


async def test_an_unreadable_session_configuration_fails_the_read(
    sandbox: Sandbox, sandbox_world_only: World, sandbox_ic: AwsIdentityCenter
) -> None:
    """What the adapter does today when one application's configuration cannot be read:
    the whole read fails (the engine then says "not covered" for every application)."""
    emulator = sandbox.identity_center
    studio = emulator.add_application("Studio", background_sessions=True)
    emulator.assign_application(
        studio, principal_type="USER", principal_id=sandbox_world_only.user_id
    )
    sandbox.faults.add(
        FaultRule(endpoint="sso-admin.GetApplicationSessionConfiguration", kind="error", count=1)
    )
    with pytest.raises(TransientError) as err:
        await sandbox_ic.reachable_applications(sandbox_world_only.user_id)
    assert err.value.code == "InternalServerException"
    [app] = await sandbox_ic.reachable_applications(sandbox_world_only.user_id)
    assert app.background_sessions is True


async def test_a_refused_session_configuration_leaves_only_that_application_unknown(
    sandbox: Sandbox, sandbox_world_only: World, sandbox_ic: AwsIdentityCenter
) -> None:
    emulator = sandbox.identity_center
    for name in ("Glue", "Studio"):
        app = emulator.add_application(name, background_sessions=True)
        emulator.assign_application(
            app, principal_type="USER", principal_id=sandbox_world_only.user_id
        )
    sandbox.faults.add(
        FaultRule(
            endpoint="sso-admin.GetApplicationSessionConfiguration",
            kind="error",
            count=1,
            status=403,
        )
    )
    found = await sandbox_ic.reachable_applications(sandbox_world_only.user_id)
    assert sorted(a.background_sessions is None for a in found) == [False, True]
    assert [a.background_sessions for a in found if a.background_sessions is not None] == [True]


async def test_reads_span_pages(world: World, ic: AwsIdentityCenter) -> None:
    """More assignments and memberships than one page holds: every page is read."""
    accounts = [f"{100000000000 + i}" for i in range(120)]
    for account in accounts:
        await world.seed.assign(account, world.readonly_arn, "USER", world.user_id)
    groups = [await world.seed.group(f"team-{i:03d}") for i in range(105)]
    memberships = {world.membership_id: world.group_id}
    for group_id in groups:
        memberships[await world.seed.membership(group_id, world.user_id)] = group_id

    # The backend really pages: a first page without MaxResults is full and has a token.
    first = await world.admin.list_account_assignments_for_principal(
        InstanceArn=world.config.instance_arn, PrincipalId=world.user_id, PrincipalType="USER"
    )
    assert len(first["AccountAssignments"]) == PAGE
    assert first.get("NextToken")
    first = await world.store.list_group_memberships_for_member(
        IdentityStoreId=world.config.identity_store_id, MemberId={"UserId": world.user_id}
    )
    assert len(first["GroupMemberships"]) == PAGE
    assert first.get("NextToken")

    direct = await ic.assignments("USER", world.user_id)
    assert len(direct) == len(accounts) + 1  # no page read twice
    assert sorted(direct) == sorted(
        [(ADMIN_ACCOUNT, world.admin_arn)] + [(a, world.readonly_arn) for a in accounts]
    )
    read = await ic.group_memberships(world.user_id)
    assert len(read) == len(memberships)
    assert dict(read) == memberships

    reach = {r.arn: r for r in await ic.reachable_permission_sets(world.user_id)}
    assert reach[world.readonly_arn].accounts == tuple(sorted([*accounts, READONLY_ACCOUNT]))
    assert reach[world.readonly_arn].via == (f"GROUP:{world.group_id}", "USER")
    assert reach[world.admin_arn].accounts == (ADMIN_ACCOUNT,)


# ---------------------------------------------------------------- deny policy and provisioning


async def test_inline_policy_round_trip(world: World, ic: AwsIdentityCenter) -> None:
    assert json.loads(await ic.inline_policy(world.admin_arn)) == json.loads(DENY_ALL)
    assert await ic.inline_policy(world.readonly_arn) == ""

    policy = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "OffboardDenyLeaver",
                    "Effect": "Deny",
                    "Action": "*",
                    "Resource": "*",
                    "Condition": {"StringEquals": {"aws:userid": f"*:{LEAVER}"}},
                }
            ],
        }
    )
    await ic.put_inline_policy(world.readonly_arn, policy)
    assert json.loads(await ic.inline_policy(world.readonly_arn)) == json.loads(policy)
    assert json.loads(await ic.inline_policy(world.admin_arn)) == json.loads(DENY_ALL)

    await ic.delete_inline_policy(world.readonly_arn)
    assert await ic.inline_policy(world.readonly_arn) == ""


async def test_unknown_permission_set_is_permanent(world: World, ic: AwsIdentityCenter) -> None:
    missing = world.admin_arn[: -len("0123456789abcdef")] + "0123456789abcdef"
    for read in (lambda: ic.permission_set(missing), lambda: ic.inline_policy(missing)):
        with pytest.raises(PermanentError) as err:
            await read()
        assert err.value.code == "ResourceNotFoundException"


async def test_provision_returns_a_request_id_and_its_status_is_read_or_refused(
    world: World, ic: AwsIdentityCenter
) -> None:
    request_id = await ic.provision(world.admin_arn)
    assert UUID.match(request_id)
    if world.moto:
        # moto has no DescribePermissionSetProvisioningStatus (an HTML 500 from inside
        # moto): the adapter must fail, not report a success it never read.
        # A 500 is transient for AWS, so the engine would retry and requeue, never succeed.
        with pytest.raises(TransientError) as err:
            await ic.provisioning_status(request_id)
        assert str(err.value).startswith(
            "sso-admin: DescribePermissionSetProvisioningStatus failed: 500:"
        )
        assert "500 Internal Server Error" in str(err.value)
        assert (err.value.status, err.value.code) == (500, "500")
        return
    assert await ic.provisioning_status(request_id) == ("SUCCEEDED", "")


# ---------------------------------------------------------------- removing access


async def test_delete_assignment_and_read_its_deletion(world: World, ic: AwsIdentityCenter) -> None:
    request_id = await ic.delete_assignment(world.user_id, ADMIN_ACCOUNT, world.admin_arn)
    assert UUID.match(request_id)
    assert await ic.deletion_status(request_id) == ("SUCCEEDED", "")
    assert await ic.assignments("USER", world.user_id) == []
    # the group's assignment is someone else's access too: untouched
    assert await ic.assignments("GROUP", world.group_id) == [(READONLY_ACCOUNT, world.readonly_arn)]

    # gone already: what steps.py treats as done, so it must keep its code
    with pytest.raises(PermanentError) as err:
        await ic.delete_assignment(world.user_id, ADMIN_ACCOUNT, world.admin_arn)
    assert err.value.code == "ResourceNotFoundException"
    with pytest.raises(PermanentError) as err:
        await ic.deletion_status("00000000-0000-4000-8000-000000000000")
    assert err.value.code == "ResourceNotFoundException"


async def test_delete_assignment_never_touches_a_group(world: World, ic: AwsIdentityCenter) -> None:
    # The adapter deletes USER assignments only: asked for the group's set, it finds none.
    with pytest.raises(PermanentError) as err:
        await ic.delete_assignment(world.group_id, READONLY_ACCOUNT, world.readonly_arn)
    assert err.value.code == "ResourceNotFoundException"
    assert await ic.assignments("GROUP", world.group_id) == [(READONLY_ACCOUNT, world.readonly_arn)]


async def test_delete_membership(world: World, ic: AwsIdentityCenter) -> None:
    await ic.delete_membership(world.membership_id)
    assert await ic.group_memberships(world.user_id) == []
    assert [r.arn for r in await ic.reachable_permission_sets(world.user_id)] == [world.admin_arn]
    if world.moto:
        # moto accepts deleting a membership that does not exist (AWS and the sandbox refuse)
        await ic.delete_membership(world.membership_id)
        return
    with pytest.raises(PermanentError) as err:
        await ic.delete_membership(world.membership_id)
    assert err.value.code == "ResourceNotFoundException"


# ---------------------------------------------------------------- faults (the sandbox only)


async def test_identitystore_throttle_carries_its_hint(
    sandbox: Sandbox, sandbox_world_only: World, sandbox_ic: AwsIdentityCenter
) -> None:
    sandbox.faults.add(
        FaultRule(endpoint="identitystore.DescribeUser", kind="throttle", count=1, retry_after=2)
    )
    with pytest.raises(TransientError) as err:
        await sandbox_ic.get_user(sandbox_world_only.user_id)
    assert err.value.retry_after == 2.0
    assert err.value.code == "ThrottlingException"
    assert err.value.status == 400
    assert "DescribeUser failed: ThrottlingException" in str(err.value)
    # the next call goes through
    assert (await sandbox_ic.get_user(sandbox_world_only.user_id)).status == "ENABLED"


async def test_throttled_lookup_stays_transient(
    sandbox: Sandbox, sandbox_ic: AwsIdentityCenter
) -> None:
    # find_user rewords only a not-found: a throttle must stay retryable
    sandbox.faults.add(
        FaultRule(endpoint="identitystore.GetUserId", kind="throttle", count=1, retry_after=3)
    )
    with pytest.raises(TransientError) as err:
        await sandbox_ic.find_user(LEAVER)
    assert err.value.retry_after == 3.0


@pytest.mark.parametrize(
    "endpoint",
    ["sso-admin.ListAccountAssignmentsForPrincipal", "sso-admin.DescribePermissionSet"],
)
async def test_sso_admin_throttle_is_transient_without_a_hint(
    sandbox: Sandbox, sandbox_world_only: World, sandbox_ic: AwsIdentityCenter, endpoint: str
) -> None:
    sandbox.faults.add(FaultRule(endpoint=endpoint, kind="throttle", count=1, retry_after=5))
    with pytest.raises(TransientError) as err:
        await sandbox_ic.reachable_permission_sets(sandbox_world_only.user_id)
    assert err.value.retry_after is None  # sso-admin sends none; the policy's backoff decides
    assert err.value.code == "ThrottlingException"
    assert err.value.provider == "sso-admin"
    # a failed read is not cached: the retry sees everything
    reach = await sandbox_ic.reachable_permission_sets(sandbox_world_only.user_id)
    assert [r.session_duration for r in sorted(reach, key=lambda r: r.name)] == [
        timedelta(hours=12),
        timedelta(hours=4),
    ]


async def test_server_error_is_transient(
    sandbox: Sandbox, sandbox_world_only: World, sandbox_ic: AwsIdentityCenter
) -> None:
    sandbox.faults.add(
        FaultRule(endpoint="identitystore.ListGroupMembershipsForMember", kind="error", count=1)
    )
    with pytest.raises(TransientError) as err:
        await sandbox_ic.group_memberships(sandbox_world_only.user_id)
    assert err.value.status == 500
    assert err.value.code == "InternalServerException"
    assert err.value.retry_after is None


async def test_a_mutation_applied_behind_a_failure_reads_back(
    sandbox: Sandbox, sandbox_world_only: World, sandbox_ic: AwsIdentityCenter
) -> None:
    world = sandbox_world_only
    sandbox.faults.add(
        FaultRule(
            endpoint="identitystore.DeleteGroupMembership", kind="error", count=1, phase="after"
        )
    )
    with pytest.raises(TransientError):
        await sandbox_ic.delete_membership(world.membership_id)
    assert await sandbox_ic.group_memberships(world.user_id) == []
    # the retry then meets a not-found, which steps.py accepts by its code
    with pytest.raises(PermanentError) as err:
        await sandbox_ic.delete_membership(world.membership_id)
    assert err.value.code == "ResourceNotFoundException"


async def test_a_request_botocore_refuses_to_send_is_permanent(
    sandbox: Sandbox, sandbox_ic: AwsIdentityCenter
) -> None:
    """botocore's ParamValidationError is a BotoCoreError, but nothing was sent and a retry
    sends the same thing: a human must look, so the case must halt, not requeue forever."""
    with pytest.raises(PermanentError) as err:
        await sandbox_ic.provisioning_status("not-a-request-id")  # the model wants 36 chars
    assert "DescribePermissionSetProvisioningStatus" in str(err.value)
    assert sandbox.audit.calls["sso-admin.DescribePermissionSetProvisioningStatus"] == 0


async def test_connection_refused_is_transient(sandbox_world_only: World) -> None:
    config = sandbox_world_only.config.model_copy(update={"endpoint_url": "http://127.0.0.1:9"})
    async with aiohttp.ClientSession() as http, AwsIdentityCenter(config, http) as adapter:
        with pytest.raises(TransientError) as err:
            await adapter.group_memberships(sandbox_world_only.user_id)
    assert err.value.provider == "identitystore"
    assert "ListGroupMembershipsForMember failed" in str(err.value)


# issue 14: the resolve step (worker/resolve.py) on both backends, the IdP a double


async def _resolve(ic: AwsIdentityCenter, address: str) -> tuple[Resolution, FakeIdentityProvider]:
    idp = FakeIdentityProvider(name="okta")
    idp.add_user(address)
    reader = RetryingReader(policy=RetryPolicy(attempts=2, initial=0.01), clock=ManualClock())
    return await resolve_person(reader, idp, ic, address), idp


async def test_resolve_records_a_person_not_in_identity_center(
    world: World, ic: AwsIdentityCenter
) -> None:
    resolution, idp = await _resolve(ic, "only.okta@example.com")

    assert resolution.ic_user is None
    assert resolution.idp_user.login == "only.okta@example.com"
    evidence = resolution.evidence()
    assert evidence["ic_user_id"] is None
    assert "no Identity Center user" in evidence["ic_user_absent"]
    assert "externalId" in evidence["ic_user_absent"]  # the SCIM sync's id was searched too
    assert [c.name for c in idp.calls] == ["idp.find_user"]  # reads only


async def test_resolve_finds_the_identity_center_user_in_another_case(
    world: World, ic: AwsIdentityCenter
) -> None:
    bob = await world.seed.user("Bob.Resolve@Example.com")
    resolution, _ = await _resolve(ic, "bob.resolve@example.com")
    assert resolution.ic_user is not None and resolution.ic_user.user_id == bob
    assert resolution.evidence()["ic_user_id"] == bob
    if world.moto:
        # moto's DescribeUser has no UserStatus: the disable's read before its PATCH
        # halts rather than guess, naming the user (the resolve reads who, not state)
        with pytest.raises(PermanentError, match="UserStatus") as err:
            await ic.get_user(bob)
        assert bob in str(err.value)


async def test_resolve_halts_on_two_identity_center_matches_naming_both(
    world: World, ic: AwsIdentityCenter
) -> None:
    first = await world.seed.user("Pair@Example.com")
    second = await world.seed.user("PAIR@example.com")

    with pytest.raises(PermanentError) as err:
        await _resolve(ic, "pair@example.com")

    assert err.value.code == "AmbiguousUser"
    assert first in str(err.value) and second in str(err.value)
    assert "nothing was changed" in str(err.value)


async def test_find_user_by_the_externalid_the_scim_sync_set(
    world: World, ic: AwsIdentityCenter
) -> None:
    """The IdP's SCIM sync sets ExternalIds (the IdP user's id); CreateUser cannot, so
    on moto nobody has one: not found, with AWS's code, never a guess."""
    if world.moto:
        with pytest.raises(PermanentError) as err:
            await ic.find_user_by_external_id("00u-okta-id")
        assert err.value.code == "ResourceNotFoundException"
        return
    assert isinstance(world.seed, SandboxSeeder)
    emulator = world.seed.emulator
    synced = emulator.add_user("E-777", external_ids=(("okta", "00u-okta-id"),))
    assert (await ic.find_user_by_external_id("00u-okta-id")).user_id == synced
    with pytest.raises(PermanentError) as err:
        await ic.find_user_by_external_id("00U-OKTA-ID")  # ids are exact, not folded
    assert err.value.code == "ResourceNotFoundException"
    emulator.add_user("E-778", external_ids=(("okta", "00u-okta-id"),))
    with pytest.raises(PermanentError) as err:
        await ic.find_user_by_external_id("00u-okta-id")
    assert err.value.code == "AmbiguousUser" and synced in str(err.value)


async def test_run_wide_memberships_agree_with_the_users_own(
    world: World, ic: AwsIdentityCenter
) -> None:
    """The grid re-reads' listing of every group's members (ListGroups, then each
    group's ListGroupMemberships) says what ListGroupMembershipsForMember says, on both
    backends."""
    members = await ic._every_membership(_Budget(ic, 1000))
    assert list(members[world.user_id]) == await ic.group_memberships(world.user_id)


async def test_run_wide_assignments_agree_with_each_principals(
    sandbox_world_only: World, sandbox_ic: AwsIdentityCenter
) -> None:
    """Every (account, permission set) pair's ListAccountAssignments, over the accounts
    ListAccountsForProvisionedPermissionSet names, finds what each principal's own
    listing finds. Sandbox only: moto's ListAccountsForProvisionedPermissionSet answers
    its own account for a set provisioned by ProvisionPermissionSet, and nothing for
    one CreateAccountAssignment provisioned, which AWS documents it does."""
    world, ic = sandbox_world_only, sandbox_ic
    found = await ic._every_assignment(_Budget(ic, 1000))
    for principal in (("USER", world.user_id), ("GROUP", world.group_id)):
        assert sorted(found[principal]) == sorted(await ic.assignments(*principal))
