"""Every HTTP exchange an emulator answers, kept for a check against a vendor's definition.

`recorder(into)` is an aiohttp middleware that keeps each request (method, raw path,
query, body) with the answer it got (status, headers, body). `record_emulator`
installs it in every app an emulator class builds from then on, so the exchanges of
adapters, engine runs and the sandbox are all seen, however the test starts them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import pytest
from aiohttp import web
from multidict import CIMultiDict

from worker.sandbox.common import Handler


@dataclass(frozen=True)
class WireExchange:
    method: str
    #: the path as sent (percent-encoding and all), without the query
    raw_path: str
    query: tuple[tuple[str, str], ...]
    request_headers: Mapping[str, str]
    request_body: bytes
    status: int
    response_headers: Mapping[str, str]
    response_body: bytes

    @property
    def path(self) -> str:
        return unquote(self.raw_path)

    def request_json(self) -> Any:
        return json.loads(self.request_body) if self.request_body else None

    def response_json(self) -> Any:
        return json.loads(self.response_body) if self.response_body else None

    def form(self) -> dict[str, str]:
        from urllib.parse import parse_qsl

        return dict(parse_qsl(self.request_body.decode()))


def recorder(into: list[WireExchange]) -> Callable[[web.Request, Handler], Any]:
    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        body = await request.read()
        try:
            response = await handler(request)
        except web.HTTPException as raised:  # aiohttp's own answers (404, 405) count too
            response = raised
            _keep(into, request, body, response)
            raise
        _keep(into, request, body, response)
        return response

    return record


def _keep(
    into: list[WireExchange], request: web.Request, body: bytes, response: web.StreamResponse
) -> None:
    answered = response.body if isinstance(response, web.Response) else b""
    into.append(
        WireExchange(
            method=request.method,
            raw_path=request.raw_path.partition("?")[0],
            query=tuple(request.query.items()),
            request_headers=CIMultiDict(request.headers),
            request_body=body,
            status=response.status,
            response_headers=CIMultiDict(response.headers),
            response_body=answered if isinstance(answered, bytes) else b"",
        )
    )


def record_emulator(monkeypatch: pytest.MonkeyPatch, emulator: type[Any]) -> list[WireExchange]:
    """From now on, every app `emulator` builds keeps its exchanges in the list returned."""
    seen: list[WireExchange] = []
    build = emulator.app

    def app(self: Any) -> web.Application:
        built: web.Application = build(self)
        built.middlewares.insert(0, recorder(seen))
        return built

    monkeypatch.setattr(emulator, "app", app)
    return seen


def conformance(seen: list[WireExchange], check: Callable[[WireExchange], list[str]]) -> list[str]:
    """Every problem a vendor's definition finds in the exchanges, one line each."""
    return [
        f"{e.method} {e.raw_path} -> {e.status}: {problem}" for e in seen for problem in check(e)
    ]
