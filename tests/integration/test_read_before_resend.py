"""Issue 15: a mutation that applied but failed on the way back (an "after" fault) is
sent again only when a read shows it did not apply; where no read can tell (a session
revocation) it is sent again and the evidence says so. Nothing below the ledger (the
HTTP client) re-sends one on its own."""

from __future__ import annotations

import pytest

from tests.flows import assert_contained_in_order, contain
from worker.domain import CaseStatus
from worker.runtime import Runtime
from worker.sandbox import Sandbox, SeededUser
from worker.sandbox.common import FaultRule

AFTER_FAULTS = {
    "reset": {"kind": "reset"},
    "timeout": {"kind": "timeout", "delay": 1.0},
    "error": {"kind": "error", "status": 502},
}

#: (the emulator's endpoint, the step that sends it)
READABLE = [("okta.deactivate", "idp-deactivate"), ("scim.patch_user", "ic-disable")]


@pytest.mark.parametrize("fault", sorted(AFTER_FAULTS))
@pytest.mark.parametrize(("endpoint", "step"), READABLE)
async def test_a_mutation_that_applied_is_not_sent_again(
    runtime: Runtime, sandbox: Sandbox, leaver: SeededUser, endpoint: str, step: str, fault: str
) -> None:
    rule = FaultRule(endpoint=endpoint, count=1, phase="after", **AFTER_FAULTS[fault])  # type: ignore[arg-type]
    sandbox.faults.add(rule)

    case = await contain(runtime, sandbox, leaver)

    assert rule.fired == 1
    assert case.status is CaseStatus.CONTAINED, case.halt_reason
    assert_contained_in_order(sandbox, leaver)
    sent = [at for at, ep, _ in sandbox.audit.requests if ep == endpoint]
    assert len(sent) == 1, f"{endpoint} sent {len(sent)} times"
    evidence = {s.step_id: s.evidence for s in await runtime.store.steps(case.id)}[step]
    assert "a read showed it had taken effect; not sent again" in evidence["note"]


@pytest.mark.parametrize("fault", sorted(AFTER_FAULTS))
async def test_a_revocation_no_read_can_confirm_is_sent_again_and_said_so(
    runtime: Runtime, sandbox: Sandbox, leaver: SeededUser, fault: str
) -> None:
    rule = FaultRule(
        endpoint="okta.clear_sessions",
        count=1,
        phase="after",
        **AFTER_FAULTS[fault],  # type: ignore[arg-type]
    )
    sandbox.faults.add(rule)

    case = await contain(runtime, sandbox, leaver)

    assert rule.fired == 1
    assert case.status is CaseStatus.CONTAINED, case.halt_reason
    sent = [at for at, ep, _ in sandbox.audit.requests if ep == "okta.clear_sessions"]
    evidence = {s.step_id: s.evidence for s in await runtime.store.steps(case.id)}["idp-sessions"]
    # every send after the first is in the evidence, with why it was made blind
    assert len(sent) == 2
    assert evidence["sent_again"] == 1
    assert "no read can tell" in evidence["sent_again_why"]
    # and in the timeline, written before the send went out
    again = [e for e in await runtime.store.events(case.id) if e.kind == "mutation_sent_again"]
    assert [e.data["operation"] for e in again] == ["okta.revoke_sessions"]
