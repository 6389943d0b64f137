"""kill -9 in the middle of a case: the case survives, resumes, and no mutation that
was applied is applied again (the emulators' audit log is the witness)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance import cli
from tests.flows import CONTAINMENT_ORDER, delete_portal_sessions, mutations
from worker.sandbox import Sandbox, SeededUser
from worker.sandbox.common import FaultRule


async def _wait_for_mutation(sandbox: Sandbox, action: str, process: Any) -> None:
    for _ in range(400):
        if sandbox.audit.entries(action=action):
            return
        if process.returncode is not None:
            out, err = await process.communicate()
            raise AssertionError(f"worker ended before {action}: {out.decode()}{err.decode()}")
        await asyncio.sleep(0.025)
    raise AssertionError(f"{action} never happened")


@pytest.mark.parametrize(
    "kill_after", ["okta.deactivate", "okta.clear_sessions", "scim.patch_user"]
)
async def test_sigkill_mid_case_resumes_without_repeating_mutations(
    kill_after: str,
    sandbox: Sandbox,
    leaver: SeededUser,
    config_data: dict[str, Any],
    tmp_path: Path,
) -> None:
    config_data["worker"]["lease_seconds"] = 1.5
    for section in (config_data["idp"]["okta"], config_data["identity_center"]["scim"]):
        section["timeout_seconds"] = 20
    config = cli.write_config(tmp_path / "offboard.yaml", config_data)
    env = cli.environment(sandbox.environment())
    # The call is applied, then its answer hangs: the worker dies between the
    # mutation and the ledger's "applied" record, the hardest moment to recover from.
    sandbox.faults.add(
        FaultRule(endpoint=kill_after, kind="timeout", delay=30, count=1, phase="after")
    )
    args = ["--config", str(config), "run", "leaver", "--user", leaver.login]

    first = await cli.start(args, env, tmp_path)
    await _wait_for_mutation(sandbox, kill_after, first)
    first.send_signal(signal.SIGKILL)
    await first.wait()
    assert first.returncode == -signal.SIGKILL

    second = await cli.run(args, env, tmp_path)
    assert second.returncode == cli_waiting(), second.stdout + second.stderr
    assert "resuming case" in second.stdout
    case_id = second.stdout.split("resuming case ")[1].split()[0]

    await delete_portal_sessions(sandbox, leaver)
    confirmed = await cli.run(
        ["--config", str(config), "confirm", case_id, "portal-sessions", "--by", "op"],
        env,
        tmp_path,
    )
    assert confirmed.returncode == 0, confirmed.stdout + confirmed.stderr
    assert "status CONTAINED" in confirmed.stdout

    applied = [a for a in mutations(sandbox) if a in CONTAINMENT_ORDER]
    if kill_after == "okta.clear_sessions":
        # Session revocation is idempotent and was never confirmed before the kill:
        # it may run once more, but only in its place in the order.
        assert applied in (
            list(CONTAINMENT_ORDER),
            [CONTAINMENT_ORDER[0], CONTAINMENT_ORDER[1], *CONTAINMENT_ORDER[1:]],
        )
    else:
        assert applied == list(CONTAINMENT_ORDER)
        # not even a call that would have been refused or changed nothing: after the
        # restart the worker read the state back and saw the effect
        assert sandbox.audit.calls[kill_after] == 1
    assert sandbox.identity_center.user_status(leaver.ic_user_id) == "DISABLED"


def cli_waiting() -> int:
    from worker.cli import EXIT_WAITING

    return EXIT_WAITING
