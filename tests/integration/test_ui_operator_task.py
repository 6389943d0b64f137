"""Issue 14 on the status page: an open portal-sessions task says it does not wait,
and an incident waiting on it shows its deny already done."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from worker.cases import drive_case, open_case
from worker.config import parse_config
from worker.domain import CaseStatus
from worker.runtime import Runtime, open_runtime
from worker.sandbox import Sandbox
from worker.web.app import build_app

TOKEN = "ui-ops-token-" + "t" * 32


@pytest.fixture
async def served(
    config_data: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[TestClient[web.Request, web.Application], Runtime]]:
    monkeypatch.setenv("T_UI_OPS", TOKEN)
    config_data["server"] = {"api_tokens": {"ops": {"env": "T_UI_OPS"}}}
    config = parse_config(config_data, "ui test")
    async with open_runtime(config, base_dir=tmp_path) as runtime:
        app = build_app(runtime, run_worker=False)
        async with TestClient(TestServer(app)) as http:
            yield http, runtime


async def test_an_open_portal_task_says_it_does_not_wait(
    served: tuple[TestClient[web.Request, web.Application], Runtime], sandbox: Sandbox
) -> None:
    http, runtime = served
    user = sandbox.seed_leaver("incident@example.com")
    case, _ = await open_case(runtime, runtime.playbook("incident"), user.login, {})
    case = await drive_case(runtime, case.id)
    assert case.status is CaseStatus.WAITING
    response = await http.post("/ui/login", data={"token": TOKEN}, allow_redirects=False)
    assert response.status == 303

    page = await (await http.get(f"/ui/cases/{case.id}")).text()

    assert "Confirm portal-sessions" in page
    assert "does not wait: the automated steps after it run without this confirmation" in page
