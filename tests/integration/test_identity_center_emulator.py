"""The Identity Center emulator, over real HTTP, parsed by botocore's own service models.

Every AWS answer here goes through a real aiobotocore client, so a shape that botocore
would not parse fails the test. The last test runs the same scenario against moto and
compares the answers structurally.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from moto.server import ThreadedMotoServer

from worker.clock import ManualClock
from worker.sandbox.common import AuditLog, FaultPlan, FaultRule, serve_on_loopback
from worker.sandbox.identity_center import IdentityCenterEmulator

ACCESS_KEY = "AKIASANDBOX"
SECRET = "sandbox-secret"
SCIM_TOKEN = "scim-sandbox-token"
STORE = "d-9067c0ffee"
INSTANCE = "arn:aws:sso:::instance/ssoins-7223c0ffee000001"
#: AWS's form; the instance id is the sandbox default (14 characters where AWS has 16).
PS_ARN_PATTERN = r"arn:aws:sso:::permissionSet/ssoins-7223c0ffee000001/ps-[a-f0-9]{16}"
DELAY = 30.0
ACCOUNT_A, ACCOUNT_B, ACCOUNT_C = "111111111111", "222222222222", "333333333333"
DENY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Deny", "Action": "*", "Resource": "*"}],
    }
)
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
SCIM_AUTH = {"Authorization": f"Bearer {SCIM_TOKEN}"}

Client = Any  # aiobotocore clients are generated at run time
ClientFactory = Callable[..., AbstractAsyncContextManager[Client]]


@dataclass
class Sandbox:
    emulator: IdentityCenterEmulator
    audit: AuditLog
    faults: FaultPlan
    clock: ManualClock
    url: str


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    clock = ManualClock()
    audit = AuditLog(clock)
    faults = FaultPlan(seed=3)
    emulator = IdentityCenterEmulator(
        audit=audit,
        faults=faults,
        clock=clock,
        scim_token=SCIM_TOKEN,
        provisioning_delay=DELAY,
        secret_access_key=SECRET,
    )
    served = await serve_on_loopback(emulator.app())
    try:
        yield Sandbox(emulator, audit, faults, clock, served.url)
    finally:
        await served.close()


def aws_client(
    service: str, url: str, *, key: str = ACCESS_KEY, secret: str = SECRET
) -> AbstractAsyncContextManager[Client]:
    client: AbstractAsyncContextManager[Client] = get_session().create_client(
        service,
        region_name="us-east-1",
        endpoint_url=url,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=AioConfig(retries={"total_max_attempts": 1}),
    )
    return client


@pytest.fixture
async def store(sandbox: Sandbox) -> AsyncIterator[Client]:
    async with aws_client("identitystore", sandbox.url) as client:
        yield client


@pytest.fixture
async def admin(sandbox: Sandbox) -> AsyncIterator[Client]:
    async with aws_client("sso-admin", sandbox.url) as client:
        yield client


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def code_of(err: pytest.ExceptionInfo[ClientError]) -> str:
    return str(err.value.response["Error"]["Code"])


# ---------------------------------------------------------------- identitystore


async def test_get_user_id_then_describe_user_reports_status(
    sandbox: Sandbox, store: Client
) -> None:
    user_id = sandbox.emulator.add_user(
        "ada@example.com", display_name="Ada Lovelace", email="ada@example.com"
    )

    found = await store.get_user_id(
        IdentityStoreId=STORE,
        AlternateIdentifier={
            "UniqueAttribute": {"AttributePath": "userName", "AttributeValue": "ada@example.com"}
        },
    )
    assert found["UserId"] == user_id
    described = await store.describe_user(IdentityStoreId=STORE, UserId=user_id)
    assert described["UserStatus"] == "ENABLED"
    assert described["UserName"] == "ada@example.com"
    assert described["Emails"] == [{"Value": "ada@example.com", "Type": "work", "Primary": True}]
    assert isinstance(described["CreatedAt"], datetime)

    sandbox.emulator.set_user_status(user_id, "DISABLED", actor="drift")
    described = await store.describe_user(IdentityStoreId=STORE, UserId=user_id)
    assert described["UserStatus"] == "DISABLED"
    [entry] = sandbox.audit.entries(action="identity-center.set_status")
    assert entry.detail == {
        "status": "DISABLED",
        "previous": "ENABLED",
        "actor": "drift",
        "changed": True,
    }


async def test_unknown_user_is_resource_not_found(store: Client) -> None:
    with pytest.raises(ClientError) as err:
        await store.describe_user(
            IdentityStoreId=STORE, UserId="00000000-0000-4000-8000-000000000000"
        )
    assert code_of(err) == "ResourceNotFoundException"
    assert err.value.response["ResourceType"] == "USER"
    with pytest.raises(ClientError) as err:
        await store.get_user_id(
            IdentityStoreId=STORE,
            AlternateIdentifier={
                "UniqueAttribute": {"AttributePath": "userName", "AttributeValue": "nobody"}
            },
        )
    assert code_of(err) == "ResourceNotFoundException"


async def test_list_users_paginates(sandbox: Sandbox, store: Client) -> None:
    names = [f"user{i}@example.com" for i in range(5)]
    for name in names:
        sandbox.emulator.add_user(name)
    paginator = store.get_paginator("list_users")
    pages = [
        page
        async for page in paginator.paginate(
            IdentityStoreId=STORE, PaginationConfig={"PageSize": 2}
        )
    ]
    assert [len(p["Users"]) for p in pages] == [2, 2, 1]
    assert [u["UserName"] for p in pages for u in p["Users"]] == names


async def test_group_memberships_paginate_and_survive_deletion(
    sandbox: Sandbox, store: Client
) -> None:
    emulator = sandbox.emulator
    user_id = emulator.add_user("ada@example.com")
    groups = [emulator.add_group(f"team-{i}") for i in range(5)]
    for group_id in groups:
        emulator.add_membership(group_id, user_id)

    paginator = store.get_paginator("list_group_memberships_for_member")
    pages = [
        page
        async for page in paginator.paginate(
            IdentityStoreId=STORE, MemberId={"UserId": user_id}, PaginationConfig={"PageSize": 2}
        )
    ]
    assert [len(p["GroupMemberships"]) for p in pages] == [2, 2, 1]
    assert [m["GroupId"] for p in pages for m in p["GroupMemberships"]] == groups
    first = pages[0]["GroupMemberships"][0]
    assert first["MemberId"] == {"UserId": user_id}
    assert first["MembershipArn"].endswith(first["MembershipId"])

    # Deleting what a page returned must not make the next page skip anything.
    page = await store.list_group_memberships_for_member(
        IdentityStoreId=STORE, MemberId={"UserId": user_id}, MaxResults=2
    )
    for membership in page["GroupMemberships"]:
        await store.delete_group_membership(
            IdentityStoreId=STORE, MembershipId=membership["MembershipId"]
        )
    rest = await store.list_group_memberships_for_member(
        IdentityStoreId=STORE,
        MemberId={"UserId": user_id},
        MaxResults=2,
        NextToken=page["NextToken"],
    )
    assert [m["GroupId"] for m in rest["GroupMemberships"]] == groups[2:4]
    assert emulator.group_ids(user_id) == groups[2:]
    assert len(sandbox.audit.entries(action="identitystore.DeleteGroupMembership")) == 2


async def test_group_membership_lookup_and_delete(sandbox: Sandbox, store: Client) -> None:
    emulator = sandbox.emulator
    user_id = emulator.add_user("ada@example.com")
    group_id = emulator.add_group("engineers")
    membership_id = emulator.add_membership(group_id, user_id)

    group = await store.describe_group(IdentityStoreId=STORE, GroupId=group_id)
    assert group["DisplayName"] == "engineers"
    found = await store.get_group_membership_id(
        IdentityStoreId=STORE, GroupId=group_id, MemberId={"UserId": user_id}
    )
    assert found["MembershipId"] == membership_id

    await store.delete_group_membership(IdentityStoreId=STORE, MembershipId=membership_id)
    [entry] = sandbox.audit.entries(action="identitystore.DeleteGroupMembership")
    assert entry.target == membership_id
    assert entry.detail == {"group_id": group_id, "user_id": user_id}
    with pytest.raises(ClientError) as err:
        await store.delete_group_membership(IdentityStoreId=STORE, MembershipId=membership_id)
    assert code_of(err) == "ResourceNotFoundException"


async def test_foreign_identity_store_is_denied(store: Client) -> None:
    with pytest.raises(ClientError) as err:
        await store.list_users(IdentityStoreId="d-0000000000")
    assert code_of(err) == "AccessDeniedException"


# ---------------------------------------------------------------- sso-admin


async def test_list_instances(admin: Client) -> None:
    [instance] = (await admin.list_instances())["Instances"]
    assert instance["InstanceArn"] == INSTANCE
    assert instance["IdentityStoreId"] == STORE
    assert instance["Status"] == "ACTIVE"


async def test_assignments_for_principal_paginate_and_are_direct_only(
    sandbox: Sandbox, admin: Client
) -> None:
    emulator = sandbox.emulator
    user_id = emulator.add_user("ada@example.com")
    group_id = emulator.add_group("engineers")
    emulator.add_membership(group_id, user_id)
    admin_ps = emulator.add_permission_set("Admin")
    read_ps = emulator.add_permission_set("ReadOnly")
    direct = [(ACCOUNT_A, admin_ps), (ACCOUNT_B, admin_ps), (ACCOUNT_B, read_ps)]
    for account, ps in direct:
        emulator.add_account_assignment(
            account_id=account, permission_set_arn=ps, principal_type="USER", principal_id=user_id
        )
    emulator.add_account_assignment(
        account_id=ACCOUNT_C,
        permission_set_arn=read_ps,
        principal_type="GROUP",
        principal_id=group_id,
    )

    paginator = admin.get_paginator("list_account_assignments_for_principal")
    pages = [
        page
        async for page in paginator.paginate(
            InstanceArn=INSTANCE,
            PrincipalId=user_id,
            PrincipalType="USER",
            PaginationConfig={"PageSize": 2},
        )
    ]
    assert [len(p["AccountAssignments"]) for p in pages] == [2, 1]
    listed = [
        (a["AccountId"], a["PermissionSetArn"]) for p in pages for a in p["AccountAssignments"]
    ]
    assert listed == direct  # the group's assignment to ACCOUNT_C is not expanded

    filtered = await admin.list_account_assignments_for_principal(
        InstanceArn=INSTANCE,
        PrincipalId=user_id,
        PrincipalType="USER",
        Filter={"AccountId": ACCOUNT_B},
    )
    assert {a["PermissionSetArn"] for a in filtered["AccountAssignments"]} == {admin_ps, read_ps}
    for_group = await admin.list_account_assignments_for_principal(
        InstanceArn=INSTANCE, PrincipalId=group_id, PrincipalType="GROUP"
    )
    assert for_group["AccountAssignments"] == [
        {
            "AccountId": ACCOUNT_C,
            "PermissionSetArn": read_ps,
            "PrincipalId": group_id,
            "PrincipalType": "GROUP",
        }
    ]
    by_account = await admin.list_account_assignments(
        InstanceArn=INSTANCE, AccountId=ACCOUNT_B, PermissionSetArn=read_ps
    )
    assert [a["PrincipalId"] for a in by_account["AccountAssignments"]] == [user_id]


async def test_describe_permission_set(sandbox: Sandbox, admin: Client) -> None:
    ps = sandbox.emulator.add_permission_set("Admin", session_duration="PT8H")
    assert re.fullmatch(PS_ARN_PATTERN, ps)

    described = (await admin.describe_permission_set(InstanceArn=INSTANCE, PermissionSetArn=ps))[
        "PermissionSet"
    ]
    assert described["SessionDuration"] == "PT8H"
    assert described["Name"] == "Admin"
    assert isinstance(described["CreatedDate"], datetime)
    listed = await admin.list_permission_sets(InstanceArn=INSTANCE)
    assert listed["PermissionSets"] == [ps]

    with pytest.raises(ClientError) as err:
        await admin.describe_permission_set(
            InstanceArn=INSTANCE, PermissionSetArn=ps[:-16] + "0" * 16
        )
    assert code_of(err) == "ResourceNotFoundException"


async def test_inline_policy_round_trip_and_size_limit(sandbox: Sandbox, admin: Client) -> None:
    ps = sandbox.emulator.add_permission_set("Admin")
    assert (
        await admin.get_inline_policy_for_permission_set(InstanceArn=INSTANCE, PermissionSetArn=ps)
    )["InlinePolicy"] == ""

    await admin.put_inline_policy_to_permission_set(
        InstanceArn=INSTANCE, PermissionSetArn=ps, InlinePolicy=DENY
    )
    got = await admin.get_inline_policy_for_permission_set(
        InstanceArn=INSTANCE, PermissionSetArn=ps
    )
    assert got["InlinePolicy"] == DENY
    [entry] = sandbox.audit.entries(action="sso-admin.PutInlinePolicyToPermissionSet")
    assert entry.target == ps
    assert entry.detail["policy"] == DENY

    too_big = json.dumps({"Version": "2012-10-17", "Statement": [], "pad": "x" * 32768})
    with pytest.raises(ClientError) as err:
        await admin.put_inline_policy_to_permission_set(
            InstanceArn=INSTANCE, PermissionSetArn=ps, InlinePolicy=too_big
        )
    assert code_of(err) == "ValidationException"
    assert sandbox.emulator.inline_policy(ps) == DENY

    await admin.delete_inline_policy_from_permission_set(InstanceArn=INSTANCE, PermissionSetArn=ps)
    assert sandbox.emulator.inline_policy(ps) == ""
    assert len(sandbox.audit.entries(action="sso-admin.DeleteInlinePolicyFromPermissionSet")) == 1


async def test_provisioning_goes_from_in_progress_to_succeeded(
    sandbox: Sandbox, admin: Client
) -> None:
    emulator = sandbox.emulator
    user_id = emulator.add_user("ada@example.com")
    ps = emulator.add_permission_set("Admin")
    for account in (ACCOUNT_A, ACCOUNT_B):
        emulator.add_account_assignment(
            account_id=account, permission_set_arn=ps, principal_type="USER", principal_id=user_id
        )
    await admin.put_inline_policy_to_permission_set(
        InstanceArn=INSTANCE, PermissionSetArn=ps, InlinePolicy=DENY
    )

    async def stale_accounts() -> list[str]:
        answer = await admin.list_accounts_for_provisioned_permission_set(
            InstanceArn=INSTANCE,
            PermissionSetArn=ps,
            ProvisioningStatus="LATEST_PERMISSION_SET_NOT_PROVISIONED",
        )
        return list(answer["AccountIds"])

    assert await stale_accounts() == [ACCOUNT_A, ACCOUNT_B]

    started = (
        await admin.provision_permission_set(
            InstanceArn=INSTANCE, PermissionSetArn=ps, TargetType="ALL_PROVISIONED_ACCOUNTS"
        )
    )["PermissionSetProvisioningStatus"]
    assert started["Status"] == "IN_PROGRESS"
    request_id = started["RequestId"]

    async def status() -> str:
        answer = await admin.describe_permission_set_provisioning_status(
            InstanceArn=INSTANCE, ProvisionPermissionSetRequestId=request_id
        )
        return str(answer["PermissionSetProvisioningStatus"]["Status"])

    assert await status() == "IN_PROGRESS"
    with pytest.raises(ClientError) as err:
        await admin.provision_permission_set(
            InstanceArn=INSTANCE, PermissionSetArn=ps, TargetType="ALL_PROVISIONED_ACCOUNTS"
        )
    assert code_of(err) == "ConflictException"
    assert await stale_accounts() == [ACCOUNT_A, ACCOUNT_B]

    sandbox.clock.advance(DELAY)
    assert await status() == "SUCCEEDED"
    assert await stale_accounts() == []
    [entry] = sandbox.audit.entries(action="sso-admin.ProvisionPermissionSet")
    assert entry.detail["accounts"] == [ACCOUNT_A, ACCOUNT_B]

    with pytest.raises(ClientError) as err:
        await admin.describe_permission_set_provisioning_status(
            InstanceArn=INSTANCE,
            ProvisionPermissionSetRequestId="00000000-0000-4000-8000-000000000000",
        )
    assert code_of(err) == "ResourceNotFoundException"


async def test_one_provisioning_per_account_at_a_time_and_every_policy_revision_kept(
    sandbox: Sandbox, admin: Client
) -> None:
    emulator = sandbox.emulator
    user_id = emulator.add_user("ada@example.com")
    admin_set = emulator.add_permission_set("Admin")
    readonly = emulator.add_permission_set("ReadOnly")
    other = emulator.add_permission_set("Billing")
    for ps, account in ((admin_set, ACCOUNT_A), (readonly, ACCOUNT_A), (other, ACCOUNT_B)):
        emulator.add_account_assignment(
            account_id=account, permission_set_arn=ps, principal_type="USER", principal_id=user_id
        )

    async def provision(ps: str) -> Any:
        return await admin.provision_permission_set(
            InstanceArn=INSTANCE, PermissionSetArn=ps, TargetType="ALL_PROVISIONED_ACCOUNTS"
        )

    await provision(admin_set)
    # another set into the same account waits its turn; one into another account does not
    with pytest.raises(ClientError) as err:
        await provision(readonly)
    assert code_of(err) == "ConflictException"
    await provision(other)
    sandbox.clock.advance(DELAY)
    await provision(readonly)

    for policy in (DENY, ""):
        await admin.put_inline_policy_to_permission_set(
            InstanceArn=INSTANCE, PermissionSetArn=other, InlinePolicy=policy or "{}"
        )
    await admin.delete_inline_policy_from_permission_set(
        InstanceArn=INSTANCE, PermissionSetArn=other
    )
    assert emulator.policy_revisions(other) == [(1, ""), (2, DENY), (3, "{}"), (4, "")]


async def test_delete_account_assignment(sandbox: Sandbox, admin: Client) -> None:
    emulator = sandbox.emulator
    user_id = emulator.add_user("ada@example.com")
    ps = emulator.add_permission_set("Admin")
    emulator.add_account_assignment(
        account_id=ACCOUNT_A, permission_set_arn=ps, principal_type="USER", principal_id=user_id
    )
    delete = {
        "InstanceArn": INSTANCE,
        "TargetId": ACCOUNT_A,
        "TargetType": "AWS_ACCOUNT",
        "PermissionSetArn": ps,
        "PrincipalType": "USER",
        "PrincipalId": user_id,
    }

    started = (await admin.delete_account_assignment(**delete))["AccountAssignmentDeletionStatus"]
    assert started["Status"] == "IN_PROGRESS"
    assert started["PrincipalId"] == user_id

    async def status() -> str:
        answer = await admin.describe_account_assignment_deletion_status(
            InstanceArn=INSTANCE, AccountAssignmentDeletionRequestId=started["RequestId"]
        )
        return str(answer["AccountAssignmentDeletionStatus"]["Status"])

    assert await status() == "IN_PROGRESS"
    sandbox.clock.advance(DELAY)
    assert await status() == "SUCCEEDED"
    listed = await admin.list_account_assignments_for_principal(
        InstanceArn=INSTANCE, PrincipalId=user_id, PrincipalType="USER"
    )
    assert listed["AccountAssignments"] == []
    assert len(sandbox.audit.entries(action="sso-admin.DeleteAccountAssignment")) == 1

    with pytest.raises(ClientError) as err:
        await admin.delete_account_assignment(**delete)
    assert code_of(err) == "ResourceNotFoundException"


# ---------------------------------------------------------------- faults, auth, protocol


async def test_identitystore_throttle_carries_retry_after(sandbox: Sandbox, store: Client) -> None:
    user_id = sandbox.emulator.add_user("ada@example.com")
    sandbox.faults.add(
        FaultRule(endpoint="identitystore.DescribeUser", kind="throttle", count=1, retry_after=3)
    )

    with pytest.raises(ClientError) as err:
        await store.describe_user(IdentityStoreId=STORE, UserId=user_id)
    assert code_of(err) == "ThrottlingException"
    # botocore merges the modelled error members into the top level of the response,
    # not into response["Error"]; the header is there too.
    assert err.value.response["RetryAfterSeconds"] == 3
    assert "RetryAfterSeconds" not in err.value.response["Error"]
    assert err.value.response["ResponseMetadata"]["HTTPHeaders"]["retry-after"] == "3"
    assert sandbox.audit.throttled["identitystore.DescribeUser"] == 1

    described = await store.describe_user(IdentityStoreId=STORE, UserId=user_id)
    assert described["UserId"] == user_id


async def test_sso_admin_throttle_has_no_hint(sandbox: Sandbox, admin: Client) -> None:
    sandbox.faults.add(FaultRule(endpoint="sso-admin.*", kind="throttle", count=1, retry_after=3))

    with pytest.raises(ClientError) as err:
        await admin.list_instances()
    assert code_of(err) == "ThrottlingException"
    assert err.value.response["Error"]["Message"] == "Rate exceeded"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "RetryAfterSeconds" not in err.value.response
    assert "retry-after" not in err.value.response["ResponseMetadata"]["HTTPHeaders"]


async def test_injected_server_error(sandbox: Sandbox, admin: Client) -> None:
    sandbox.faults.add(FaultRule(endpoint="sso-admin.ListInstances", kind="error", count=1))

    with pytest.raises(ClientError) as err:
        await admin.list_instances()
    assert code_of(err) == "InternalServerException"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500


async def test_injected_error_after_the_mutation_applied(sandbox: Sandbox, store: Client) -> None:
    emulator = sandbox.emulator
    user_id = emulator.add_user("ada@example.com")
    membership_id = emulator.add_membership(emulator.add_group("engineers"), user_id)
    sandbox.faults.add(
        FaultRule(
            endpoint="identitystore.DeleteGroupMembership", kind="error", count=1, phase="after"
        )
    )

    with pytest.raises(ClientError) as err:
        await store.delete_group_membership(IdentityStoreId=STORE, MembershipId=membership_id)
    assert code_of(err) == "InternalServerException"
    assert emulator.group_ids(user_id) == []
    with pytest.raises(ClientError) as err:  # the retry learns it is gone
        await store.delete_group_membership(IdentityStoreId=STORE, MembershipId=membership_id)
    assert code_of(err) == "ResourceNotFoundException"


async def test_wrong_access_key_is_rejected(sandbox: Sandbox) -> None:
    async with aws_client("identitystore", sandbox.url, key="AKIAOTHER") as client:
        with pytest.raises(ClientError) as err:
            await client.list_users(IdentityStoreId=STORE)
    assert code_of(err) == "UnrecognizedClientException"
    assert err.value.response["Error"]["Message"] == (
        "The security token included in the request is invalid."
    )


async def test_wrong_secret_fails_signature_check(sandbox: Sandbox) -> None:
    async with aws_client("sso-admin", sandbox.url, secret="not-the-secret") as client:
        with pytest.raises(ClientError) as err:
            await client.list_instances()
    assert code_of(err) == "InvalidSignatureException"


def signed_headers(url: str, target: str, body: bytes, service: str) -> dict[str, str]:
    request = AWSRequest(
        method="POST",
        url=url + "/",
        data=body,
        headers={"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": target},
    )
    SigV4Auth(Credentials(ACCESS_KEY, SECRET), service, "us-east-1").add_auth(request)
    return dict(request.headers.items())


async def test_raw_protocol_errors(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    async with http.post(sandbox.url + "/", data=b"{}") as response:
        assert response.status == 400
        assert response.headers["x-amzn-ErrorType"] == "UnrecognizedClientException"
        assert response.content_type == "application/x-amz-json-1.1"
        assert (await response.json(content_type=None))["__type"] == ("UnrecognizedClientException")

    target = "AWSIdentityStore.CreateUser"
    headers = signed_headers(sandbox.url, target, b"{}", "identitystore")
    async with http.post(sandbox.url + "/", data=b"{}", headers=headers) as response:
        assert response.status == 400
        body = await response.json(content_type=None)
        assert body["__type"] == "UnknownOperationException"

    target = "AWSIdentityStore.ListUsers"
    headers = signed_headers(sandbox.url, target, b"[", "identitystore")
    async with http.post(sandbox.url + "/", data=b"[", headers=headers) as response:
        assert (await response.json(content_type=None))["__type"] == "SerializationException"


# ---------------------------------------------------------------- SCIM


async def test_scim_patch_disables_once(
    sandbox: Sandbox, store: Client, http: aiohttp.ClientSession
) -> None:
    user_id = sandbox.emulator.add_user("ada@example.com", display_name="Ada")
    patch = {
        "schemas": [PATCH_OP],
        "Operations": [{"op": "replace", "path": "active", "value": False}],
    }
    url = f"{sandbox.url}/scim/v2/Users/{user_id}"

    async with http.patch(url, json=patch, headers=SCIM_AUTH) as response:
        assert response.status == 200
        body = await response.json()
    assert body["active"] is False
    assert body["id"] == user_id
    described = await store.describe_user(IdentityStoreId=STORE, UserId=user_id)
    assert described["UserStatus"] == "DISABLED"

    # Pathless form, as some IdPs send it: already disabled, so nothing changes.
    pathless = {
        "schemas": [PATCH_OP],
        "Operations": [{"op": "Replace", "value": {"active": False}}],
    }
    async with http.patch(url, json=pathless, headers=SCIM_AUTH) as response:
        assert response.status == 200
    entries = sandbox.audit.entries(action="scim.patch_user", target=user_id)
    assert [e.detail for e in entries] == [
        {"active": False, "changed": True},
        {"active": False, "changed": False},
    ]
    assert len([e for e in entries if e.detail["changed"] is True]) == 1

    async with http.get(url, headers=SCIM_AUTH) as response:
        user = await response.json()
    assert user["active"] is False
    assert user["schemas"] == ["urn:ietf:params:scim:schemas:core:2.0:User"]
    assert user["meta"]["resourceType"] == "User"


@pytest.mark.parametrize(
    "operations",
    [
        [{"op": "remove", "path": "active"}],
        [
            {"op": "replace", "path": "active", "value": False},
            {"op": "replace", "path": "active", "value": True},
        ],
        [{"op": "replace", "path": "active", "value": "maybe"}],
        [{"op": "replace", "path": "title", "value": "gone"}],
    ],
    ids=["remove-active", "two-active-ops", "not-a-boolean", "other-attribute"],
)
async def test_scim_patch_refusals(
    sandbox: Sandbox, http: aiohttp.ClientSession, operations: list[dict[str, Any]]
) -> None:
    user_id = sandbox.emulator.add_user("ada@example.com")
    async with http.patch(
        f"{sandbox.url}/scim/v2/Users/{user_id}",
        json={"schemas": [PATCH_OP], "Operations": operations},
        headers=SCIM_AUTH,
    ) as response:
        assert response.status == 400
        body = await response.json()
    assert body["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:Error"]
    assert body["status"] == "400"
    assert sandbox.emulator.user_status(user_id) == "ENABLED"
    assert sandbox.audit.entries(action="scim.patch_user") == []


async def test_scim_needs_the_bearer_token(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    user_id = sandbox.emulator.add_user("ada@example.com")
    url = f"{sandbox.url}/scim/v2/Users/{user_id}"
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        async with http.get(url, headers=headers) as response:
            assert response.status == 401
            assert (await response.json())["status"] == "401"
    async with http.get(f"{sandbox.url}/scim/v2/Users/nobody", headers=SCIM_AUTH) as response:
        assert response.status == 404


async def test_scim_list_users_by_filter(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    user_id = sandbox.emulator.add_user("ada@example.com")
    sandbox.emulator.add_user("grace@example.com")
    async with http.get(
        f"{sandbox.url}/scim/v2/Users",
        params={"filter": 'userName eq "ada@example.com"'},
        headers=SCIM_AUTH,
    ) as response:
        body = await response.json()
    assert body["totalResults"] == 1
    assert [r["id"] for r in body["Resources"]] == [user_id]
    async with http.get(
        f"{sandbox.url}/scim/v2/Users", params={"filter": 'title co "x"'}, headers=SCIM_AUTH
    ) as response:
        assert response.status == 400
        assert (await response.json())["scimType"] == "invalidFilter"


async def test_scim_throttle_is_429(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    user_id = sandbox.emulator.add_user("ada@example.com")
    sandbox.faults.add(FaultRule(endpoint="scim.get_user", kind="throttle", count=1, retry_after=2))
    async with http.get(f"{sandbox.url}/scim/v2/Users/{user_id}", headers=SCIM_AUTH) as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "2"
        assert (await response.json())["status"] == "429"


# ---------------------------------------------------------------- console and sandbox admin


async def test_console_deletes_portal_sessions(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    emulator = sandbox.emulator
    user_id = emulator.add_user("ada@example.com")
    sessions = [emulator.open_portal_session(user_id) for _ in range(2)]
    url = f"{sandbox.url}/_console/users/{user_id}/portal-sessions"

    async with http.get(url) as response:
        listed = await response.json()
    assert [s["id"] for s in listed["sessions"]] == sessions
    assert listed["sessions"][0]["started_at"] == "2026-01-05T09:00:00.000Z"

    async with http.delete(url) as response:
        assert await response.json() == {"deleted": 2}
    assert emulator.portal_sessions(user_id) == []
    [entry] = sandbox.audit.entries(action="console.delete_portal_sessions")
    assert entry.target == user_id
    assert sandbox.audit.calls["console.delete_portal_sessions"] == 1


async def test_console_disable_and_enable(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    user_id = sandbox.emulator.add_user("ada@example.com")
    base = f"{sandbox.url}/_console/users/{user_id}"
    async with http.post(base + "/disable") as response:
        assert (await response.json())["status"] == "DISABLED"
    assert sandbox.emulator.user_status(user_id) == "DISABLED"
    async with http.post(base + "/enable") as response:
        assert (await response.json())["changed"] is True
    assert [e.action for e in sandbox.audit.entries()] == [
        "console.disable_user",
        "console.enable_user",
    ]
    async with http.post(f"{sandbox.url}/_console/users/nobody/disable") as response:
        assert response.status == 404


async def test_sandbox_admin_seeds_over_http(
    sandbox: Sandbox, admin: Client, http: aiohttp.ClientSession
) -> None:
    base = f"{sandbox.url}/_sandbox/identity-center"

    async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with http.post(base + path, json=body) as response:
            assert response.status == 201, await response.text()
            result: dict[str, Any] = await response.json()
            return result

    user_id = (await post("/users", {"user_name": "ada@example.com"}))["id"]
    group_id = (await post("/groups", {"display_name": "engineers"}))["id"]
    await post("/memberships", {"group_id": group_id, "user_id": user_id})
    ps = (await post("/permission-sets", {"name": "Admin", "session_duration": "PT2H"}))["arn"]
    await post(
        "/assignments",
        {
            "account_id": ACCOUNT_A,
            "permission_set_arn": ps,
            "principal_type": "USER",
            "principal_id": user_id,
        },
    )
    session_id = (await post(f"/users/{user_id}/portal-sessions", {}))["id"]

    async with http.get(f"{base}/users/{user_id}") as response:
        assert await response.json() == {
            "id": user_id,
            "user_name": "ada@example.com",
            "status": "ENABLED",
            "portal_sessions": [session_id],
        }
    async with http.post(f"{base}/users/nobody/portal-sessions") as response:
        assert response.status == 404
    async with http.post(base + "/users", json={}) as response:
        assert response.status == 400
    listed = await admin.list_account_assignments_for_principal(
        InstanceArn=INSTANCE, PrincipalId=user_id, PrincipalType="USER"
    )
    assert [a["PermissionSetArn"] for a in listed["AccountAssignments"]] == [ps]
    assert sandbox.audit.entries() == []  # seeding is not a mutation under test
    assert dict(sandbox.audit.calls) == {"sso-admin.ListAccountAssignmentsForPrincipal": 1}


# ---------------------------------------------------------------- applications

APP_ARN_PATTERN = r"arn:aws:sso::111122223333:application/ssoins-7223c0ffee000001/apl-[a-f0-9]{16}"


async def test_application_assignments_for_principal_paginate_per_principal(
    sandbox: Sandbox, admin: Client
) -> None:
    emulator = sandbox.emulator
    user_id = emulator.add_user("ada@example.com")
    group_id = emulator.add_group("engineers")
    emulator.add_membership(group_id, user_id)
    apps = [emulator.add_application(f"App{i}") for i in range(3)]
    assert all(re.fullmatch(APP_ARN_PATTERN, a) for a in apps)
    for app in apps:
        emulator.assign_application(app, principal_type="USER", principal_id=user_id)
    studio = emulator.add_application("Studio", provider="sagemaker", background_sessions=True)
    emulator.assign_application(studio, principal_type="GROUP", principal_id=group_id)

    paginator = admin.get_paginator("list_application_assignments_for_principal")
    pages = [
        page
        async for page in paginator.paginate(
            InstanceArn=INSTANCE,
            PrincipalId=user_id,
            PrincipalType="USER",
            PaginationConfig={"PageSize": 2},
        )
    ]
    assert [len(p["ApplicationAssignments"]) for p in pages] == [2, 1]
    listed = [a for p in pages for a in p["ApplicationAssignments"]]
    assert listed == [
        {"ApplicationArn": app, "PrincipalId": user_id, "PrincipalType": "USER"} for app in apps
    ]  # the group's application is listed for the group, not expanded for the user
    for_group = await admin.list_application_assignments_for_principal(
        InstanceArn=INSTANCE, PrincipalId=group_id, PrincipalType="GROUP"
    )
    assert for_group["ApplicationAssignments"] == [
        {"ApplicationArn": studio, "PrincipalId": group_id, "PrincipalType": "GROUP"}
    ]
    assert "NextToken" not in for_group
    filtered = await admin.list_application_assignments_for_principal(
        InstanceArn=INSTANCE,
        PrincipalId=user_id,
        PrincipalType="USER",
        Filter={"ApplicationArn": apps[1]},
    )
    assert [a["ApplicationArn"] for a in filtered["ApplicationAssignments"]] == [apps[1]]
    with pytest.raises(ClientError) as err:
        await admin.list_application_assignments_for_principal(
            InstanceArn=INSTANCE.replace("c0ffee", "bad000"),
            PrincipalId=user_id,
            PrincipalType="USER",
        )
    assert code_of(err) == "AccessDeniedException"


async def test_describe_application_and_its_session_configuration(
    sandbox: Sandbox, admin: Client
) -> None:
    emulator = sandbox.emulator
    studio = emulator.add_application("Studio", provider="sagemaker", background_sessions=True)
    described = await admin.describe_application(ApplicationArn=studio)
    assert described["ApplicationArn"] == studio
    assert described["Name"] == "Studio"
    assert described["ApplicationProviderArn"] == "arn:aws:sso::aws:applicationProvider/sagemaker"
    assert described["InstanceArn"] == INSTANCE
    assert described["Status"] == "ENABLED"
    assert isinstance(described["CreatedDate"], datetime)

    configured = await admin.get_application_session_configuration(ApplicationArn=studio)
    assert configured["UserBackgroundSessionApplicationStatus"] == "ENABLED"
    await admin.put_application_session_configuration(
        ApplicationArn=studio, UserBackgroundSessionApplicationStatus="DISABLED"
    )
    configured = await admin.get_application_session_configuration(ApplicationArn=studio)
    assert configured["UserBackgroundSessionApplicationStatus"] == "DISABLED"
    assert [e.action for e in sandbox.audit.entries()] == [
        "sso-admin.PutApplicationSessionConfiguration"
    ]
    # The session model sees the setting from the moment it changed.
    timeline = emulator.session_timeline
    assert not timeline.background_sessions_enabled(studio, sandbox.clock.now())

    missing = studio[:-16] + "0" * 16
    for call in (
        lambda: admin.describe_application(ApplicationArn=missing),
        lambda: admin.get_application_session_configuration(ApplicationArn=missing),
    ):
        with pytest.raises(ClientError) as err:
            await call()
        assert code_of(err) == "ResourceNotFoundException"
    with pytest.raises(ClientError) as err:
        await admin.put_application_session_configuration(
            ApplicationArn=studio, UserBackgroundSessionApplicationStatus="SOMETIMES"
        )
    assert code_of(err) == "ValidationException"


async def test_world_changes_mid_countdown_reach_the_session_model(
    sandbox: Sandbox, admin: Client
) -> None:
    """A set assigned to the group, its duration raised, an application assigned: each
    from the moment it happened on, for the reads and for the sessions."""
    emulator, clock = sandbox.emulator, sandbox.clock
    user_id = emulator.add_user("ada@example.com")
    group_id = emulator.add_group("engineers")
    emulator.add_membership(group_id, user_id)
    ps = emulator.add_permission_set("Deploy", session_duration="PT1H")
    before = clock.now()
    clock.advance(timedelta(minutes=10))
    emulator.add_account_assignment(
        account_id=ACCOUNT_A, permission_set_arn=ps, principal_type="GROUP", principal_id=group_id
    )
    emulator.set_session_duration(ps, "PT12H")
    studio = emulator.add_application("Studio", background_sessions=True)
    emulator.assign_application(studio, principal_type="GROUP", principal_id=group_id)
    now = clock.now()

    described = await admin.describe_permission_set(InstanceArn=INSTANCE, PermissionSetArn=ps)
    assert described["PermissionSet"]["SessionDuration"] == "PT12H"
    timeline = emulator.session_timeline
    assert timeline.entitlements(user_id, before) == frozenset()
    [entitlement] = timeline.entitlements(user_id, now)
    assert entitlement.session_duration == timedelta(hours=12)
    assert timeline.session_duration(ps, before) == timedelta(hours=1)
    assert studio in timeline.applications(user_id, now)
    assert studio not in timeline.applications(user_id, before)
    assert timeline.background_sessions_enabled(studio, now)
    assert [e.action for e in sandbox.audit.entries()] == ["identity-center.set_session_duration"]


async def test_sandbox_admin_seeds_applications_and_changes_over_http(
    sandbox: Sandbox, admin: Client, http: aiohttp.ClientSession
) -> None:
    base = f"{sandbox.url}/_sandbox/identity-center"
    emulator = sandbox.emulator
    user_id = emulator.add_user("ada@example.com")
    ps = emulator.add_permission_set("Admin")

    async def post(path: str, body: dict[str, Any], status: int = 201) -> dict[str, Any]:
        async with http.post(base + path, json=body) as response:
            assert response.status == status, await response.text()
            result: dict[str, Any] = await response.json()
            return result

    app = (await post("/applications", {"name": "Studio", "background_sessions": True}))["arn"]
    await post(
        "/application-assignments",
        {"application_arn": app, "principal_type": "USER", "principal_id": user_id},
    )
    changed = await post(
        "/permission-sets/duration",
        {"permission_set_arn": ps, "session_duration": "PT4H"},
        status=200,
    )
    assert changed == {"arn": ps, "session_duration": "PT4H"}
    await post("/permission-sets/duration", {"permission_set_arn": ps}, status=400)
    await post(
        "/application-assignments",
        {"application_arn": app[:-1] + "x", "principal_type": "USER", "principal_id": user_id},
        status=404,
    )
    listed = await admin.list_application_assignments_for_principal(
        InstanceArn=INSTANCE, PrincipalId=user_id, PrincipalType="USER"
    )
    assert [a["ApplicationArn"] for a in listed["ApplicationAssignments"]] == [app]
    configured = await admin.get_application_session_configuration(ApplicationArn=app)
    assert configured["UserBackgroundSessionApplicationStatus"] == "ENABLED"


# ---------------------------------------------------------------- cross-check against moto


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@dataclass
class Seeded:
    """What one scenario created, for reading it back and naming its ids."""

    store_id: str
    instance_arn: str
    names: dict[str, str]  # id or ARN -> a stable symbol such as "<user:ada>"

    def symbol(self, kind: str, name: str) -> str:
        return next(k for k, v in self.names.items() if v == f"<{kind}:{name}>")


USERS = ["ada", "grace"]
GROUPS = ["engineers", "admins", "oncall"]
MEMBERSHIPS = [("engineers", "ada"), ("admins", "ada"), ("oncall", "ada"), ("engineers", "grace")]
PERMISSION_SETS = [("Admin", "PT8H", DENY), ("ReadOnly", "PT1H", "")]
ASSIGNMENTS = [
    (ACCOUNT_A, "Admin", "USER", "ada"),
    (ACCOUNT_B, "Admin", "USER", "ada"),
    (ACCOUNT_B, "ReadOnly", "USER", "ada"),
    (ACCOUNT_C, "ReadOnly", "GROUP", "engineers"),
]


def seed_emulator(emulator: IdentityCenterEmulator) -> Seeded:
    names: dict[str, str] = {
        emulator.identity_store_id: "<store>",
        emulator.instance_arn: "<instance>",
    }
    ids: dict[str, str] = {}
    for user in USERS:
        ids[user] = emulator.add_user(
            f"{user}@example.com", display_name=user.title(), email=f"{user}@example.com"
        )
        names[ids[user]] = f"<user:{user}>"
    for group in GROUPS:
        ids[group] = emulator.add_group(group)
        names[ids[group]] = f"<group:{group}>"
    for group, user in MEMBERSHIPS:
        names[emulator.add_membership(ids[group], ids[user])] = f"<membership:{group}/{user}>"
    for name, duration, policy in PERMISSION_SETS:
        ids[name] = emulator.add_permission_set(
            name, session_duration=duration, inline_policy=policy
        )
        names[ids[name]] = f"<ps:{name}>"
    for account, ps, principal_type, principal in ASSIGNMENTS:
        emulator.add_account_assignment(
            account_id=account,
            permission_set_arn=ids[ps],
            principal_type=principal_type,
            principal_id=ids[principal],
        )
    return Seeded(emulator.identity_store_id, emulator.instance_arn, names)


async def seed_moto(store: Client, admin: Client) -> Seeded:
    [instance] = (await admin.list_instances())["Instances"]
    store_id, instance_arn = instance["IdentityStoreId"], instance["InstanceArn"]
    names: dict[str, str] = {store_id: "<store>", instance_arn: "<instance>"}
    ids: dict[str, str] = {}
    for user in USERS:
        created = await store.create_user(
            IdentityStoreId=store_id,
            UserName=f"{user}@example.com",
            DisplayName=user.title(),
            Name={"GivenName": user.title(), "FamilyName": "Example"},
            Emails=[{"Value": f"{user}@example.com", "Type": "work", "Primary": True}],
        )
        ids[user] = created["UserId"]
        names[ids[user]] = f"<user:{user}>"
    for group in GROUPS:
        ids[group] = (await store.create_group(IdentityStoreId=store_id, DisplayName=group))[
            "GroupId"
        ]
        names[ids[group]] = f"<group:{group}>"
    for group, user in MEMBERSHIPS:
        created = await store.create_group_membership(
            IdentityStoreId=store_id, GroupId=ids[group], MemberId={"UserId": ids[user]}
        )
        names[created["MembershipId"]] = f"<membership:{group}/{user}>"
    for name, duration, policy in PERMISSION_SETS:
        created = await admin.create_permission_set(
            InstanceArn=instance_arn, Name=name, SessionDuration=duration
        )
        ids[name] = created["PermissionSet"]["PermissionSetArn"]
        names[ids[name]] = f"<ps:{name}>"
        if policy:
            await admin.put_inline_policy_to_permission_set(
                InstanceArn=instance_arn, PermissionSetArn=ids[name], InlinePolicy=policy
            )
    for account, ps, principal_type, principal in ASSIGNMENTS:
        await admin.create_account_assignment(
            InstanceArn=instance_arn,
            TargetId=account,
            TargetType="AWS_ACCOUNT",
            PermissionSetArn=ids[ps],
            PrincipalType=principal_type,
            PrincipalId=ids[principal],
        )
    return Seeded(store_id, instance_arn, names)


def normalise(value: Any, names: dict[str, str]) -> Any:
    """Ids become symbols, times become "<time>", lists become sorted: the structure remains."""
    if isinstance(value, dict):
        return {k: normalise(v, names) for k, v in value.items() if k != "ResponseMetadata"}
    if isinstance(value, list):
        items = [normalise(v, names) for v in value]
        return sorted(items, key=lambda item: json.dumps(item, sort_keys=True))
    if isinstance(value, datetime):
        return "<time>"
    if isinstance(value, str):
        # Longest first: moto's permission set ARNs contain its instance ARN.
        for raw in sorted(names, key=len, reverse=True):
            value = value.replace(raw, names[raw])
        return value
    return value


async def observe(store: Client, admin: Client, seeded: Seeded) -> dict[str, Any]:
    """The reads the offboarding worker makes, and two errors, as plain normalised data."""
    ada, engineers = seeded.symbol("user", "ada"), seeded.symbol("group", "engineers")
    admin_ps = seeded.symbol("ps", "Admin")
    read_ps = seeded.symbol("ps", "ReadOnly")
    answers: dict[str, Any] = {}
    answers["GetUserId"] = await store.get_user_id(
        IdentityStoreId=seeded.store_id,
        AlternateIdentifier={
            "UniqueAttribute": {"AttributePath": "userName", "AttributeValue": "ada@example.com"}
        },
    )
    memberships = store.get_paginator("list_group_memberships_for_member").paginate(
        IdentityStoreId=seeded.store_id,
        MemberId={"UserId": ada},
        PaginationConfig={"PageSize": 2},
    )
    answers["ListGroupMembershipsForMember"] = await memberships.build_full_result()
    for principal, principal_type in ((ada, "USER"), (engineers, "GROUP")):
        pages = admin.get_paginator("list_account_assignments_for_principal").paginate(
            InstanceArn=seeded.instance_arn,
            PrincipalId=principal,
            PrincipalType=principal_type,
            PaginationConfig={"PageSize": 2},
        )
        answers[
            f"ListAccountAssignmentsForPrincipal/{principal_type}"
        ] = await pages.build_full_result()
    for ps in (admin_ps, read_ps):
        name = seeded.names[ps]
        answers[f"DescribePermissionSet/{name}"] = await admin.describe_permission_set(
            InstanceArn=seeded.instance_arn, PermissionSetArn=ps
        )
        answers[
            f"GetInlinePolicyForPermissionSet/{name}"
        ] = await admin.get_inline_policy_for_permission_set(
            InstanceArn=seeded.instance_arn, PermissionSetArn=ps
        )
    try:
        await store.describe_user(
            IdentityStoreId=seeded.store_id, UserId="00000000-0000-4000-8000-000000000000"
        )
        answers["DescribeUser/unknown"] = "no error"
    except ClientError as err:
        answers["DescribeUser/unknown"] = err.response["Error"]["Code"]
    answers["DescribeUser"] = await store.describe_user(IdentityStoreId=seeded.store_id, UserId=ada)
    return normalise(answers, seeded.names)  # type: ignore[no-any-return]


#: Members the emulator returns and moto 5.2.5 leaves out (all are in botocore's model).
ONLY_OURS = {
    "GetUserId": {"UserArn"},
    "ListGroupMembershipsForMember.GroupMemberships[]": {"MembershipArn", "CreatedAt", "UpdatedAt"},
    "DescribeUser": {"UserArn", "Revision", "UserStatus", "CreatedAt", "UpdatedAt"},
}
#: moto answers with Name (required by its CreateUser), which the sandbox does not seed.
ONLY_MOTO = {"DescribeUser": {"Name"}}


def without(answer: dict[str, Any], keys: set[str]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k not in keys}


async def test_answers_match_moto_structurally(sandbox: Sandbox, moto_url: str) -> None:
    ours_seeded = seed_emulator(sandbox.emulator)
    async with (
        aws_client("identitystore", sandbox.url) as store,
        aws_client("sso-admin", sandbox.url) as admin,
    ):
        ours = await observe(store, admin, ours_seeded)
    async with (
        aws_client("identitystore", moto_url, key="AKIAMOTO", secret="moto") as store,
        aws_client("sso-admin", moto_url, key="AKIAMOTO", secret="moto") as admin,
    ):
        theirs = await observe(store, admin, await seed_moto(store, admin))

    assert set(ours) == set(theirs)
    # Documented differences first, so that a change on either side shows up here.
    assert set(ours["GetUserId"]) - set(theirs["GetUserId"]) == ONLY_OURS["GetUserId"]
    ours_memberships = ours.pop("ListGroupMembershipsForMember")["GroupMemberships"]
    theirs_memberships = theirs.pop("ListGroupMembershipsForMember")["GroupMemberships"]
    member_extra = ONLY_OURS["ListGroupMembershipsForMember.GroupMemberships[]"]
    assert {k for m in ours_memberships for k in m} - {
        k for m in theirs_memberships for k in m
    } == member_extra
    assert [without(m, member_extra) for m in ours_memberships] == theirs_memberships
    assert set(ours["DescribeUser"]) - set(theirs["DescribeUser"]) == ONLY_OURS["DescribeUser"]
    assert set(theirs["DescribeUser"]) - set(ours["DescribeUser"]) == ONLY_MOTO["DescribeUser"]

    for operation, keys in ONLY_OURS.items():
        if operation in ours:
            ours[operation] = without(ours[operation], keys)
    for operation, keys in ONLY_MOTO.items():
        theirs[operation] = without(theirs[operation], keys)
    assert ours == theirs
    assert ours["DescribeUser/unknown"] == "ResourceNotFoundException"
    assert ours["GetInlinePolicyForPermissionSet/<ps:ReadOnly>"] == {"InlinePolicy": ""}
    assert ours["DescribePermissionSet/<ps:Admin>"]["PermissionSet"]["SessionDuration"] == "PT8H"


async def test_moto_differs_where_the_sandbox_follows_aws(moto_url: str) -> None:
    """What moto 5.2.5 does differently, pinned so a moto upgrade is noticed."""
    async with (
        aws_client("identitystore", moto_url, key="AKIAMOTO", secret="moto") as store,
        aws_client("sso-admin", moto_url, key="AKIAMOTO", secret="moto") as admin,
    ):
        [instance] = (await admin.list_instances())["Instances"]
        created = await admin.create_permission_set(
            InstanceArn=instance["InstanceArn"], Name="Probe", SessionDuration="PT1H"
        )
        arn = created["PermissionSet"]["PermissionSetArn"]
        # moto builds "<instance ARN>/ps-...", not AWS's "arn:aws:sso:::permissionSet/...".
        assert arn.startswith(instance["InstanceArn"] + "/ps-")
        assert ":permissionSet/" not in arn

        # moto accepts deleting a membership that does not exist; the sandbox refuses.
        await store.delete_group_membership(
            IdentityStoreId=instance["IdentityStoreId"],
            MembershipId="00000000-0000-4000-8000-000000000000",
        )
        # moto has no DescribePermissionSetProvisioningStatus, and provisions synchronously.
        started = await admin.provision_permission_set(
            InstanceArn=instance["InstanceArn"],
            PermissionSetArn=arn,
            TargetType="ALL_PROVISIONED_ACCOUNTS",
        )
        assert started["PermissionSetProvisioningStatus"]["Status"] == "SUCCEEDED"
        with pytest.raises(ClientError) as err:
            await admin.describe_permission_set_provisioning_status(
                InstanceArn=instance["InstanceArn"],
                ProvisionPermissionSetRequestId=started["PermissionSetProvisioningStatus"][
                    "RequestId"
                ],
            )
        # NotImplementedError inside moto: an HTML 500, not an AWS error.
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
        assert code_of(err) == "500"
