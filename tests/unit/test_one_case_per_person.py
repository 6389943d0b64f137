"""Issue 14: one open case per person, whatever arrives — the admission rule itself.

Each path (join, escalate, halted-attach, contained-answer, --new with a reason, a
rescission that must not withdraw an incident, other spellings of the address) on the
in-memory store, unkeyed (CLI, API) and keyed through intake (webhooks, bulk). The
front ends' mapping of these outcomes is in tests/integration/test_one_case_front_ends.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from worker.admission import Admissions, Admitted, Instruction, Outcome
from worker.clock import ManualClock
from worker.domain import Case, CaseStatus, InvalidSubject, StepStatus
from worker.intake import Intake
from worker.notify import RecordingNotifier
from worker.playbook import Playbook, find_playbook, load_playbook
from worker.testing import InMemoryStore

PLAYBOOKS = Path(__file__).resolve().parents[2] / "playbooks"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def notifier() -> RecordingNotifier:
    return RecordingNotifier()


@pytest.fixture
def admissions(
    memory_store: InMemoryStore, clock: ManualClock, notifier: RecordingNotifier
) -> Admissions:
    return Admissions(memory_store, clock.now, protected=[], notifier=notifier)


@pytest.fixture
def webhooks(
    memory_store: InMemoryStore, clock: ManualClock, notifier: RecordingNotifier
) -> Admissions:
    """The server's admission: keyed deliveries committed through intake."""
    intake = Intake(memory_store, clock.now)
    return Admissions(memory_store, clock.now, protected=[], intake=intake, notifier=notifier)


def playbook(name: str) -> Playbook:
    return load_playbook(find_playbook(name, [PLAYBOOKS]))


def trigger(name: str, subject: str, *, key: str | None = None, **kw: Any) -> Instruction:
    return Instruction(
        playbook=playbook(name),
        subject=subject,
        trigger={"source": f"test-{name}", "reference": key or "ref"},
        key=key,
        **kw,
    )


async def in_state(store: InMemoryStore, case: Case, status: CaseStatus) -> Case:
    """The case moved to `status` as a worker would leave it."""
    assert await store.claim_case(case.id, "w1", case.created_at, 30) is not None
    if status is not CaseStatus.RUNNING:
        await store.release_case(case.id, "w1", status, case.created_at)
    return await store.get_case(case.id)


async def opened(
    admissions: Admissions, name: str = "leaver", subject: str = "ann@example.com"
) -> Case:
    admitted = await admissions.admit(trigger(name, subject))
    assert admitted.outcome is Outcome.CREATED and admitted.case is not None
    return admitted.case


def kinds(events: list[Any]) -> list[str]:
    return [e.kind for e in events]


async def test_a_trigger_of_another_playbook_joins_the_open_case_on_its_timeline(
    admissions: Admissions, memory_store: InMemoryStore
) -> None:
    incident = await opened(admissions, "incident")
    joined = await admissions.admit(trigger("leaver", " ANN@Example.COM "))
    assert joined.outcome is Outcome.EXISTING
    assert joined.case is not None and joined.case.id == incident.id
    assert len(await memory_store.list_cases()) == 1
    event = (await memory_store.events(incident.id))[-1]
    assert event.kind == "trigger_joined"
    assert event.data == {
        "source": "test-leaver",
        "reference": "ref",
        "playbook": "leaver",
        "kind": "terminate",
    }


@pytest.mark.parametrize("status", [CaseStatus.PENDING, CaseStatus.WAITING, CaseStatus.CONTAINED])
async def test_an_incident_escalates_an_open_leaver_case_in_place(
    admissions: Admissions,
    memory_store: InMemoryStore,
    notifier: RecordingNotifier,
    status: CaseStatus,
) -> None:
    leaver = await in_state(memory_store, await opened(admissions), status)
    admitted = await admissions.admit(trigger("incident", "Ann@example.com"))

    assert admitted.outcome is Outcome.ESCALATED
    case = admitted.case
    assert case is not None and case.id == leaver.id
    assert len(await memory_store.list_cases()) == 1
    # the incident's steps it lacked, appended in playbook order; priority raised
    incident = playbook("incident")
    assert [s.id for s in case.steps] == [s.id for s in incident.steps]
    assert case.priority == incident.priority > leaver.priority
    # runnable at once, a contained or waiting case too: a worker picks it up now
    assert case.status is CaseStatus.PENDING and case.run_after is None
    steps = await memory_store.steps(case.id)
    assert (steps[-1].step_id, steps[-1].status) == ("deny-role-sessions", StepStatus.PENDING)
    event = (await memory_store.events(case.id))[-1]
    assert event.kind == "case_escalated"
    assert event.data["steps_added"] == ["deny-role-sessions"]
    assert event.data["playbook"] == "incident" and event.data["from_priority"] == 50
    assert [(n.kind, n.case_id) for n in notifier.sent] == [("case_escalated", case.id)]
    # it jumps the queue: claimed before an older normal case
    other = await opened(admissions, subject="other@example.com")
    claimed = await memory_store.claim_next("w2", case.updated_at, 30)
    assert claimed is not None and claimed.id == case.id != other.id


