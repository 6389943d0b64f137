"""Every supported IdP, end to end in the sandbox: the IdP is contained first and
confirmed, then Identity Center, then the portal sessions — under faults too."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import fast_settings
from tests.flows import contain, mutations
from worker.config import parse_config
from worker.domain import CaseStatus, StepStatus
from worker.runtime import open_runtime
from worker.sandbox import IdpName, Sandbox
from worker.sandbox.common import FaultRule

IDP_ORDER = {
    "okta": ("okta.deactivate", "okta.clear_sessions"),
    "entra": ("entra.disable", "entra.revoke_sessions"),
    "google": ("google.suspend", "google.sign_out"),
}
STATUS = {"okta": "DEPROVISIONED", "entra": "disabled", "google": "suspended"}


@pytest.fixture(params=["okta", "entra", "google"])
async def idp_sandbox(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Sandbox]:
    idp: IdpName = request.param
    async with Sandbox(idp=idp) as sb:
        for name, value in sb.environment().items():
            monkeypatch.setenv(name, value)
        yield sb


def _emulator(sandbox: Sandbox) -> Any:
    return {"okta": sandbox.okta, "entra": sandbox.entra, "google": sandbox.google}[sandbox.idp]


@pytest.mark.parametrize("faulty", [False, True], ids=["clean", "faults"])
async def test_each_idp_offboards_end_to_end_in_order(
    idp_sandbox: Sandbox, tmp_path: Path, faulty: bool
) -> None:
    sandbox = idp_sandbox
    user = sandbox.seed_leaver("leaver@example.com")
    if faulty:
        prefix = sandbox.idp
        sandbox.faults.add(
            FaultRule(endpoint=f"{prefix}.*", kind="throttle", count=2, retry_after=0.1)
        )
        sandbox.faults.add(FaultRule(endpoint=f"{prefix}.*", kind="error", status=503, count=2))
        sandbox.faults.add(FaultRule(endpoint=f"{prefix}.*", kind="reset", count=1))
    data: dict[str, Any] = fast_settings(sandbox.config_data(sqlite_path=str(tmp_path / "o.db")))
    async with open_runtime(parse_config(data, "t"), base_dir=tmp_path) as runtime:
        case = await contain(runtime, sandbox, user)
        steps = await runtime.store.steps(case.id)

    assert case.status is CaseStatus.CONTAINED, case.halt_reason
    assert [s.status for s in steps] == [StepStatus.DONE] * 5  # the resolve first
    expected = [*IDP_ORDER[sandbox.idp], "scim.patch_user", "console.delete_portal_sessions"]
    assert [m for m in mutations(sandbox) if m in expected] == expected
    assert _emulator(sandbox).user_status(user.login) == STATUS[sandbox.idp]
    assert _emulator(sandbox).live_sessions(user.login) == 0
    assert sandbox.identity_center.user_status(user.ic_user_id) == "DISABLED"
    assert steps[0].evidence["idp"] == steps[1].evidence["idp"] == sandbox.idp
    assert all(rule.fired for rule in sandbox.faults.rules), "a fault never fired"
