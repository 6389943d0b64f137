"""The checks against Google's and Microsoft's own definitions reject what those vendors
would not send or answer — so that they cannot pass vacuously. Each case starts from an
exchange the check accepts and changes one thing."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from multidict import CIMultiDict

from tests import google_spec, graph_spec
from tests.wire import WireExchange

UPN = "leaver@example.com"
USER_ID = "7f1d2c3b-0000-4000-8000-00000000abcd"


def exchange(
    method: str,
    path: str,
    *,
    query: tuple[tuple[str, str], ...] = (),
    sent: Any = None,
    status: int = 200,
    answered: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> WireExchange:
    return WireExchange(
        method=method,
        raw_path=path,
        query=query,
        request_headers=CIMultiDict(),
        request_body=b"" if sent is None else json.dumps(sent).encode(),
        status=status,
        response_headers=CIMultiDict(headers or {}),
        response_body=raw
        if raw is not None
        else (b"" if answered is None else json.dumps(answered).encode()),
    )


# -- Microsoft Graph (msgraph-sdk) ------------------------------------------------------

SELECT = (("$select", "id,userPrincipalName,accountEnabled"),)
GRAPH_USER = {
    "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users/$entity",
    "id": USER_ID,
    "userPrincipalName": UPN,
    "accountEnabled": True,
}
GRAPH_ERROR = {
    "error": {
        "code": "Request_ResourceNotFound",
        "message": "Resource 'x' does not exist.",
        "innerError": {"date": "2026-12-06T05:00:00", "request-id": "r", "client-request-id": "c"},
    }
}
GRAPH_GOOD = {
    "read": exchange("GET", f"/v1.0/users/{UPN}", query=SELECT, answered=GRAPH_USER),
    "disable": exchange(
        "PATCH", f"/v1.0/users/{USER_ID}", sent={"accountEnabled": False}, status=204
    ),
    "revoke": exchange(
        "POST",
        f"/v1.0/users/{USER_ID}/revokeSignInSessions",
        answered={"@odata.context": "x", "value": True},
    ),
    "dollar key": exchange(
        "GET", "/v1.0/users('$admin@example.com')", query=SELECT, answered=GRAPH_USER
    ),
    "not found": exchange("GET", f"/v1.0/users/{UPN}", status=404, answered=GRAPH_ERROR),
    "throttled": exchange(
        "GET",
        f"/v1.0/users/{UPN}",
        status=429,
        answered={"error": {"code": "TooManyRequests", "message": "Too many requests"}},
        headers={"Retry-After": "2"},
    ),
}


@pytest.mark.parametrize("name", GRAPH_GOOD)
def test_graph_accepts_what_graph_sends(name: str) -> None:
    assert graph_spec.exchange_errors(GRAPH_GOOD[name]) == []


GRAPH_WRONG = {
    "a path Graph does not have": replace(GRAPH_GOOD["read"], raw_path=f"/v1.0/user/{UPN}"),
    "an action Graph does not have": replace(
        GRAPH_GOOD["revoke"], raw_path=f"/v1.0/users/{USER_ID}/revokeSessions"
    ),
    "a verb the path does not allow": replace(GRAPH_GOOD["disable"], method="PUT"),
    "a misspelt property sent": replace(
        GRAPH_GOOD["disable"], request_body=b'{"acountEnabled": false}'
    ),
    "a property of the wrong type": replace(
        GRAPH_GOOD["disable"], request_body=b'{"accountEnabled": "false"}'
    ),
    "a misspelt $select": replace(GRAPH_GOOD["read"], query=(("$select", "id,acountEnabled"),)),
    "an unknown query parameter": replace(GRAPH_GOOD["read"], query=(("$selct", "id"),)),
    "a body where none is taken": replace(GRAPH_GOOD["revoke"], request_body=b'{"all": true}'),
    "a misspelt property answered": replace(
        GRAPH_GOOD["read"], response_body=json.dumps({**GRAPH_USER, "acountEnabled": True}).encode()
    ),
    "an answer of the wrong type": replace(GRAPH_GOOD["revoke"], response_body=b'{"value": "yes"}'),
    "an error that is a string": replace(
        GRAPH_GOOD["not found"], response_body=b'{"error": "nope"}'
    ),
    "an error without a message": replace(
        GRAPH_GOOD["not found"], response_body=b'{"error": {"code": "Request_ResourceNotFound"}}'
    ),
    "an error not wrapped in error": replace(
        GRAPH_GOOD["not found"], response_body=b'{"code": "NotFound", "message": "no"}'
    ),
    "a 429 without Retry-After": replace(GRAPH_GOOD["throttled"], response_headers=CIMultiDict()),
    "a 429 with an unreadable Retry-After": replace(
        GRAPH_GOOD["throttled"], response_headers=CIMultiDict({"Retry-After": "soon"})
    ),
    "a 204 with a body": replace(GRAPH_GOOD["disable"], response_body=b"{}"),
}


@pytest.mark.parametrize("name", GRAPH_WRONG)
def test_graph_rejects_what_graph_would_not_send(name: str) -> None:
    assert graph_spec.exchange_errors(GRAPH_WRONG[name]) != []


# -- Google Admin SDK Directory API (discovery document, google-api-python-client) -----

API = "/admin/directory/v1"
GOOGLE_USER = {
    "kind": "admin#directory#user",
    "id": "511622220631820264978",
    "etag": '"abc"',
    "primaryEmail": UPN,
    "name": {"givenName": "Leaver", "familyName": "Example", "fullName": "Leaver Example"},
    "isAdmin": False,
    "suspended": True,
    "suspensionReason": "ADMIN",
    "creationTime": "2026-01-02T03:04:05.000Z",
    "emails": [{"address": UPN, "primary": True}],
}


def google_error(status: int, reason: str, message: str = "Failed") -> dict[str, Any]:
    detail = {"message": message, "domain": "usageLimits", "reason": reason}
    return {"error": {"code": status, "message": message, "errors": [detail]}}


GOOGLE_GOOD = {
    "read": exchange("GET", f"{API}/users/{UPN}", answered=GOOGLE_USER),
    "read with a projection": exchange(
        "GET", f"{API}/users/{UPN}", query=(("projection", "basic"),), answered=GOOGLE_USER
    ),
    "suspend": exchange(
        "PUT", f"{API}/users/{UPN}", sent={"suspended": True}, answered=GOOGLE_USER
    ),
    "sign out": exchange("POST", f"{API}/users/{UPN}/signOut", status=204),
    "not found": exchange(
        "GET", f"{API}/users/{UPN}", status=404, answered=google_error(404, "notFound")
    ),
    "throttled 403": exchange(
        "PUT",
        f"{API}/users/{UPN}",
        sent={"suspended": True},
        status=403,
        answered=google_error(403, "userRateLimitExceeded"),
    ),
    "refused 403": exchange(
        "GET", f"{API}/users/{UPN}", status=403, answered=google_error(403, "forbidden")
    ),
    "throttled 429": exchange(
        "GET", f"{API}/users/{UPN}", status=429, answered=google_error(429, "rateLimitExceeded")
    ),
    "token": exchange(
        "POST",
        "/token",
        status=200,
        answered={"access_token": "ya29.x", "expires_in": 3599, "token_type": "Bearer"},
        raw=None,
    ),
    "token refused": exchange(
        "POST",
        "/token",
        status=400,
        answered={"error": "invalid_grant", "error_description": "Invalid JWT Signature."},
    ),
    "token throttled": exchange(
        "POST",
        "/token",
        status=429,
        answered={"error": "rate_limit_exceeded", "error_description": "Rate limit exceeded."},
    ),
}
# google-auth's grant: the form it posts
GRANT = b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=e30.e30.sig"
for _name in ("token", "token refused", "token throttled"):
    GOOGLE_GOOD[_name] = replace(GOOGLE_GOOD[_name], request_body=GRANT)


@pytest.mark.parametrize("name", GOOGLE_GOOD)
def test_google_accepts_what_google_sends(name: str) -> None:
    assert google_spec.exchange_errors(GOOGLE_GOOD[name]) == []


GOOGLE_WRONG = {
    "a path Google does not have": replace(GOOGLE_GOOD["read"], raw_path=f"{API}/user/{UPN}"),
    "a misspelt action": replace(GOOGLE_GOOD["sign out"], raw_path=f"{API}/users/{UPN}/signout"),
    "a verb the path does not allow": replace(GOOGLE_GOOD["sign out"], method="DELETE"),
    "a misspelt property sent": replace(GOOGLE_GOOD["suspend"], request_body=b'{"suspend": true}'),
    "a property of the wrong type": replace(
        GOOGLE_GOOD["suspend"], request_body=b'{"suspended": "true"}'
    ),
    "an output-only property sent": replace(
        GOOGLE_GOOD["suspend"], request_body=b'{"suspended": true, "suspensionReason": "ADMIN"}'
    ),
    "no body where one is needed": replace(GOOGLE_GOOD["suspend"], request_body=b""),
    "a value outside the enum": replace(GOOGLE_GOOD["read"], query=(("projection", "everything"),)),
    "an unknown query parameter": replace(GOOGLE_GOOD["read"], query=(("view", "full"),)),
    "a misspelt property answered": replace(
        GOOGLE_GOOD["read"], response_body=json.dumps({**GOOGLE_USER, "suspend": True}).encode()
    ),
    "a date-time that is not one": replace(
        GOOGLE_GOOD["read"],
        response_body=json.dumps({**GOOGLE_USER, "creationTime": "yesterday"}).encode(),
    ),
    "a body on a method without one": replace(
        GOOGLE_GOOD["sign out"], status=200, response_body=b"{}"
    ),
    "an error that is a string": replace(
        GOOGLE_GOOD["not found"], response_body=b'{"error": "no"}'
    ),
    "an error without details": replace(
        GOOGLE_GOOD["not found"], response_body=b'{"error": {"code": 404, "message": "no"}}'
    ),
    "an error whose code is not the status": replace(
        GOOGLE_GOOD["not found"], response_body=json.dumps(google_error(400, "notFound")).encode()
    ),
    "a 429 that does not say it is a throttle": replace(
        GOOGLE_GOOD["throttled 429"],
        response_body=json.dumps(google_error(429, "forbidden")).encode(),
    ),
    "a token without its lifetime": replace(
        GOOGLE_GOOD["token"], response_body=b'{"access_token": "x"}'
    ),
    "a token error without a code": replace(
        GOOGLE_GOOD["token refused"], response_body=b'{"error_description": "bad"}'
    ),
    "a lasting token error google-auth would retry": replace(
        GOOGLE_GOOD["token refused"], response_body=b'{"error": "internal_failure"}'
    ),
    "a grant google-auth does not send": replace(
        GOOGLE_GOOD["token"], request_body=b"grant_type=client_credentials&assertion=x"
    ),
}


@pytest.mark.parametrize("name", GOOGLE_WRONG)
def test_google_rejects_what_google_would_not_send(name: str) -> None:
    assert google_spec.exchange_errors(GOOGLE_WRONG[name]) != []
