"""The engine against the sandbox over loopback HTTP, through the real adapters."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.flows import assert_contained_in_order, contain, mutations
from worker.cases import drive_case, open_case
from worker.config import parse_config
from worker.domain import CaseStatus, StepStatus
from worker.engine import EngineSettings
from worker.errors import StoreUnavailable
from worker.runtime import Runtime, open_runtime
from worker.sandbox import Sandbox, SeededUser
from worker.sandbox.common import FaultRule


async def test_leaver_contained_in_order_with_evidence(
    runtime: Runtime, sandbox: Sandbox, leaver: SeededUser
) -> None:
    case = await contain(runtime, sandbox, leaver)

    assert case.status is CaseStatus.CONTAINED
    assert_contained_in_order(sandbox, leaver)
    steps = await runtime.store.steps(case.id)
    assert [s.status for s in steps] == [StepStatus.DONE] * 5
    assert "DEPROVISIONED" in steps[1].evidence["verified_by"]
    assert steps[1].evidence["idp_user_id"] == leaver.okta_id
    assert "UserStatus DISABLED" in steps[3].evidence["verified_by"]
    assert steps[4].evidence["confirmed_by"] == "test-operator"
    # the operator task was opened only after the Identity Center disable was verified
    events = await runtime.store.events(case.id)
    kinds = [(e.kind, e.step_id) for e in events]
    assert kinds.index(("step_done", "ic-disable")) < kinds.index(
        ("operator_task_opened", "portal-sessions")
    )
    scim = sandbox.audit.entries(action="scim.patch_user")[0]
    opened = next(e for e in events if e.kind == "operator_task_opened")
    assert scim.at <= opened.at


FAULTS = {
    "okta-429": [FaultRule(endpoint="okta.deactivate", kind="throttle", count=2, retry_after=0.2)],
    "okta-500": [FaultRule(endpoint="okta.*", kind="error", status=500, count=3)],
    "okta-reset": [FaultRule(endpoint="okta.get_user", kind="reset", count=2)],
    "okta-timeout-after-apply": [
        FaultRule(endpoint="okta.deactivate", kind="timeout", delay=1.0, count=1, phase="after")
    ],
    "scim-timeout-after-apply": [
        FaultRule(endpoint="scim.patch_user", kind="timeout", delay=1.0, count=2, phase="after")
    ],
    "identitystore-throttle": [
        FaultRule(endpoint="identitystore.DescribeUser", kind="throttle", count=3, retry_after=0.1)
    ],
    "identitystore-500": [FaultRule(endpoint="identitystore.*", kind="error", count=2)],
    "scim-reset": [FaultRule(endpoint="scim.*", kind="reset", count=2)],
    "everything-at-once": [
        FaultRule(endpoint="*", kind="latency", rate=0.5, delay=0.05),
        FaultRule(endpoint="okta.*", kind="throttle", rate=0.3, retry_after=0.05),
        FaultRule(endpoint="identitystore.*", kind="error", rate=0.3),
        FaultRule(endpoint="scim.*", kind="reset", rate=0.3),
    ],
}


@pytest.mark.parametrize("name", sorted(FAULTS))
async def test_faults_delay_but_never_break_order(
    name: str, runtime: Runtime, sandbox: Sandbox, leaver: SeededUser
) -> None:
    for rule in FAULTS[name]:
        sandbox.faults.add(rule)

    case = await contain(runtime, sandbox, leaver)

    assert case.status is CaseStatus.CONTAINED, case.halt_reason
    assert_contained_in_order(sandbox, leaver)
    assert any(rule.fired for rule in FAULTS[name]), (
        "the fault never fired: the test proves nothing"
    )


async def _gap_after_throttle(sandbox: Sandbox, endpoint: str) -> float:
    requests = [(at, outcome) for at, ep, outcome in sandbox.audit.requests if ep == endpoint]
    throttled = next(i for i, (_, outcome) in enumerate(requests) if outcome == "throttle")
    return (requests[throttled + 1][0] - requests[throttled][0]).total_seconds()


async def test_okta_rate_limit_reset_is_honoured(
    runtime: Runtime, sandbox: Sandbox, leaver: SeededUser
) -> None:
    sandbox.faults.add(
        FaultRule(endpoint="okta.deactivate", kind="throttle", count=1, retry_after=1.2)
    )
    await contain(runtime, sandbox, leaver)
    # X-Rate-Limit-Reset is whole epoch seconds: the wait is at least the hint rounded down
    assert await _gap_after_throttle(sandbox, "okta.deactivate") >= 1.0


async def test_identitystore_retry_after_seconds_is_honoured(
    runtime: Runtime, sandbox: Sandbox, leaver: SeededUser
) -> None:
    sandbox.faults.add(
        FaultRule(endpoint="identitystore.GetUserId", kind="throttle", count=1, retry_after=1.0)
    )
    await contain(runtime, sandbox, leaver)
    assert await _gap_after_throttle(sandbox, "identitystore.GetUserId") >= 1.0


async def test_unknown_user_halts_before_identity_center(
    runtime: Runtime, sandbox: Sandbox
) -> None:
    case, _ = await open_case(runtime, runtime.playbook("leaver"), "ghost@example.com", {})
    case = await drive_case(runtime, case.id)

    assert case.status is CaseStatus.HALTED
    assert case.halt_reason is not None
    assert "no Okta user with login 'ghost@example.com'" in case.halt_reason
    steps = await runtime.store.steps(case.id)
    # halted at the resolve (issue 14), before anything changed anywhere: Identity
    # Center was read (at once with the IdP), never written
    assert [s.status for s in steps] == [StepStatus.FAILED] + [StepStatus.PENDING] * 4
    assert steps[0].step_id == "resolve"
    assert sandbox.audit.calls.get("scim.patch_user", 0) == 0
    assert sandbox.audit.entries() == []


async def test_refused_deactivation_halts_and_nothing_later_runs(
    runtime: Runtime, sandbox: Sandbox, leaver: SeededUser
) -> None:
    sandbox.faults.add(FaultRule(endpoint="okta.deactivate", kind="error", status=403))
    sandbox.faults.rules[-1].rate = 1.0

    case, _ = await open_case(runtime, runtime.playbook("leaver"), leaver.login, {})
    case = await drive_case(runtime, case.id)

    assert case.status is CaseStatus.HALTED
    assert "403" in (case.halt_reason or "")
    assert mutations(sandbox) == []
    assert sandbox.identity_center.user_status(leaver.ic_user_id) == "ENABLED"


async def test_persistent_transient_failure_requeues_not_halts(
    config_data: dict[str, Any], sandbox: Sandbox, leaver: SeededUser, tmp_path: Any
) -> None:
    config_data["retry"] = {"attempts": 2, "initial_seconds": 0.01, "give_up_after_seconds": 1}
    config_data["worker"]["requeue_after_seconds"] = 60
    config = parse_config(config_data, "test")
    rule = sandbox.faults.add(FaultRule(endpoint="scim.patch_user", kind="error", rate=1.0))
    async with open_runtime(config, base_dir=tmp_path) as runtime:
        case, _ = await open_case(runtime, runtime.playbook("leaver"), leaver.login, {})
        claimed = await runtime.store.claim_case(case.id, "w1", runtime.clock.now(), 5)
        assert claimed is not None
        runtime.engine.worker_id = "w1"
        status = await runtime.engine.run_claimed(claimed)

        assert status is CaseStatus.PENDING
        case = await runtime.store.get_case(case.id)
        assert case.run_after is not None and case.run_after > runtime.clock.now()
        steps = await runtime.store.steps(case.id)
        assert steps[3].status is StepStatus.RUNNING
        assert "500" in (steps[3].error or "")
        assert rule.fired == 2
        assert sandbox.identity_center.user_status(leaver.ic_user_id) == "ENABLED"


async def test_directory_source_waits_for_console_disable_then_verifies(
    config_data: dict[str, Any], sandbox: Sandbox, leaver: SeededUser, tmp_path: Any
) -> None:
    from tests.flows import delete_portal_sessions
    from worker.cases import confirm_task, retry_case

    config_data["identity_center"]["identity_source"] = "directory"
    config = parse_config(config_data, "test")
    async with open_runtime(config, base_dir=tmp_path) as runtime:
        case, _ = await open_case(runtime, runtime.playbook("leaver"), leaver.login, {})
        case = await drive_case(runtime, case.id)
        assert case.status is CaseStatus.WAITING
        task = await runtime.store.get_task(case.id, "ic-disable")
        assert task is not None and leaver.ic_user_id in task.console_url

        # confirming without doing the work is caught by read-back
        await confirm_task(runtime, case.id, "ic-disable", "hasty-operator")
        case = await drive_case(runtime, case.id)
        assert case.status is CaseStatus.HALTED
        assert "still shows UserStatus ENABLED" in (case.halt_reason or "")

        # the console disable, then a retry: verified by DescribeUser, and on it goes
        sandbox.identity_center.set_user_status(leaver.ic_user_id, "DISABLED", actor="console")
        await retry_case(runtime, case.id, "careful-operator")
        case = await drive_case(runtime, case.id)
        assert case.status is CaseStatus.WAITING  # now on portal sessions
        await delete_portal_sessions(sandbox, leaver)
        await confirm_task(runtime, case.id, "portal-sessions", "careful-operator")
        case = await drive_case(runtime, case.id)
        assert case.status is CaseStatus.CONTAINED
        steps = await runtime.store.steps(case.id)
        assert "UserStatus DISABLED" in steps[3].evidence["verified_by"]
        assert sandbox.audit.calls.get("scim.patch_user", 0) == 0


async def test_already_contained_user_is_verified_not_mutated_again(
    runtime: Runtime, sandbox: Sandbox, leaver: SeededUser
) -> None:
    first = await contain(runtime, sandbox, leaver)
    before = mutations(sandbox)

    # one open case per person: a second case only with `run --new --reason`
    from tests.flows import delete_portal_sessions
    from worker.admission import Instruction
    from worker.cases import confirm_task, drive_case

    admitted = await runtime.admissions().admit(
        Instruction(
            playbook=runtime.playbook("incident"),
            subject=leaver.login,
            trigger={"source": "test"},
            new_reason="check again",
        )
    )
    assert admitted.case is not None and admitted.case.id != first.id
    second = await drive_case(runtime, admitted.case.id)
    if second.status is CaseStatus.WAITING:
        await delete_portal_sessions(sandbox, leaver)
        await confirm_task(runtime, second.id, "portal-sessions", "test-operator")
        second = await drive_case(runtime, second.id)

    assert second.status is CaseStatus.CONTAINED
    after = mutations(sandbox)[len(before) :]
    # sessions are revoked again (harmless, and a new case must not trust an old one);
    # the deactivation and the disable are read back as done and not repeated
    assert "okta.deactivate" not in after
    assert "scim.patch_user" not in after
    steps = await runtime.store.steps(second.id)
    assert steps[1].evidence["acted"] is False
    assert steps[3].evidence["acted"] is False


async def test_a_confirmation_racing_the_release_is_not_lost(
    runtime: Runtime, sandbox: Sandbox, leaver: SeededUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator confirms after the task opened but before the case was released as
    waiting: found by the chaos harness, where such a case waited forever."""
    from tests.flows import delete_portal_sessions

    store = runtime.store
    real_release = store.release_case

    async def release_after_a_fast_operator(
        case_id: str, worker_id: str, status: Any, now: Any, **kw: Any
    ) -> None:
        if status is CaseStatus.WAITING:
            await delete_portal_sessions(sandbox, leaver)
            await store.confirm_task(case_id, "portal-sessions", "fast-operator", now)
        await real_release(case_id, worker_id, status, now, **kw)

    monkeypatch.setattr(store, "release_case", release_after_a_fast_operator)
    case, _ = await open_case(runtime, runtime.playbook("leaver"), leaver.login, {})
    case = await drive_case(runtime, case.id)

    assert case.status is CaseStatus.CONTAINED
    steps = await runtime.store.steps(case.id)
    assert steps[4].evidence["confirmed_by"] == "fast-operator"


