"""Issue 15: incident cases whose people share a permission set merge their deny
statements into one inline policy. The read-merge-put of that policy and its
provisioning take turns, so no revision of the policy ever drops a statement another
case put there; the emulator keeps every revision to show it."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import pytest

from worker.cases import drive_case, open_case
from worker.countdown import ReachablePermissionSet
from worker.domain import CaseStatus
from worker.providers.policy import deny_sid
from worker.runtime import Runtime
from worker.sandbox import Sandbox
from worker.sandbox.common import FaultRule
from worker.steps import cover_with_deny

ACCOUNT = "777788889999"


def sids(policy: str) -> set[str]:
    if not policy:
        return set()
    statements: Any = json.loads(policy).get("Statement", [])
    if isinstance(statements, dict):
        statements = [statements]
    return {s["Sid"] for s in statements if str(s.get("Sid", "")).startswith("OffboardDeny")}


def lost_statements(revisions: list[tuple[int, str]]) -> list[tuple[int, set[str]]]:
    """Each revision that dropped a deny statement the revision before it carried (no
    case in these tests takes one off), with what it dropped."""
    lost = []
    for (_, before), (revision, after) in itertools.pairwise(revisions):
        dropped = sids(before) - sids(after)
        if dropped:
            lost.append((revision, dropped))
    return lost


def seed_sharing(sandbox: Sandbox, people: int) -> tuple[str, list[str]]:
    """`people` users, each assigned one permission set they all share; its arn and
    their Identity Center ids."""
    ic = sandbox.identity_center
    shared = ic.add_permission_set("SharedPowerUser", session_duration="PT8H")
    users = []
    for n in range(people):
        login = f"compromised{n}@example.com"
        sandbox.okta.add_user(login, first_name=f"C{n}", last_name="Person", sessions=1)
        user_id = ic.add_user(login, display_name=f"C{n}", email=login)
        ic.add_account_assignment(
            account_id=ACCOUNT,
            permission_set_arn=shared,
            principal_type="USER",
            principal_id=user_id,
        )
        users.append(user_id)
    return shared, users


def put_arrives_late(sandbox: Sandbox) -> None:
    """Every put arrives a moment after its read: the window a lost update needs."""
    sandbox.faults.add(
        FaultRule(
            endpoint="sso-admin.PutInlinePolicyToPermissionSet",
            kind="latency",
            rate=1.0,
            delay=0.05,
        )
    )


@pytest.mark.parametrize("people", [2, 8])
async def test_concurrent_deny_merges_keep_every_statement_at_every_revision(
    runtime: Runtime, sandbox: Sandbox, people: int
) -> None:
    shared, users = seed_sharing(sandbox, people)
    put_arrives_late(sandbox)
    # a provisioning takes a while, and AWS runs one per account at a time: the next
    # case's answers ConflictException until it ends (waited out, as transient)
    sandbox.identity_center.provisioning_delay = 0.2
    playbook = runtime.playbook("incident")
    ic = runtime.providers.identity_center
    reachable = ReachablePermissionSet(
        arn=shared, name="SharedPowerUser", session_duration=None, accounts=(ACCOUNT,), via=()
    )

    async def deny(n: int, user_id: str) -> None:
        case, _ = await open_case(
            runtime, playbook, f"compromised{n}@example.com", {"source": "test"}
        )
        ledger = runtime.engine.ledger(case.id, "deny-role-sessions")
        await cover_with_deny(ledger, ic, user_id, [reachable])

    # all at once, as a worker with several slots runs them
    await asyncio.gather(*(deny(n, u) for n, u in enumerate(users)))

    revisions = sandbox.identity_center.policy_revisions(shared)
    assert lost_statements(revisions) == []
    assert sids(sandbox.identity_center.inline_policy(shared)) == {deny_sid(u) for u in users}
    # one put per case: nobody had to put theirs again
    assert len(revisions) == people + 1
    # some provisionings were refused while another ran, and waited out
    started = sandbox.audit.entries(action="sso-admin.ProvisionPermissionSet")
    assert sandbox.audit.calls["sso-admin.ProvisionPermissionSet"] > len(started) == people


async def test_concurrent_incidents_never_drop_each_others_deny_statement(
    runtime: Runtime, sandbox: Sandbox
) -> None:
    people = 8
    shared, users = seed_sharing(sandbox, people)
    put_arrives_late(sandbox)
    sandbox.identity_center.provisioning_delay = 0.2
    playbook = runtime.playbook("incident")
    cases = [
        (await open_case(runtime, playbook, f"compromised{n}@example.com", {"source": "test"}))[0]
        for n in range(people)
    ]
    finished = await asyncio.gather(*(drive_case(runtime, c.id) for c in cases))

    revisions = sandbox.identity_center.policy_revisions(shared)
    assert lost_statements(revisions) == []
    assert sids(sandbox.identity_center.inline_policy(shared)) == {deny_sid(u) for u in users}
    # each case's deny step ran once, its statement read back after provisioning
    for case in finished:
        assert case.status is CaseStatus.WAITING  # on the portal-sessions task only
        steps = {s.step_id: s for s in await runtime.store.steps(case.id)}
        assert steps["deny-role-sessions"].attempts == 1
