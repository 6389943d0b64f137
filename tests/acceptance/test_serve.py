"""End to end: a signed HR webhook to a running `offboard serve` completes the leaver."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from standardwebhooks.webhooks import Webhook

from tests.acceptance import cli
from tests.flows import assert_contained_in_order, delete_portal_sessions
from worker.sandbox import Sandbox, SeededUser

SECRET = "whsec_" + base64.b64encode(b"e2e-secret-key-0123456789abcdef!").decode()
TOKEN = "e2e-api-token-" + "x" * 30


async def _status(http: aiohttp.ClientSession, base: str, case_id: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with http.get(f"{base}/v1/cases/{case_id}", headers=headers) as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


async def _until(http: aiohttp.ClientSession, base: str, case_id: str, status: str) -> None:
    for _ in range(400):
        if (await _status(http, base, case_id))["status"] == status:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"case never reached {status}")


async def test_signed_webhook_to_offboard_serve_completes_the_leaver(
    sandbox: Sandbox, leaver: SeededUser, config_data: dict[str, Any], tmp_path: Path
) -> None:
    config_data["server"] = {
        "port": 0,
        "api_tokens": {"ops": {"env": "E2E_TOKEN"}},
        "hr_sources": {"hris": {"kind": "standard-webhooks", "secrets": [{"env": "E2E_WHSEC"}]}},
    }
    config = cli.write_config(tmp_path / "offboard.yaml", config_data)
    env = cli.environment({**sandbox.environment(), "E2E_TOKEN": TOKEN, "E2E_WHSEC": SECRET})
    serve = await cli.start(["--config", str(config), "serve"], env, tmp_path)
    try:
        assert serve.stdout is not None
        line = (await asyncio.wait_for(serve.stdout.readline(), 30)).decode()
        assert line.startswith("offboard serving on "), line
        base = line.split()[-1]
        body = json.dumps(
            {"type": "employee.terminated", "data": {"email": leaver.login, "hr_reference": "E-9"}}
        )
        now = datetime.now(UTC)
        headers = {
            "Content-Type": "application/json",
            "webhook-id": "msg_e2e_1",
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(SECRET).sign("msg_e2e_1", now, body),
        }
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/v1/hooks/hr/hris", data=body, headers=headers) as r:
                assert r.status == 202, await r.text()
                case_id = (await r.json())["case_id"]
            await _until(http, base, case_id, "waiting")
            await delete_portal_sessions(sandbox, leaver)
            confirm = f"{base}/v1/cases/{case_id}/confirm/portal-sessions"
            async with http.post(confirm, headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                assert r.status == 200
            await _until(http, base, case_id, "contained")
        assert_contained_in_order(sandbox, leaver)
    finally:
        serve.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(serve.communicate(), 30)
    assert serve.returncode == 0, err.decode()
    assert SECRET not in err.decode() and TOKEN not in err.decode()