async def test_a_confirmation_whose_answer_was_lost_resumes_the_case_when_repeated(
    runtime: Runtime, sandbox: Sandbox, leaver: SeededUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the chaos harness under PostgreSQL restarts: the confirmation was
    recorded, the answer lost on the way back, and the operator's retry found the task
    confirmed and resumed nothing: the case waited for good."""
    from tests.flows import delete_portal_sessions
    from worker.cases import confirm_task

    case, _ = await open_case(runtime, runtime.playbook("leaver"), leaver.login, {})
    assert (await drive_case(runtime, case.id)).status is CaseStatus.WAITING
    await delete_portal_sessions(sandbox, leaver)
    recorded = runtime.store.confirm_task

    async def recorded_then_lost(*args: Any, **kwargs: Any) -> Any:
        await recorded(*args, **kwargs)
        raise StoreUnavailable("PostgreSQL at db is unreachable: connection lost")

    monkeypatch.setattr(runtime.store, "confirm_task", recorded_then_lost)
    with pytest.raises(StoreUnavailable):
        await confirm_task(runtime, case.id, "portal-sessions", "oncall")
    monkeypatch.undo()

    again = await confirm_task(runtime, case.id, "portal-sessions", "oncall")
    assert again.already
    assert (await drive_case(runtime, case.id)).status is CaseStatus.CONTAINED
    kinds = [e.kind for e in await runtime.store.events(case.id)]
    assert kinds.count("operator_confirmed") == 1


async def test_a_worker_that_lost_its_lease_stops_its_step(
    runtime: Runtime, sandbox: Sandbox, leaver: SeededUser
) -> None:
    """A stalled worker must not run a step beside the worker that took the case over."""
    sandbox.faults.add(FaultRule(endpoint="okta.deactivate", kind="latency", delay=3.0, count=1))
    case, _ = await open_case(runtime, runtime.playbook("leaver"), leaver.login, {})
    claimed = await runtime.store.claim_case(case.id, "stalled", runtime.clock.now(), 5)
    assert claimed is not None
    runtime.engine.worker_id = "stalled"
    runtime.engine.settings = EngineSettings(
        lease_seconds=0.6, verify_timeout=2, verify_interval=0.02
    )
    running = asyncio.create_task(runtime.engine.run_claimed(claimed))
    await asyncio.sleep(0.3)
    # another worker takes the case over (as if the stalled one's lease had lapsed)
    await runtime.store.release_case(case.id, "stalled", CaseStatus.PENDING, runtime.clock.now())
    taken = await runtime.store.claim_case(case.id, "rescuer", runtime.clock.now(), 30)
    assert taken is not None

    status = await asyncio.wait_for(running, 5)

    assert status is CaseStatus.RUNNING  # it gave up; the rescuer owns the case
    assert (await runtime.store.get_case(case.id)).lease_owner == "rescuer"


async def test_shutdown_lets_the_step_in_flight_finish_and_hands_the_case_back(
    runtime: Runtime, sandbox: Sandbox, leaver: SeededUser
) -> None:
    from worker.worker import Worker

    sandbox.faults.add(FaultRule(endpoint="okta.deactivate", kind="latency", delay=0.5, count=1))
    await open_case(runtime, runtime.playbook("leaver"), leaver.login, {})
    worker = Worker(runtime, grace_seconds=10)
    stop = asyncio.Event()
    loop = asyncio.create_task(worker.run(stop))
    for _ in range(500):
        if sandbox.audit.calls.get("okta.deactivate"):
            break
        await asyncio.sleep(0.01)
    stop.set()  # SIGTERM while the deactivation is in flight
    await asyncio.wait_for(loop, 10)

    case = (await runtime.store.list_cases())[0]
    steps = await runtime.store.steps(case.id)
    assert steps[1].status is StepStatus.DONE  # the step in flight finished
    assert steps[2].status is StepStatus.PENDING  # no further step started
    assert case.status is CaseStatus.PENDING and case.lease_owner is None  # retryable at once
    assert mutations(sandbox) == ["okta.deactivate"]


async def test_a_case_committed_while_the_idle_worker_looks_wakes_it(
    runtime: Runtime, leaver: SeededUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wake-up of a case committed between a round that found nothing and the
    idle wait is kept: the worker does not sleep through its poll interval."""
    from worker.worker import Worker

    worker = Worker(runtime)
    worker.poll = 3600.0
    assert await worker.tick() is False  # nothing to do: the worker goes idle
    store = runtime.store
    looked = store.next_timer_due

    async def a_case_arrives_meanwhile() -> Any:
        await open_case(runtime, runtime.playbook("leaver"), leaver.login, {})
        worker.wake.set()  # what the trigger service does after its commit
        return await looked()

    monkeypatch.setattr(store, "next_timer_due", a_case_arrives_meanwhile)
    # with the wake-up lost this waits the whole poll interval, far beyond the bound
    await asyncio.wait_for(worker._idle(asyncio.Event()), 30)
    monkeypatch.setattr(store, "next_timer_due", looked)
    assert await worker.tick() is True  # and the next round takes the case
    await worker.drain()
