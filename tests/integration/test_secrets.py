"""No secret in a log line, an error or the store, on the happy path and the error paths."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from tests.flows import contain
from worker.cases import drive_case, open_case
from worker.config import parse_config
from worker.logging import configure_logging
from worker.runtime import open_runtime
from worker.sandbox import Sandbox, SeededUser
from worker.sandbox.common import FaultRule


async def test_secrets_never_reach_logs_or_store(
    sandbox: Sandbox, leaver: SeededUser, config_data: dict[str, Any], tmp_path: Path
) -> None:
    captured = io.StringIO()
    configure_logging(level="DEBUG", stream=captured)
    secrets = [
        sandbox.credentials.okta_token,
        sandbox.credentials.scim_token,
        sandbox.credentials.aws_secret_access_key,
    ]
    # error paths too: throttles, resets, 500s, a halted case
    sandbox.faults.add(FaultRule(endpoint="okta.*", kind="throttle", count=2, retry_after=0.05))
    sandbox.faults.add(FaultRule(endpoint="scim.*", kind="error", count=2))
    sandbox.faults.add(FaultRule(endpoint="identitystore.*", kind="reset", count=2))
    try:
        async with open_runtime(parse_config(config_data, "t"), base_dir=tmp_path) as runtime:
            case = await contain(runtime, sandbox, leaver)
            ghost, _ = await open_case(runtime, runtime.playbook("leaver"), "ghost@example.com", {})
            ghost = await drive_case(runtime, ghost.id)
            assert ghost.halt_reason
    finally:
        configure_logging(level="INFO")

    logs = captured.getvalue()
    assert "provider_call_retry" in logs and "case_halted" in logs, "error paths were not logged"
    assert case.id in logs
    store_bytes = b"".join(p.read_bytes() for p in tmp_path.glob("offboard.db*"))
    assert case.id.encode() in store_bytes
    for secret in secrets:
        assert secret not in logs
        assert secret.encode() not in store_bytes


async def test_wrong_token_error_does_not_echo_it(
    sandbox: Sandbox,
    leaver: SeededUser,
    config_data: dict[str, Any],
    tmp_path: Path,
    monkeypatch: Any,
) -> None:
    wrong = "00WRONG-token-value-that-must-not-leak"
    monkeypatch.setenv("OFFBOARD_SANDBOX_OKTA_TOKEN", wrong)
    async with open_runtime(parse_config(config_data, "t"), base_dir=tmp_path) as runtime:
        case, _ = await open_case(runtime, runtime.playbook("leaver"), leaver.login, {})
        case = await drive_case(runtime, case.id)
    assert case.halt_reason is not None and "401" in case.halt_reason
    assert wrong not in case.halt_reason
