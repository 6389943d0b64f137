"""Steps the tests take again and again: run a case to its end, play the operator,
and read the order of mutations from the emulators' audit log."""

from __future__ import annotations

import aiohttp
import pytest

from worker.cases import confirm_task, drive_case, open_case
from worker.domain import Case, CaseStatus
from worker.errors import PermanentError, TransientError
from worker.providers.base import IdentityProvider
from worker.runtime import Runtime
from worker.sandbox import Sandbox, SeededUser
from worker.sandbox.common import FaultPlan, FaultRule

#: the mutations of a leaver case, in the only order the invariant allows
CONTAINMENT_ORDER = (
    "okta.deactivate",
    "okta.clear_sessions",
    "scim.patch_user",
    "console.delete_portal_sessions",
)


async def delete_portal_sessions(sandbox: Sandbox, user: SeededUser) -> int:
    """What the operator does in the console (the sandbox exposes it as an endpoint)."""
    url = f"{sandbox.identity_center_url}/_console/users/{user.ic_user_id}/portal-sessions"
    async with aiohttp.ClientSession() as http, http.delete(url) as response:
        response.raise_for_status()
        return int((await response.json())["deleted"])


async def contain(
    runtime: Runtime, sandbox: Sandbox, user: SeededUser, playbook: str = "leaver"
) -> Case:
    """Run a case; when it waits for the portal-session task, do it and confirm."""
    case, _ = await open_case(runtime, runtime.playbook(playbook), user.login, {"source": "test"})
    case = await drive_case(runtime, case.id)
    if case.status is CaseStatus.WAITING:
        await delete_portal_sessions(sandbox, user)
        await confirm_task(runtime, case.id, "portal-sessions", "test-operator")
        case = await drive_case(runtime, case.id)
    return case


def mutations(sandbox: Sandbox, target: str | None = None) -> list[str]:
    """Applied mutations in order; a SCIM PATCH that changed nothing is not one."""
    return [
        e.action
        for e in sandbox.audit.entries(target=target)
        if not (e.action == "scim.patch_user" and e.detail.get("changed") is False)
    ]


def assert_contained_in_order(sandbox: Sandbox, user: SeededUser) -> None:
    seen = [a for a in mutations(sandbox) if a in CONTAINMENT_ORDER]
    assert seen == list(CONTAINMENT_ORDER), f"mutations out of order or repeated: {seen}"
    assert sandbox.okta.user_status(user.login) == "DEPROVISIONED"
    assert sandbox.okta.live_sessions(user.login) == 0
    assert sandbox.identity_center.user_status(user.ic_user_id) == "DISABLED"
    assert sandbox.identity_center.portal_sessions(user.ic_user_id) == []


async def idp_repertoire(
    idp: IdentityProvider, faults: FaultPlan, subject: str, *, read: str, revoke: str
) -> None:
    """Every call the worker makes of an IdP, with a throttle on the first read (the
    emulator's `read` endpoint) and a 503 on the first revocation (`revoke`): each
    transient, then done; an unknown user is permanent."""
    faults.add(FaultRule(endpoint=read, kind="throttle", count=1))
    faults.add(FaultRule(endpoint=revoke, kind="error", count=1, status=503))
    with pytest.raises(TransientError):
        await idp.find_user(subject)
    found = await idp.find_user(subject)
    await idp.deactivate_user(found.id)
    await idp.get_user(found.id)
    with pytest.raises(TransientError):
        await idp.revoke_sessions(found.id)
    await idp.revoke_sessions(found.id)
    with pytest.raises(PermanentError):
        await idp.find_user("nobody@example.com")
