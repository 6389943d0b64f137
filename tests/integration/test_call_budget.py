"""Call-count ceilings: what one leaver costs each provider, counted by the emulators.

In a mass offboarding the providers' rate limits set the pace, so every call per
person is time: the lookup's read doubles as the read before acting, and a run's
cases share what they can (permission-set durations). Counts, not times."""

from __future__ import annotations

import asyncio

from bench.emulators import PERMISSION_SETS, Organisation
from worker.cases import open_case
from worker.domain import CaseStatus
from worker.runtime import Runtime
from worker.sandbox import Sandbox
from worker.worker import Worker

PEOPLE = 12


async def _offboard_all(runtime: Runtime, logins: list[str]) -> None:
    playbook = runtime.playbook("leaver")
    for login in logins:
        await open_case(runtime, playbook, login, {})
    worker = Worker(runtime)
    worker.concurrency = 8
    async with asyncio.timeout(120):
        while len(await runtime.store.list_cases((CaseStatus.WAITING,))) < len(logins):
            await worker.tick()
            await asyncio.sleep(0.05)
        await worker.join()


async def test_a_leaver_costs_at_most_these_calls(sandbox: Sandbox, runtime: Runtime) -> None:
    org = Organisation(sandbox, seed=3)
    logins = [f"budget{i}@example.com" for i in range(PEOPLE)]
    memberships = sum(org.add_person(login) for login in logins)
    await _offboard_all(runtime, logins)

    calls = sandbox.audit.calls
    per_person = {
        # Okta: one lookup (also the read before acting), deactivate, its read-back,
        # the session revocation and its read-back
        "okta.get_user": 3,
        "okta.deactivate": 1,
        "okta.clear_sessions": 1,
        # Identity Center: GetUserId + DescribeUser (the resolve, before anything
        # changes), the read before acting (after the IdP is confirmed), SCIM PATCH,
        # the read-back, then the countdown's inventory
        "identitystore.GetUserId": 1,
        "identitystore.DescribeUser": 3,
        "scim.patch_user": 1,
        "identitystore.ListGroupMembershipsForMember": 1,
    }
    for endpoint, ceiling in per_person.items():
        assert calls[endpoint] <= ceiling * PEOPLE, (endpoint, calls[endpoint])
        assert calls[endpoint] >= PEOPLE, (endpoint, calls[endpoint])  # each was needed
    # one listing for the user and one for each of their groups (one page each here)
    assert calls["sso-admin.ListAccountAssignmentsForPrincipal"] <= PEOPLE + memberships
    # shared by every case of the run: once per permission set, not once per person
    assert calls["sso-admin.DescribePermissionSet"] <= len(PERMISSION_SETS)
    assert sum(sandbox.audit.throttled.values()) == 0
