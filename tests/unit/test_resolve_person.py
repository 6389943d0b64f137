"""issue 14: the right person every time, on the in-memory doubles.

`offboard run incident --user Bob@Example.com` deactivated Bob at the IdP (which matches
case-insensitively), then halted at `ic-disable` because the Identity Center lookup was
case-sensitive: IdP done, Identity Center untouched. A person who has no Identity
Center user at all halted the same way. Here: a different case finds the user; no user
is recorded, with the search, as no AWS access through Identity Center; two users
matching halt naming both, and nothing in Identity Center changes.
"""

from __future__ import annotations

from tests.unit.test_engine_doubles import LEAVER, PLAYBOOK, World, build, drive
from worker.domain import CaseStatus, NewCase
from worker.steps import NO_IC_USER
from worker.testing import InMemoryStore


async def _case(world: World, subject: str) -> str:
    case, _ = await world.store.create_case(
        NewCase(
            playbook=PLAYBOOK.name,
            subject=subject,
            steps=PLAYBOOK.steps,
            trigger={"source": "test"},
            priority=PLAYBOOK.priority,
        ),
        world.clock.now(),
    )
    return case.id


async def _evidence(world: World, case_id: str, step_id: str) -> dict[str, object]:
    return next(r for r in await world.store.steps(case_id) if r.step_id == step_id).evidence


async def test_an_identity_center_user_name_in_another_case_is_found(
    memory_store: InMemoryStore,
) -> None:
    world = build(memory_store)
    world.ic.users[world.ic_user_id].user_name = "Leaver@Example.COM"
    case_id = await _case(world, LEAVER)

    statuses = await drive(world, case_id)

    assert statuses[-1] is CaseStatus.CONTAINED, statuses
    assert world.ic.users[world.ic_user_id].status == "DISABLED"
    assert (await _evidence(world, case_id, "ic-disable"))["ic_user_id"] == world.ic_user_id


async def test_a_person_without_an_identity_center_user_is_not_halted(
    memory_store: InMemoryStore,
) -> None:
    world = build(memory_store)
    del world.ic.users[world.ic_user_id]
    case_id = await _case(world, LEAVER)

    statuses = await drive(world, case_id)

    case = await world.store.get_case(case_id)
    assert statuses[-1] is not CaseStatus.HALTED, (statuses, case.halt_reason)
    assert case.halt_reason is None
    for step_id in ("ic-disable", "portal-sessions", "deny-role-sessions", "remove-access"):
        evidence = await _evidence(world, case_id, step_id)
        assert evidence["note"] == NO_IC_USER, step_id
        assert evidence["ic_user_id"] is None
        assert "no Identity Center user with userName" in str(evidence["verified_by"])
    changed = {c.name for c in world.calls} & {
        "identity_center.disable_user",
        "identity_center.merge_deny",
        "identity_center.provision",
        "identity_center.unassign",
        "identity_center.leave_group",
    }
    assert changed == set()
    assert world.idp.users[world.idp_user_id].status != "ACTIVE"


async def test_two_identity_center_users_matching_halt_naming_both(
    memory_store: InMemoryStore,
) -> None:
    world = build(memory_store)
    world.ic.users[world.ic_user_id].user_name = "Leaver@example.com"
    twin = world.ic.add_user("LEAVER@example.com")
    case_id = await _case(world, LEAVER)

    statuses = await drive(world, case_id)

    case = await world.store.get_case(case_id)
    assert statuses[-1] is CaseStatus.HALTED
    assert case.halt_reason is not None
    assert world.ic_user_id in case.halt_reason and twin.user_id in case.halt_reason
    assert all(u.status == "ENABLED" for u in world.ic.users.values())
    # issue 14: decided at the resolve, before the first change: the IdP is untouched too
    assert "step resolve (person.resolve)" in case.halt_reason
    assert world.mutations() == []
    assert world.idp.users[world.idp_user_id].status == "ACTIVE"


async def test_the_steps_act_on_the_ids_the_resolve_recorded(
    memory_store: InMemoryStore,
) -> None:
    """One lookup per system per case, at the resolve: the later steps act on the
    recorded ids, not on a fresh lookup of the address."""
    world = build(memory_store)
    case_id = await _case(world, LEAVER)

    statuses = await drive(world, case_id)

    assert statuses[-1] is CaseStatus.CONTAINED
    resolved = await _evidence(world, case_id, "resolve")
    assert resolved["idp_user_id"] == world.idp_user_id
    assert resolved["ic_user_id"] == world.ic_user_id
    assert resolved["ic_found_by"] == "userName"
    names = [c.name for c in world.calls]
    assert names.count("idp.find_user") == names.count("identity_center.find_user_id") == 1
    # who, not their state: the Identity Center step reads that after the IdP is confirmed
    assert "identity_center.get_user" not in names[: names.index("idp.deactivate_user")]
    for step_id in ("idp-deactivate", "idp-sessions"):
        assert (await _evidence(world, case_id, step_id))["idp_user_id"] == world.idp_user_id
    assert (await _evidence(world, case_id, "ic-disable"))["ic_user_id"] == world.ic_user_id


async def test_the_idp_not_knowing_the_person_halts_before_any_change(
    memory_store: InMemoryStore,
) -> None:
    world = build(memory_store)
    case_id = await _case(world, "stranger@example.com")

    statuses = await drive(world, case_id)

    case = await world.store.get_case(case_id)
    assert statuses[-1] is CaseStatus.HALTED
    assert case.halt_reason is not None
    assert "not found in the identity provider" in case.halt_reason
    assert world.mutations() == []


async def test_an_identity_center_user_found_by_the_externalid_of_the_idp_user(
    memory_store: InMemoryStore,
) -> None:
    world = build(memory_store)
    user = world.ic.users[world.ic_user_id]
    user.user_name, user.external_ids = "E-10042", (world.idp_user_id,)
    case_id = await _case(world, LEAVER)

    statuses = await drive(world, case_id)

    assert statuses[-1] is CaseStatus.CONTAINED
    resolved = await _evidence(world, case_id, "resolve")
    assert resolved["ic_user_id"] == world.ic_user_id
    assert world.idp_user_id in resolved["ic_found_by"]
    assert user.status == "DISABLED"
