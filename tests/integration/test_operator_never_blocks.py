"""Issue 14 on the sandbox: an incident whose operator never answers still cuts role
sessions. The deny is provisioned on every reachable permission set while the
portal-sessions task is open, and in the sandbox's session model the leaver has no
AWS role access from the deny's provisioning plus the propagation margin on."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from tests.flows import CONTAINMENT_ORDER, mutations
from worker.cases import drive_case, open_case
from worker.clock import ManualClock, parse_iso
from worker.domain import CaseStatus, StepStatus
from worker.providers.policy import deny_sid
from worker.runtime import Runtime
from worker.sandbox import Sandbox, SeededUser
from worker.sandbox.sessions import AccessKind, SimulatedLeaver

#: the emulators and the worker share one clock the tests move
pytestmark = pytest.mark.manual_clock


async def test_an_incident_nobody_confirms_cuts_role_sessions(
    runtime: Runtime, sandbox: Sandbox, leaver: SeededUser, clock: ManualClock
) -> None:
    seeded_at = clock.now()
    case, _ = await open_case(runtime, runtime.playbook("incident"), leaver.login, {})
    case = await drive_case(runtime, case.id)

    # waiting on the operator only: the task is open, every automated step done
    assert case.status is CaseStatus.WAITING, case.halt_reason
    steps = {s.step_id: s for s in await runtime.store.steps(case.id)}
    assert steps["portal-sessions"].status is StepStatus.WAITING
    task = await runtime.store.get_task(case.id, "portal-sessions")
    assert task is not None and task.confirmed_at is None
    deny = steps["deny-role-sessions"]
    assert deny.status is StepStatus.DONE
    # the deny on every permission set the person can reach
    countdown = (await runtime.store.get_case(case.id)).countdown
    assert countdown is not None
    reachable = {p["arn"] for p in countdown["inputs"]["permission_sets"]}
    assert reachable and set(deny.evidence["permission_sets"]) == reachable
    for arn in reachable:
        policy = json.loads(sandbox.identity_center.inline_policy(arn))
        assert deny_sid(leaver.ic_user_id) in [s.get("Sid") for s in policy["Statement"]]
    # the order holds: IdP, Identity Center, then the deny; no console work was done
    applied = mutations(sandbox)
    automated = len(CONTAINMENT_ORDER) - 1
    assert applied[:automated] == list(CONTAINMENT_ORDER[:automated])
    assert "console.delete_portal_sessions" not in applied
    assert set(applied[automated:]) == {
        "sso-admin.PutInlinePolicyToPermissionSet",
        "sso-admin.ProvisionPermissionSet",
    }
    # the countdown from what is verified so far: the deny bounds the role sessions
    provisioned = parse_iso(countdown["inputs"]["deny_provisioned_at"])
    assert countdown["inputs"]["portal_revoked_at"] is None
    role_lapse = parse_iso(
        next(m["at"] for m in countdown["milestones"] if m["name"] == "role-sessions-lapse")
    )
    assert role_lapse == provisioned + timedelta(minutes=15)
    # the session model: no AWS role access after the deny plus its propagation margin
    truth = SimulatedLeaver(
        sandbox.identity_center.sessions.fork(), leaver.ic_user_id, step=timedelta(minutes=1)
    ).run(seeded_at, seeded_at + timedelta(hours=16))
    last_role = truth.last(AccessKind.AWS_ACCOUNT)
    assert last_role is None or last_role <= provisioned + timedelta(minutes=15)
