"""Google's own definition of the Admin SDK Directory API, and checks of real exchanges
against it — as `tests/okta_spec.py` does for Okta.

The definition is the discovery document `google-api-python-client` ships
(`discovery_cache/documents/admin.directory_v1.json`): every method's verb, path
template, parameters and request/response schemas. Errors are read the way Google's
own client reads them (`googleapiclient.errors.HttpError`, and
`googleapiclient.http._should_retry_response` decides what is a throttle), and the
token endpoint's answers the way `google-auth` reads them (`google.oauth2._client`).
A check returns the list of what is wrong, empty when the exchange is Google's.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import googleapiclient
import httplib2
import pytest
from google.auth import exceptions as auth_exceptions
from google.oauth2 import _client as google_oauth
from googleapiclient.errors import HttpError
from googleapiclient.http import _should_retry_response

from tests.wire import WireExchange, conformance, record_emulator
from worker.sandbox.google import GoogleWorkspaceEmulator

DOCUMENT = (
    Path(googleapiclient.__file__).parent
    / "discovery_cache"
    / "documents"
    / "admin.directory_v1.json"
)
#: the emulator's token endpoint (the key file names Google's token_uri; tests post here)
TOKEN_PATH = "/token"
#: the sandbox's own administration routes: not Google's API
SANDBOX_PREFIX = "/_sandbox/"


@dataclass(frozen=True)
class Method:
    id: str
    http_method: str
    path: str
    pattern: re.Pattern[str]
    parameters: dict[str, Any]
    request: str | None
    response: str | None


def _pattern(template: str) -> re.Pattern[str]:
    """`admin/directory/v1/users/{userKey}` -> a regex over the percent-decoded path;
    `{+name}` (reserved expansion) may hold slashes, `{name}` may not."""
    parts = re.split(r"(\{\+?[^}]+\})", template)
    regex = "".join(
        ("(.+)" if p.startswith("{+") else "([^/]+)") if p.startswith("{") else re.escape(p)
        for p in parts
    )
    return re.compile("/" + regex)


class GoogleDirectory:
    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.schemas: dict[str, Any] = document["schemas"]
        self.global_parameters: dict[str, Any] = document["parameters"]
        self.methods: list[Method] = []
        self._collect(document.get("resources", {}))

    def _collect(self, resources: dict[str, Any]) -> None:
        for resource in resources.values():
            for method in resource.get("methods", {}).values():
                self.methods.append(
                    Method(
                        id=method["id"],
                        http_method=method["httpMethod"],
                        path=method["path"],
                        pattern=_pattern(method["path"]),
                        parameters=method.get("parameters", {}),
                        request=method.get("request", {}).get("$ref"),
                        response=method.get("response", {}).get("$ref"),
                    )
                )
            self._collect(resource.get("resources", {}))

    def method_for(self, verb: str, path: str) -> tuple[Method | None, list[str]]:
        """The method a request is for: the path template and the verb both match."""
        on_path = [m for m in self.methods if m.pattern.fullmatch(path)]
        if not on_path:
            return None, [f"{verb} {path}: no method of the Directory API has this path"]
        # literal paths before templated ones: `users/{userKey}/signOut` over `{+resource}`
        on_path.sort(key=lambda m: (m.path.count("{+"), m.path.count("{")))
        for method in on_path:
            if method.http_method == verb:
                return method, []
        allowed = sorted({m.http_method for m in on_path})
        return None, [f"{verb} {path}: the Directory API allows only {allowed} here"]

    # -- requests ------------------------------------------------------------------------

    def request_errors(self, exchange: WireExchange) -> list[str]:
        if exchange.raw_path == TOKEN_PATH:
            return self._token_request_errors(exchange)
        method, errors = self.method_for(exchange.method, exchange.path)
        if method is None:
            return errors
        where = f"{method.id}"
        match = method.pattern.fullmatch(exchange.path)
        assert match is not None
        names = re.findall(r"\{\+?([^}]+)\}", method.path)
        for name, value in zip(names, match.groups(), strict=True):
            errors += self._value_errors(value, method.parameters[name], f"{where} {name}")
        known = {**self.global_parameters, **method.parameters}
        given = {k for k, _ in exchange.query}
        for name, value in exchange.query:
            if name not in known or known[name].get("location") == "path":
                errors.append(f"{where}: unknown query parameter {name!r}")
            else:
                errors += self._value_errors(value, known[name], f"{where} {name}")
        for name, parameter in method.parameters.items():
            if parameter.get("required") and parameter.get("location") == "query":
                if name not in given:
                    errors.append(f"{where}: required query parameter {name!r} missing")
        body = exchange.request_json()
        if method.request is None:
            if body is not None:
                errors.append(f"{where}: takes no request body, got {body!r}")
        elif body is None:
            errors.append(f"{where}: needs a {method.request} body")
        else:
            errors += self.schema_errors(body, {"$ref": method.request}, where, request=True)
        return errors

    @staticmethod
    def _value_errors(value: str, parameter: dict[str, Any], where: str) -> list[str]:
        if "enum" in parameter and value not in parameter["enum"]:
            return [f"{where}: {value!r} is not one of {parameter['enum']}"]
        if parameter.get("type") == "boolean" and value not in ("true", "false"):
            return [f"{where}: {value!r} is not a boolean"]
        if parameter.get("type") == "integer" and not value.lstrip("-").isdigit():
            return [f"{where}: {value!r} is not an integer"]
        return []

    def _token_request_errors(self, exchange: WireExchange) -> list[str]:
        # google-auth's own service-account grant: the assertion and its grant type
        form = exchange.form()
        errors = []
        if exchange.method != "POST":
            errors.append(f"token: {exchange.method}, not POST")
        if form.get("grant_type") != google_oauth._JWT_GRANT_TYPE:
            errors.append(f"token: grant_type {form.get('grant_type')!r}")
        if not form.get("assertion"):
            errors.append("token: no assertion")
        extra = set(form) - {"grant_type", "assertion"}
        if extra:
            errors.append(f"token: fields google-auth never sends: {sorted(extra)}")
        return errors

    # -- responses -----------------------------------------------------------------------

    def response_errors(self, exchange: WireExchange) -> list[str]:
        if exchange.raw_path == TOKEN_PATH:
            return self._token_response_errors(exchange)
        if exchange.status >= 300:
            return self.error_errors(exchange.status, exchange.response_body)
        method, errors = self.method_for(exchange.method, exchange.path)
        if method is None:
            return errors
        body = exchange.response_json()
        if method.response is None:
            if exchange.status != 204 or body is not None:
                return [
                    f"{method.id}: has no response body, so 204 No Content; got {exchange.status}"
                ]
            return []
        if body is None:
            return [f"{method.id}: answered {exchange.status} without its {method.response}"]
        return self.schema_errors(body, {"$ref": method.response}, method.id, request=False)

    def error_errors(self, status: int, content: bytes) -> list[str]:
        """An error answer as Google's client reads it: `HttpError` finds the message,
        the code and the details; a throttle is what `_should_retry_response` retries."""
        try:
            body = json.loads(content)
        except ValueError:
            return [f"{status}: the error body is not JSON"]
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            return [f"{status}: no error object: {body!r}"]
        errors: list[str] = []
        read = HttpError(httplib2.Response({"status": status}), content)
        if read.reason != error.get("message") or not read.reason:
            errors.append(f"{status}: HttpError reads the reason as {read.reason!r}")
        if error.get("code") != status:
            errors.append(f"{status}: error.code is {error.get('code')!r}")
        details = read.error_details
        if not isinstance(details, list) or not details:
            errors.append(f"{status}: HttpError finds no error details")
            return errors
        for detail in details:
            if not all(isinstance(detail.get(k), str) for k in ("message", "domain", "reason")):
                errors.append(f"{status}: an error detail lacks message/domain/reason: {detail}")
        reason = details[0].get("reason")
        # Google's client retries these two 403/429 reasons and no other 403; the Admin
        # SDK's own limits page also says to back off on `quotaExceeded`, which its
        # generic client leaves to the caller, so that one is not held to the client.
        if status in (403, 429) and reason != "quotaExceeded":
            throttle = reason in ("userRateLimitExceeded", "rateLimitExceeded")
            if throttle != _should_retry_response(status, content):
                errors.append(
                    f"{status} {reason}: Google's client "
                    f"{'would not' if throttle else 'would'} retry it"
                )
        return errors

    @staticmethod
    def _token_response_errors(exchange: WireExchange) -> list[str]:
        try:
            body = json.loads(exchange.response_body)
        except ValueError:
            return ["token: the answer is not JSON"]
        if exchange.status == 200:
            if not isinstance(body.get("access_token"), str):
                return ["token: no access_token"]
            if google_oauth._parse_expiry(body) is None:
                return ["token: google-auth finds no expiry (expires_in)"]
            return []
        if not isinstance(body, dict) or not isinstance(body.get("error"), str):
            return [f"token: {exchange.status} without an OAuth error code: {body!r}"]
        try:
            google_oauth._handle_error_response(body, False)
        except auth_exceptions.RefreshError as refused:
            if body["error"] not in str(refused):
                return [f"token: google-auth reads the error as {refused}"]
        transient = exchange.status == 429 or exchange.status >= 500
        if google_oauth._can_retry(exchange.status, body) != transient:
            return [f"token: {exchange.status} {body['error']}: google-auth disagrees on retrying"]
        return []

    # -- schemas -------------------------------------------------------------------------

    def schema_errors(
        self, value: Any, schema: dict[str, Any], where: str, *, request: bool
    ) -> list[str]:
        """`value` against a discovery schema: types, formats, no unknown properties, and
        (in a request) no output-only (readOnly) property."""
        if "$ref" in schema:
            return self.schema_errors(value, self.schemas[schema["$ref"]], where, request=request)
        kind = schema.get("type")
        if kind == "any":
            return []
        if kind == "object":
            if not isinstance(value, dict):
                return [f"{where}: {value!r} is not an object"]
            errors: list[str] = []
            properties = schema.get("properties")
            for name, item in value.items():
                if properties is not None and name in properties:
                    sub = properties[name]
                elif "additionalProperties" in schema:
                    sub = schema["additionalProperties"]
                else:
                    errors.append(f"{where}: unknown property {name!r}")
                    continue
                if request and sub.get("readOnly"):
                    errors.append(f"{where}: {name!r} is output only")
                errors += self.schema_errors(item, sub, f"{where}.{name}", request=request)
            return errors
        if kind == "array":
            if not isinstance(value, list):
                return [f"{where}: {value!r} is not an array"]
            return [
                e
                for i, item in enumerate(value)
                for e in self.schema_errors(item, schema["items"], f"{where}[{i}]", request=request)
            ]
        return _scalar_errors(value, schema, where)


def _scalar_errors(value: Any, schema: dict[str, Any], where: str) -> list[str]:
    kind, fmt = schema.get("type"), schema.get("format")
    if kind == "boolean" and not isinstance(value, bool):
        return [f"{where}: {value!r} is not a boolean"]
    if kind == "integer" and (isinstance(value, bool) or not isinstance(value, int)):
        return [f"{where}: {value!r} is not an integer"]
    if kind == "number" and (isinstance(value, bool) or not isinstance(value, int | float)):
        return [f"{where}: {value!r} is not a number"]
    if kind == "string":
        if not isinstance(value, str):
            return [f"{where}: {value!r} is not a string"]
        if fmt == "date-time":
            try:
                datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                return [f"{where}: {value!r} is not an RFC 3339 date-time"]
        if fmt in ("int64", "uint64") and not value.lstrip("-").isdigit():
            return [f"{where}: {value!r} is not a {fmt} string"]
        if "enum" in schema and value not in schema["enum"]:
            return [f"{where}: {value!r} is not one of {schema['enum']}"]
    return []


@functools.cache
def load_google_directory() -> GoogleDirectory:
    with DOCUMENT.open() as f:
        return GoogleDirectory(json.load(f))


def exchange_errors(exchange: WireExchange) -> list[str]:
    """What is not Google's in one exchange (the sandbox's own routes are not checked)."""
    if exchange.raw_path.startswith(SANDBOX_PREFIX):
        return []
    directory = load_google_directory()
    return directory.request_errors(exchange) + directory.response_errors(exchange)


@pytest.fixture(autouse=True)
def google_conformance(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[WireExchange]]:
    """Every exchange of every Google emulator any test in the suite starts, checked
    against the Directory API's discovery document when the test ends."""
    seen = record_emulator(monkeypatch, GoogleWorkspaceEmulator)
    yield seen
    problems = conformance(seen, exchange_errors)
    assert not problems, "not Google's:\n" + "\n".join(problems)
