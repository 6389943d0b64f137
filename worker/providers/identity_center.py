"""AWS IAM Identity Center: identitystore and sso-admin through aiobotocore, SCIM over aiohttp.

aiobotocore signs every request (SigV4) and finds credentials through the default
chain; botocore's own retries are off because botocore ignores identitystore's
RetryAfterSeconds and we must honour it (retry.py does the retrying).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import aiohttp
import structlog
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from worker import actions
from worker.clock import Clock, SystemClock
from worker.config import IdentityCenterConfig
from worker.countdown import ReachableApplication, ReachablePermissionSet, parse_session_duration
from worker.errors import PermanentError, ProviderError, TransientError
from worker.metrics import Metrics
from worker.providers import policy
from worker.providers.base import (
    REQUEST_SUCCEEDED,
    IdentityCenterMatch,
    IdentityCenterUser,
    InlinePolicy,
    PlannedCall,
)
from worker.providers.http import JsonHttpClient
from worker.providers.shared_reads import SharedReads
from worker.ratelimit import UNHINTED_PAUSE, RateLimiter

T = TypeVar("T")
log = structlog.get_logger(__name__)
#: the provider label of identitystore and sso-admin calls in the metrics
METRICS_NAME = "identity_center"


def _snake(operation: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in operation).lstrip("_")


#: error codes worth retrying; everything else from AWS is a human's problem
TRANSIENT_CODES = frozenset(
    {
        "ThrottlingException",
        # "There is a conflicting operation in process": an earlier provisioning runs
        "ConflictException",
        "TooManyRequestsException",
        "InternalServerException",
        "InternalFailure",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)


#: the error code of a thing that is not there (a user, an assignment, a membership)
NOT_FOUND = "ResourceNotFoundException"
#: our code for an address that names two Identity Center users
AMBIGUOUS = "AmbiguousUser"


def _folds_to(value: Any, key: str) -> bool:
    return isinstance(value, str) and value.strip().casefold() == key


def _primary_emails(user: dict[str, Any]) -> list[Any]:
    """The user's primary email (the only one, when none is marked primary)."""
    emails = [e for e in user.get("Emails") or [] if isinstance(e, dict)]
    primary = [e for e in emails if e.get("Primary")] or (emails if len(emails) == 1 else [])
    return [e.get("Value") for e in primary]


def _finished(operation: str, request_id: str, status: str, reason: str) -> bool:
    """An asynchronous sso-admin request: True once SUCCEEDED, False while IN_PROGRESS."""
    if status == "FAILED":
        raise PermanentError(
            "sso-admin", f"{operation} {request_id} FAILED: {reason or 'no reason given'}"
        )
    return status == REQUEST_SUCCEEDED


