"""An AWS IAM Identity Center emulator: identitystore and sso-admin, SCIM, and a console.

identitystore and sso-admin speak AWS JSON 1.1 on `POST /`, dispatched on `X-Amz-Target`,
with the shapes of botocore's service models, so that real (aio)botocore clients parse every
answer. SCIM (`/scim/v2/`) is the external-IdP source's way to disable a user. `/_console/`
stands in for the operator actions AWS offers only in the console (disable a user of the
Identity Center directory, delete portal sessions). `/_sandbox/identity-center/` seeds state.

Asynchronous operations (ProvisionPermissionSet, DeleteAccountAssignment) answer IN_PROGRESS
and report SUCCEEDED once `provisioning_delay` seconds have passed on the clock; nothing runs
in the background, the state is settled lazily whenever it is read.

`sessions` is a model of the users' sessions (worker.sandbox.sessions) over a timeline that
every mutation here feeds with its time; `POST /_sandbox/identity-center/users/{id}/simulate`
runs a simulated leaver against it.
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import hmac
import json
import math
import re
import secrets
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from worker.clock import Clock
from worker.sandbox.common import AuditLog, FaultPlan, parse_wire_time, wire_time
from worker.sandbox.sessions import (
    AwsSessionFacts,
    SessionModel,
    SimulatedLeaver,
    Timeline,
    parse_session_duration,
)

__all__ = ["IdentityCenterEmulator"]

Json = dict[str, Any]
T = TypeVar("T")

SERVICE = "identity-center"
AWS_JSON = "application/x-amz-json-1.1"
#: The management account that owns the instance (ListInstances reports it).
OWNER_ACCOUNT = "111122223333"
TARGET_PREFIXES = {"AWSIdentityStore": "identitystore", "SWBExternalService": "sso-admin"}
STATUSES = ("ENABLED", "DISABLED")
PRINCIPAL_TYPES = ("USER", "GROUP")
MAX_INLINE_POLICY_BYTES = 32768
#: The session model gives every user one AWS managed application set to "do not require
#: assignments" (never listed for a principal), so application sessions are always simulated;
#: applications seeded with `add_application` are listed through their assignments.
SANDBOX_APPLICATION = "sandbox-managed-application"
#: UserBackgroundSessionApplicationStatus (botocore's sso-admin model)
BACKGROUND_STATUSES = ("ENABLED", "DISABLED")
MAX_SIMULATION_STEPS = 200_000

SCIM_USER = "urn:ietf:params:scim:schemas:core:2.0:User"
SCIM_LIST = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
SCIM_PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
SCIM_ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
SCIM_FILTER = re.compile(r'^\s*userName\s+eq\s+"((?:[^"\\]|\\.)*)"\s*$', re.IGNORECASE)

AUTH_HEADER = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<key>[^/\s,]+)/(?P<date>\d{8})/(?P<region>[^/\s,]+)/"
    r"(?P<service>[^/\s,]+)/aws4_request,\s*SignedHeaders=(?P<signed>[^,\s]+),\s*"
    r"Signature=(?P<signature>[0-9a-f]{64})$"
)
ACCOUNT_ID = re.compile(r"^\d{12}$")

#: The endpoint the fault middleware named for the request in hand: the responders only
#: receive a number, yet must answer in the flavour of the service that was called.
_current_endpoint: contextvars.ContextVar[str] = contextvars.ContextVar(
    "identity_center_endpoint", default=""
)


# ---------------------------------------------------------------- wire errors and answers


class AwsError(Exception):
    """An AWS JSON 1.1 error: `__type` names the code botocore puts in ClientError."""

    def __init__(self, code: str, message: str, *, status: int = 400, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.extra = extra

    def response(self, headers: dict[str, str] | None = None) -> web.Response:
        body = {"__type": self.code, "Message": self.message, **self.extra}
        return web.Response(
            status=self.status,
            body=json.dumps(body).encode(),
            content_type=AWS_JSON,
            headers={"x-amzn-ErrorType": self.code, **(headers or {})},
        )


def validation(message: str) -> AwsError:
    return AwsError("ValidationException", message)


class ScimError(Exception):
    def __init__(self, status: int, detail: str, scim_type: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.scim_type = scim_type

    def response(self, headers: dict[str, str] | None = None) -> web.Response:
        body: Json = {"schemas": [SCIM_ERROR], "status": str(self.status), "detail": self.detail}
        if self.scim_type:
            body["scimType"] = self.scim_type
        return web.json_response(body, status=self.status, headers=headers)


def aws_json(body: Json) -> web.Response:
    # Bytes, not text: aiohttp would append "; charset=utf-8", which AWS does not send.
    return web.Response(
        body=json.dumps(body).encode(),
        content_type=AWS_JSON,
        headers={"x-amzn-RequestId": str(uuid.uuid4())},
    )


def flavour(endpoint: str) -> str:
    return endpoint.partition(".")[0]


def throttle_response(retry_after: float) -> web.Response:
    seconds = math.ceil(max(0.0, retry_after))
    kind = flavour(_current_endpoint.get())
    if kind == "identitystore":
        # identitystore's ThrottlingException models RetryAfterSeconds; the header says it too.
        return AwsError("ThrottlingException", "Rate exceeded", RetryAfterSeconds=seconds).response(
            {"Retry-After": str(seconds)}
        )
    if kind in ("sso-admin", "aws"):
        return AwsError("ThrottlingException", "Rate exceeded").response()  # no hint, as AWS
    if kind == "scim":
        return ScimError(429, "Rate exceeded").response({"Retry-After": str(seconds)})
    return web.json_response(
        {"message": "Rate exceeded"}, status=429, headers={"Retry-After": str(seconds)}
    )


def error_response(status: int) -> web.Response:
    kind = flavour(_current_endpoint.get())
    message = "An internal error occurred."
    if kind in ("identitystore", "sso-admin", "aws"):
        if status == 403:  # AWS's refusal of the caller's permissions (its code, not its status)
            return AwsError("AccessDeniedException", "User is not authorized").response()
        return AwsError("InternalServerException", message, status=status).response()
    if kind == "scim":
        return ScimError(status, message).response()
    return web.json_response({"message": message}, status=status)


# ---------------------------------------------------------------- request parameters


def required_str(body: Json, name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise validation(
            f"1 validation error detected: Value at '{name[0].lower() + name[1:]}' failed to "
            "satisfy constraint: Member must not be null"
        )
    return value


def optional_struct(body: Json, name: str) -> Json:
    value = body.get(name, {})
    if not isinstance(value, dict):
        raise validation(f"{name} must be a structure")
    return value


def one_of(body: Json, name: str, allowed: Sequence[str]) -> str:
    value = required_str(body, name)
    if value not in allowed:
        raise validation(
            f"1 validation error detected: Value '{value}' at '{name}' failed to satisfy "
            f"constraint: Member must satisfy enum value set: [{', '.join(allowed)}]"
        )
    return value


def epoch(when: datetime) -> float:
    return when.timestamp()


# ---------------------------------------------------------------- pagination


def encode_token(scope: str, last_key: str) -> str:
    return base64.urlsafe_b64encode(f"{scope}\n{last_key}".encode()).decode()


def decode_token(scope: str, token: str) -> str:
    try:
        token_scope, _, last_key = base64.urlsafe_b64decode(token.encode()).decode().partition("\n")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise validation("Invalid NextToken") from None
    if token_scope != scope:
        raise validation("Invalid NextToken")
    return last_key


def paginate(
    items: Sequence[T], key: Callable[[T], str], body: Json, scope: str
) -> tuple[list[T], str | None]:
    """One page after the token's last key: stable when items are deleted between pages."""
    limit = body.get("MaxResults", 100)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 100:
        raise validation("MaxResults must be between 1 and 100")
    ordered = sorted(items, key=key)
    token = body.get("NextToken")
    if token is not None:
        if not isinstance(token, str):
            raise validation("Invalid NextToken")
        after = decode_token(scope, token)
        ordered = [item for item in ordered if key(item) > after]
    page = ordered[:limit]
    more = len(ordered) > limit
    return page, encode_token(scope, key(page[-1])) if more else None


