"""The roles a provider can play. The engine and the steps see only these."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from worker.countdown import ReachableApplication, ReachablePermissionSet


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


@dataclass(frozen=True, kw_only=True)
class IdentityCenterMatch:
    """Whom a lookup found, by id alone: their status is read by the step that acts on
    them, after the IdP is confirmed (the resolve needs only who)."""

    user_id: str
    #: how they were found: "userName", "emails.value", "userName, case-insensitively"...
    found_by: str


#: AWS's word for a finished asynchronous sso-admin request, quoted in evidence
REQUEST_SUCCEEDED = "SUCCEEDED"


@dataclass(frozen=True, kw_only=True)
class InlinePolicy:
    """A permission set's inline policy as read, and whether it carries our deny
    statement for one user (the text is the adapter's to interpret)."""

    arn: str
    user_id: str
    text: str
    denies: bool


class IdentityCenter(Protocol):
    #: "scim" (external IdP, disabled by SCIM) or "directory" (console only)
    identity_source: str

    async def find_user(self, user_name: str) -> IdentityCenterUser:
        """`find_user_id`, then the user's state (DescribeUser)."""

    async def find_user_id(self, user_name: str) -> IdentityCenterMatch:
        """The one user this address names (userName, then email, exactly, then any
        case); PermanentError with ResourceNotFoundException when nobody, naming both
        when two match. Reads no status: one request fewer on an incident's path."""

    async def find_user_by_external_id(self, external_id: str) -> IdentityCenterMatch:
        """The one user (by id, as `find_user_id`) whose ExternalIds (set by the IdP's
        SCIM sync: the IdP user's id) hold `external_id`; PermanentError with
        ResourceNotFoundException when none does, naming both when two do."""

    async def get_user(self, user_id: str) -> IdentityCenterUser: ...

    async def disable_user(self, user_id: str) -> None: ...

    async def user_statuses(self, most_pages: int) -> dict[str, str] | None:
        """user id -> UserStatus of every user, listed in at most `most_pages` pages;
        None when the store takes more (the caller reads its users one by one). A user
        missing from the answer is not known to be disabled."""

    def console_user_url(self, user_id: str) -> str: ...

    # the reads that feed the countdown
    async def group_memberships(
        self, user_id: str, *, since: datetime | None = None, run_wide: bool = False
    ) -> list[tuple[str, str]]:
        """(membership id, group id) of the user's groups. `run_wide`: a re-read on the
        shared grid, due at `since`: the answer may come from one listing of every
        group's members sent at or after `since` (as fresh as the user's own listing
        sent then), when that costs fewer requests than the users asking."""

    async def assignments(
        self, principal_type: str, principal_id: str, *, since: datetime | None = None
    ) -> list[tuple[str, str]]:
        """A principal's own account assignments; a GROUP's may come from a read other
        cases made within the shared-read TTL (with `since`: one sent then or later);
        a USER's are always read now."""

    async def permission_set(
        self, arn: str, *, since: datetime | None = None
    ) -> tuple[str, timedelta | None]:
        """(name, session duration), shared as a group's assignments are."""

    async def reachable_permission_sets(
        self,
        user_id: str,
        *,
        since: datetime | None = None,
        groups: Sequence[str] | None = None,
        run_wide: bool = False,
    ) -> list[ReachablePermissionSet]:
        """Every permission set the user reaches, directly and through each group, with
        its session duration; the user's own assignments read now, the groups' and the
        durations possibly shared; `since`: nothing shared that was read before it (the
        countdown's re-reads pass their due time: a duration raised before it is seen);
        `groups`: the user's group ids as the caller just read them (not listed again);
        `run_wide` as for group_memberships: the assignments may come from one listing
        of every (account, permission set) pair sent at or after `since`."""

    async def reachable_applications(
        self, user_id: str, *, since: datetime | None = None, groups: Sequence[str] | None = None
    ) -> list[ReachableApplication]:
        """The applications the user is assigned to (directly and through groups) and
        whether each keeps user background sessions (None: its configuration said
        neither); `since` and `groups` as for reachable_permission_sets."""

    # cutting role sessions early and removing access: typed operations, so no AWS
    # status string or policy JSON leaves the adapter
    async def deny_policy(self, arn: str, user_id: str) -> InlinePolicy: ...

    async def merge_deny(self, current: InlinePolicy) -> None:
        """Put `current` back with our deny statement for its user added (refused over
        AWS's size limit)."""

    async def remove_deny(self, current: InlinePolicy) -> None:
        """Put `current` back without our statement; delete it if nothing is left."""

    async def provision(self, arn: str) -> str: ...

    async def provisioned(self, request_id: str) -> bool:
        """True once provisioning succeeded, False while it runs; a failed one raises
        PermanentError."""

    async def unassign(self, user_id: str, account_id: str, arn: str) -> str | None:
        """Delete one of the user's own assignments: the deletion request, or None if
        the assignment was gone already."""

    async def assignment_deleted(self, request_id: str) -> bool:
        """True once the deletion succeeded, False while it runs; a failed one raises
        PermanentError."""

    async def leave_group(self, membership_id: str) -> None:
        """Delete a group membership; one already gone is left as it is."""

    def plan(self, action: str, subject: str) -> list[PlannedCall]: ...
