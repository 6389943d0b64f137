"""issue 15's edges of `offboard serve`, in-process: `Allow` on 405, a declared body over
the limit refused before it is read, replays counted as replayed, `effective_at` only
as an RFC 3339 string, and no address in any 403 detail."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.integration.test_server import (
    API_TOKEN,
    _secrets,  # noqa: F401 (an autouse fixture: the tokens these tests send)
    server_settings,
    signed,
    termination,
)
from worker.config import parse_config
from worker.errors import ConfigError
from worker.runtime import Runtime, open_runtime
from worker.sandbox import SeededUser
from worker.web.app import build_app

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
#: how long a refusal that needs no body may take before the test calls it a hang
HANG = 10


@pytest.fixture
async def served(
    config_data: dict[str, Any], tmp_path: Path
) -> AsyncIterator[tuple[TestClient[web.Request, web.Application], Runtime]]:
    config = parse_config(server_settings(config_data), "test")
    async with open_runtime(config, base_dir=tmp_path) as runtime:
        # no worker: nothing moves a case behind the test's back
        app = build_app(runtime, run_worker=False)
        async with TestClient(TestServer(app)) as http:
            yield http, runtime


Served = tuple[TestClient[web.Request, web.Application], Runtime]


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/v1/cases", {"GET", "HEAD", "POST"}),
        ("PUT", "/v1/hooks/hr/hris", {"POST"}),
        ("POST", "/healthz", {"GET", "HEAD"}),
    ],
)
async def test_a_405_says_which_methods_are_allowed(
    served: Served, method: str, path: str, allowed: set[str]
) -> None:
    http, _ = served
    response = await http.request(method, path, headers=AUTH)
    assert response.status == 405
    assert response.content_type == "application/problem+json"
    assert {m.strip() for m in response.headers["Allow"].split(",")} == allowed


@pytest.mark.parametrize("path", ["/v1/hooks/hr/hris", "/v1/cases"])
async def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(
    served: Served, path: str
) -> None:
    """The headers alone say 1 GB: the answer comes at once, without waiting for it."""
    http, runtime = served
    server = http.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(
            (
                f"POST {path} HTTP/1.1\r\nHost: {server.host}\r\n"
                f"Authorization: Bearer {API_TOKEN}\r\n"
                "Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n{"
            ).encode()
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), HANG)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HANG)
    finally:
        writer.close()
    assert status_line.split()[1] == b"413", status_line
    assert b"application/problem+json" in head
    assert await runtime.store.list_cases() == []


async def test_a_replayed_delivery_is_counted_as_replayed(
    served: Served, leaver: SeededUser
) -> None:
    http, _ = served
    body, headers = signed(termination(leaver.login), msg_id="msg_twice")
    for _ in range(3):
        response = await http.post("/v1/hooks/hr/hris", data=body, headers=headers)
        assert response.status == 202

    exposition = await (await http.get("/metrics")).text()

    counted = {
        outcome: float(value)
        for outcome, value in re.findall(
            r'^offboard_triggers_total\{outcome="([^"]+)",purpose="hr",source="hris"\} (\S+)$',
            _sorted_labels(exposition),
            re.MULTILINE,
        )
    }
    assert counted == {"created": 1.0, "replayed": 2.0}


def _sorted_labels(exposition: str) -> str:
    """The exposition with each sample's labels in name order (prometheus_client keeps
    the declared order; the test should not depend on it)."""

    def sort(match: re.Match[str]) -> str:
        labels = sorted(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2)))
        return match.group(1) + "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}"

    return re.sub(r"^(\w+)\{([^}]*)\}", sort, exposition, flags=re.MULTILINE)


@pytest.mark.parametrize(
    "effective_at",
    [0, 1767225600, 1767225600.5, "1767225600", "2026-01-31", True, "2026-01-31T17:00:00"],
)
async def test_effective_at_is_only_an_rfc_3339_string(served: Served, effective_at: Any) -> None:
    http, runtime = served
    request = {"playbook": "leaver", "subject": "later@example.com", "effective_at": effective_at}

    response = await http.post("/v1/cases", json=request, headers=AUTH)

    assert response.status == 422, await response.text()
    detail = (await response.json())["detail"]
    assert detail.startswith("effective_at: "), detail
    assert await runtime.store.list_cases() == []


async def test_an_rfc_3339_effective_at_is_accepted(served: Served) -> None:
    http, _ = served
    for spelling in ("2099-01-31T17:00:00Z", "2099-01-31t17:00:00.250+02:00"):
        request = {"playbook": "leaver", "subject": "later@example.com", "effective_at": spelling}
        response = await http.post("/v1/cases", json=request, headers=AUTH)
        assert response.status in (200, 201), await response.text()
        assert (await response.json())["scheduled_for"].startswith("2099-01-31T")


async def test_no_403_detail_names_the_address(served: Served) -> None:
    http, _ = served
    for subject in ("root@example.com", "breakglass-7@example.com"):
        api = await http.post(
            "/v1/cases", json={"playbook": "leaver", "subject": subject}, headers=AUTH
        )
        body, headers = signed(termination(subject))
        hook = await http.post("/v1/hooks/hr/hris", data=body, headers=headers)
        for response in (api, hook):
            assert response.status == 403
            problem = await response.json()
            assert subject not in json.dumps(problem), problem


async def test_serve_refuses_an_api_token_shorter_than_the_minimum(
    config_data: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("T_API_TOKEN", "abc")
    config = parse_config(server_settings(config_data), "test")
    async with open_runtime(config, base_dir=tmp_path) as runtime:
        with pytest.raises(ConfigError, match=r"^server\.api_tokens\.ops: .*at least 16") as e:
            build_app(runtime, run_worker=False)
        assert "abc" not in str(e.value).removeprefix("server.api_tokens.ops")
