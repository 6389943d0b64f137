"""The roles a provider can play. The engine and the steps see only these."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from worker.countdown import ReachablePermissionSet


@dataclass(frozen=True, kw_only=True)
class PlannedCall:
    """One external call a step would make, for `--dry-run`."""

    method: str
    target: str
    mutates: bool


@dataclass(frozen=True, kw_only=True)
class IdpUser:
    id: str
    login: str
    #: the provider's own word for the state, shown in evidence as read
    status: str
    #: True only when the provider says the user can no longer sign in
    deactivated: bool


class IdentityProvider(Protocol):
    name: str

    async def find_user(self, subject: str) -> IdpUser: ...

    async def get_user(self, user_id: str) -> IdpUser: ...

    async def deactivate_user(self, user_id: str) -> None: ...

    async def revoke_sessions(self, user_id: str) -> None: ...

    def plan(self, action: str, subject: str) -> list[PlannedCall]: ...


@dataclass(frozen=True, kw_only=True)
class IdentityCenterUser:
    user_id: str
    user_name: str
    #: "ENABLED" | "DISABLED" as DescribeUser reports it
    status: str

    @property
    def disabled(self) -> bool:
        return self.status == "DISABLED"


class IdentityCenter(Protocol):
    #: "scim" (external IdP, disabled by SCIM) or "directory" (console only)
    identity_source: str

    async def find_user(self, user_name: str) -> IdentityCenterUser: ...

    async def get_user(self, user_id: str) -> IdentityCenterUser: ...

    async def disable_user(self, user_id: str) -> None: ...

    def console_user_url(self, user_id: str) -> str: ...

    # the reads that feed the countdown
    async def group_memberships(self, user_id: str) -> list[tuple[str, str]]: ...

    async def assignments(
        self, principal_type: str, principal_id: str
    ) -> list[tuple[str, str]]: ...

    async def permission_set(self, arn: str) -> tuple[str, timedelta | None]: ...

    async def reachable_permission_sets(self, user_id: str) -> list[ReachablePermissionSet]: ...

    # cutting role sessions early and removing access
    async def inline_policy(self, arn: str) -> str: ...

    async def put_inline_policy(self, arn: str, policy: str) -> None: ...

    async def delete_inline_policy(self, arn: str) -> None: ...

    async def provision(self, arn: str) -> str: ...

    async def provisioning_status(self, request_id: str) -> tuple[str, str]: ...

    async def delete_assignment(self, user_id: str, account_id: str, arn: str) -> str: ...

    async def deletion_status(self, request_id: str) -> tuple[str, str]: ...

    async def delete_membership(self, membership_id: str) -> None: ...

    def plan(self, action: str, subject: str) -> list[PlannedCall]: ...
