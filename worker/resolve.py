"""Resolving the person: who they are in every configured system, before anything changes.

A case's first step (the implicit `resolve` step, worker/playbook.py) and the dry run
both call `resolve_person`. It only reads, through the caller's read path (the step's
ledger, or the dry run's retrying reader), and it reads the systems at once so an
incident pays one round trip, not one per system. The ids it finds are recorded in
the case's evidence; the later steps act on those ids, not on a fresh lookup, so an
address spelt differently cannot make one system act on someone else.

Decided here, before any mutation: a person the IdP does not know, or an address that
names two Identity Center users, halts the case (nothing changed, both ids named); a
person with no Identity Center user is recorded with the search, and the Identity
Center steps say "no Identity Center user" instead of halting after the IdP changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from worker.clock import Clock
from worker.errors import PermanentError
from worker.providers.base import (
    IdentityCenter,
    IdentityCenterMatch,
    IdentityProvider,
    IdpUser,
)
from worker.retry import RetryPolicy, with_retry

T = TypeVar("T")

#: AWS's code for a user that is not there (the adapter keeps it on its own message)
IC_NOT_FOUND = "ResourceNotFoundException"


class Reader(Protocol):
    """A read path: one provider call, retried on transient failures, recording
    nothing (`Ledger.call` is one)."""

    async def call(self, operation: str, call: Callable[[], Awaitable[T]]) -> T: ...


@dataclass(frozen=True, kw_only=True)
class RetryingReader:
    """The read path of a process that writes nothing (the dry run): retries only."""

    policy: RetryPolicy
    clock: Clock

    async def call(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        return await with_retry(call, self.policy, self.clock, operation=operation)


@dataclass(frozen=True, kw_only=True)
class Resolution:
    """The person as every system knows them, read before the first change."""

    subject: str
    idp_name: str
    idp_user: IdpUser
    #: None: no Identity Center user (`ic_searched` says where the search looked). By id
    #: alone: their status is read by the Identity Center step, after the IdP is confirmed
    ic_user: IdentityCenterMatch | None
    ic_searched: str | None

    def evidence(self) -> dict[str, Any]:
        """The ids the later steps act on, and the state each system showed."""
        found: dict[str, Any] = {
            "subject": self.subject,
            "idp": self.idp_name,
            "idp_user_id": self.idp_user.id,
            "idp_login": self.idp_user.login,
            "idp_status": self.idp_user.status,
        }
        if self.ic_user is None:
            found |= {"ic_user_id": None, "ic_user_absent": self.ic_searched}
        else:
            found |= {"ic_user_id": self.ic_user.user_id, "ic_found_by": self.ic_user.found_by}
        ic_said = (
            f"Identity Center user {self.ic_user.user_id} (by {self.ic_user.found_by})"
            if self.ic_user is not None
            else f"no Identity Center user ({self.ic_searched})"
        )
        found["verified_by"] = (
            f"{self.idp_name} user {self.idp_user.id} ({self.idp_user.login!r}, "
            f"{self.idp_user.status}); {ic_said}; read only, nothing changed"
        )
        return found


async def resolve_person(
    reader: Reader, idp: IdentityProvider, ic: IdentityCenter, subject: str
) -> Resolution:
    """Find `subject` in the IdP (its login, as the IdP compares it: case-insensitively)
    and in Identity Center (userName, then email, case-insensitively), at once; when
    Identity Center has nobody by address, by the externalId the IdP's SCIM sync sets
    (the IdP user's id). Raises PermanentError, before anything changed, when the IdP
    has no such user or two Identity Center users match."""
    idp_found, ic_found = await asyncio.gather(
        reader.call("idp.find_user", lambda: idp.find_user(subject)),
        reader.call("identitystore.GetUserId", lambda: ic.find_user_id(subject)),
        return_exceptions=True,
    )
    for outcome in (idp_found, ic_found):
        # anything but "not found in Identity Center" decides nothing here: raise it
        if isinstance(outcome, BaseException) and not _ic_absent(outcome, ic_found):
            if outcome is idp_found and isinstance(outcome, PermanentError):
                found = "not found" if outcome.status == 404 else "could not be read"
                raise PermanentError(
                    outcome.provider,
                    f"{subject!r} {found} in the identity provider ({outcome}); "
                    "nothing was changed anywhere",
                    status=outcome.status,
                    code=outcome.code,
                ) from None
            raise outcome
    assert isinstance(idp_found, IdpUser)
    if isinstance(ic_found, IdentityCenterMatch):
        return Resolution(
            subject=subject,
            idp_name=idp.name,
            idp_user=idp_found,
            ic_user=ic_found,
            ic_searched=None,
        )
    assert isinstance(ic_found, PermanentError)
    idp_id = idp_found.id
    try:
        by_external = await reader.call(
            "identitystore.ListUsers(externalId)", lambda: ic.find_user_by_external_id(idp_id)
        )
    except PermanentError as exc:
        if exc.code != IC_NOT_FOUND:
            raise
        return Resolution(
            subject=subject,
            idp_name=idp.name,
            idp_user=idp_found,
            ic_user=None,
            ic_searched=f"{ic_found}; {exc}",
        )
    return Resolution(
        subject=subject,
        idp_name=idp.name,
        idp_user=idp_found,
        ic_user=replace(
            by_external,
            found_by=f"externalId {idp_found.id} (the {idp.name} user id its SCIM sync set)",
        ),
        ic_searched=None,
    )


def _ic_absent(outcome: BaseException, ic_found: object) -> bool:
    return (
        outcome is ic_found and isinstance(outcome, PermanentError) and outcome.code == IC_NOT_FOUND
    )