def classify_client_error(service: str, operation: str, error: ClientError) -> Exception:
    """Turn a botocore ClientError into TransientError (with the hint) or PermanentError."""
    response: dict[str, Any] = error.response
    code = str(response.get("Error", {}).get("Code", "Unknown"))
    message = str(response.get("Error", {}).get("Message", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    text = f"{operation} failed: {code}: {message}".rstrip(": ")
    # sso-admin throttles with HTTP 400 "Rate exceeded" and no hint
    if code in TRANSIENT_CODES or (isinstance(status, int) and status >= 500):
        return TransientError(
            service, text, retry_after=_retry_after(response), status=status, code=code
        )
    return PermanentError(service, text, status=status, code=code)


def _retry_after(response: dict[str, Any]) -> float | None:
    # identitystore's ThrottlingException models RetryAfterSeconds; botocore puts
    # modelled error members at the top of the parsed response.
    for value in (
        response.get("RetryAfterSeconds"),
        response.get("Error", {}).get("RetryAfterSeconds"),
        response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("retry-after"),
    ):
        if value is None:
            continue
        try:
            return max(0.0, float(value))
        except (TypeError, ValueError):
            continue
    return None


class _OverBudget(Exception):
    """A run-wide listing would take more requests than the reads it replaces."""


class _Budget:
    """Requests a run-wide listing may still send; every page is one request."""

    def __init__(self, ic: AwsIdentityCenter, most: int) -> None:
        self.ic, self.most, self.spent = ic, most, 0

    async def items(self, client: Any, operation: str, key: str, **params: Any) -> list[Any]:
        pages = aiter(client.get_paginator(_snake(operation)).paginate(**params))
        service = "identitystore" if client is self.ic._identitystore else "sso-admin"
        collected: list[Any] = []
        while True:
            if self.spent >= self.most:
                raise _OverBudget
            async with self.ic.limiter.slot():
                try:
                    page = await self.ic._unlimited(service, operation, anext(pages))
                except StopAsyncIteration:
                    return collected
            self.spent += 1
            collected.extend(page.get(key, []))
            if not page.get("NextToken"):
                return collected


class AwsIdentityCenter:
    """Use as `async with AwsIdentityCenter(config, session) as ic:`."""

    def __init__(
        self,
        config: IdentityCenterConfig,
        http: aiohttp.ClientSession,
        limiter: RateLimiter | None = None,
        metrics: Metrics | None = None,
        clock: Clock | None = None,
    ) -> None:
        # one limiter for identitystore, sso-admin and SCIM: AWS's 20 TPS is collective
        self.limiter = limiter or RateLimiter("identity-center")
        #: identitystore and sso-admin count as provider "identity_center", SCIM as "scim"
        self.metrics = metrics
        self.config = config
        self.identity_source: str = config.identity_source
        self._stack = contextlib.AsyncExitStack()
        self._identitystore: Any = None
        self._sso_admin: Any = None
        self._scim: JsonHttpClient | None = None
        #: what many cases ask alike (groups, permission sets, applications), read once
        self.shared = SharedReads(clock or SystemClock(), config.shared_read_window)
        #: how many ListUsers pages the store took when last listed (user_statuses)
        self._user_pages: int | None = None
        #: run-wide listing -> user -> when they last asked for what it tells (_asked)
        self._askers: dict[str, dict[str, datetime]] = {}
        self._askers_kept: dict[str, int] = {}
        #: run-wide listing -> the requests it took when last made
        self._costs: dict[str, int] = {}
        if config.scim is not None:
            token = config.scim.token.resolve_token("identity_center.scim.token")
            self._scim = JsonHttpClient(
                provider="scim",
                base_url=config.scim.url,
                authorization=f"Bearer {token.reveal()}",
                session=http,
                timeout=config.scim.timeout_seconds,
                limiter=self.limiter,
                metrics=metrics,
            )

    async def __aenter__(self) -> AwsIdentityCenter:
        session = get_session()
        client_config = AioConfig(
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=self.config.timeout_seconds,
            read_timeout=self.config.timeout_seconds,
        )
        kwargs: dict[str, Any] = {"region_name": self.config.region, "config": client_config}
        if self.config.endpoint_url:
            kwargs["endpoint_url"] = self.config.endpoint_url
        if self.config.credentials is not None:
            creds = self.config.credentials
            kwargs["aws_access_key_id"] = creds.access_key_id.resolve(
                "identity_center.credentials.access_key_id"
            ).reveal()
            kwargs["aws_secret_access_key"] = creds.secret_access_key.resolve(
                "identity_center.credentials.secret_access_key"
            ).reveal()
        self._identitystore = await self._stack.enter_async_context(
            session.create_client("identitystore", **kwargs)
        )
        self._sso_admin = await self._stack.enter_async_context(
            session.create_client("sso-admin", **kwargs)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def _aws(self, service: str, operation: str, call: Awaitable[T]) -> T:
        try:
            async with self.limiter.slot():
                return await self._unlimited(service, operation, call)
        except BaseException:
            if asyncio.iscoroutine(call):
                call.close()  # cancelled while waiting its turn: the request was never made
            raise

    async def _unlimited(self, service: str, operation: str, call: Awaitable[T]) -> T:
        if self.metrics is None:
            return await self._classified(service, operation, call)
        try:
            answer = await self._classified(service, operation, call)
        except StopAsyncIteration:
            raise  # a paginator's end: nothing was sent
        except ProviderError as exc:
            self.metrics.provider_call(METRICS_NAME)
            self.metrics.provider_failed(METRICS_NAME, exc)
            raise
        self.metrics.provider_call(METRICS_NAME)
        return answer

    async def _classified(self, service: str, operation: str, call: Awaitable[T]) -> T:
        try:
            return await call
        except ClientError as exc:
            error = classify_client_error(service, operation, exc)
            if isinstance(error, TransientError) and error.code == "ThrottlingException":
                # sso-admin throttles with no hint: everyone still waits, not only this call
                self.limiter.pause(error.retry_after or UNHINTED_PAUSE)
            raise error from None
        except ParamValidationError as exc:
            # botocore refused to send it: a bad identifier, not a passing fault
            raise PermanentError(service, f"{operation} not sent: {exc}") from None
        except (BotoCoreError, aiohttp.ClientError, TimeoutError) as exc:
            # connection refused/reset, read timeouts: the request may not have arrived
            raise TransientError(service, f"{operation} failed: {type(exc).__name__}") from None

    async def find_user(self, user_name: str) -> IdentityCenterUser:
        return await self.get_user((await self.find_user_id(user_name)).user_id)

    async def find_user_id(self, user_name: str) -> IdentityCenterMatch:
        """The one Identity Center user this address names, by id.

        `GetUserId` matches exactly, and whether `userName` compares case-sensitively is
        not documented, so: `GetUserId` on `userName`, then on `emails.value` (the two
        unique attributes it takes); if neither finds anyone, every `ListUsers` page,
        compared case-insensitively on `UserName`, then the primary email, then the
        `ExternalIds` the IdP's SCIM sync sets. Two users matching is a PermanentError
        naming both (raised before anything changes); none, one with NOT_FOUND whose
        message says where it looked."""
        for path in ("userName", "emails.value"):
            user_id = await self._user_id_by(path, user_name)
            if user_id is not None:
                return IdentityCenterMatch(user_id=user_id, found_by=f"GetUserId on {path}")
        key = user_name.casefold()
        users = await self._all_users()
        for field, values in (
            ("userName", lambda u: [u.get("UserName")]),
            ("primary email", _primary_emails),
            ("externalId", lambda u: [x.get("Id") for x in u.get("ExternalIds") or []]),
        ):
            matches = [u for u in users if any(_folds_to(v, key) for v in values(u))]
            if len(matches) > 1:
                named = " and ".join(
                    f"{u.get('UserName')!r} ({u.get('UserId')})" for u in matches[:2]
                )
                raise PermanentError(
                    "identitystore",
                    f"{user_name!r} is ambiguous in Identity Center: {len(matches)} users "
                    f"match on {field} case-insensitively, {named}; nothing was changed",
                    code=AMBIGUOUS,
                )
            if matches:
                return IdentityCenterMatch(
                    user_id=str(matches[0]["UserId"]),
                    found_by=f"ListUsers: {field} {matches[0].get('UserName')!r}, any case",
                )
        raise PermanentError(
            "identitystore",
            f"no Identity Center user with userName {user_name!r} (searched: GetUserId on "
            f"userName and emails.value, then {len(users)} users from ListUsers by userName, "
            "primary email and externalId, case-insensitively)",
            code=NOT_FOUND,
        )

    async def find_user_by_external_id(self, external_id: str) -> IdentityCenterMatch:
        # GetUserId by ExternalId needs the issuer, which each IdP's sync sets its own way:
        # every ListUsers page, compared on the id alone (ids are exact, not folded).
        users = [
            user
            for user in await self._all_users()
            if any(x.get("Id") == external_id for x in user.get("ExternalIds") or [])
        ]
        if len(users) > 1:
            named = " and ".join(f"{u.get('UserName')!r} ({u.get('UserId')})" for u in users[:2])
            raise PermanentError(
                "identitystore",
                f"externalId {external_id!r} is ambiguous in Identity Center: {named}; "
                "nothing was changed",
                code=AMBIGUOUS,
            )
        if not users:
            raise PermanentError(
                "identitystore",
                f"no Identity Center user with externalId {external_id!r} (ListUsers)",
                code=NOT_FOUND,
            )
        return IdentityCenterMatch(
            user_id=str(users[0]["UserId"]), found_by=f"ListUsers: externalId {external_id}"
        )

    async def _all_users(self) -> list[dict[str, Any]]:
        """Every user of the identity store, from every `ListUsers` page."""
        pages = await self._pages(
            self._identitystore,
            "identitystore",
            "ListUsers",
            IdentityStoreId=self.config.identity_store_id,
        )
        return [user for page in pages for user in page.get("Users", [])]

    async def _user_id_by(self, path: str, value: str) -> str | None:
        """`GetUserId` on one unique attribute: the id, or None when nobody has it."""
        try:
            found = await self._aws(
                "identitystore",
                "GetUserId",
                self._identitystore.get_user_id(
                    IdentityStoreId=self.config.identity_store_id,
                    AlternateIdentifier={
                        "UniqueAttribute": {"AttributePath": path, "AttributeValue": value}
                    },
                ),
            )
        except PermanentError as exc:
            if exc.code == NOT_FOUND:
                return None
            raise
        return str(found["UserId"])

    async def get_user(self, user_id: str) -> IdentityCenterUser:
        user = await self._aws(
            "identitystore",
            "DescribeUser",
            self._identitystore.describe_user(
                IdentityStoreId=self.config.identity_store_id, UserId=user_id
            ),
        )
        status = user.get("UserStatus")
        if status not in ("ENABLED", "DISABLED"):
            # Without UserStatus a disable cannot be verified; never assume it.
            raise PermanentError(
                "identitystore",
                f"DescribeUser for {user_id} returned no UserStatus (botocore too old?)",
            )
        return IdentityCenterUser(
            user_id=str(user["UserId"]), user_name=str(user.get("UserName", "")), status=status
        )

    async def user_statuses(self, most_pages: int) -> dict[str, str] | None:
        """Every user's UserStatus from ListUsers (its User objects carry it, as
        DescribeUser's do), or None when that takes more than `most_pages` pages: a
        store with many users and few watched costs less read one by one. A store found
        too long is not listed again until more pages are allowed."""
        if most_pages < 1 or (self._user_pages or 0) > most_pages:
            return None
        pages = aiter(
            self._identitystore.get_paginator("list_users").paginate(
                IdentityStoreId=self.config.identity_store_id
            )
        )
        statuses: dict[str, str] = {}
        for count in itertools.count(1):
            if count > most_pages:
                self._user_pages = count  # at least: more than allowed
                return None
            async with self.limiter.slot():
                try:
                    page = await self._unlimited("identitystore", "ListUsers", anext(pages))
                except StopAsyncIteration:
                    break
                except PermanentError as exc:
                    # refused (no identitystore:ListUsers): read each user, and stop asking
                    log.warning("user_listing_refused", error=str(exc))
                    self._user_pages = sys.maxsize
                    return None
            for user in page.get("Users", []):
                status = user.get("UserStatus")
                if status in ("ENABLED", "DISABLED"):
                    statuses[str(user["UserId"])] = str(status)
            if not page.get("NextToken"):
                break
        self._user_pages = count
        return statuses

    async def disable_user(self, user_id: str) -> None:
        if self._scim is None:
            raise PermanentError(
                "identity-center",
                "identity source 'directory' has no disable API: use the console",
            )
        # AWS accepts exactly one replace on `active` per request.
        await self._scim.request(
            "PATCH",
            f"/Users/{user_id}",
            body={
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "replace", "path": "active", "value": False}],
            },
            content_type="application/scim+json",
        )

    async def _pages(self, client: Any, service: str, operation: str, **params: Any) -> list[Any]:
        """Every page of a paginated call, each page retried as a unit by the caller."""
        pages = aiter(client.get_paginator(_snake(operation)).paginate(**params))
        collected: list[Any] = []
        while True:
            # each page is one request against the collective rate limit
            async with self.limiter.slot():
                try:
                    page = await self._unlimited(service, operation, anext(pages))
                except StopAsyncIteration:
                    return collected
            collected.append(page)
            if not page.get("NextToken"):
                # the last page: asking the paginator for its end would take a place in
                # the rate limit for a request that is never sent
                return collected

    async def group_memberships(
        self, user_id: str, *, since: datetime | None = None, run_wide: bool = False
    ) -> list[tuple[str, str]]:
        """(membership id, group id) of every group the user belongs to. With `run_wide`
        (the countdown's re-reads on the shared grid, due at `since`): from one listing
        of every group's members sent at or after `since`, when the earlier ticks had
        more users asking than that listing costs; else the user's own listing."""
        if since is not None and run_wide:
            everyone = await self._run_wide("memberships", user_id, since, self._every_membership)
            if everyone is not None:
                return list(everyone.get(user_id, ()))
        else:
            self._asked("memberships", user_id)  # the containment's: this user re-reads soon
        return await self._memberships_for_member(user_id)

    async def _run_wide(
        self, kind: str, user_id: str, since: datetime, listing: Callable[[_Budget], Awaitable[T]]
    ) -> T | None:
        """One listing of the whole instance for every case re-reading at the tick due at
        `since` (shared, sent at or after it), when more users asked for this in the last
        hour (each is in its window and re-reads at every tick) than the listing cost
        when last made; else None (each user is read alone)."""
        demand = self._asked(kind, user_id)
        if demand < 2 or self._costs.get(kind, 0) >= demand:
            return None

        async def listed() -> T | None:
            budget = _Budget(self, demand - 1)
            try:
                answer = await listing(budget)
            except _OverBudget:
                self._costs[kind] = budget.spent + 1  # at least
                return None
            except PermanentError as exc:
                # refused (an IAM policy without the List permission): each user's own
                # reads, as before, and no listing again in this process
                log.warning("run_wide_listing_refused", listing=kind, error=str(exc))
                self._costs[kind] = sys.maxsize
                return None
            self._costs[kind] = budget.spent
            return answer

        return await self.shared.read(("run_wide", kind), listed, since=since)

    def _asked(self, kind: str, user_id: str) -> int:
        """Remember that `user_id` asked for `kind`; how many users asked in the last hour."""
        now = self.shared.clock.now()
        askers = self._askers.setdefault(kind, {})
        askers[user_id] = now
        if len(askers) > 2 * self._askers_kept.get(kind, 0):
            for user, at in list(askers.items()):
                if now - at > timedelta(hours=1):
                    del askers[user]
            self._askers_kept[kind] = len(askers)
        return len(askers)

    async def _every_membership(self, budget: _Budget) -> dict[str, tuple[tuple[str, str], ...]]:
        """user id -> (membership id, group id), from ListGroups and each group's
        ListGroupMemberships."""
        store = {"IdentityStoreId": self.config.identity_store_id}
        members: dict[str, list[tuple[str, str]]] = {}
        for group in await budget.items(self._identitystore, "ListGroups", "Groups", **store):
            for m in await budget.items(
                self._identitystore,
                "ListGroupMemberships",
                "GroupMemberships",
                GroupId=group["GroupId"],
                **store,
            ):
                user = (m.get("MemberId") or {}).get("UserId")
                if user is not None:
                    members.setdefault(str(user), []).append((m["MembershipId"], m["GroupId"]))
        return {user: tuple(found) for user, found in members.items()}

    async def _every_assignment(
        self, budget: _Budget
    ) -> dict[tuple[str, str], tuple[tuple[str, str], ...]]:
        """(principal type, id) -> (account id, permission set arn), from every set's
        ListAccountAssignments on each account it is provisioned to: creating an
        assignment provisions its set to the account, so no assignment is elsewhere."""
        instance = {"InstanceArn": self.config.instance_arn}
        found: dict[tuple[str, str], list[tuple[str, str]]] = {}
        sets = await budget.items(
            self._sso_admin, "ListPermissionSets", "PermissionSets", **instance
        )
        for arn in sets:
            accounts = await budget.items(
                self._sso_admin,
                "ListAccountsForProvisionedPermissionSet",
                "AccountIds",
                PermissionSetArn=arn,
                **instance,
            )
            for account in accounts:
                for a in await budget.items(
                    self._sso_admin,
                    "ListAccountAssignments",
                    "AccountAssignments",
                    AccountId=account,
                    PermissionSetArn=arn,
                    **instance,
                ):
                    principal = (str(a["PrincipalType"]), str(a["PrincipalId"]))
                    found.setdefault(principal, []).append((account, arn))
        return {principal: tuple(pairs) for principal, pairs in found.items()}

    async def _memberships_for_member(self, user_id: str) -> list[tuple[str, str]]:
        pages = await self._pages(
            self._identitystore,
            "identitystore",
            "ListGroupMembershipsForMember",
            IdentityStoreId=self.config.identity_store_id,
            MemberId={"UserId": user_id},
        )
        return [
            (m["MembershipId"], m["GroupId"]) for page in pages for m in page["GroupMemberships"]
        ]

    async def assignments(
        self, principal_type: str, principal_id: str, *, since: datetime | None = None
    ) -> list[tuple[str, str]]:
        """(account id, permission set arn) assigned to this principal itself. A group's
        are shared by the cases that ask (`since`: see SharedReads); a user's never."""
        if principal_type == "USER":
            return list(await self._assignments(principal_type, principal_id))
        return list(
            await self.shared.read(
                ("assignments", principal_type, principal_id),
                lambda: self._assignments(principal_type, principal_id),
                since=since,
            )
        )

    async def _assignments(
        self, principal_type: str, principal_id: str
    ) -> tuple[tuple[str, str], ...]:
        pages = await self._pages(
            self._sso_admin,
            "sso-admin",
            "ListAccountAssignmentsForPrincipal",
            InstanceArn=self.config.instance_arn,
            PrincipalId=principal_id,
            PrincipalType=principal_type,
        )
        return tuple(
            (a["AccountId"], a["PermissionSetArn"])
            for page in pages
            for a in page["AccountAssignments"]
        )

    async def permission_set(
        self, arn: str, *, since: datetime | None = None
    ) -> tuple[str, timedelta | None]:
        """(name, session duration) of a permission set, shared by the cases that ask
        (`since`: only from a read sent then or later, see SharedReads)."""
        return await self.shared.read(
            ("permission_set", arn), lambda: self._describe_permission_set(arn), since=since
        )

    async def _describe_permission_set(self, arn: str) -> tuple[str, timedelta | None]:
        described = await self._aws(
            "sso-admin",
            "DescribePermissionSet",
            self._sso_admin.describe_permission_set(
                InstanceArn=self.config.instance_arn, PermissionSetArn=arn
            ),
        )
        ps = described["PermissionSet"]
        # None when unreadable: the countdown takes the 12 h maximum and says so
        return str(ps.get("Name", "")), parse_session_duration(ps.get("SessionDuration"))

    async def _groups(self, user_id: str, known: Sequence[str] | None) -> Sequence[str]:
        if known is not None:
            return known
        return [group_id for _, group_id in await self.group_memberships(user_id)]

    async def reachable_permission_sets(
        self,
        user_id: str,
        *,
        since: datetime | None = None,
        groups: Sequence[str] | None = None,
        run_wide: bool = False,
    ) -> list[ReachablePermissionSet]:
        """Every permission set the user reaches, directly and through each group; with
        `since` every shared read (groups, durations) was sent then or later; with
        `run_wide` (a re-read on the grid) the assignments may come from one listing
        of every assignment of the instance (_run_wide)."""
        reach: dict[str, tuple[set[str], set[str]]] = {}
        principals = [("USER", user_id, "USER")] + [
            ("GROUP", group_id, f"GROUP:{group_id}")
            for group_id in await self._groups(user_id, groups)
        ]
        everyone = None
        if since is not None and run_wide:
            everyone = await self._run_wide("assignments", user_id, since, self._every_assignment)
        else:
            self._asked("assignments", user_id)
        for principal_type, principal_id, via in principals:
            if everyone is not None:
                pairs = list(everyone.get((principal_type, principal_id), ()))
            else:
                pairs = await self.assignments(principal_type, principal_id, since=since)
            for account, arn in pairs:
                accounts, vias = reach.setdefault(arn, (set(), set()))
                accounts.add(account)
                vias.add(via)
        result = []
        for arn, (accounts, vias) in sorted(reach.items()):
            name, duration = await self.permission_set(arn, since=since)
            result.append(
                ReachablePermissionSet(
                    arn=arn,
                    name=name,
                    session_duration=duration,
                    accounts=tuple(sorted(accounts)),
                    via=tuple(sorted(vias)),
                )
            )
        return result

    async def reachable_applications(
        self, user_id: str, *, since: datetime | None = None, groups: Sequence[str] | None = None
    ) -> list[ReachableApplication]:
        """Every application the user is assigned to, directly and through each group,
        with its name and whether it keeps user background sessions; a group's
        assignments and an application's configuration shared as for
        reachable_permission_sets."""
        reach: dict[str, set[str]] = {}
        principals = [("USER", user_id, "USER")] + [
            ("GROUP", group_id, f"GROUP:{group_id}")
            for group_id in await self._groups(user_id, groups)
        ]
        if not await self.shared.read(("any_application",), self._any_application, since=since):
            return []  # an instance without applications: nobody is assigned one
        for principal_type, principal_id, via in principals:
            if principal_type == "USER":
                arns = await self._application_assignments(principal_type, principal_id)
            else:
                arns = await self.shared.read(
                    ("application_assignments", principal_type, principal_id),
                    partial(self._application_assignments, principal_type, principal_id),
                    since=since,
                )
            for arn in arns:
                reach.setdefault(arn, set()).add(via)
        result = []
        for arn, vias in sorted(reach.items()):
            name, background = await self.shared.read(
                ("application", arn), partial(self._describe_application, arn), since=since
            )
            result.append(
                ReachableApplication(
                    arn=arn, name=name, background_sessions=background, via=tuple(sorted(vias))
                )
            )
        return result

    async def _any_application(self) -> bool:
        """Whether the instance has an application: one ListApplications page, read for
        every case at once. Refused (an IAM policy without sso:ListApplications) or
        unsure (an empty page with a NextToken): True, and each principal is listed."""
        try:
            page = await self._aws(
                "sso-admin",
                "ListApplications",
                self._sso_admin.list_applications(
                    InstanceArn=self.config.instance_arn, MaxResults=1
                ),
            )
        except PermanentError as exc:
            log.info("applications_not_listable", error=str(exc))
            return True
        return bool(page.get("Applications") or page.get("NextToken"))

    async def _application_assignments(
        self, principal_type: str, principal_id: str
    ) -> tuple[str, ...]:
        pages = await self._pages(
            self._sso_admin,
            "sso-admin",
            "ListApplicationAssignmentsForPrincipal",
            InstanceArn=self.config.instance_arn,
            PrincipalId=principal_id,
            PrincipalType=principal_type,
        )
        return tuple(a["ApplicationArn"] for page in pages for a in page["ApplicationAssignments"])

    async def _describe_application(self, arn: str) -> tuple[str, bool | None]:
        """(name, whether it keeps user background sessions: None when unknown)."""
        described = await self._aws(
            "sso-admin",
            "DescribeApplication",
            self._sso_admin.describe_application(ApplicationArn=arn),
        )
        try:
            configured = await self._aws(
                "sso-admin",
                "GetApplicationSessionConfiguration",
                self._sso_admin.get_application_session_configuration(ApplicationArn=arn),
            )
        except PermanentError:
            # refused for this one (access denied, an application type without it):
            # it alone is unknown, said "not covered"; the others are still read
            configured = {}
        status = configured.get("UserBackgroundSessionApplicationStatus")
        return str(described.get("Name", "")), {"ENABLED": True, "DISABLED": False}.get(str(status))

    async def inline_policy(self, arn: str) -> str:
        answer = await self._aws(
            "sso-admin",
            "GetInlinePolicyForPermissionSet",
            self._sso_admin.get_inline_policy_for_permission_set(
                InstanceArn=self.config.instance_arn, PermissionSetArn=arn
            ),
        )
        return str(answer.get("InlinePolicy") or "")

    async def put_inline_policy(self, arn: str, policy: str) -> None:
        await self._aws(
            "sso-admin",
            "PutInlinePolicyToPermissionSet",
            self._sso_admin.put_inline_policy_to_permission_set(
                InstanceArn=self.config.instance_arn, PermissionSetArn=arn, InlinePolicy=policy
            ),
        )

    async def delete_inline_policy(self, arn: str) -> None:
        await self._aws(
            "sso-admin",
            "DeleteInlinePolicyFromPermissionSet",
            self._sso_admin.delete_inline_policy_from_permission_set(
                InstanceArn=self.config.instance_arn, PermissionSetArn=arn
            ),
        )

    async def provision(self, arn: str) -> str:
        """Start provisioning to every account the set is provisioned to; the request id."""
        answer = await self._aws(
            "sso-admin",
            "ProvisionPermissionSet",
            self._sso_admin.provision_permission_set(
                InstanceArn=self.config.instance_arn,
                PermissionSetArn=arn,
                TargetType="ALL_PROVISIONED_ACCOUNTS",
            ),
        )
        return str(answer["PermissionSetProvisioningStatus"]["RequestId"])

    async def provisioning_status(self, request_id: str) -> tuple[str, str]:
        """(IN_PROGRESS | FAILED | SUCCEEDED, failure reason)."""
        answer = await self._aws(
            "sso-admin",
            "DescribePermissionSetProvisioningStatus",
            self._sso_admin.describe_permission_set_provisioning_status(
                InstanceArn=self.config.instance_arn, ProvisionPermissionSetRequestId=request_id
            ),
        )
        status = answer["PermissionSetProvisioningStatus"]
        return str(status["Status"]), str(status.get("FailureReason", ""))

    async def delete_assignment(self, user_id: str, account_id: str, arn: str) -> str:
        """Delete one of the USER's own assignments; the deletion request id."""
        answer = await self._aws(
            "sso-admin",
            "DeleteAccountAssignment",
            self._sso_admin.delete_account_assignment(
                InstanceArn=self.config.instance_arn,
                TargetId=account_id,
                TargetType="AWS_ACCOUNT",
                PermissionSetArn=arn,
                PrincipalType="USER",  # never a GROUP: that would take access from others
                PrincipalId=user_id,
            ),
        )
        return str(answer["AccountAssignmentDeletionStatus"]["RequestId"])

    async def deletion_status(self, request_id: str) -> tuple[str, str]:
        answer = await self._aws(
            "sso-admin",
            "DescribeAccountAssignmentDeletionStatus",
            self._sso_admin.describe_account_assignment_deletion_status(
                InstanceArn=self.config.instance_arn, AccountAssignmentDeletionRequestId=request_id
            ),
        )
        status = answer["AccountAssignmentDeletionStatus"]
        return str(status["Status"]), str(status.get("FailureReason", ""))

    async def delete_membership(self, membership_id: str) -> None:
        await self._aws(
            "identitystore",
            "DeleteGroupMembership",
            self._identitystore.delete_group_membership(
                IdentityStoreId=self.config.identity_store_id, MembershipId=membership_id
            ),
        )

    # the typed operations the steps use (base.IdentityCenter)

    async def deny_policy(self, arn: str, user_id: str) -> InlinePolicy:
        text = await self.inline_policy(arn)
        return InlinePolicy(
            arn=arn, user_id=user_id, text=text, denies=policy.has_deny(text, user_id, arn)
        )

    async def merge_deny(self, current: InlinePolicy) -> None:
        merged = policy.merge_deny(current.text, current.user_id, current.arn)
        if merged is not None:
            await self.put_inline_policy(current.arn, merged)

    async def remove_deny(self, current: InlinePolicy) -> None:
        without = policy.remove_deny(current.text, current.user_id, current.arn)
        if without:
            await self.put_inline_policy(current.arn, without)
        elif without is not None:
            await self.delete_inline_policy(current.arn)

    async def provisioned(self, request_id: str) -> bool:
        status, reason = await self.provisioning_status(request_id)
        return _finished("DescribePermissionSetProvisioningStatus", request_id, status, reason)

    async def unassign(self, user_id: str, account_id: str, arn: str) -> str | None:
        try:
            return await self.delete_assignment(user_id, account_id, arn)
        except PermanentError as exc:
            if exc.code == NOT_FOUND:
                return None  # deleted already (by us before a crash, or by someone)
            raise

    async def assignment_deleted(self, request_id: str) -> bool:
        status, reason = await self.deletion_status(request_id)
        return _finished("DescribeAccountAssignmentDeletionStatus", request_id, status, reason)

    async def leave_group(self, membership_id: str) -> None:
        try:
            await self.delete_membership(membership_id)
        except PermanentError as exc:
            if exc.code != NOT_FOUND:
                raise

    def console_user_url(self, user_id: str) -> str:
        instance_id = self.config.instance_arn.rsplit("/", 1)[-1]
        return self.config.console_url.format(
            region=self.config.region, instance_id=instance_id, user_id=user_id
        )

    def plan(self, action: str, subject: str) -> list[PlannedCall]:
        store = self.config.endpoint_url or f"identitystore.{self.config.region}.amazonaws.com"
        find = PlannedCall(
            method="identitystore:GetUserId", target=f"{store} userName={subject}", mutates=False
        )
        describe = PlannedCall(
            method="identitystore:DescribeUser",
            target=f"{store} (until UserStatus=DISABLED)",
            mutates=False,
        )
        read = PlannedCall(
            method="identitystore:DescribeUser", target=f"{store} {{id}}", mutates=False
        )
        if action == actions.RESOLVE.name:
            listing = PlannedCall(
                method="identitystore:ListUsers",
                target=f"{store} (only when GetUserId finds nobody: any case, email, externalId)",
                mutates=False,
            )
            return [find, listing]
        if action == actions.DISABLE_USER.name:
            if self.identity_source == "scim":
                # a read-only dry run may have no SCIM client: the plan is the same
                scim = self.config.scim.url.rstrip("/") if self.config.scim else "(SCIM endpoint)"
                patch = PlannedCall(
                    method="PATCH", target=f"{scim}/Users/{{id}} active=false", mutates=True
                )
            else:
                patch = PlannedCall(
                    method="operator task",
                    target="console: Disable user access",
                    mutates=True,
                )
            return [read, patch, describe]
        if action == actions.PORTAL_SESSIONS.name:
            return [
                PlannedCall(
                    method="operator task",
                    target="console: Active sessions -> Delete sessions",
                    mutates=True,
                )
            ]
        return []


@contextlib.asynccontextmanager
async def identity_center(
    config: IdentityCenterConfig, http: aiohttp.ClientSession
) -> AsyncIterator[AwsIdentityCenter]:
    async with AwsIdentityCenter(config, http) as ic:
        yield ic