def with_token(result: Json, token: str | None) -> Json:
    if token is not None:
        result["NextToken"] = token
    return result


# ---------------------------------------------------------------- state


@dataclass
class User:
    user_id: str
    user_name: str
    display_name: str
    email: str | None
    status: str
    created_at: datetime
    updated_at: datetime
    seq: int
    revision: int = 1
    portal_sessions: dict[str, datetime] = field(default_factory=dict)
    #: (Issuer, Id) pairs an IdP's SCIM sync sets (the IdP's own user id)
    external_ids: tuple[tuple[str, str], ...] = ()


@dataclass
class Group:
    group_id: str
    display_name: str
    created_at: datetime
    seq: int


@dataclass
class Membership:
    membership_id: str
    group_id: str
    user_id: str
    created_at: datetime
    seq: int


@dataclass
class PermissionSet:
    arn: str
    name: str
    session_duration: str
    inline_policy: str
    created_at: datetime
    seq: int
    #: Bumped by every policy change; an account is up to date when provisioned at it.
    revision: int = 1
    #: account id -> the revision last provisioned there
    provisioned: dict[str, int] = field(default_factory=dict)
    #: every revision's inline policy, oldest first ("" for none): what a lost update
    #: would show, since a later revision drops what an earlier one had
    history: list[tuple[int, str]] = field(default_factory=list)

    def revise(self, policy: str) -> None:
        self.inline_policy = policy
        self.revision += 1
        self.history.append((self.revision, policy))


@dataclass(frozen=True)
class Assignment:
    account_id: str
    permission_set_arn: str
    principal_type: str
    principal_id: str
    seq: int = field(compare=False)


@dataclass
class Application:
    arn: str
    name: str
    provider_arn: str
    created_at: datetime
    seq: int
    #: UserBackgroundSessionApplicationStatus
    background_status: str
    description: str = ""


@dataclass(frozen=True)
class ApplicationAssignment:
    application_arn: str
    principal_type: str
    principal_id: str
    seq: int = field(compare=False)


@dataclass
class AsyncOperation:
    request_id: str
    created_at: datetime
    due: datetime
    status_fields: Json
    #: Applied once, when the operation is first seen past its due time.
    on_success: Callable[[], None] | None = None
    settled: bool = False
    #: the accounts it updates (a provisioning's): one update per account at a time
    accounts: frozenset[str] = frozenset()


