"""Staying under the providers' limits: a burst of cases against an Identity Center
emulator that enforces its rate like AWS does, and a server's wait shared by all."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from worker.cases import open_case
from worker.config import parse_config
from worker.domain import CaseStatus
from worker.runtime import open_runtime
from worker.sandbox import Sandbox
from worker.sandbox.common import FaultRule, ServiceLimit
from worker.worker import Worker

#: AWS's 20 TPS collective as it is: far below what the worker can do even on a loaded
#: machine, which the control test shows (a higher scale made the pair depend on load)
SCALE = 1
IC_ENDPOINTS = ("identitystore.*", "sso-admin.*", "scim.*")


async def _run_until_all_waiting(runtime: Any, case_ids: list[str], timeout: float) -> None:
    worker = Worker(runtime)
    worker.concurrency = 64
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        await worker.tick()
        # only the unfinished ones: reading every case each time would slow the run itself
        if not await runtime.store.list_cases((CaseStatus.PENDING, CaseStatus.RUNNING)):
            await worker.join()
            statuses = {c.status for c in await runtime.store.list_cases() if c.id in case_ids}
            assert statuses == {CaseStatus.WAITING}, statuses
            return
        await asyncio.sleep(0.1)
    raise AssertionError("cases did not all reach the operator task in time")


@pytest.mark.timeout(300)  # beyond its own 240 s deadline, so that it speaks first
async def test_a_burst_of_100_cases_stays_under_the_identity_center_limit(
    sandbox: Sandbox, config_data: dict[str, Any], tmp_path: Path
) -> None:
    sandbox.faults.limit(
        # AWS does not publish the bucket size; one second of tokens is assumed
        ServiceLimit(endpoints=IC_ENDPOINTS, per_second=20 * SCALE, burst=20 * SCALE)
    )
    config_data["limits"] = {
        "identity_center_per_second": 18 * SCALE,
        "identity_center_burst": 4,
    }
    config = parse_config(config_data, "test")
    sandbox.okta.rate_limit_per_minute = 100_000  # this test is about Identity Center
    users = [sandbox.seed_leaver(f"mass{i:03d}@example.com") for i in range(100)]
    async with open_runtime(config, base_dir=tmp_path) as runtime:
        playbook = runtime.playbook("leaver")
        case_ids = [(await open_case(runtime, playbook, u.login, {}))[0].id for u in users]
        await _run_until_all_waiting(runtime, case_ids, timeout=240)

    ic_calls = sum(
        n
        for e, n in sandbox.audit.calls.items()
        if e.split(".")[0] in ("identitystore", "sso-admin", "scim")
    )
    throttled = sum(sandbox.audit.throttled.values())
    assert ic_calls >= 100 * 7
    print(f"\n100 cases: {ic_calls} Identity Center calls, {throttled} throttled")
    assert throttled / ic_calls < 0.01, f"{throttled} of {ic_calls} throttled"
    assert all(sandbox.identity_center.user_status(u.ic_user_id) == "DISABLED" for u in users)


async def test_control_without_the_client_limit_the_service_throttles(
    sandbox: Sandbox, config_data: dict[str, Any], tmp_path: Path
) -> None:
    """Proves the test above measures the limiter, not a worker too slow to matter."""
    sandbox.faults.limit(
        ServiceLimit(endpoints=IC_ENDPOINTS, per_second=20 * SCALE, burst=20 * SCALE)
    )
    config_data["limits"] = {"identity_center_per_second": 1000, "identity_center_burst": 100}
    sandbox.okta.rate_limit_per_minute = 100_000
    users = [sandbox.seed_leaver(f"ctl{i:03d}@example.com") for i in range(30)]
    async with open_runtime(parse_config(config_data, "test"), base_dir=tmp_path) as runtime:
        playbook = runtime.playbook("leaver")
        for u in users:
            await open_case(runtime, playbook, u.login, {})
        # Only the throttling is the point: without the client limit the retries of 30
        # cases hammering 20 TPS may take long on a loaded machine, so the run is
        # stopped once enough calls were made to judge (or after a fixed time).
        worker = Worker(runtime)
        worker.concurrency = 64
        deadline = asyncio.get_running_loop().time() + 60
        while asyncio.get_running_loop().time() < deadline:
            await worker.tick()
            if not await runtime.store.list_cases((CaseStatus.PENDING, CaseStatus.RUNNING)):
                break
            await asyncio.sleep(0.1)
        worker.grace = 1  # the rest are cancelled: their leases would lapse
        await worker.drain()
    ic_calls = sum(
        n
        for e, n in sandbox.audit.calls.items()
        if e.split(".")[0] in ("identitystore", "sso-admin", "scim")
    )
    assert sum(sandbox.audit.throttled.values()) / ic_calls > 0.01


async def test_a_hinted_wait_is_shared_by_every_case(
    sandbox: Sandbox, config_data: dict[str, Any], tmp_path: Path
) -> None:
    config = parse_config(config_data, "test")
    users = [sandbox.seed_leaver(f"share{i}@example.com") for i in range(20)]
    rule = sandbox.faults.add(
        FaultRule(endpoint="identitystore.GetUserId", kind="throttle", count=1, retry_after=1.0)
    )
    async with open_runtime(config, base_dir=tmp_path) as runtime:
        playbook = runtime.playbook("leaver")
        case_ids = [(await open_case(runtime, playbook, u.login, {}))[0].id for u in users]
        await _run_until_all_waiting(runtime, case_ids, timeout=60)

    assert rule.fired == 1
    ic = [
        (at, ep, out) for at, ep, out in sandbox.audit.requests if ep.startswith("identitystore.")
    ]
    throttled_at = next(at for at, _, out in ic if out == "throttle")
    # requests already in flight may land just after; none may START later within the wait
    later = [at for at, _, _ in ic if at > throttled_at]
    gaps = [(at - throttled_at).total_seconds() for at in later]
    started_during_wait = [g for g in gaps if 0.1 < g < 0.95]
    assert not started_during_wait, f"{len(started_during_wait)} requests ignored the shared wait"
