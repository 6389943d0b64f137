"""issue 14: the person is resolved in every system before the first change, against
the emulators (Okta and the Identity Center sandbox), whose request logs show what
was called: the resolve step reads only, records the ids the later steps act on, and
an ambiguous Identity Center match halts the case before any provider changed."""

from __future__ import annotations

from typing import Any

import pytest

from worker.cases import drive_case, open_case
from worker.domain import CaseStatus, StepStatus
from worker.runtime import Runtime
from worker.sandbox import Sandbox, SeededUser
from worker.steps import NO_IC_USER

#: every endpoint the emulators count that changes something
READ_PREFIXES = ("Get", "List", "Describe")


def writes(sandbox: Sandbox) -> list[str]:
    """The calls that could change something, by the emulators' request counts."""
    found = []
    for endpoint in sandbox.audit.calls:
        service, _, operation = endpoint.partition(".")
        if service in ("identitystore", "sso-admin") and operation.startswith(READ_PREFIXES):
            continue
        if endpoint in ("okta.get_user", "okta.oauth_token"):
            continue
        found.append(endpoint)
    return found


async def _run(runtime: Runtime, subject: str) -> tuple[str, CaseStatus]:
    case, _ = await open_case(runtime, runtime.playbook("leaver"), subject, {})
    await drive_case(runtime, case.id)
    done = await runtime.store.get_case(case.id)
    return case.id, done.status


async def _evidence(runtime: Runtime, case_id: str, step_id: str) -> dict[str, Any]:
    return next(r for r in await runtime.store.steps(case_id) if r.step_id == step_id).evidence


async def test_the_ids_are_recorded_by_the_resolve_and_acted_on(
    sandbox: Sandbox, runtime: Runtime, leaver: SeededUser
) -> None:
    case_id, status = await _run(runtime, leaver.login.upper())

    assert status is CaseStatus.WAITING
    resolved = await _evidence(runtime, case_id, "resolve")
    assert resolved["idp_user_id"] == leaver.okta_id
    assert resolved["ic_user_id"] == leaver.ic_user_id
    assert (await _evidence(runtime, case_id, "ic-disable"))["ic_user_id"] == leaver.ic_user_id
    # the lookups were made once, by the resolve: the later steps read the recorded ids
    assert sandbox.audit.calls["identitystore.GetUserId"] == 1
    # the resolve finds who, not their state: DescribeUser only around the disable (the
    # read before its PATCH, the read-back)
    assert sandbox.audit.calls["identitystore.DescribeUser"] == 2


@pytest.mark.parametrize(
    ("login", "user_name", "email"),
    [
        # userName in another case than the address
        ("bob@example.com", "Bob@Example.COM", "bob@example.com"),
        # found only by email, in another case
        ("carol@example.com", "carol.c", "Carol@Example.com"),
    ],
)
async def test_an_identity_center_user_spelt_otherwise_is_resolved_and_disabled(
    sandbox: Sandbox, runtime: Runtime, login: str, user_name: str, email: str
) -> None:
    sandbox.okta.add_user(login)
    user = sandbox.identity_center.add_user(user_name, email=email)

    case_id, status = await _run(runtime, login)

    assert status is CaseStatus.WAITING, (await runtime.store.get_case(case_id)).halt_reason
    assert (await _evidence(runtime, case_id, "resolve"))["ic_user_id"] == user
    assert sandbox.identity_center.user_status(user) == "DISABLED"


async def test_an_identity_center_user_found_by_the_externalid_the_scim_sync_set(
    sandbox: Sandbox, runtime: Runtime
) -> None:
    okta_id = sandbox.okta.add_user("dave@example.com")
    dave = sandbox.identity_center.add_user(
        "d.other", email="dave.other@example.org", external_ids=(("okta", okta_id),)
    )

    case_id, status = await _run(runtime, "dave@example.com")

    assert status is CaseStatus.WAITING, (await runtime.store.get_case(case_id)).halt_reason
    resolved = await _evidence(runtime, case_id, "resolve")
    assert resolved["ic_user_id"] == dave
    assert okta_id in resolved["ic_found_by"]
    assert sandbox.identity_center.user_status(dave) == "DISABLED"
    # found by a listing, read by the disable step alone: before its PATCH and after
    assert sandbox.audit.calls["identitystore.DescribeUser"] == 2


async def test_a_person_in_okta_but_not_in_identity_center_is_recorded_not_halted(
    sandbox: Sandbox, runtime: Runtime
) -> None:
    sandbox.okta.add_user("erin@example.com")

    case_id, status = await _run(runtime, "erin@example.com")

    assert status is CaseStatus.CONTAINED, (await runtime.store.get_case(case_id)).halt_reason
    resolved = await _evidence(runtime, case_id, "resolve")
    assert resolved["ic_user_id"] is None and "ListUsers" in resolved["ic_user_absent"]
    ic = await _evidence(runtime, case_id, "ic-disable")
    assert ic["note"] == NO_IC_USER
    assert "no Identity Center user" in ic["verified_by"]
    # Okta was contained; Identity Center saw reads only
    assert sandbox.okta.user_status("erin@example.com") == "DEPROVISIONED"
    assert [w for w in writes(sandbox) if not w.startswith("okta.")] == []


async def test_two_identity_center_matches_halt_before_any_provider_changed(
    sandbox: Sandbox, runtime: Runtime
) -> None:
    sandbox.okta.add_user("frank@example.com")
    one = sandbox.identity_center.add_user("Frank@example.com")
    two = sandbox.identity_center.add_user("FRANK@example.com")

    case_id, status = await _run(runtime, "frank@example.com")

    assert status is CaseStatus.HALTED
    case = await runtime.store.get_case(case_id)
    assert case.halt_reason is not None
    assert "resolve" in case.halt_reason and one in case.halt_reason and two in case.halt_reason
    assert "nothing was changed" in case.halt_reason
    steps = await runtime.store.steps(case_id)
    assert [s.status for s in steps] == [StepStatus.FAILED] + [StepStatus.PENDING] * (
        len(steps) - 1
    )
    # the emulators' logs: no provider was asked to change anything
    assert writes(sandbox) == []
    assert sandbox.audit.entries() == []
    assert sandbox.okta.user_status("frank@example.com") == "ACTIVE"


async def test_a_person_the_idp_does_not_know_halts_before_any_change(
    sandbox: Sandbox, runtime: Runtime
) -> None:
    sandbox.identity_center.add_user("ghost@example.com")

    case_id, status = await _run(runtime, "ghost@example.com")

    assert status is CaseStatus.HALTED
    reason = (await runtime.store.get_case(case_id)).halt_reason
    assert reason is not None and "not found in the identity provider" in reason
    assert "nothing was changed" in reason
    assert writes(sandbox) == []
