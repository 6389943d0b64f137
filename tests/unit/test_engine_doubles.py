"""The engine on the in-memory doubles (worker/testing.py): no HTTP, no files, a
manual clock, so each test runs a whole case in milliseconds.

What is checked here is the engine's own behaviour: the order of the steps as the
providers saw it, what halts a case and what only requeues it, the guard against a
step that keeps crashing, and the countdown inputs it records.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from worker.clock import ManualClock, parse_iso, utc_iso
from worker.domain import Case, CaseStatus, LedgerState, NewCase, StepStatus
from worker.engine import Engine, EngineSettings
from worker.errors import PermanentError, StoreUnavailable, TransientError
from worker.playbook import parse_playbook
from worker.retry import RetryPolicy
from worker.steps import Providers
from worker.store.base import is_milestone
from worker.testing import (
    FakeIdentityCenter,
    FakeIdentityProvider,
    FakeNotifier,
    InMemoryStore,
    ProviderCall,
)

LEAVER = "leaver@example.com"
OPERATOR = "ops@example.com"

#: every phase, each step verified: validated as any playbook file is
PLAYBOOK = parse_playbook(
    """
name: full
steps:
  - {id: idp-deactivate, action: idp.deactivate_user, verify: idp.user_status}
  - {id: idp-sessions, action: idp.revoke_sessions, verify: idp.user_status}
  - id: ic-disable
    action: identity_center.disable_user
    verify: identity_center.user_status
  - id: portal-sessions
    action: identity_center.portal_sessions
    verify: operator.confirmation
  - id: deny-role-sessions
    action: identity_center.deny_role_sessions
    verify: identity_center.deny_provisioned
  - id: remove-access
    action: identity_center.remove_access
    verify: identity_center.access_removed
