"""The roles a provider can play. The engine and the steps see only these."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


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

    def plan(self, action: str, subject: str) -> list[PlannedCall]: ...