class IdentityCenterEmulator:
    def __init__(
        self,
        *,
        audit: AuditLog,
        faults: FaultPlan,
        clock: Clock,
        scim_token: str,
        access_key_id: str = "AKIASANDBOX",
        region: str = "us-east-1",
        identity_store_id: str = "d-9067c0ffee",
        instance_arn: str = "arn:aws:sso:::instance/ssoins-7223c0ffee000001",
        provisioning_delay: float = 0.0,
        secret_access_key: str | None = None,
        session_facts: AwsSessionFacts | None = None,
    ) -> None:
        """`secret_access_key`, when given, makes SigV4 verification full, not presence-only."""
        self.audit = audit
        self.faults = faults
        self.clock = clock
        self.scim_token = scim_token
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key
        self.region = region
        self.identity_store_id = identity_store_id
        self.instance_arn = instance_arn
        self.instance_id = instance_arn.rsplit("/", 1)[-1]
        self.provisioning_delay = provisioning_delay
        self.created_at = clock.now()
        self._seq = 0
        self._users: dict[str, User] = {}
        self._groups: dict[str, Group] = {}
        self._memberships: dict[str, Membership] = {}
        self._permission_sets: dict[str, PermissionSet] = {}
        self._assignments: set[Assignment] = set()
        self._applications: dict[str, Application] = {}
        self._app_assignments: set[ApplicationAssignment] = set()
        self._provisioning: dict[str, AsyncOperation] = {}
        self._deletions: dict[str, AsyncOperation] = {}
        #: What happened when, for the session model; fed by the mutations below.
        self.session_timeline = Timeline(session_facts, open_applications=[SANDBOX_APPLICATION])
        self.sessions = SessionModel(self.session_timeline)
        self._operations: dict[str, Callable[[Json], Json]] = {
            "AWSIdentityStore.GetUserId": self._get_user_id,
            "AWSIdentityStore.DescribeUser": self._describe_user,
            "AWSIdentityStore.ListUsers": self._list_users,
            "AWSIdentityStore.DescribeGroup": self._describe_group,
            "AWSIdentityStore.ListGroups": self._list_groups,
            "AWSIdentityStore.ListGroupMemberships": self._list_group_memberships,
            "AWSIdentityStore.ListGroupMembershipsForMember": self._list_memberships_for_member,
            "AWSIdentityStore.GetGroupMembershipId": self._get_group_membership_id,
            "AWSIdentityStore.DeleteGroupMembership": self._delete_group_membership,
            "SWBExternalService.ListInstances": self._list_instances,
            "SWBExternalService.ListAccountAssignmentsForPrincipal": self._list_for_principal,
            "SWBExternalService.ListAccountAssignments": self._list_account_assignments,
            "SWBExternalService.DescribePermissionSet": self._describe_permission_set,
            "SWBExternalService.ListPermissionSets": self._list_permission_sets,
            "SWBExternalService.GetInlinePolicyForPermissionSet": self._get_inline_policy,
            "SWBExternalService.PutInlinePolicyToPermissionSet": self._put_inline_policy,
            "SWBExternalService.DeleteInlinePolicyFromPermissionSet": self._delete_inline_policy,
            "SWBExternalService.ProvisionPermissionSet": self._provision_permission_set,
            "SWBExternalService.DescribePermissionSetProvisioningStatus": (
                self._describe_provisioning_status
            ),
            "SWBExternalService.ListAccountsForProvisionedPermissionSet": (
                self._list_provisioned_accounts
            ),
            "SWBExternalService.ListApplicationAssignmentsForPrincipal": (
                self._list_application_assignments_for_principal
            ),
            "SWBExternalService.DescribeApplication": self._describe_application,
            "SWBExternalService.ListApplications": self._list_applications,
            "SWBExternalService.GetApplicationSessionConfiguration": (
                self._get_application_session_configuration
            ),
            "SWBExternalService.PutApplicationSessionConfiguration": (
                self._put_application_session_configuration
            ),
            "SWBExternalService.DeleteAccountAssignment": self._delete_account_assignment,
            "SWBExternalService.DescribeAccountAssignmentDeletionStatus": (
                self._describe_deletion_status
            ),
        }

    # ------------------------------------------------------------ application

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[
                self.faults.middleware(
                    service=SERVICE,
                    audit=self.audit,
                    namer=self._name_endpoint,
                    throttle=throttle_response,
                    error=error_response,
                )
            ]
        )
        app.router.add_post("/", self._aws)
        scim = "/scim/v2/Users"
        app.router.add_get(scim, self._scim_list_users, name="scim.list_users")
        app.router.add_get(scim + "/{id}", self._scim_get_user, name="scim.get_user")
        app.router.add_patch(scim + "/{id}", self._scim_patch_user, name="scim.patch_user")
        console = "/_console/users/{user_id}"
        app.router.add_get(
            console + "/portal-sessions",
            self._console_list_sessions,
            name="console.list_portal_sessions",
        )
        app.router.add_delete(
            console + "/portal-sessions",
            self._console_delete_sessions,
            name="console.delete_portal_sessions",
        )
        app.router.add_post(
            console + "/disable", self._console_disable, name="console.disable_user"
        )
        app.router.add_post(console + "/enable", self._console_enable, name="console.enable_user")
        admin = "/_sandbox/identity-center"
        app.router.add_post(admin + "/users", self._admin_add_user)
        app.router.add_get(admin + "/users/{user_id}", self._admin_get_user)
        app.router.add_post(admin + "/users/{user_id}/portal-sessions", self._admin_open_session)
        app.router.add_post(admin + "/users/{user_id}/status", self._admin_set_status)
        app.router.add_post(admin + "/groups", self._admin_add_group)
        app.router.add_post(admin + "/memberships", self._admin_add_membership)
        app.router.add_post(admin + "/permission-sets", self._admin_add_permission_set)
        app.router.add_post(admin + "/assignments", self._admin_add_assignment)
        app.router.add_post(admin + "/permission-sets/duration", self._admin_set_duration)
        app.router.add_post(admin + "/applications", self._admin_add_application)
        app.router.add_post(admin + "/application-assignments", self._admin_assign_application)
        app.router.add_post(admin + "/users/{user_id}/simulate", self._admin_simulate)
        return app

    def _name_endpoint(self, request: web.Request) -> str:
        name = self._endpoint_of(request)
        _current_endpoint.set(name)
        return name

    @staticmethod
    def _endpoint_of(request: web.Request) -> str:
        if request.path == "/" and request.method == "POST":
            prefix, _, operation = request.headers.get("X-Amz-Target", "").partition(".")
            service = TARGET_PREFIXES.get(prefix)
            return f"{service}.{operation}" if service else "aws.unknown"
        return request.match_info.route.name or f"{SERVICE}.unknown"

    # ------------------------------------------------------------ Python API (seeding, checks)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def add_user(
        self,
        user_name: str,
        *,
        display_name: str = "",
        email: str | None = None,
        status: str = "ENABLED",
        external_ids: tuple[tuple[str, str], ...] = (),
    ) -> str:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {status!r}")
        if any(u.user_name == user_name for u in self._users.values()):
            raise ValueError(f"user name {user_name!r} is taken")  # AWS: ConflictException
        now = self.clock.now()
        user = User(
            user_id=str(uuid.uuid4()),
            user_name=user_name,
            display_name=display_name,
            email=email,
            status=status,
            created_at=now,
            updated_at=now,
            seq=self._next_seq(),
            external_ids=external_ids,
        )
        self._users[user.user_id] = user
        self.session_timeline.set_user_enabled(user.user_id, status == "ENABLED", now)
        return user.user_id

    def add_group(self, display_name: str) -> str:
        if any(g.display_name == display_name for g in self._groups.values()):
            raise ValueError(f"group {display_name!r} exists")  # AWS: ConflictException
        group = Group(str(uuid.uuid4()), display_name, self.clock.now(), self._next_seq())
        self._groups[group.group_id] = group
        return group.group_id

    def add_membership(self, group_id: str, user_id: str) -> str:
        self._group(group_id)
        self._user(user_id)
        if self._membership_of(group_id, user_id) is not None:
            raise ValueError(f"user {user_id} is already a member of {group_id}")
        membership = Membership(
            str(uuid.uuid4()), group_id, user_id, self.clock.now(), self._next_seq()
        )
        self._memberships[membership.membership_id] = membership
        self.session_timeline.add_member(group_id, user_id, at=membership.created_at)
        return membership.membership_id

    def add_permission_set(
        self, name: str, *, session_duration: str = "PT1H", inline_policy: str = ""
    ) -> str:
        duration = parse_session_duration(session_duration)
        arn = f"arn:aws:sso:::permissionSet/{self.instance_id}/ps-{secrets.token_hex(8)}"
        self._permission_sets[arn] = PermissionSet(
            arn=arn,
            name=name,
            session_duration=session_duration,
            inline_policy=inline_policy,
            created_at=self.clock.now(),
            seq=self._next_seq(),
            history=[(1, inline_policy)],
        )
        self.session_timeline.define_permission_set(arn, duration)
        return arn

    def add_account_assignment(
        self, *, account_id: str, permission_set_arn: str, principal_type: str, principal_id: str
    ) -> None:
        if not ACCOUNT_ID.match(account_id):
            raise ValueError(f"account id must be 12 digits, not {account_id!r}")
        if principal_type == "USER":
            self._user(principal_id)
        elif principal_type == "GROUP":
            self._group(principal_id)
        else:
            raise ValueError(f"principal_type must be USER or GROUP, not {principal_type!r}")
        permission_set = self._permission_set(permission_set_arn)
        self._assignments.add(
            Assignment(
                account_id, permission_set_arn, principal_type, principal_id, self._next_seq()
            )
        )
        now = self.clock.now()
        self.session_timeline.assign(principal_id, permission_set_arn, account_id, at=now)
        # Creating an assignment provisions the set's role into an account that lacks it;
        # an account provisioned earlier keeps its (maybe stale) revision.
        if account_id not in permission_set.provisioned:
            self.session_timeline.provision_policy(
                permission_set_arn, permission_set.inline_policy, now, accounts=[account_id]
            )
        permission_set.provisioned.setdefault(account_id, permission_set.revision)

    def set_session_duration(self, permission_set_arn: str, session_duration: str) -> None:
        """UpdatePermissionSet's SessionDuration, from now on: a role session issued later
        gets the new duration, one issued before keeps its own."""
        duration = parse_session_duration(session_duration)
        self._permission_set(permission_set_arn).session_duration = session_duration
        self.session_timeline.change_session_duration(
            permission_set_arn, duration, self.clock.now()
        )
        self.audit.record(
            SERVICE,
            "identity-center.set_session_duration",
            permission_set_arn,
            session_duration=session_duration,
        )

    def add_application(
        self,
        name: str,
        *,
        background_sessions: bool = False,
        provider: str = "custom",
        description: str = "",
    ) -> str:
        """An application of the instance; `provider` names its application provider
        (AWS managed ones, e.g. "sagemaker", can keep user background sessions)."""
        application_id = f"apl-{secrets.token_hex(8)}"
        arn = f"arn:aws:sso::{OWNER_ACCOUNT}:application/{self.instance_id}/{application_id}"
        self._applications[arn] = Application(
            arn=arn,
            name=name,
            provider_arn=f"arn:aws:sso::aws:applicationProvider/{provider}",
            created_at=self.clock.now(),
            seq=self._next_seq(),
            background_status="DISABLED",
            description=description,
        )
        if background_sessions:
            self.set_background_sessions(arn, True)
        return arn

    def set_background_sessions(self, application_arn: str, enabled: bool) -> None:
        """PutApplicationSessionConfiguration, from now on."""
        self._application(application_arn).background_status = "ENABLED" if enabled else "DISABLED"
        self.session_timeline.set_background_sessions(application_arn, enabled, at=self.clock.now())

    def assign_application(
        self, application_arn: str, *, principal_type: str, principal_id: str
    ) -> None:
        """CreateApplicationAssignment for a user or group, from now on."""
        self._application(application_arn)
        if principal_type == "USER":
            self._user(principal_id)
        elif principal_type == "GROUP":
            self._group(principal_id)
        else:
            raise ValueError(f"principal_type must be USER or GROUP, not {principal_type!r}")
        self._app_assignments.add(
            ApplicationAssignment(application_arn, principal_type, principal_id, self._next_seq())
        )
        self.session_timeline.assign_application(principal_id, application_arn, at=self.clock.now())

    def open_portal_session(self, user_id: str) -> str:
        session_id = str(uuid.uuid4())
        now = self.clock.now()
        self._user(user_id).portal_sessions[session_id] = now
        # A fresh sign-in: its cached validation starts now.
        self.sessions.add_sign_in_session(user_id, issued_at=now, session_id=session_id)
        return session_id

    def user_status(self, user_id: str) -> str:
        return self._user(user_id).status

    def portal_sessions(self, user_id: str) -> list[str]:
        return list(self._user(user_id).portal_sessions)

    def set_user_status(self, user_id: str, status: str, *, actor: str = "sandbox") -> None:
        """Drift or a console change outside the worker; audited like any mutation."""
        user = self._user(user_id)
        previous = user.status
        changed = self._apply_status(user, status)
        self.audit.record(
            SERVICE,
            "identity-center.set_status",
            user_id,
            status=status,
            previous=previous,
            actor=actor,
            changed=changed,
        )

    def inline_policy(self, permission_set_arn: str) -> str:
        return self._permission_set(permission_set_arn).inline_policy

    def policy_revisions(self, permission_set_arn: str) -> list[tuple[int, str]]:
        """(revision, inline policy) of every revision of the set's policy, oldest first."""
        return list(self._permission_set(permission_set_arn).history)

    def permission_set_arns(self) -> list[str]:
        return list(self._permission_sets)

    def group_ids(self, user_id: str) -> list[str]:
        return [m.group_id for m in self._memberships.values() if m.user_id == user_id]

    # ------------------------------------------------------------ lookups

    def _user(self, user_id: str) -> User:
        try:
            return self._users[user_id]
        except KeyError:
            raise KeyError(f"unknown user {user_id!r}") from None

    def _group(self, group_id: str) -> Group:
        try:
            return self._groups[group_id]
        except KeyError:
            raise KeyError(f"unknown group {group_id!r}") from None

    def _permission_set(self, arn: str) -> PermissionSet:
        try:
            return self._permission_sets[arn]
        except KeyError:
            raise KeyError(f"unknown permission set {arn!r}") from None

    def _application(self, arn: str) -> Application:
        try:
            return self._applications[arn]
        except KeyError:
            raise KeyError(f"unknown application {arn!r}") from None

    def _membership_of(self, group_id: str, user_id: str) -> Membership | None:
        return next(
            (
                m
                for m in self._memberships.values()
                if m.group_id == group_id and m.user_id == user_id
            ),
            None,
        )

    def _apply_status(self, user: User, status: str) -> bool:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {status!r}")
        if user.status == status:
            return False
        user.status = status
        user.updated_at = self.clock.now()
        user.revision += 1
        self.session_timeline.set_user_enabled(user.user_id, status == "ENABLED", user.updated_at)
        return True

    # ------------------------------------------------------------ AWS JSON 1.1 front door

    async def _aws(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            self._authenticate(request, raw)
            target = request.headers.get("X-Amz-Target", "")
            operation = self._operations.get(target)
            if operation is None:
                raise AwsError("UnknownOperationException", f"Unknown operation {target!r}")
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                raise AwsError("SerializationException", "Malformed JSON body") from None
            if not isinstance(body, dict):
                raise AwsError("SerializationException", "The body must be a JSON object")
            self._settle()
            return aws_json(operation(body))
        except AwsError as err:
            return err.response()

    def _authenticate(self, request: web.Request, raw: bytes) -> None:
        invalid = AwsError(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )
        match = AUTH_HEADER.match(request.headers.get("Authorization", ""))
        if match is None or not hmac.compare_digest(match["key"], self.access_key_id):
            raise invalid
        if self.secret_access_key is not None and not self._signature_matches(request, raw, match):
            raise AwsError(
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided.",
            )

    def _signature_matches(self, request: web.Request, raw: bytes, match: re.Match[str]) -> bool:
        """Recompute SigV4 with botocore's own signer over the headers the client signed."""
        amz_date = request.headers.get("X-Amz-Date", "")
        if not amz_date.startswith(match["date"]):
            return False
        headers = {
            name: ",".join(request.headers.getall(name, [])) for name in match["signed"].split(";")
        }
        replay = AWSRequest(method=request.method, url=str(request.url), data=raw, headers=headers)
        replay.context["timestamp"] = amz_date
        signer = SigV4Auth(
            Credentials(self.access_key_id, self.secret_access_key),
            match["service"],
            match["region"],
        )
        string_to_sign = signer.string_to_sign(replay, signer.canonical_request(replay))
        expected: str = signer.signature(string_to_sign, replay)
        return hmac.compare_digest(expected, match["signature"])

    # ------------------------------------------------------------ identitystore

    def _check_store(self, body: Json) -> None:
        store_id = required_str(body, "IdentityStoreId")
        if store_id != self.identity_store_id and not store_id.endswith(
            f":identitystore/{self.identity_store_id}"
        ):
            raise AwsError("AccessDeniedException", f"Access to identity store {store_id} denied")

    def _store_user(self, body: Json) -> User:
        user_id = required_str(body, "UserId")
        user = self._users.get(user_id)
        if user is None:
            raise AwsError(
                "ResourceNotFoundException",
                "USER not found.",
                ResourceType="USER",
                ResourceId=user_id,
            )
        return user

    def _user_arn(self, user_id: str) -> str:
        return f"arn:aws:identitystore:::user/{user_id}"

    def _user_json(self, user: User) -> Json:
        result: Json = {
            "IdentityStoreId": self.identity_store_id,
            "UserId": user.user_id,
            "UserArn": self._user_arn(user.user_id),
            "Revision": str(user.revision),
            "UserName": user.user_name,
            "UserStatus": user.status,
            "CreatedAt": epoch(user.created_at),
            "UpdatedAt": epoch(user.updated_at),
        }
        if user.display_name:
            result["DisplayName"] = user.display_name
        if user.email:
            result["Emails"] = [{"Value": user.email, "Type": "work", "Primary": True}]
        if user.external_ids:
            result["ExternalIds"] = [{"Issuer": i, "Id": x} for i, x in user.external_ids]
        return result

    def _get_user_id(self, body: Json) -> Json:
        self._check_store(body)
        alternate = optional_struct(body, "AlternateIdentifier")
        unique = alternate.get("UniqueAttribute")
        if isinstance(unique, dict):
            path = str(unique.get("AttributePath", "")).lower()
            value = unique.get("AttributeValue")
            if not isinstance(value, str) or not value:
                raise validation("attribute value cannot be empty or null for attribute path")
            if path == "username":
                found = [u for u in self._users.values() if u.user_name == value]
            elif path == "emails.value":
                found = [u for u in self._users.values() if u.email == value]
            else:
                raise validation(f"The attribute {unique.get('AttributePath')} is not unique")
        elif isinstance(alternate.get("ExternalId"), dict):
            wanted = alternate["ExternalId"]
            pair = (wanted.get("Issuer"), wanted.get("Id"))
            found = [u for u in self._users.values() if pair in u.external_ids]
        else:
            raise validation("AlternateIdentifier needs UniqueAttribute or ExternalId")
        if not found:
            raise AwsError("ResourceNotFoundException", "USER not found.", ResourceType="USER")
        user = found[0]
        return {
            "IdentityStoreId": self.identity_store_id,
            "UserId": user.user_id,
            "UserArn": self._user_arn(user.user_id),
        }

    def _describe_user(self, body: Json) -> Json:
        self._check_store(body)
        return self._user_json(self._store_user(body))

    def _list_users(self, body: Json) -> Json:
        self._check_store(body)
        users = list(self._users.values())
        for condition in body.get("Filters") or []:
            if not isinstance(condition, dict) or condition.get("AttributePath") != "UserName":
                raise validation("Only the UserName filter is supported")
            users = [u for u in users if u.user_name == condition.get("AttributeValue")]
        page, token = paginate(users, lambda u: f"{u.seq:012d}", body, "ListUsers")
        return with_token({"Users": [self._user_json(u) for u in page]}, token)

    def _describe_group(self, body: Json) -> Json:
        self._check_store(body)
        group_id = required_str(body, "GroupId")
        group = self._groups.get(group_id)
        if group is None:
            raise AwsError(
                "ResourceNotFoundException",
                "GROUP not found.",
                ResourceType="GROUP",
                ResourceId=group_id,
            )
        return self._group_json(group)

    def _membership_json(self, membership: Membership) -> Json:
        return {
            "IdentityStoreId": self.identity_store_id,
            "MembershipId": membership.membership_id,
            "MembershipArn": f"arn:aws:identitystore:::membership/{membership.membership_id}",
            "GroupId": membership.group_id,
            "MemberId": {"UserId": membership.user_id},
            "CreatedAt": epoch(membership.created_at),
            "UpdatedAt": epoch(membership.created_at),
        }

    def _member_user_id(self, body: Json) -> str:
        member = optional_struct(body, "MemberId")
        user_id = member.get("UserId")
        if not isinstance(user_id, str) or not user_id:
            raise validation("MemberId must name a UserId")
        return user_id

    def _group_json(self, group: Group) -> Json:
        return {
            "IdentityStoreId": self.identity_store_id,
            "GroupId": group.group_id,
            "GroupArn": f"arn:aws:identitystore:::group/{group.group_id}",
            "Revision": "1",
            "DisplayName": group.display_name,
            "CreatedAt": epoch(group.created_at),
            "UpdatedAt": epoch(group.created_at),
        }

    def _list_groups(self, body: Json) -> Json:
        # ListGroups: every group of the store, paginated (its Filters are deprecated)
        self._check_store(body)
        if body.get("Filters"):
            raise validation("Filters are not supported by this emulator")
        page, token = paginate(
            list(self._groups.values()), lambda g: f"{g.seq:012d}", body, "ListGroups"
        )
        return with_token({"Groups": [self._group_json(g) for g in page]}, token)

    def _list_group_memberships(self, body: Json) -> Json:
        # ListGroupMemberships(GroupId): the group's members, paginated; an unknown
        # group is ResourceNotFoundException, as DescribeGroup's
        self._check_store(body)
        group_id = required_str(body, "GroupId")
        if group_id not in self._groups:
            raise AwsError(
                "ResourceNotFoundException",
                "GROUP not found.",
                ResourceType="GROUP",
                ResourceId=group_id,
            )
        members = [m for m in self._memberships.values() if m.group_id == group_id]
        page, token = paginate(
            members, lambda m: f"{m.seq:012d}", body, f"ListGroupMemberships:{group_id}"
        )
        return with_token({"GroupMemberships": [self._membership_json(m) for m in page]}, token)

    def _list_memberships_for_member(self, body: Json) -> Json:
        self._check_store(body)
        user_id = self._member_user_id(body)
        mine = [m for m in self._memberships.values() if m.user_id == user_id]
        page, token = paginate(
            mine, lambda m: f"{m.seq:012d}", body, f"ListGroupMembershipsForMember:{user_id}"
        )
        return with_token({"GroupMemberships": [self._membership_json(m) for m in page]}, token)

    def _get_group_membership_id(self, body: Json) -> Json:
        self._check_store(body)
        membership = self._membership_of(required_str(body, "GroupId"), self._member_user_id(body))
        if membership is None:
            raise AwsError(
                "ResourceNotFoundException",
                "GROUP_MEMBERSHIP not found.",
                ResourceType="GROUP_MEMBERSHIP",
            )
        return {
            "IdentityStoreId": self.identity_store_id,
            "MembershipId": membership.membership_id,
            "MembershipArn": f"arn:aws:identitystore:::membership/{membership.membership_id}",
        }

    def _delete_group_membership(self, body: Json) -> Json:
        self._check_store(body)
        membership_id = required_str(body, "MembershipId")
        membership = self._memberships.pop(membership_id, None)
        if membership is None:
            raise AwsError(
                "ResourceNotFoundException",
                "GROUP_MEMBERSHIP not found.",
                ResourceType="GROUP_MEMBERSHIP",
                ResourceId=membership_id,
            )
        self.session_timeline.remove_member(
            membership.group_id, membership.user_id, self.clock.now()
        )
        self.audit.record(
            SERVICE,
            "identitystore.DeleteGroupMembership",
            membership_id,
            group_id=membership.group_id,
            user_id=membership.user_id,
        )
        return {}

    # ------------------------------------------------------------ sso-admin

    def _check_instance(self, body: Json) -> None:
        instance_arn = required_str(body, "InstanceArn")
        if instance_arn != self.instance_arn:
            raise AwsError("AccessDeniedException", f"Access to instance {instance_arn} denied")

    def _sso_permission_set(self, body: Json) -> PermissionSet:
        self._check_instance(body)
        arn = required_str(body, "PermissionSetArn")
        permission_set = self._permission_sets.get(arn)
        if permission_set is None:
            raise AwsError(
                "ResourceNotFoundException",
                f"Could not find PermissionSet with id {arn.rsplit('/', 1)[-1]}",
            )
        return permission_set

    def _list_instances(self, body: Json) -> Json:
        instance = {
            "InstanceArn": self.instance_arn,
            "IdentityStoreId": self.identity_store_id,
            "OwnerAccountId": OWNER_ACCOUNT,
            "CreatedDate": epoch(self.created_at),
            "Status": "ACTIVE",
        }
        page, token = paginate([instance], lambda i: str(i["InstanceArn"]), body, "ListInstances")
        return with_token({"Instances": page}, token)

    @staticmethod
    def _assignment_json(assignment: Assignment) -> Json:
        return {
            "AccountId": assignment.account_id,
            "PermissionSetArn": assignment.permission_set_arn,
            "PrincipalId": assignment.principal_id,
            "PrincipalType": assignment.principal_type,
        }

    def _list_for_principal(self, body: Json) -> Json:
        self._check_instance(body)
        principal_id = required_str(body, "PrincipalId")
        principal_type = one_of(body, "PrincipalType", PRINCIPAL_TYPES)
        account = optional_struct(body, "Filter").get("AccountId")
        # Direct assignments only: a user's group-inherited ones are not expanded (as moto).
        found = [
            a
            for a in self._assignments
            if a.principal_id == principal_id
            and a.principal_type == principal_type
            and (account is None or a.account_id == account)
        ]
        page, token = paginate(
            found, lambda a: f"{a.seq:012d}", body, f"ForPrincipal:{principal_id}:{account}"
        )
        return with_token({"AccountAssignments": [self._assignment_json(a) for a in page]}, token)

    def _list_account_assignments(self, body: Json) -> Json:
        permission_set = self._sso_permission_set(body)
        account_id = required_str(body, "AccountId")
        found = [
            a
            for a in self._assignments
            if a.account_id == account_id and a.permission_set_arn == permission_set.arn
        ]
        page, token = paginate(
            found, lambda a: f"{a.seq:012d}", body, f"Assignments:{account_id}:{permission_set.arn}"
        )
        return with_token({"AccountAssignments": [self._assignment_json(a) for a in page]}, token)

    def _describe_permission_set(self, body: Json) -> Json:
        permission_set = self._sso_permission_set(body)
        return {
            "PermissionSet": {
                "Name": permission_set.name,
                "PermissionSetArn": permission_set.arn,
                "CreatedDate": epoch(permission_set.created_at),
                "SessionDuration": permission_set.session_duration,
            }
        }

    def _list_application_assignments_for_principal(self, body: Json) -> Json:
        self._check_instance(body)
        principal_id = required_str(body, "PrincipalId")
        principal_type = one_of(body, "PrincipalType", PRINCIPAL_TYPES)
        wanted = optional_struct(body, "Filter").get("ApplicationArn")
        # The principal's own assignments: a user's through groups are listed per group.
        found = [
            a
            for a in self._app_assignments
            if a.principal_id == principal_id
            and a.principal_type == principal_type
            and (wanted is None or a.application_arn == wanted)
        ]
        page, token = paginate(
            found,
            lambda a: f"{a.seq:012d}",
            body,
            f"ApplicationsForPrincipal:{principal_type}:{principal_id}:{wanted}",
        )
        return with_token(
            {
                "ApplicationAssignments": [
                    {
                        "ApplicationArn": a.application_arn,
                        "PrincipalId": a.principal_id,
                        "PrincipalType": a.principal_type,
                    }
                    for a in page
                ]
            },
            token,
        )

    def _sso_application(self, body: Json) -> Application:
        arn = required_str(body, "ApplicationArn")
        application = self._applications.get(arn)
        if application is None:
            raise AwsError(
                "ResourceNotFoundException",
                f"Application {arn.rsplit('/', 1)[-1]} not found",
                Reason="APPLICATION",
            )
        return application

    def _describe_application(self, body: Json) -> Json:
        return self._application_json(self._sso_application(body))

    def _list_applications(self, body: Json) -> Json:
        """ListApplications: every application of the instance, paged; the Filter takes
        ApplicationAccount and ApplicationProvider (an application provider ARN)."""
        self._check_instance(body)
        wanted = optional_struct(body, "Filter")
        account, provider = wanted.get("ApplicationAccount"), wanted.get("ApplicationProvider")
        found = sorted(
            (
                a
                for a in self._applications.values()
                if (account is None or account == OWNER_ACCOUNT)
                and (provider is None or provider == a.provider_arn)
            ),
            key=lambda a: a.seq,
        )
        page, token = paginate(
            found, lambda a: f"{a.seq:012d}", body, f"Applications:{account}:{provider}"
        )
        return with_token({"Applications": [self._application_json(a) for a in page]}, token)

    def _application_json(self, application: Application) -> Json:
        result: Json = {
            "ApplicationArn": application.arn,
            "ApplicationProviderArn": application.provider_arn,
            "Name": application.name,
            "ApplicationAccount": OWNER_ACCOUNT,
            "InstanceArn": self.instance_arn,
            "Status": "ENABLED",
            "PortalOptions": {"Visibility": "ENABLED"},
            "CreatedDate": epoch(application.created_at),
            "CreatedFrom": self.region,
        }
        if application.description:
            result["Description"] = application.description
        return result

    def _get_application_session_configuration(self, body: Json) -> Json:
        application = self._sso_application(body)
        return {"UserBackgroundSessionApplicationStatus": application.background_status}

    def _put_application_session_configuration(self, body: Json) -> Json:
        application = self._sso_application(body)
        if "UserBackgroundSessionApplicationStatus" in body:
            status = one_of(body, "UserBackgroundSessionApplicationStatus", BACKGROUND_STATUSES)
            self.set_background_sessions(application.arn, status == "ENABLED")
            self.audit.record(
                SERVICE,
                "sso-admin.PutApplicationSessionConfiguration",
                application.arn,
                status=status,
            )
        return {}

    def _list_permission_sets(self, body: Json) -> Json:
        self._check_instance(body)
        page, token = paginate(
            list(self._permission_sets.values()),
            lambda p: f"{p.seq:012d}",
            body,
            "ListPermissionSets",
        )
        return with_token({"PermissionSets": [p.arn for p in page]}, token)

    def _get_inline_policy(self, body: Json) -> Json:
        # "" when there is none, as moto answers (AWS's answer then is not confirmed).
        return {"InlinePolicy": self._sso_permission_set(body).inline_policy}

    def _put_inline_policy(self, body: Json) -> Json:
        permission_set = self._sso_permission_set(body)
        policy = required_str(body, "InlinePolicy")
        size = len(policy.encode())
        if size > MAX_INLINE_POLICY_BYTES:
            raise validation(
                f"The inline policy is {size} bytes; the maximum is {MAX_INLINE_POLICY_BYTES}"
            )
        try:
            json.loads(policy)
        except ValueError:
            raise validation("The inline policy is not valid JSON") from None
        permission_set.revise(policy)
        self.audit.record(
            SERVICE,
            "sso-admin.PutInlinePolicyToPermissionSet",
            permission_set.arn,
            policy=policy,
            revision=permission_set.revision,
        )
        return {}

    def _delete_inline_policy(self, body: Json) -> Json:
        permission_set = self._sso_permission_set(body)
        permission_set.revise("")
        self.audit.record(
            SERVICE,
            "sso-admin.DeleteInlinePolicyFromPermissionSet",
            permission_set.arn,
            revision=permission_set.revision,
        )
        return {}

    def _start(self, store: dict[str, AsyncOperation], operation: AsyncOperation) -> Json:
        store[operation.request_id] = operation
        # The first answer is always IN_PROGRESS, as AWS's is, whatever the delay.
        return {**operation.status_fields, "Status": "IN_PROGRESS"}

    def _new_operation(
        self,
        status_fields: Json,
        on_success: Callable[[], None] | None = None,
        accounts: Sequence[str] = (),
    ) -> AsyncOperation:
        now = self.clock.now()
        request_id = str(uuid.uuid4())
        return AsyncOperation(
            request_id=request_id,
            created_at=now,
            due=now + timedelta(seconds=self.provisioning_delay),
            status_fields={**status_fields, "RequestId": request_id, "CreatedDate": epoch(now)},
            on_success=on_success,
            accounts=frozenset(accounts),
        )

    def _settle(self) -> None:
        """Apply the effects of asynchronous operations whose time has come."""
        now = self.clock.now()
        for operation in [*self._provisioning.values(), *self._deletions.values()]:
            if not operation.settled and now >= operation.due:
                operation.settled = True
                if operation.on_success is not None:
                    operation.on_success()

    @staticmethod
    def _status(operation: AsyncOperation) -> Json:
        return {
            **operation.status_fields,
            "Status": "SUCCEEDED" if operation.settled else "IN_PROGRESS",
        }

    def _provision_permission_set(self, body: Json) -> Json:
        permission_set = self._sso_permission_set(body)
        target_type = one_of(body, "TargetType", ("AWS_ACCOUNT", "ALL_PROVISIONED_ACCOUNTS"))
        if target_type == "AWS_ACCOUNT":
            account_id = required_str(body, "TargetId")
            if not ACCOUNT_ID.match(account_id):
                raise validation("TargetId must be a 12-digit account id")
            accounts = [account_id]
        else:
            accounts = sorted(permission_set.provisioned)
        busy = any(
            not op.settled
            and (
                op.status_fields["PermissionSetArn"] == permission_set.arn
                or not op.accounts.isdisjoint(accounts)
            )
            for op in self._provisioning.values()
        )
        if busy:
            # What AWS answers while a provisioning of the same set, or one into the same
            # account (one update per account at a time), is still running.
            raise AwsError("ConflictException", "There is a conflicting operation in process.")
        revision = permission_set.revision

        def provisioned() -> None:
            for account in accounts:
                permission_set.provisioned[account] = revision

        fields: Json = {"PermissionSetArn": permission_set.arn}
        if target_type == "AWS_ACCOUNT":
            fields["AccountId"] = accounts[0]
        operation = self._new_operation(fields, provisioned, accounts)
        # The success time is fixed now (settling is lazy), so the deny it carries is too.
        self.session_timeline.provision_policy(
            permission_set.arn, permission_set.inline_policy, operation.due, accounts=accounts
        )
        self.audit.record(
            SERVICE,
            "sso-admin.ProvisionPermissionSet",
            permission_set.arn,
            request_id=operation.request_id,
            target_type=target_type,
            accounts=accounts,
            revision=revision,
        )
        return {"PermissionSetProvisioningStatus": self._start(self._provisioning, operation)}

    def _describe_provisioning_status(self, body: Json) -> Json:
        self._check_instance(body)
        request_id = required_str(body, "ProvisionPermissionSetRequestId")
        operation = self._provisioning.get(request_id)
        if operation is None:
            raise AwsError(
                "ResourceNotFoundException", f"Could not find provisioning request {request_id}"
            )
        return {"PermissionSetProvisioningStatus": self._status(operation)}

    def _list_provisioned_accounts(self, body: Json) -> Json:
        permission_set = self._sso_permission_set(body)
        wanted = None
        if "ProvisioningStatus" in body:
            wanted = one_of(
                body,
                "ProvisioningStatus",
                ("LATEST_PERMISSION_SET_PROVISIONED", "LATEST_PERMISSION_SET_NOT_PROVISIONED"),
            )
        accounts = [
            account
            for account, revision in permission_set.provisioned.items()
            if wanted is None
            or (wanted == "LATEST_PERMISSION_SET_PROVISIONED")
            == (revision == permission_set.revision)
        ]
        page, token = paginate(
            accounts, lambda a: a, body, f"ProvisionedAccounts:{permission_set.arn}:{wanted}"
        )
        return with_token({"AccountIds": page}, token)

    def _delete_account_assignment(self, body: Json) -> Json:
        permission_set = self._sso_permission_set(body)
        one_of(body, "TargetType", ("AWS_ACCOUNT",))
        wanted = Assignment(
            account_id=required_str(body, "TargetId"),
            permission_set_arn=permission_set.arn,
            principal_type=one_of(body, "PrincipalType", PRINCIPAL_TYPES),
            principal_id=required_str(body, "PrincipalId"),
            seq=0,
        )
        if wanted not in self._assignments:
            raise AwsError("ResourceNotFoundException", "Could not find the account assignment")
        # Gone from listings at once; the status reports the propagation delay.
        self._assignments.discard(wanted)
        operation = self._new_operation(
            {
                "TargetId": wanted.account_id,
                "TargetType": "AWS_ACCOUNT",
                "PermissionSetArn": wanted.permission_set_arn,
                "PrincipalType": wanted.principal_type,
                "PrincipalId": wanted.principal_id,
            }
        )
        # Removed for new sessions from the deletion's success on (plus propagation).
        self.session_timeline.unassign(
            wanted.principal_id, wanted.permission_set_arn, wanted.account_id, operation.due
        )
        self.audit.record(
            SERVICE,
            "sso-admin.DeleteAccountAssignment",
            wanted.principal_id,
            request_id=operation.request_id,
            account_id=wanted.account_id,
            permission_set_arn=wanted.permission_set_arn,
            principal_type=wanted.principal_type,
        )
        return {"AccountAssignmentDeletionStatus": self._start(self._deletions, operation)}

    def _describe_deletion_status(self, body: Json) -> Json:
        self._check_instance(body)
        request_id = required_str(body, "AccountAssignmentDeletionRequestId")
        operation = self._deletions.get(request_id)
        if operation is None:
            raise AwsError(
                "ResourceNotFoundException", f"Could not find deletion request {request_id}"
            )
        return {"AccountAssignmentDeletionStatus": self._status(operation)}

    # ------------------------------------------------------------ SCIM

    def _scim_authenticate(self, request: web.Request) -> None:
        expected = f"Bearer {self.scim_token}"
        if not hmac.compare_digest(request.headers.get("Authorization", ""), expected):
            raise ScimError(401, "Authorization header is invalid or missing.")

    def _scim_user_json(self, user: User) -> Json:
        result: Json = {
            "schemas": [SCIM_USER],
            "id": user.user_id,
            "userName": user.user_name,
            "active": user.status == "ENABLED",
            "meta": {
                "resourceType": "User",
                "created": wire_time(user.created_at),
                "lastModified": wire_time(user.updated_at),
            },
        }
        if user.display_name:
            result["displayName"] = user.display_name
            result["name"] = {"formatted": user.display_name}
        if user.email:
            result["emails"] = [{"value": user.email, "type": "work", "primary": True}]
        return result

    def _scim_user(self, request: web.Request) -> User:
        user = self._users.get(request.match_info["id"])
        if user is None:
            raise ScimError(404, f"User {request.match_info['id']} not found.")
        return user

    async def _scim_get_user(self, request: web.Request) -> web.Response:
        try:
            self._scim_authenticate(request)
            return web.json_response(self._scim_user_json(self._scim_user(request)))
        except ScimError as err:
            return err.response()

    async def _scim_list_users(self, request: web.Request) -> web.Response:
        try:
            self._scim_authenticate(request)
            users = sorted(self._users.values(), key=lambda u: u.seq)
            query = request.query.get("filter")
            if query is not None:
                match = SCIM_FILTER.match(query)
                if match is None:
                    raise ScimError(400, "Only userName eq filters are supported.", "invalidFilter")
                try:
                    wanted = json.loads(f'"{match[1]}"')  # undo the filter's string escaping
                except ValueError:
                    raise ScimError(400, "Malformed filter string.", "invalidFilter") from None
                users = [u for u in users if u.user_name == wanted]
            resources = [self._scim_user_json(u) for u in users]
            return web.json_response(
                {
                    "schemas": [SCIM_LIST],
                    "totalResults": len(resources),
                    "itemsPerPage": len(resources),
                    "startIndex": 1,
                    "Resources": resources,
                }
            )
        except ScimError as err:
            return err.response()

    async def _scim_patch_user(self, request: web.Request) -> web.Response:
        try:
            self._scim_authenticate(request)
            user = self._scim_user(request)
            active = scim_active_from_patch(await _json_body(request))
            changed = self._apply_status(user, "ENABLED" if active else "DISABLED")
            self.audit.record(
                SERVICE, "scim.patch_user", user.user_id, active=active, changed=changed
            )
            return web.json_response(self._scim_user_json(user))
        except ScimError as err:
            return err.response()

    # ------------------------------------------------------------ console (simulated operator)

    def _console_user(self, request: web.Request) -> User:
        user = self._users.get(request.match_info["user_id"])
        if user is None:
            raise web.HTTPNotFound(
                text=json.dumps({"message": "user not found"}), content_type="application/json"
            )
        return user

    async def _console_list_sessions(self, request: web.Request) -> web.Response:
        user = self._console_user(request)
        sessions = [
            {"id": session_id, "started_at": wire_time(started)}
            for session_id, started in user.portal_sessions.items()
        ]
        return web.json_response({"sessions": sessions})

    async def _console_delete_sessions(self, request: web.Request) -> web.Response:
        user = self._console_user(request)
        deleted = len(user.portal_sessions)
        user.portal_sessions.clear()
        self.session_timeline.delete_sign_in_sessions(user.user_id, self.clock.now())
        self.audit.record(SERVICE, "console.delete_portal_sessions", user.user_id, deleted=deleted)
        return web.json_response({"deleted": deleted})

    async def _console_disable(self, request: web.Request) -> web.Response:
        return self._console_set_status(request, "DISABLED", "console.disable_user")

    async def _console_enable(self, request: web.Request) -> web.Response:
        return self._console_set_status(request, "ENABLED", "console.enable_user")

    def _console_set_status(self, request: web.Request, status: str, action: str) -> web.Response:
        user = self._console_user(request)
        changed = self._apply_status(user, status)
        self.audit.record(SERVICE, action, user.user_id, changed=changed)
        return web.json_response({"id": user.user_id, "status": user.status, "changed": changed})

    # ------------------------------------------------------------ sandbox admin (seeding)

    async def _admin_add_user(self, request: web.Request) -> web.Response:
        data = await _admin_body(request)
        return _admin_call(
            lambda: {
                "id": self.add_user(
                    need(data, "user_name"),
                    display_name=str(data.get("display_name", "")),
                    email=data.get("email"),
                    status=str(data.get("status", "ENABLED")),
                )
            }
        )

    async def _admin_get_user(self, request: web.Request) -> web.Response:
        def describe() -> Json:
            user = self._user(request.match_info["user_id"])
            return {
                "id": user.user_id,
                "user_name": user.user_name,
                "status": user.status,
                "portal_sessions": list(user.portal_sessions),
            }

        return _admin_call(describe, status=200)

    async def _admin_open_session(self, request: web.Request) -> web.Response:
        return _admin_call(lambda: {"id": self.open_portal_session(request.match_info["user_id"])})

    async def _admin_set_status(self, request: web.Request) -> web.Response:
        data = await _admin_body(request)

        def set_status() -> Json:
            user_id = request.match_info["user_id"]
            self.set_user_status(
                user_id, need(data, "status"), actor=str(data.get("actor", "sandbox"))
            )
            return {"id": user_id, "status": self.user_status(user_id)}

        return _admin_call(set_status, status=200)

    async def _admin_simulate(self, request: web.Request) -> web.Response:
        data = await _admin_body(request)

        def simulate() -> Json:
            user_id = request.match_info["user_id"]
            self._user(user_id)
            until = parse_wire_time(need(data, "until"))
            step = data.get("step_seconds", 60)
            if (
                isinstance(step, bool)
                or not isinstance(step, int | float)
                or not (step > 0 and math.isfinite(step))
            ):
                raise ValueError("step_seconds must be a positive number")
            start = self.clock.now()
            if until < start:
                raise ValueError("until is before the emulator's now")
            if (until - start).total_seconds() / step > MAX_SIMULATION_STEPS:
                raise ValueError(f"more than {MAX_SIMULATION_STEPS} steps")
            leaver = SimulatedLeaver(self.sessions.fork(), user_id, step=timedelta(seconds=step))
            return leaver.run(start, until).as_json()

        return _admin_call(simulate, status=200)

    async def _admin_add_group(self, request: web.Request) -> web.Response:
        data = await _admin_body(request)
        return _admin_call(lambda: {"id": self.add_group(need(data, "display_name"))})

    async def _admin_add_membership(self, request: web.Request) -> web.Response:
        data = await _admin_body(request)
        return _admin_call(
            lambda: {"id": self.add_membership(need(data, "group_id"), need(data, "user_id"))}
        )

    async def _admin_add_permission_set(self, request: web.Request) -> web.Response:
        data = await _admin_body(request)
        return _admin_call(
            lambda: {
                "arn": self.add_permission_set(
                    need(data, "name"),
                    session_duration=str(data.get("session_duration", "PT1H")),
                    inline_policy=str(data.get("inline_policy", "")),
                )
            }
        )

    async def _admin_set_duration(self, request: web.Request) -> web.Response:
        data = await _admin_body(request)

        def change() -> Json:
            arn = need(data, "permission_set_arn")
            self.set_session_duration(arn, need(data, "session_duration"))
            return {"arn": arn, "session_duration": self._permission_set(arn).session_duration}

        return _admin_call(change, status=200)

    async def _admin_add_application(self, request: web.Request) -> web.Response:
        data = await _admin_body(request)
        background = data.get("background_sessions", False)
        return _admin_call(
            lambda: {
                "arn": self.add_application(
                    need(data, "name"),
                    background_sessions=background is True,
                    provider=str(data.get("provider", "custom")),
                )
            }
        )

    async def _admin_assign_application(self, request: web.Request) -> web.Response:
        data = await _admin_body(request)

        def assign() -> Json:
            self.assign_application(
                need(data, "application_arn"),
                principal_type=need(data, "principal_type"),
                principal_id=need(data, "principal_id"),
            )
            return {}

        return _admin_call(assign)

    async def _admin_add_assignment(self, request: web.Request) -> web.Response:
        data = await _admin_body(request)

        def add() -> Json:
            self.add_account_assignment(
                account_id=need(data, "account_id"),
                permission_set_arn=need(data, "permission_set_arn"),
                principal_type=need(data, "principal_type"),
                principal_id=need(data, "principal_id"),
            )
            return {}

        return _admin_call(add)


# ---------------------------------------------------------------- helpers for SCIM and admin


def scim_active_from_patch(body: Json) -> bool:
    """The `active` value a PatchOp sets; the sandbox supports changing `active` only.

    AWS refuses `remove` on `active` and more than one operation on it in one request.
    """
    if SCIM_PATCH not in (body.get("schemas") or []):
        raise ScimError(400, f"schemas must contain {SCIM_PATCH}.", "invalidSyntax")
    operations = body.get("Operations")
    if not isinstance(operations, list) or not operations:
        raise ScimError(400, "Operations must be a non-empty list.", "invalidSyntax")
    values: list[Any] = []
    for operation in operations:
        if not isinstance(operation, dict):
            raise ScimError(400, "Each operation must be an object.", "invalidSyntax")
        op = str(operation.get("op", "")).lower()
        path = operation.get("path")
        value = operation.get("value")
        if op == "remove":
            if isinstance(path, str) and path.lower() == "active":
                raise ScimError(
                    400, "The remove operation is not supported for active.", "mutability"
                )
            raise ScimError(400, "The sandbox supports changing active only.", "invalidPath")
        if op not in ("add", "replace"):
            raise ScimError(400, f"Unsupported operation {operation.get('op')!r}.", "invalidSyntax")
        if isinstance(path, str):
            if path.lower() != "active":
                raise ScimError(400, "The sandbox supports changing active only.", "invalidPath")
            values.append(value)
        elif path is None and isinstance(value, dict):
            if set(value) - {"active"}:
                raise ScimError(400, "The sandbox supports changing active only.", "invalidPath")
            if "active" in value:
                values.append(value["active"])
        else:
            raise ScimError(400, "A value is required for add and replace.", "invalidValue")
    if len(values) != 1:
        raise ScimError(400, "Exactly one operation must change active.", "invalidValue")
    value = values[0]
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"  # Entra sends "False" as a string
    if not isinstance(value, bool):
        raise ScimError(400, "active must be a boolean.", "invalidValue")
    return value


async def _json_body(request: web.Request) -> Json:
    try:
        body = await request.json(loads=json.loads)
    except ValueError:
        raise ScimError(400, "The body is not valid JSON.", "invalidSyntax") from None
    if not isinstance(body, dict):
        raise ScimError(400, "The body must be a JSON object.", "invalidSyntax")
    return body


async def _admin_body(request: web.Request) -> Json:
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="the body must be JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="the body must be a JSON object")
    return body


def need(data: Json, name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"field {name!r} is required")
    return value


def _admin_call(action: Callable[[], Json], *, status: int = 201) -> web.Response:
    try:
        return web.json_response(action(), status=status)
    except KeyError as err:  # the Python API's "unknown user/group/permission set"
        return web.json_response({"error": str(err.args[0])}, status=404)
    except ValueError as err:
        return web.json_response({"error": str(err)}, status=400)