async def test_an_incident_escalates_a_scheduled_leaver_case_to_now(
    admissions: Admissions, memory_store: InMemoryStore, clock: ManualClock
) -> None:
    from datetime import timedelta

    future = await admissions.admit(
        trigger("leaver", "ann@example.com", effective_at=clock.now() + timedelta(days=3))
    )
    assert future.case is not None and future.case.run_after is not None
    admitted = await admissions.admit(trigger("incident", "ann@example.com"))
    assert admitted.outcome is Outcome.ESCALATED
    assert admitted.case is not None and admitted.case.run_after is None


async def test_a_trigger_for_a_halted_case_attaches_and_notifies(
    admissions: Admissions, memory_store: InMemoryStore, notifier: RecordingNotifier
) -> None:
    halted = await in_state(memory_store, await opened(admissions), CaseStatus.HALTED)
    for name in ("leaver", "incident"):
        admitted = await admissions.admit(trigger(name, "ANN@example.com"))
        assert admitted.outcome is Outcome.ATTACHED
        assert admitted.case is not None and admitted.case.id == halted.id
    assert len(await memory_store.list_cases()) == 1
    events = await memory_store.events(halted.id)
    assert kinds(events)[-2:] == ["trigger_attached", "trigger_attached"]
    assert (await memory_store.get_case(halted.id)).status is CaseStatus.HALTED
    assert [n.kind for n in notifier.sent] == ["trigger_attached", "trigger_attached"]


async def test_a_contained_case_answers_and_new_needs_a_reason(
    admissions: Admissions, memory_store: InMemoryStore
) -> None:
    contained = await in_state(memory_store, await opened(admissions), CaseStatus.CONTAINED)
    again = await admissions.admit(trigger("leaver", "ann@EXAMPLE.com"))
    assert again.outcome is Outcome.CONTAINED
    assert again.case is not None and again.case.id == contained.id
    assert kinds(await memory_store.events(contained.id))[-1] == "trigger_joined"
    assert len(await memory_store.list_cases()) == 1
    # run --new --reason: a new case beside it, the reason recorded
    new = await admissions.admit(
        trigger("leaver", "ann@example.com", new_reason="re-hired and left again")
    )
    assert new.outcome is Outcome.CREATED and new.case is not None
    assert new.case.id != contained.id
    assert new.case.trigger["new_reason"] == "re-hired and left again"
    # the new case is now the person's open one: --new again only joins it
    third = await admissions.admit(trigger("leaver", "ann@example.com", new_reason="again"))
    assert third.outcome is Outcome.EXISTING and third.case is not None
    assert third.case.id == new.case.id


async def test_a_rescission_does_not_withdraw_an_incident(
    admissions: Admissions, memory_store: InMemoryStore
) -> None:
    incident = await opened(admissions, "incident")
    rescinded = await admissions.admit(trigger("leaver", "ann@example.com", rescind=True))
    assert rescinded.outcome is Outcome.ALREADY_STARTED and "incident" in rescinded.detail
    assert (await memory_store.get_case(incident.id)).status is CaseStatus.PENDING


async def test_another_spelling_is_the_same_person_and_a_look_alike_is_refused(
    admissions: Admissions, memory_store: InMemoryStore
) -> None:
    case = await opened(admissions)
    for spelling in ("ANN@EXAMPLE.COM", "  Ann@Example.com\t", "ann@example.com"):
        admitted = await admissions.admit(trigger("leaver", spelling))
        assert admitted.case is not None and admitted.case.id == case.id
    # Unicode spellings (full-width, a combining mark) cannot be a login: a 4xx, no case
    for spelling in ("\uff41nn@example.com", "a\u0301nn@example.com", "ann@ex\u0430mple.com"):
        with pytest.raises(InvalidSubject):
            await admissions.admit(trigger("incident", spelling))
    assert [c.id for c in await memory_store.list_cases()] == [case.id]


async def test_webhooks_through_intake_join_escalate_and_attach(
    webhooks: Admissions, memory_store: InMemoryStore
) -> None:
    def answer(admitted: Admitted) -> dict[str, Any]:
        return {"outcome": admitted.outcome.value}

    first = await webhooks.admit(trigger("leaver", "ann@example.com", key="hook:1"), answer)
    assert first.outcome is Outcome.CREATED and first.case is not None
    joined = await webhooks.admit(trigger("leaver", "Ann@Example.com", key="hook:2"), answer)
    assert joined.outcome is Outcome.EXISTING and joined.delivery is not None
    assert joined.delivery.outcome == {"outcome": "existing"}
    escalated = await webhooks.admit(trigger("incident", "ANN@example.com", key="hook:3"), answer)
    assert escalated.outcome is Outcome.ESCALATED and escalated.case is not None
    assert escalated.case.id == first.case.id
    replay = await webhooks.admit(trigger("incident", "ann@example.com", key="hook:3"), answer)
    assert replay.outcome is Outcome.REPLAYED
    assert replay.delivery is not None and replay.delivery.outcome == {"outcome": "escalated"}
    await in_state(memory_store, escalated.case, CaseStatus.HALTED)
    attached = await webhooks.admit(trigger("incident", "ann@example.com", key="hook:4"), answer)
    assert attached.outcome is Outcome.ATTACHED
    assert len(await memory_store.list_cases()) == 1
