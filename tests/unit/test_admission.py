"""The admission decisions (worker/admission.py), one test per outcome, in milliseconds.

The store is one fixture (a SQLite file in a tmp dir today); any `Store` that passes
the contract suite, the in-memory one included, can take its place there.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from worker.admission import (
    Admissions,
    Admitted,
    Instruction,
    Outcome,
    is_login,
    protected_pattern,
)
from worker.clock import ManualClock
from worker.errors import OffboardError
from worker.intake import Intake
from worker.playbook import Playbook, find_playbook, load_playbook
from worker.store.base import Store
from worker.testing import InMemoryStore

PLAYBOOKS = Path(__file__).resolve().parents[2] / "playbooks"
PROTECTED = ["breakglass-*@example.com"]


@pytest.fixture
def store(memory_store: InMemoryStore) -> Store:
    return memory_store


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def admissions(store: Store, clock: ManualClock) -> Admissions:
    return Admissions(store, clock.now, protected=PROTECTED)


@pytest.fixture
def leaver() -> Playbook:
    return load_playbook(find_playbook("leaver", [PLAYBOOKS]))


def terminate(playbook: Playbook, subject: str = "ann@example.com", **kw: Any) -> Instruction:
    return Instruction(playbook=playbook, subject=subject, trigger={"source": "hris"}, **kw)


def answer(admitted: Admitted) -> dict[str, Any]:
    return {"outcome": admitted.outcome.value}


async def test_a_person_without_an_open_case_gets_a_new_one(
    admissions: Admissions, store: Store, leaver: Playbook
) -> None:
    admitted = await admissions.admit(terminate(leaver, " ann@example.com "))
    assert admitted.outcome is Outcome.CREATED and admitted.created
    assert admitted.case is not None and admitted.case.subject == "ann@example.com"
    assert admitted.case.run_after is None and admitted.delivery is None
    assert [c.id for c in await store.list_cases()] == [admitted.case.id]


async def test_a_second_instruction_joins_the_open_case(
    admissions: Admissions, store: Store, leaver: Playbook
) -> None:
    first = await admissions.admit(terminate(leaver))
    again = await admissions.admit(terminate(leaver))
    assert again.outcome is Outcome.EXISTING and not again.created
    assert again.case is not None and first.case is not None
    assert again.case.id == first.case.id
    assert len(await store.list_cases()) == 1


async def test_a_later_effective_time_moves_a_case_not_started(
    admissions: Admissions, clock: ManualClock, leaver: Playbook
) -> None:
    later = clock.now() + timedelta(days=3)
    first = await admissions.admit(terminate(leaver, effective_at=later))
    assert first.case is not None and first.case.run_after == later
    sooner = later - timedelta(days=2)
    moved = await admissions.admit(terminate(leaver, effective_at=sooner))
    assert moved.outcome is Outcome.RESCHEDULED
    assert moved.case is not None and moved.case.id == first.case.id
    assert moved.case.run_after == sooner


async def test_a_past_effective_time_means_now(
    admissions: Admissions, clock: ManualClock, leaver: Playbook
) -> None:
    past = clock.now() - timedelta(hours=1)
    admitted = await admissions.admit(terminate(leaver, effective_at=past))
    assert admitted.outcome is Outcome.CREATED
    assert admitted.case is not None and admitted.case.run_after is None


async def test_a_key_is_acted_on_once_and_replayed_after(
    admissions: Admissions, store: Store, leaver: Playbook
) -> None:
    first = await admissions.admit(terminate(leaver, key="hook:hr:hris:d-1"), answer)
    assert first.outcome is Outcome.CREATED and first.delivery is not None
    assert first.case is not None and first.delivery.case_id == first.case.id
    assert first.delivery.outcome == {"outcome": "created"}
    replay = await admissions.admit(terminate(leaver, key="hook:hr:hris:d-1"), answer)
    assert replay.outcome is Outcome.REPLAYED and replay.case is None
    assert replay.delivery == first.delivery
    # another delivery for the same person joins, and is recorded as such
    other = await admissions.admit(terminate(leaver, key="hook:hr:hris:d-2"), answer)
    assert other.outcome is Outcome.EXISTING and other.delivery is not None
    assert other.delivery.outcome == {"outcome": "existing"}
    assert len(await store.list_cases()) == 1


async def test_the_webhook_path_commits_through_intake_with_the_same_decisions(
    store: Store, clock: ManualClock, leaver: Playbook
) -> None:
    intake = Intake(store, clock.now)
    admissions = Admissions(store, clock.now, protected=PROTECTED, intake=intake)
    created = await admissions.admit(terminate(leaver, key="k-1"), answer)
    replay = await admissions.admit(terminate(leaver, key="k-1"), answer)
    joined = await admissions.admit(terminate(leaver, key="k-2"), answer)
    await intake.close()
    assert [a.outcome for a in (created, replay, joined)] == [
        Outcome.CREATED,
        Outcome.REPLAYED,
        Outcome.EXISTING,
    ]
    assert created.delivery is not None and created.delivery.outcome == {"outcome": "created"}
    assert replay.delivery == created.delivery
    assert list(intake.groups) == [1, 1, 1]  # the join was decided outside the group commit


async def test_a_case_key_used_before_finds_that_case(
    admissions: Admissions, store: Store, leaver: Playbook
) -> None:
    # a bulk run that crashed after making the case, before recording its delivery
    first = await admissions.admit(terminate(leaver, case_key="bulk:leaver:ann"))
    assert first.case is not None
    await store.cancel_case(first.case.id, first.case.created_at, "finished meanwhile")
    again = await admissions.admit(
        terminate(leaver, key="bulk:leaver:ann", case_key="bulk:leaver:ann")
    )
    assert again.outcome is Outcome.EXISTING
    assert again.case is not None and again.case.id == first.case.id
    assert len(await store.list_cases()) == 1


async def test_a_rescission_cancels_the_case_not_started(
    admissions: Admissions, store: Store, clock: ManualClock, leaver: Playbook
) -> None:
    later = clock.now() + timedelta(days=1)
    made = await admissions.admit(terminate(leaver, effective_at=later))
    trigger = {"source": "hris", "reference": "E-1"}
    gone = await admissions.admit(
        Instruction(playbook=leaver, subject="ann@example.com", trigger=trigger, rescind=True)
    )
    assert gone.outcome is Outcome.CANCELLED
    assert gone.case is not None and made.case is not None and gone.case.id == made.case.id
    case = await store.get_case(made.case.id)
    assert case.halt_reason == "termination rescinded by hris (E-1)"


async def test_a_rescission_with_nothing_open_changes_nothing(
    admissions: Admissions, store: Store, leaver: Playbook
) -> None:
    admitted = await admissions.admit(terminate(leaver, rescind=True, key="r-1"), answer)
    assert admitted.outcome is Outcome.NOTHING_SCHEDULED and admitted.case is None
    # recorded: a repeat of the delivery is a replay
    assert admitted.delivery is not None and admitted.delivery.case_id is None
    assert await store.list_cases() == []


async def test_a_rescission_after_containment_began_is_refused_and_not_recorded(
    admissions: Admissions, store: Store, clock: ManualClock, leaver: Playbook
) -> None:
    made = await admissions.admit(terminate(leaver))
    assert made.case is not None
    assert await store.claim_case(made.case.id, "w-1", clock.now(), 30) is not None
    refused = await admissions.admit(terminate(leaver, rescind=True, key="r-1"), answer)
    assert refused.outcome is Outcome.ALREADY_STARTED and refused.detail
    assert refused.delivery is None and await store.get_delivery("r-1") is None
    assert (await store.get_case(made.case.id)).status.value == "running"


async def test_a_protected_identity_is_refused_and_the_refusal_recorded(
    admissions: Admissions, store: Store, leaver: Playbook
) -> None:
    subject = "Breakglass-Admin@example.com"
    refused = await admissions.admit(terminate(leaver, subject, key="k-1"), answer)
    assert refused.outcome is Outcome.PROTECTED and refused.case is None
    assert "protected identity" in refused.detail and "breakglass-*" in refused.detail
    assert await store.list_cases() == []
    assert await store.get_delivery("k-1") is None
    assert [(r.source, r.subject) for r in await store.refusals()] == [("hris", subject)]


async def test_a_subject_that_is_not_a_login_is_an_error(
    admissions: Admissions, store: Store, leaver: Playbook
) -> None:
    with pytest.raises(OffboardError, match="must be the person's login"):
        await admissions.admit(terminate(leaver, "not an email"))
    assert await store.list_cases() == []


def test_logins_and_protected_patterns() -> None:
    assert is_login("ann@example.com") and not is_login("ann example.com")
    assert not is_login("ann@exa mple.com") and not is_login("a@b@c")
    assert protected_pattern("ROOT@example.com", ["root@example.com"]) == "root@example.com"
    assert protected_pattern("ann@example.com", PROTECTED) is None


def test_the_subject_is_canonicalised_once() -> None:
    from worker.domain import InvalidSubject, canonical_subject, subject_key

    assert canonical_subject("  Bob@Example.com\n") == "Bob@Example.com"
    assert subject_key("Bob@Example.com") == subject_key("bob@example.COM") == "bob@example.com"
    # NFC: a decomposed letter is composed, then refused as not ASCII (IdP logins are ASCII)
    for bad, what in (
        ("jo\u0308rg@example.com", "non-ASCII"),
        ("jörg@example.com", "non-ASCII"),
        ("no-at-sign", "one @"),
        ("a@b@c", "one @"),
        ("a b@example.com", "space"),
        ("", "empty"),
    ):
        with pytest.raises(InvalidSubject, match=what) as caught:
            canonical_subject(bad)
        assert "jörg" not in str(caught.value) and "jo\u0308rg" not in str(caught.value)


def test_protected_identities_match_with_case_and_confusables_folded() -> None:
    from worker.admission import protected_pattern

    patterns = ["breakglass-*@example.com", "root@example.com"]
    for spelling in (
        "ROOT@example.com",
        "r\u043eot@example.com",  # Cyrillic o
        "\u0280oot@example.com".replace("\u0280", "r"),
        "bre\u0430kglass-1@example.com",  # Cyrillic a
        "BRE\u0391KGLASS-1@example.com",  # Greek capital alpha
        "\uff52oot@example.com",  # fullwidth r (NFKC)
    ):
        assert protected_pattern(spelling, patterns) is not None, spelling
    assert protected_pattern("bob@example.com", patterns) is None


async def test_a_date_change_after_containment_began_is_refused_as_a_rescission_is(
    admissions: Admissions, store: Store, clock: ManualClock, leaver: Playbook
) -> None:
    later = clock.now() + timedelta(days=3)
    made = await admissions.admit(terminate(leaver, effective_at=later))
    assert made.case is not None
    clock.advance(timedelta(days=3, seconds=1))  # its time came; a worker began it
    assert await store.claim_case(made.case.id, "w-1", clock.now(), 30) is not None
    moved = terminate(leaver, effective_at=clock.now() + timedelta(days=7), key="d-2")
    refused = await admissions.admit(moved, answer)
    assert refused.outcome is Outcome.ALREADY_STARTED and refused.detail
    assert refused.delivery is None and await store.get_delivery("d-2") is None
    case = await store.get_case(made.case.id)
    assert case.status.value == "running" and case.run_after == later
    # a date that has already come is no change: the running case is joined
    now = await admissions.admit(terminate(leaver, effective_at=clock.now()))
    assert now.outcome is Outcome.EXISTING


async def test_a_move_records_the_delivery_that_made_it(
    admissions: Admissions, store: Store, clock: ManualClock, leaver: Playbook
) -> None:
    later = clock.now() + timedelta(days=3)
    made = await admissions.admit(terminate(leaver, effective_at=later, key="hook:hr:hris:d-1"))
    assert made.case is not None
    moved = Instruction(
        playbook=leaver,
        subject="ann@example.com",
        trigger={"source": "hris", "reference": "E-7"},
        effective_at=later + timedelta(days=1),
        key="hook:hr:hris:d-2",
    )
    assert (await admissions.admit(moved)).outcome is Outcome.RESCHEDULED
    (event,) = [e for e in await store.events(made.case.id) if e.kind == "case_rescheduled"]
    assert event.data["by"] == {
        "source": "hris",
        "reference": "E-7",
        "delivery": "hook:hr:hris:d-2",
    }