""",
    "test playbook",
)
STEP_IDS = [s.id for s in PLAYBOOK.steps]

#: the provider calls that change something, and the phase each belongs to
MUTATIONS = {
    "idp.deactivate_user": "idp",
    "idp.revoke_sessions": "idp",
    "identity_center.disable_user": "identity_center",
    "identity_center.merge_deny": "hardening",
    "identity_center.provision": "hardening",
    "identity_center.unassign": "hardening",
    "identity_center.leave_group": "hardening",
}


@dataclass(kw_only=True)
class World:
    """An engine on the doubles, with one leaver seeded in both systems."""

    store: InMemoryStore
    idp: FakeIdentityProvider
    ic: FakeIdentityCenter
    notifier: FakeNotifier
    #: every provider call and notification, in the order they were made
    calls: list[ProviderCall]
    clock: ManualClock
    engine: Engine
    idp_user_id: str
    ic_user_id: str

    def mutations(self) -> list[str]:
        return [c.name for c in self.calls if c.name in MUTATIONS]

    def ic_writes(self) -> list[str]:
        """The calls that changed something in Identity Center (reads are the resolve's)."""
        return [m for m in self.mutations() if m.startswith("identity_center.")]


def build(
    store: InMemoryStore,
    *,
    identity_source: str = "scim",
    max_unexpected_failures: int = 5,
    attempts: int = 3,
) -> World:
    calls: list[ProviderCall] = []
    idp = FakeIdentityProvider(name="okta", calls=calls)
    ic = FakeIdentityCenter(identity_source=identity_source, calls=calls)
    notifier = FakeNotifier(calls=calls)
    idp_user = idp.add_user(LEAVER)
    ic_user = ic.add_user(LEAVER)
    admin = ic.add_permission_set("Admin", timedelta(hours=4))
    reader = ic.add_permission_set("ReadOnly", timedelta(hours=8))
    ic.assign("USER", ic_user.user_id, "111111111111", admin.arn)
    ic.add_membership(ic_user.user_id, "g-engineers")
    ic.assign("GROUP", "g-engineers", "222222222222", reader.arn)
    clock = ManualClock()
    engine = Engine(
        store=store,
        providers=Providers(idp=idp, identity_center=ic),
        clock=clock,
        # a call is tried `attempts` times in-process before the step is requeued
        policy=RetryPolicy(attempts=attempts, initial=0.01, maximum=0.02, give_up_after=60),
        settings=EngineSettings(
            lease_seconds=60,
            verify_timeout=5,
            verify_interval=1,
            requeue_after=30,
            max_unexpected_failures=max_unexpected_failures,
        ),
        notifier=notifier,
        worker_id="w1",
    )
    return World(
        store=store,
        idp=idp,
        ic=ic,
        notifier=notifier,
        calls=calls,
        clock=clock,
        engine=engine,
        idp_user_id=idp_user.id,
        ic_user_id=ic_user.user_id,
    )


@pytest.fixture(autouse=True)
def logs() -> Iterator[list[dict[str, Any]]]:
    """The engine's log lines, captured: kept for assertions, never rendered (a
    rendered traceback costs more than a whole case on the doubles)."""
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as captured:
        yield captured


@pytest.fixture
def store(memory_store: InMemoryStore) -> InMemoryStore:
    return memory_store


@pytest.fixture
def world(store: InMemoryStore) -> World:
    return build(store)


async def open_case(world: World) -> Case:
    case, _ = await world.store.create_case(
        NewCase(
            playbook=PLAYBOOK.name,
            subject=LEAVER,
            steps=PLAYBOOK.steps,
            trigger={"source": "test"},
            priority=PLAYBOOK.priority,
        ),
        world.clock.now(),
    )
    return case


async def run_once(world: World, case_id: str) -> CaseStatus:
    """Claim the case (once it is due) and run it until it stops."""
    case = await world.store.get_case(case_id)
    if case.run_after is not None and case.run_after > world.clock.now():
        world.clock.set(case.run_after)
    claimed = await world.store.claim_case(
        case_id, world.engine.worker_id, world.clock.now(), world.engine.settings.lease_seconds
    )
    assert claimed is not None, f"case {case_id} is not runnable ({case.status})"
    return await world.engine.run_claimed(claimed)


async def confirm(world: World, case_id: str, step_id: str) -> None:
    """An operator confirms the step's task, as `offboard confirm` does."""
    world.clock.advance(60)
    await world.store.confirm_task(case_id, step_id, OPERATOR, world.clock.now())


async def drive(world: World, case_id: str, *, rounds: int = 10) -> list[CaseStatus]:
    """Run the case until it is contained or halted, confirming each operator task."""
    statuses: list[CaseStatus] = []
    for _ in range(rounds):
        status = await run_once(world, case_id)
        statuses.append(status)
        if status is CaseStatus.WAITING:
            (task,) = await world.store.open_tasks_of([case_id])
            await confirm(world, case_id, task.step_id)
        elif status is not CaseStatus.PENDING:
            break
    return statuses


async def step_states(world: World, case_id: str) -> list[StepStatus]:
    return [r.status for r in await world.store.steps(case_id)]


# the order


async def test_steps_run_in_playbook_order_as_the_providers_see_it(world: World) -> None:
    case = await open_case(world)

    statuses = await drive(world, case.id)

    assert statuses == [CaseStatus.WAITING, CaseStatus.CONTAINED]
    assert await step_states(world, case.id) == [StepStatus.DONE] * len(STEP_IDS)
    # each mutation once, the phases in the one safe order
    assert world.mutations() == [
        "idp.deactivate_user",
        "idp.revoke_sessions",
        "identity_center.disable_user",
        "identity_center.merge_deny",
        "identity_center.provision",
        "identity_center.merge_deny",
        "identity_center.provision",
        "identity_center.unassign",
        "identity_center.leave_group",
    ]
    names = [c.name for c in world.calls]
    # the person is resolved in both systems (reads only) before the first change ...
    first_write = next(i for i, n in enumerate(names) if n in MUTATIONS)
    assert {"idp.find_user", "identity_center.find_user_id"} <= set(names[:first_write])
    # ... Identity Center by id alone: its status is read by its own step, after the IdP
    assert "identity_center.get_user" not in names[:first_write]
    # ... and nothing WRITES to Identity Center before the IdP deactivation is read back
    first_ic = next(
        i for i, n in enumerate(names) if n.startswith("identity_center.") and n in MUTATIONS
    )
    assert all(not n.startswith("idp.") for n in names[first_ic:])
    read_back = names.index("idp.get_user", names.index("idp.deactivate_user"))
    assert read_back < first_ic
    # the later steps act on the ids the resolve recorded: no second lookup
    assert names.count("idp.find_user") == names.count("identity_center.find_user_id") == 1
    assert "identity_center.find_user" not in names
    # the Identity Center disable is read back before anything later
    disable = names.index("identity_center.disable_user")
    assert names[disable + 1] == "identity_center.get_user"
    # the timeline: each automated step done in playbook order, the portal task opened
    # between the Identity Center disable and the hardening, and done last, when the
    # operator confirmed (issue 14: the task no longer holds the hardening back)
    events = [(e.kind, e.step_id) for e in await world.store.events(case.id)]
    done = [step for kind, step in events if kind == "step_done"]
    assert done == [s for s in STEP_IDS if s != "portal-sessions"] + ["portal-sessions"]
    assert (
        events.index(("step_done", "ic-disable"))
        < events.index(("operator_task_opened", "portal-sessions"))
        < events.index(("step_started", "deny-role-sessions"))
    )
    assert events[-1] == ("case_contained", None)
    # the fakes' state is the goal, reached
    assert world.idp.users[world.idp_user_id].status == "DEPROVISIONED"
    assert world.idp.users[world.idp_user_id].sessions_revoked == 1
    assert world.ic.users[world.ic_user_id].status == "DISABLED"
    # the user's own assignment and membership are gone; the group's stays (others')
    reader = next(ps for ps in world.ic.permission_sets.values() if ps.name == "ReadOnly")
    assert world.ic.assignments_made == [("GROUP", "g-engineers", "222222222222", reader.arn)]
    assert world.ic.memberships == {}
    # the operator was told about the task, and about nothing else
    assert [n.kind for n in world.notifier.sent] == ["operator_task"]


async def test_stopping_hands_the_case_back_at_a_step_boundary(world: World) -> None:
    case = await open_case(world)
    world.engine.stopping.set()

    assert await run_once(world, case.id) is CaseStatus.PENDING

    assert world.calls == []
    assert await step_states(world, case.id) == [StepStatus.PENDING] * len(STEP_IDS)
    released = await world.store.get_case(case.id)
    assert (released.status, released.lease_owner) == (CaseStatus.PENDING, None)


# what halts, what requeues


@pytest.mark.parametrize(
    ("method", "failed_step"),
    [
        ("idp.deactivate_user", "idp-deactivate"),
        ("idp.revoke_sessions", "idp-sessions"),
        ("identity_center.disable_user", "ic-disable"),
    ],
)
async def test_a_permanent_error_halts_the_case_and_nothing_later_runs(
    world: World, method: str, failed_step: str
) -> None:
    fake = world.idp if method.startswith("idp.") else world.ic
    fake.fail(method.split(".", 1)[1], PermanentError("fake", "403 forbidden", status=403))
    case = await open_case(world)

    assert await run_once(world, case.id) is CaseStatus.HALTED

    index = STEP_IDS.index(failed_step)
    assert await step_states(world, case.id) == (
        [StepStatus.DONE] * index
        + [StepStatus.FAILED]
        + [StepStatus.PENDING] * (len(STEP_IDS) - index - 1)
    )
    halted = await world.store.get_case(case.id)
    assert halted.halt_reason is not None
    assert failed_step in halted.halt_reason and "403 forbidden" in halted.halt_reason
    # the failing call was the last mutation: nothing after it was attempted
    assert world.mutations()[-1] == method
    assert world.mutations().count(method) == 1
    if method.startswith("idp."):
        assert world.ic_writes() == []
    assert await world.store.open_tasks() == []
    assert (await world.store.get_case(case.id)).countdown is None
    assert [n.kind for n in world.notifier.sent] == ["halted"]
    # a halted case waits for a human: no worker claims it
    assert await world.store.claim_next("w2", world.clock.now() + timedelta(days=1), 60) is None


async def test_a_transient_error_requeues_and_never_fails(world: World) -> None:
    attempts = world.engine.policy.attempts
    world.idp.fail("deactivate_user", TransientError("okta", "429 too many requests"), times=None)
    case = await open_case(world)
    rounds = 3 * world.engine.settings.max_unexpected_failures

    for n in range(1, rounds + 1):
        started = world.clock.now()
        assert await run_once(world, case.id) is CaseStatus.PENDING
        requeued = await world.store.get_case(case.id)
        assert requeued.status is CaseStatus.PENDING
        assert requeued.halt_reason is None
        # handed back for later, not failed
        assert requeued.run_after is not None
        assert requeued.run_after >= started + timedelta(seconds=30)
        record = (await world.store.steps(case.id))[STEP_IDS.index("idp-deactivate")]
        assert (record.status, record.attempts) == (StepStatus.RUNNING, n)
        assert record.error is not None and "429" in record.error
        # each round tried the call as often as the retry policy allows, in-process
        assert len(world.idp.called("deactivate_user")) == n * attempts

    kinds = [e.kind for e in await world.store.events(case.id)]
    assert kinds.count("step_deferred") == rounds
    assert "case_halted" not in kinds
    assert world.ic_writes() == []

    world.idp.faults.clear()  # the provider recovers: the case goes on from where it was
    assert await drive(world, case.id) == [CaseStatus.WAITING, CaseStatus.CONTAINED]


async def test_a_step_start_whose_answer_was_lost_names_its_attempt_in_the_log(
    world: World, logs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The start and its step_started event commit together; the answer can be lost on
    # the way back (a database restart). The attempt may be on the timeline then: the
    # log names it, so the worker that made it is known (bench/chaos.py reads both).
    start = world.store.start_step

    async def committed_then_lost(*args: Any) -> Any:
        await start(*args)
        raise StoreUnavailable("PostgreSQL at db is unreachable: connection lost")

    monkeypatch.setattr(world.store, "start_step", committed_then_lost)
    case = await open_case(world)
    with pytest.raises(StoreUnavailable):
        await run_once(world, case.id)
    [event] = [e for e in await world.store.events(case.id) if e.kind == "step_started"]
    unanswered = [line for line in logs if line["event"] == "step_start_unanswered"]
    assert [line["attempt"] for line in unanswered] == [event.data["attempt"]] == [1]


async def test_a_step_done_and_the_next_one_started_are_one_store_write(world: World) -> None:
    case = await open_case(world)
    await drive(world, case.id)

    writes = [
        (c.method, c.args["index"], c.args.get("next_index"))
        for c in world.store.calls
        if c.method in ("start_step", "finish_step", "finish_and_start")
    ]
    resolve, deactivate, sessions, disable, portal = range(5)
    assert STEP_IDS[disable] == "ic-disable" and STEP_IDS[portal] == "portal-sessions"
    # the resolve, the IdP steps: each done in the write that starts the next
    assert writes[:4] == [
        ("start_step", resolve, None),
        ("finish_and_start", resolve, deactivate),
        ("finish_and_start", deactivate, sessions),
        ("finish_and_start", sessions, disable),
    ]
    # the disable's countdown is saved between its finish and the next start
    order = [c.method for c in world.store.calls]
    finished = order.index("finish_step")
    assert writes[4] == ("finish_step", disable, None)
    assert "save_countdown" in order[finished : order.index("start_step", finished)]
    assert writes[5] == ("start_step", portal, None)
    # the timeline reads as before: each step done before the next started
    events = [(e.kind, e.step_id) for e in await world.store.events(case.id)]
    for before, after in itertools.pairwise(STEP_IDS[:4]):
        assert events.index(("step_done", before)) < events.index(("step_started", after))


async def test_a_chained_start_whose_answer_was_lost_names_its_attempt_in_the_log(
    world: World, logs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    chained = world.store.finish_and_start

    async def committed_then_lost(*args: Any, **kwargs: Any) -> Any:
        await chained(*args, **kwargs)
        raise StoreUnavailable("PostgreSQL at db is unreachable: connection lost")

    monkeypatch.setattr(world.store, "finish_and_start", committed_then_lost)
    case = await open_case(world)
    with pytest.raises(StoreUnavailable):
        await run_once(world, case.id)
    started = [e for e in await world.store.events(case.id) if e.kind == "step_started"]
    assert [e.step_id for e in started] == ["resolve", "idp-deactivate"]
    [unanswered] = [line for line in logs if line["event"] == "step_start_unanswered"]
    assert (unanswered["step"], unanswered["attempt"]) == ("idp-deactivate", 1)


@pytest.mark.parametrize("limit", [1, 3, 5])
async def test_the_unexpected_failure_guard_halts_after_max_unexpected_failures(
    store: InMemoryStore, limit: int, logs: list[dict[str, Any]]
) -> None:
    """A step that keeps raising something no one expected (a bug, not a provider's
    answer) is requeued a few times, then halts for a human instead of looping."""
    world = build(store, max_unexpected_failures=limit)
    world.idp.fail("deactivate_user", RuntimeError("boom"), times=None)
    case = await open_case(world)

    statuses = [await run_once(world, case.id) for _ in range(limit)]
    # bounded: without the guard the case would be requeued for ever
    while statuses[-1] is CaseStatus.PENDING and len(statuses) < 3 * limit + 3:
        statuses.append(await run_once(world, case.id))

    assert statuses == [CaseStatus.PENDING] * (limit - 1) + [CaseStatus.HALTED]
    halted = await world.store.get_case(case.id)
    assert halted.halt_reason is not None
    assert "internal error: RuntimeError: boom" in halted.halt_reason
    record = (await world.store.steps(case.id))[STEP_IDS.index("idp-deactivate")]
    assert (record.status, record.attempts) == (StepStatus.FAILED, limit)
    # an unexpected error is not retried in-process: one call per run
    assert len(world.idp.called("deactivate_user")) == limit
    assert world.ic_writes() == []
    # each crash logged with its traceback, for whoever fixes the bug
    crashes = [line for line in logs if line["event"] == "step_crashed"]
    assert len(crashes) == limit
    assert all(line["log_level"] == "error" and line["exc_info"] for line in crashes)


async def test_a_console_disable_that_the_read_back_contradicts_halts(
    store: InMemoryStore,
) -> None:
    """Identity Center's own directory: an operator confirms the console disable, but
    DescribeUser still says ENABLED. Retrying cannot finish a human's work: halt."""
    world = build(store, identity_source="directory")
    case = await open_case(world)

    assert await run_once(world, case.id) is CaseStatus.WAITING
    (task,) = await world.store.open_tasks()
    assert task.step_id == "ic-disable"
    await confirm(world, case.id, "ic-disable")  # ... without disabling the user

    assert await run_once(world, case.id) is CaseStatus.HALTED

    halted = await world.store.get_case(case.id)
    assert halted.halt_reason is not None
    assert "DescribeUser still shows UserStatus ENABLED" in halted.halt_reason
    assert await step_states(world, case.id) == [
        StepStatus.DONE,  # resolve
        StepStatus.DONE,
        StepStatus.DONE,
        StepStatus.FAILED,
        StepStatus.PENDING,
        StepStatus.PENDING,
        StepStatus.PENDING,
    ]
    # never disabled by API, nothing after it ran
    assert world.mutations() == ["idp.deactivate_user", "idp.revoke_sessions"]
    assert await world.store.get_task(case.id, "portal-sessions") is None


async def test_a_console_disable_the_read_back_confirms_goes_on(store: InMemoryStore) -> None:
    world = build(store, identity_source="directory")
    case = await open_case(world)
    assert await run_once(world, case.id) is CaseStatus.WAITING
    world.ic.users[world.ic_user_id].status = "DISABLED"  # the operator did it
    await confirm(world, case.id, "ic-disable")

    assert await drive(world, case.id) == [CaseStatus.WAITING, CaseStatus.CONTAINED]
    ic_step = (await world.store.steps(case.id))[STEP_IDS.index("ic-disable")]
    assert ic_step.evidence["confirmed_by"] == OPERATOR


async def test_a_failed_provisioning_request_halts_the_hardening(world: World) -> None:
    world.ic.request_failure = "account suspended"
    case = await open_case(world)

    # issue 14: the deny runs while the portal task is open, so the first run halts
    # (before, the case waited for the operator first: [WAITING, HALTED])
    assert await drive(world, case.id) == [CaseStatus.HALTED]

    halted = await world.store.get_case(case.id)
    assert halted.halt_reason is not None
    assert "deny-role-sessions" in halted.halt_reason
    assert "account suspended" in halted.halt_reason
    assert (await step_states(world, case.id))[-3:] == [
        StepStatus.WAITING,
        StepStatus.FAILED,
        StepStatus.PENDING,
    ]
    assert "identity_center.unassign" not in world.mutations()
    # the operator task stays open: the portal sessions still need a human
    (task,) = await world.store.open_tasks()
    assert task.step_id == "portal-sessions"


async def test_a_call_applied_before_a_timeout_is_not_repeated_on_the_next_run(
    store: InMemoryStore,
) -> None:
    """The deactivation took effect, then the answer was lost: the next run reads
    first, finds the goal reached, and does not call again (the write-ahead ledger)."""
    world = build(store, attempts=1)
    world.idp.fail("deactivate_user", TransientError("okta", "read timeout"), after=True)
    case = await open_case(world)

    assert await run_once(world, case.id) is CaseStatus.PENDING
    assert world.idp.users[world.idp_user_id].status == "DEPROVISIONED"
    key = f"{case.id}:idp-deactivate:okta.deactivate"
    entry = await world.store.ledger_get(key)
    assert entry is not None and entry.state is LedgerState.INTENT

    assert await drive(world, case.id) == [CaseStatus.WAITING, CaseStatus.CONTAINED]

    assert len(world.idp.called("deactivate_user")) == 1
    evidence = (await world.store.steps(case.id))[STEP_IDS.index("idp-deactivate")].evidence
    assert evidence["acted"] is False
    assert "not repeated" in evidence["note"]
    entry = await world.store.ledger_get(key)
    assert entry is not None and entry.state is LedgerState.APPLIED


# the countdown


async def test_countdown_inputs_are_recorded_from_what_the_providers_said(world: World) -> None:
    case = await open_case(world)

    assert await drive(world, case.id) == [CaseStatus.WAITING, CaseStatus.CONTAINED]

    # recomputed after each step that feeds it, and only after those
    events = [(e.kind, e.step_id) for e in await world.store.events(case.id)]
    after = [events[i - 1][1] for i, (kind, _) in enumerate(events) if kind == "countdown_computed"]
    # (issue 14: the hardening runs while the portal task is open, so the operator's
    # confirmation comes last)
    assert after == ["ic-disable", "deny-role-sessions", "remove-access", "portal-sessions"]

    records = {r.step_id: r for r in await world.store.steps(case.id)}
    contained = await world.store.get_case(case.id)
    assert contained.countdown is not None
    inputs = contained.countdown["inputs"]
    assert inputs["ic_disabled_at"] == records["ic-disable"].evidence["verified_at"]
    assert inputs["portal_revoked_at"] == records["portal-sessions"].evidence["confirmed_at"]
    assert inputs["deny_provisioned_at"] == records["deny-role-sessions"].evidence["provisioned_at"]
    assert inputs["unassigned_at"] == records["remove-access"].evidence["verified_at"]
    # the permission sets the fake holds, as read right after the disable
    reached = {p["name"]: p for p in inputs["permission_sets"]}
    assert set(reached) == {"Admin", "ReadOnly"}
    assert (reached["Admin"]["session_duration"], reached["Admin"]["via"]) == ("PT4H", ["USER"])
    assert (reached["ReadOnly"]["session_duration"], reached["ReadOnly"]["via"]) == (
        "PT8H",
        ["GROUP:g-engineers"],
    )
    assert reached["ReadOnly"]["accounts"] == ["222222222222"]
    # the deny statement went on both sets before they were provisioned
    for arn in world.ic.permission_sets:
        assert "OffboardDeny" in world.ic.provisionings[arn][-1]

    # its milestones are durable timers; the last one closes the case
    milestones = {m["name"]: m["at"] for m in contained.countdown["milestones"]}
    timers = await world.store.timers(case.id)
    assert {t.name: utc_iso(t.due_at) for t in timers if is_milestone(t.name)} == milestones
    # beside them, work timers: a re-read every 5 min until new sessions end, one at
    # it, and the moment the deny may come off (the role bound without it)
    work = {t.name: utc_iso(t.due_at) for t in timers if not is_milestone(t.name)}
    assert work.pop("deny-removable") == contained.countdown["deny_removable_at"]
    assert work.pop("reread-final") == milestones["new-sessions-end"]
    assert len(work) == 11 and all(name.startswith("reread-") for name in work)
    (closing,) = [t for t in timers if t.closes_case]
    assert closing.name == "all-lapsed"
    # never earlier than the disable, nor later than the longest session allows
    disabled_at = parse_iso(inputs["ic_disabled_at"])
    assert disabled_at < closing.due_at <= disabled_at + timedelta(hours=1 + 8 + 1)
    world.clock.set(closing.due_at)
    while await world.store.claim_due_timer("w1", world.clock.now()) is not None:
        pass
    assert (await world.store.get_case(case.id)).status is CaseStatus.ACCESS_LAPSED


async def test_no_countdown_before_identity_center_is_disabled(world: World) -> None:
    world.ic.fail("disable_user", TransientError("scim", "503"), times=None)
    case = await open_case(world)

    assert await run_once(world, case.id) is CaseStatus.PENDING

    assert (await world.store.get_case(case.id)).countdown is None
    assert await world.store.timers(case.id) == []
    assert world.store.calls_to("save_countdown") == []


# issue 14: an operator task never blocks automated containment


def deny_on_every_permission_set(world: World) -> bool:
    return bool(world.ic.permission_sets) and all(
        world.ic.provisionings.get(arn) and "OffboardDeny" in world.ic.provisionings[arn][-1]
        for arn in world.ic.permission_sets
    )


async def test_an_operator_who_never_answers_does_not_hold_back_the_hardening(
    world: World,
) -> None:
    case = await open_case(world)

    # one run, no operator answer: the task is open and every automated step is done
    assert await run_once(world, case.id) is CaseStatus.WAITING

    assert await step_states(world, case.id) == [
        StepStatus.DONE,  # resolve
        StepStatus.DONE,
        StepStatus.DONE,
        StepStatus.DONE,
        StepStatus.WAITING,
        StepStatus.DONE,
        StepStatus.DONE,
    ]
    (task,) = await world.store.open_tasks()
    assert (task.step_id, task.confirmed_at) == ("portal-sessions", None)
    # the deny is provisioned on every reachable permission set, the access removed
    assert deny_on_every_permission_set(world)
    assert world.ic.memberships == {}
    # the order of the mutations holds: IdP, then Identity Center, then the hardening
    phases = [MUTATIONS[name] for name in world.mutations()]
    assert phases == sorted(phases, key=["idp", "identity_center", "hardening"].index)
    assert phases[0] == "idp" and phases[-1] == "hardening"
    # the countdown uses what has been verified so far: no portal revocation yet
    waiting = await world.store.get_case(case.id)
    assert waiting.status is CaseStatus.WAITING
    assert waiting.countdown is not None
    inputs = waiting.countdown["inputs"]
    assert inputs["deny_provisioned_at"] is not None
    assert inputs["unassigned_at"] is not None
    assert inputs["portal_revoked_at"] is None
    # the operator was told at once, once
    assert [n.kind for n in world.notifier.sent] == ["operator_task"]
    kinds = [e.kind for e in await world.store.events(case.id)]
    assert "case_contained" not in kinds

    # a later confirmation contains the case, touching nothing again
    mutations = world.mutations()
    await confirm(world, case.id, "portal-sessions")
    assert await run_once(world, case.id) is CaseStatus.CONTAINED
    assert world.mutations() == mutations
    contained = await world.store.get_case(case.id)
    assert contained.countdown is not None
    assert contained.countdown["inputs"]["portal_revoked_at"] is not None
    assert await world.store.open_tasks() == []


async def test_a_permanent_failure_in_the_deny_halts_and_the_task_stays_open(
    world: World,
) -> None:
    world.ic.fail("merge_deny", PermanentError("fake", "403 forbidden", status=403))
    case = await open_case(world)

    assert await run_once(world, case.id) is CaseStatus.HALTED

    assert await step_states(world, case.id) == [
        StepStatus.DONE,  # resolve
        StepStatus.DONE,
        StepStatus.DONE,
        StepStatus.DONE,
        StepStatus.WAITING,
        StepStatus.FAILED,
        StepStatus.PENDING,
    ]
    halted = await world.store.get_case(case.id)
    assert halted.halt_reason is not None and "deny-role-sessions" in halted.halt_reason
    # nothing after it ran
    assert "identity_center.unassign" not in world.mutations()
    assert "identity_center.leave_group" not in world.mutations()
    (task,) = await world.store.open_tasks()
    assert task.step_id == "portal-sessions"
    assert [n.kind for n in world.notifier.sent] == ["operator_task", "halted"]
    assert await world.store.claim_next("w2", world.clock.now() + timedelta(days=1), 60) is None


async def test_a_resumed_case_goes_on_with_the_automated_steps_while_the_task_is_open(
    world: World,
) -> None:
    """A case handed back after the task opened (a requeue, a restart) goes on with
    the automated steps at once, without opening or announcing the task again."""
    world.ic.fail("merge_deny", TransientError("sso-admin", "503"), times=None)
    case = await open_case(world)

    assert await run_once(world, case.id) is CaseStatus.PENDING
    assert (await step_states(world, case.id))[4] is StepStatus.WAITING
    assert not deny_on_every_permission_set(world)

    world.ic.faults.clear()
    assert await run_once(world, case.id) is CaseStatus.WAITING

    assert deny_on_every_permission_set(world)
    assert world.ic.memberships == {}
    events = [(e.kind, e.step_id) for e in await world.store.events(case.id)]
    assert events.count(("operator_task_opened", "portal-sessions")) == 1
    assert ("step_started", "portal-sessions") in events
    assert events.count(("step_started", "portal-sessions")) == 1
    assert [n.kind for n in world.notifier.sent] == ["operator_task"]

    await confirm(world, case.id, "portal-sessions")
    assert await run_once(world, case.id) is CaseStatus.CONTAINED


async def test_an_operator_confirming_while_the_hardening_runs_is_not_lost(
    world: World,
) -> None:
    """Confirmed while the case still ran (no WAITING case to resume then): the
    release that would hand the case to the operators makes it runnable instead."""
    case = await open_case(world)
    original = world.ic.deny_policy

    async def confirm_meanwhile(*args: Any, **kwargs: Any) -> Any:
        task = await world.store.get_task(case.id, "portal-sessions")
        if task is not None and task.confirmed_at is None:
            await world.store.confirm_task(case.id, "portal-sessions", OPERATOR, world.clock.now())
        return await original(*args, **kwargs)

    world.ic.deny_policy = confirm_meanwhile  # type: ignore[method-assign]

    assert await run_once(world, case.id) is CaseStatus.PENDING
    assert (await world.store.get_case(case.id)).status is CaseStatus.PENDING
    assert await run_once(world, case.id) is CaseStatus.CONTAINED


async def test_a_worker_killed_after_the_task_opened_is_resumed_with_the_hardening(
    world: World,
) -> None:
    """The worker dies in the deny step with the portal task open (the case stays
    RUNNING under its lease); once the lease lapses another worker claims it and runs
    the automated steps at once, although nobody confirmed."""
    case = await open_case(world)
    original = world.ic.deny_policy

    class Killed(BaseException):
        """Not an Exception: nothing in the engine handles it, as with kill -9."""

    async def killed(*args: Any, **kwargs: Any) -> Any:
        raise Killed

    world.ic.deny_policy = killed  # type: ignore[method-assign]
    with pytest.raises(Killed):
        await run_once(world, case.id)
    assert (await world.store.get_case(case.id)).status is CaseStatus.RUNNING
    assert (await step_states(world, case.id))[4:6] == [StepStatus.WAITING, StepStatus.RUNNING]

    world.ic.deny_policy = original  # type: ignore[method-assign]
    world.clock.advance(world.engine.settings.lease_seconds + 1)
    claimed = await world.store.claim_next(world.engine.worker_id, world.clock.now(), 60)
    assert claimed is not None and claimed.id == case.id
    assert await world.engine.run_claimed(claimed) is CaseStatus.WAITING

    assert deny_on_every_permission_set(world)
    assert world.ic.memberships == {}
    assert (await world.store.get_task(case.id, "portal-sessions")) is not None
    assert [n.kind for n in world.notifier.sent] == ["operator_task"]


async def test_confirming_the_task_of_a_halted_case_does_not_run_the_failed_step(
    world: World,
) -> None:
    """`offboard confirm` on a case halted behind its open task records the
    confirmation; the case stays halted until `offboard retry`."""
    from types import SimpleNamespace

    from worker.cases import confirm_task, retry_case

    world.ic.fail("merge_deny", PermanentError("fake", "403 forbidden", status=403))
    case = await open_case(world)
    assert await run_once(world, case.id) is CaseStatus.HALTED
    runtime: Any = SimpleNamespace(store=world.store, clock=world.clock)

    await confirm_task(runtime, case.id, "portal-sessions", OPERATOR)

    assert (await world.store.get_case(case.id)).status is CaseStatus.HALTED
    assert await world.store.claim_next("w2", world.clock.now() + timedelta(days=1), 60) is None
    merges = len(world.ic.called("merge_deny"))
    # the retry runs the failed deny, then finds the task confirmed: contained
    await retry_case(runtime, case.id, OPERATOR)
    assert await run_once(world, case.id) is CaseStatus.CONTAINED
    assert len(world.ic.called("merge_deny")) > merges
