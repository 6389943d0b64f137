"""Okta's published Management API spec, loaded once, and checks of real exchanges against it.

The spec is OpenAPI 3.0.3 but does not pass strict spec validation, so spec validation
is off; request and response validation still work. The spec's server is
`https://{yourOktaDomain}`, so requests are presented to the validator on an Okta host.
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from jsonschema_path import SchemaPath
from multidict import CIMultiDictProxy
from openapi_core import Config, OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from openapi_core.validation.response.exceptions import MissingData
from openapi_core.validation.schemas import oas30_read_schema_validators_factory

#: $OKTA_SPEC, or ../shared/reference/ beside the repository root (never an absolute path)
SPEC_PATH = Path(
    os.environ.get("OKTA_SPEC")
    or Path(__file__).resolve().parents[2] / "shared" / "reference" / "okta-management-openapi.yaml"
)
SPEC_HOST = "https://example.okta.com"


@dataclass(frozen=True)
class Exchange:
    """One real HTTP exchange with the emulator, also in openapi-core's terms."""

    request: MockRequest
    response: MockResponse
    status: int
    headers: CIMultiDictProxy[str]
    body: Any  # the parsed JSON, or None for an empty body


class OktaSpec:
    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.path = SchemaPath.from_dict(raw)
        self.api = OpenAPI(self.path, config=Config(spec_validator_cls=None))
        # Okta's Error schema requires nothing; its errors always carry all five fields.
        self._error = oas30_read_schema_validators_factory.create(
            self.path,
            self.path / "components" / "schemas" / "Error",
            enforce_properties_required=True,
        )

    def request_errors(self, exchange: Exchange) -> list[Exception]:
        with warnings.catch_warnings():
            # Without an apiKey, openapi-core tries the spec's alternative, oauth2, which
            # it cannot check: it warns and lets it pass.
            warnings.filterwarnings("ignore", "Unsupported scheme type", UserWarning)
            return list(self.api.iter_request_errors(exchange.request))

    def response_errors(self, exchange: Exchange) -> list[Exception]:
        return self.errors_for(exchange.request, exchange.response)

    def errors_for(self, request: MockRequest, response: MockResponse) -> list[Exception]:
        errors = list(self.api.iter_response_errors(request, response))
        if response.status_code == 204 and not response.data:
            # Okta's 204s say `content: {}`; openapi-core reads that as "a body is required"
            errors = [e for e in errors if not isinstance(e, MissingData)]
        return errors

    def error_body_errors(self, body: Any) -> list[Exception]:
        """Errors of a body against the Error schema, every property required."""
        try:
            self._error.validate(body)
        except Exception as exc:
            return [exc]
        return []

    def example(self, name: str) -> dict[str, Any]:
        value: dict[str, Any] = self.raw["components"]["examples"][name]["value"]
        return value


@functools.cache
def load_okta_spec() -> OktaSpec:
    if not SPEC_PATH.exists():
        pytest.fail(
            f"Okta's spec is not at {SPEC_PATH}: "
            "../shared must sit beside the project (or set OKTA_SPEC)"
        )
    with SPEC_PATH.open("rb") as f:
        # the C loader takes ~2 s on this 3 MB file, the pure-Python one ~10 s
        raw = yaml.load(f, Loader=yaml.CSafeLoader)
    return OktaSpec(raw)


async def call(
    session: aiohttp.ClientSession,
    method: str,
    path: str,
    *,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Exchange:
    """Make a real request and keep it, and its answer, for the validator."""
    async with session.request(method, path, params=params, headers=headers) as resp:
        data = await resp.read()
        body = await resp.json() if data else None
        response = MockResponse(
            data,
            status_code=resp.status,
            headers=dict(resp.headers),
            content_type=resp.headers.get("Content-Type", "").lower(),
        )
        request = MockRequest(
            SPEC_HOST, method, path, args=params, headers=headers, content_type=""
        )
        return Exchange(request, response, resp.status, resp.headers, body)
