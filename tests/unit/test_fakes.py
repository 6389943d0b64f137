"""The fake providers of worker/testing.py: state, call log and faults as promised,
so that a test on them fails for the engine's reasons, not the fakes'."""

from __future__ import annotations

from datetime import timedelta

import pytest

from worker.errors import PermanentError, TransientError
from worker.notify import Notification
from worker.testing import (
    FakeIdentityCenter,
    FakeIdentityProvider,
    FakeNotifier,
    ProviderCall,
)


async def test_calls_are_logged_in_order_across_the_fakes_sharing_a_log() -> None:
    calls: list[ProviderCall] = []
    idp = FakeIdentityProvider(calls=calls)
    ic = FakeIdentityCenter(calls=calls)
    notifier = FakeNotifier(calls=calls)
    user = idp.add_user("ada@example.com")
    ic_user = ic.add_user("ada@example.com")

    await idp.deactivate_user(user.id)
    await ic.disable_user(ic_user.user_id)
    await notifier.notify(Notification(kind="halted", case_id="c-1", subject="ada", title="t"))
    await idp.get_user(user.id)

    assert [c.name for c in calls] == [
        "idp.deactivate_user",
        "identity_center.disable_user",
        "notifier.notify",
        "idp.get_user",
    ]
    assert calls[0].args == (user.id,)
    assert idp.called("get_user") == [calls[3]]
    assert idp.users[user.id].status == "DEPROVISIONED"
    assert (await ic.get_user(ic_user.user_id)).disabled
    assert [n.kind for n in notifier.sent] == ["halted"]


async def test_a_fault_strikes_the_chosen_calls_only() -> None:
    idp = FakeIdentityProvider()
    user = idp.add_user("ada@example.com")
    fault = idp.fail("get_user", TransientError("okta", "429"), skip=1, times=2)

    outcomes = []
    for _ in range(5):
        try:
            await idp.get_user(user.id)
            outcomes.append("ok")
        except TransientError:
            outcomes.append("429")

    assert outcomes == ["ok", "429", "429", "ok", "ok"]
    assert (fault.seen, fault.fired) == (5, 2)
    assert len(idp.called("get_user")) == 5  # a failed call was still made


async def test_a_fault_before_the_call_changes_nothing_one_after_it_does() -> None:
    idp = FakeIdentityProvider()
    before = idp.add_user("before@example.com")
    after = idp.add_user("after@example.com")
    idp.fail("deactivate_user", PermanentError("okta", "403"))
    with pytest.raises(PermanentError):
        await idp.deactivate_user(before.id)
    assert idp.users[before.id].status == "ACTIVE"

    idp.fail("deactivate_user", TransientError("okta", "timeout"), after=True)
    with pytest.raises(TransientError):
        await idp.deactivate_user(after.id)
    assert idp.users[after.id].status == "DEPROVISIONED"


async def test_a_fault_for_ever_and_an_unknown_method() -> None:
    ic = FakeIdentityCenter()
    user = ic.add_user("ada@example.com")
    ic.fail("disable_user", TransientError("scim", "503"), times=None)
    for _ in range(10):
        with pytest.raises(TransientError):
            await ic.disable_user(user.user_id)
    assert ic.users[user.user_id].status == "ENABLED"
    with pytest.raises(ValueError, match="no method"):
        ic.fail("disable_everyone", RuntimeError())


async def test_identity_center_state_answers_as_the_adapter_would() -> None:
    ic = FakeIdentityCenter()
    user = ic.add_user("ada@example.com")
    admin = ic.add_permission_set("Admin", timedelta(hours=4))
    unknown = ic.add_permission_set("Legacy", None)
    ic.assign("USER", user.user_id, "111", admin.arn)
    ic.assign("GROUP", "g-1", "222", admin.arn)
    ic.assign("GROUP", "g-1", "333", unknown.arn)
    membership = ic.add_membership(user.user_id, "g-1")

    reached = {p.name: p for p in await ic.reachable_permission_sets(user.user_id)}
    assert reached["Admin"].accounts == ("111", "222")
    assert reached["Admin"].via == ("GROUP:g-1", "USER")
    assert reached["Admin"].session_duration == timedelta(hours=4)
    assert reached["Legacy"].session_duration is None

    request = await ic.unassign(user.user_id, "111", admin.arn)
    assert request is not None
    assert await ic.assignment_deleted(request)
    assert await ic.assignments("USER", user.user_id) == []
    assert await ic.unassign(user.user_id, "111", admin.arn) is None  # gone already
    await ic.leave_group(membership)
    assert await ic.group_memberships(user.user_id) == []
    await ic.leave_group(membership)  # a membership gone already is left as it is

    policy = await ic.deny_policy(admin.arn, user.user_id)
    assert not policy.denies
    await ic.merge_deny(policy)
    assert (await ic.deny_policy(admin.arn, user.user_id)).denies
    ic.request_failure = "throttled"
    request = await ic.provision(admin.arn)
    with pytest.raises(PermanentError, match="throttled"):
        await ic.provisioned(request)
    assert "OffboardDeny" in ic.provisionings[admin.arn][0]
    await ic.remove_deny(await ic.deny_policy(admin.arn, user.user_id))
    assert admin.arn not in ic.policies


async def test_unknown_people_are_permanent_errors() -> None:
    with pytest.raises(PermanentError, match="no user with login"):
        await FakeIdentityProvider().find_user("ghost@example.com")
    with pytest.raises(PermanentError, match="no Identity Center user"):
        await FakeIdentityCenter().find_user("ghost@example.com")
    directory = FakeIdentityCenter(identity_source="directory")
    user = directory.add_user("ada@example.com")
    with pytest.raises(PermanentError, match="console"):
        await directory.disable_user(user.user_id)
