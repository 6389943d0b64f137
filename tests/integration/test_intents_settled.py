"""Issue 15: a ledger entry left in intent (a worker stopped between a call and its
record, or a step that will not run again) is settled by reading the provider — on
resume for the case's done steps, and at the latest when the case closes — never left
in intent on a closed case."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.flows import contain, delete_portal_sessions
from worker.cases import confirm_task, drive_case, open_case
from worker.clock import ManualClock
from worker.domain import CaseStatus, LedgerState
from worker.intents import INTENT_SETTLED, settle_intents
from worker.providers.policy import deny_sid
from worker.runtime import Runtime
from worker.sandbox import Sandbox, SeededUser
from worker.worker import Worker

#: the emulators and the worker share one clock the tests move
pytestmark = pytest.mark.manual_clock


async def _left(runtime: Runtime, case_id: str, step: str, name: str) -> str:
    """An entry in intent as a worker killed right after its call would leave it."""
    key = f"{case_id}:{step}:{name}"
    kind = name.split(":", 1)[0]
    await runtime.store.ledger_intent(key, case_id, step, kind, runtime.clock.now())
    return key


def _denied_set(sandbox: Sandbox, leaver: SeededUser) -> str:
    """A set whose inline policy carries the leaver's deny statement."""
    ic = sandbox.identity_center
    return next(
        a for a in ic.permission_set_arns() if deny_sid(leaver.ic_user_id) in ic.inline_policy(a)
    )


def _unreached_set(sandbox: Sandbox) -> str:
    """A permission set nobody is assigned: no statement of anyone's is put there."""
    return sandbox.identity_center.add_permission_set("Unreached", session_duration="PT1H")


async def test_entries_left_in_intent_are_settled_by_reading_the_provider(
    runtime: Runtime, sandbox: Sandbox, leaver: SeededUser
) -> None:
    case = await contain(runtime, sandbox, leaver, playbook="incident")
    arn = _denied_set(sandbox, leaver)
    other = _unreached_set(sandbox)
    # entries of calls outside the steps (a watchdog pass, the deny extended later, the
    # cleanup), each left in intent by a worker killed right after its call
    deactivated = await _left(runtime, case.id, "drift-1", "okta.deactivate")
    disabled = await _left(runtime, case.id, "drift-1", "identity_center.disable")
    denied = await _left(runtime, case.id, "reread-3", f"deny-put:{arn}")
    not_denied = await _left(runtime, case.id, "reread-3", f"deny-put:{other}")
    not_removed = await _left(runtime, case.id, "cleanup", f"deny-remove:{arn}")
    revoked = await _left(runtime, case.id, "drift-1", "okta.revoke_sessions")

    assert await settle_intents(runtime.engine, case, closing=True) == 6

    async def state(key: str) -> LedgerState:
        return (await runtime.store.ledger_get(key)).state

    # the reads show the user deactivated and disabled and the statement in place
    for key in (deactivated, disabled, denied):
        assert await state(key) is LedgerState.APPLIED, key
    # no statement on a set the user does not reach; the removal did not happen
    assert await state(not_denied) is LedgerState.NOT_APPLIED
    assert await state(not_removed) is LedgerState.NOT_APPLIED
    # a revocation: no read can tell
    assert await state(revoked) is LedgerState.UNKNOWN
    assert await runtime.store.ledger_intents(case.id) == []
    events = [e for e in await runtime.store.events(case.id) if e.kind == INTENT_SETTLED]
    assert {e.data["key"] for e in events} == {
        deactivated, disabled, denied, not_denied, not_removed, revoked
    }  # fmt: skip
    assert all(e.data["read"] for e in events)


async def test_a_resumed_case_settles_only_its_done_steps_entries(
    runtime: Runtime, sandbox: Sandbox, leaver: SeededUser
) -> None:
    case = await contain(runtime, sandbox, leaver, playbook="incident")
    other = _unreached_set(sandbox)
    # the deny step is done: its entry for a set found later (the window's extension
    # uses the step's ledger) is settled on resume
    done = await _left(runtime, case.id, "deny-role-sessions", f"deny-put:{other}")
    # not a step of the case (a watchdog pass may still be making it): left alone
    in_flight = await _left(runtime, case.id, "drift-1", "okta.deactivate")

    assert await settle_intents(runtime.engine, case, closing=False) == 1

    assert (await runtime.store.ledger_get(done)).state is LedgerState.NOT_APPLIED
    assert (await runtime.store.ledger_get(in_flight)).state is LedgerState.INTENT


async def test_no_case_closes_with_an_entry_in_intent(
    runtime: Runtime, sandbox: Sandbox, leaver: SeededUser, clock: ManualClock
) -> None:
    """The harness's finding: a ledger entry left in intent on a case that reached
    access_lapsed. The close settles it."""
    case = await contain(runtime, sandbox, leaver, playbook="leaver")
    left = await _left(runtime, case.id, "drift-1", "identity_center.disable")
    worker = Worker(runtime)
    clock.advance(timedelta(hours=14))
    for _ in range(3):
        await worker.tick()
    await worker.settle()

    assert (await runtime.store.get_case(case.id)).status is CaseStatus.ACCESS_LAPSED
    assert await runtime.store.ledger_intents(case.id) == []
    assert (await runtime.store.ledger_get(left)).state is LedgerState.APPLIED


async def test_a_resumed_case_reads_before_its_next_step(
    runtime: Runtime, sandbox: Sandbox, leaver: SeededUser
) -> None:
    """A case resumed (here: the operator confirms the portal task) settles what its
    done steps left in intent by reading, when it runs again."""
    case, _ = await open_case(runtime, runtime.playbook("incident"), leaver.login, {})
    assert (await drive_case(runtime, case.id)).status is CaseStatus.WAITING
    other = _unreached_set(sandbox)
    key = await _left(runtime, case.id, "deny-role-sessions", f"deny-put:{other}")
    await delete_portal_sessions(sandbox, leaver)
    await confirm_task(runtime, case.id, "portal-sessions", "oncall")

    assert (await drive_case(runtime, case.id)).status is CaseStatus.CONTAINED
    assert (await runtime.store.ledger_get(key)).state is LedgerState.NOT_APPLIED
