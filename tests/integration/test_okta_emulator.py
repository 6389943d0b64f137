"""The Okta emulator, over real HTTP, against Okta's published spec and Okta's behaviour."""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aiohttp
import pytest
from openapi_core.testing import MockResponse

from tests.okta_spec import Exchange, OktaSpec, call, load_okta_spec
from worker.clock import ManualClock, utc_iso
from worker.sandbox.common import (
    AuditEntry,
    AuditLog,
    FaultPlan,
    FaultRule,
    serve_on_loopback,
)
from worker.sandbox.okta import OktaEmulator

TOKEN = "00sandbox-token"
AUTH = {"Authorization": f"SSWS {TOKEN}"}
LOGIN = "ada.lovelace@example.com"
DEACTIVATE = "/api/v1/users/{}/lifecycle/deactivate"
NO_EMAIL = {"sendEmail": "false"}


@pytest.fixture(scope="session")
def spec() -> OktaSpec:
    return load_okta_spec()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def audit(clock: ManualClock) -> AuditLog:
    return AuditLog(clock)


@pytest.fixture
def faults() -> FaultPlan:
    return FaultPlan(seed=7)


@pytest.fixture
def okta(audit: AuditLog, faults: FaultPlan, clock: ManualClock) -> OktaEmulator:
    return OktaEmulator(
        audit=audit, faults=faults, clock=clock, api_token=TOKEN, async_deactivate_delay=5.0
    )


@pytest.fixture
def user_id(okta: OktaEmulator) -> str:
    return okta.add_user(LOGIN, first_name="Ada", last_name="Lovelace", sessions=2)


@pytest.fixture
async def http(okta: OktaEmulator) -> AsyncIterator[aiohttp.ClientSession]:
    served = await serve_on_loopback(okta.app())
    async with aiohttp.ClientSession(base_url=served.url) as session:
        yield session
    await served.close()


def assert_valid(spec: OktaSpec, exchange: Exchange) -> None:
    assert spec.request_errors(exchange) == []
    assert spec.response_errors(exchange) == []


def assert_okta_error(spec: OktaSpec, exchange: Exchange, code: str, summary: str) -> None:
    assert exchange.headers["Content-Type"] == "application/json"
    assert spec.error_body_errors(exchange.body) == []
    assert exchange.body["errorCode"] == code
    assert exchange.body["errorLink"] == code
    assert exchange.body["errorSummary"] == summary
    assert exchange.body["errorCauses"] == []


def deactivations(audit: AuditLog) -> list[AuditEntry]:
    return audit.entries(action="okta.deactivate")


# -- against the spec --------------------------------------------------------------------


async def test_get_user_is_a_spec_user(
    spec: OktaSpec, http: aiohttp.ClientSession, user_id: str, clock: ManualClock
) -> None:
    got = await call(http, "GET", f"/api/v1/users/{user_id}", headers=AUTH)

    assert got.status == 200
    assert_valid(spec, got)
    assert got.headers["Content-Type"] == "application/json"
    user = got.body
    assert re.fullmatch(r"00u[A-Za-z0-9]{17}", user["id"])
    assert user["status"] == "ACTIVE"
    assert "transitioningToStatus" not in user
    now = utc_iso(clock.now())
    for field in ("created", "activated", "statusChanged", "lastLogin", "lastUpdated"):
        assert user[field] == now
    assert now.endswith("Z")
    assert user["profile"]["login"] == user["profile"]["email"] == LOGIN
    assert user["profile"]["firstName"] == "Ada"
    assert user["profile"]["mobilePhone"] is None
    assert user["type"]["id"].startswith("oty")
    assert user["_links"]["deactivate"]["href"].endswith(f"/{user_id}/lifecycle/deactivate")
    # by login too, as the spec's pathId allows
    by_login = await call(http, "GET", f"/api/v1/users/{LOGIN}", headers=AUTH)
    assert by_login.body["id"] == user_id


async def test_the_validator_rejects_what_okta_would_not_send(
    spec: OktaSpec, http: aiohttp.ClientSession, user_id: str
) -> None:
    """Negative controls: the checks above would catch a wrong body."""
    got = await call(http, "GET", f"/api/v1/users/{user_id}", headers=AUTH)
    bogus = dict(got.body, status="BOGUS")
    assert spec.errors_for(got.request, MockResponse(json.dumps(bogus).encode())) != []
    empty_name = dict(got.body, profile=dict(got.body["profile"], firstName=""))
    assert spec.errors_for(got.request, MockResponse(json.dumps(empty_name).encode())) != []
    assert spec.error_body_errors({"errorCode": "E0000007", "errorSummary": "Not found"}) != []


async def test_deactivate_is_a_spec_exchange(
    spec: OktaSpec, http: aiohttp.ClientSession, user_id: str
) -> None:
    done = await call(http, "POST", DEACTIVATE.format(user_id), params=NO_EMAIL, headers=AUTH)

    assert done.status == 200
    assert done.body == {}
    assert_valid(spec, done)


async def test_clear_sessions_is_a_spec_exchange(
    spec: OktaSpec, http: aiohttp.ClientSession, user_id: str
) -> None:
    path = f"/api/v1/users/{user_id}/sessions"
    cleared = await call(http, "DELETE", path, params={"oauthTokens": "true"}, headers=AUTH)

    assert cleared.status == 204
    assert cleared.body is None
    assert_valid(spec, cleared)


async def test_unknown_user_is_okta_404(spec: OktaSpec, http: aiohttp.ClientSession) -> None:
    missing = "00uNOSUCHUSER0000000"
    got = await call(http, "GET", f"/api/v1/users/{missing}", headers=AUTH)

    assert got.status == 404
    assert_valid(spec, got)
    summary = f"Not found: Resource not found: {missing} (User)"
    assert_okta_error(spec, got, "E0000007", summary)
    deactivate = await call(http, "POST", DEACTIVATE.format(missing), headers=AUTH)
    assert deactivate.status == 404
    assert_valid(spec, deactivate)
    # paths and methods the emulator does not serve answer in Okta's shape too
    nowhere = await call(http, "GET", "/api/v1/nowhere", headers=AUTH)
    assert nowhere.status == 404
    assert nowhere.body["errorCode"] == "E0000007"
    wrong_method = await call(http, "PUT", f"/api/v1/users/{missing}/sessions", headers=AUTH)
    assert wrong_method.status == 405
    assert wrong_method.body["errorCode"] == "E0000022"


async def test_bad_token_is_okta_401(
    spec: OktaSpec, http: aiohttp.ClientSession, user_id: str, audit: AuditLog
) -> None:
    path = f"/api/v1/users/{user_id}"
    expected = spec.example("ErrorInvalidTokenProvided")
    wrong = await call(http, "GET", path, headers={"Authorization": "SSWS not-the-token"})
    missing = await call(http, "GET", path)

    for got in (wrong, missing):
        assert got.status == 401
        assert_okta_error(spec, got, expected["errorCode"], expected["errorSummary"])
        assert "X-Rate-Limit-Remaining" in got.headers
    # The user endpoints document no 401, so the body is checked as an Error above, and
    # the request as such is valid (openapi-core passes the spec's oauth2 alternative
    # unchecked, so it cannot catch a missing token either).
    assert spec.request_errors(wrong) == []
    bearer = await call(http, "GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert bearer.status == 401
    assert audit.entries() == []


# -- behaviour -----------------------------------------------------------------------------


async def test_deactivate_ends_sessions_and_is_audited_once(
    spec: OktaSpec, http: aiohttp.ClientSession, okta: OktaEmulator, user_id: str, audit: AuditLog
) -> None:
    first = await call(http, "POST", DEACTIVATE.format(user_id), params=NO_EMAIL, headers=AUTH)
    assert first.status == 200
    assert okta.user_status(user_id) == "DEPROVISIONED"
    assert okta.live_sessions(LOGIN) == 0
    [entry] = deactivations(audit)
    assert entry.target == user_id
    assert entry.detail["sessions_ended"] == 2
    assert entry.detail["send_email"] is False

    # Okta answers a second deactivation as if the user did not exist
    again = await call(http, "POST", DEACTIVATE.format(user_id), params=NO_EMAIL, headers=AUTH)
    assert again.status == 404
    assert_valid(spec, again)
    assert again.body["errorCode"] == "E0000007"
    assert len(deactivations(audit)) == 1
    read_back = await call(http, "GET", f"/api/v1/users/{user_id}", headers=AUTH)
    assert read_back.body["status"] == "DEPROVISIONED"
    assert "deactivate" not in read_back.body["_links"]


async def test_respond_async_shows_the_transition_until_done(
    spec: OktaSpec,
    http: aiohttp.ClientSession,
    okta: OktaEmulator,
    user_id: str,
    clock: ManualClock,
    audit: AuditLog,
) -> None:
    headers = {**AUTH, "Prefer": "respond-async"}
    accepted = await call(http, "POST", DEACTIVATE.format(user_id), headers=headers)
    assert accepted.status == 200
    assert_valid(spec, accepted)

    during = await call(http, "GET", f"/api/v1/users/{user_id}", headers=AUTH)
    assert_valid(spec, during)
    assert during.body["status"] == "ACTIVE"
    assert during.body["transitioningToStatus"] == "DEPROVISIONED"
    assert okta.live_sessions(user_id) == 2
    # a repeat while it is under way is refused and not audited
    repeat = await call(http, "POST", DEACTIVATE.format(user_id), headers=headers)
    assert repeat.status == 404
    assert len(deactivations(audit)) == 1

    clock.advance(4.9)
    assert okta.user_status(user_id) == "ACTIVE"
    clock.advance(0.1)
    after = await call(http, "GET", f"/api/v1/users/{user_id}", headers=AUTH)
    assert after.body["status"] == "DEPROVISIONED"
    assert "transitioningToStatus" not in after.body
    assert after.body["statusChanged"] == utc_iso(clock.now())
    assert okta.live_sessions(user_id) == 0
    assert deactivations(audit)[0].detail["asynchronous"] is True


async def test_respond_async_without_a_delay_is_synchronous(
    http: aiohttp.ClientSession, okta: OktaEmulator, user_id: str
) -> None:
    okta.async_deactivate_delay = 0.0
    headers = {**AUTH, "Prefer": "respond-async"}
    await call(http, "POST", DEACTIVATE.format(user_id), headers=headers)
    assert okta.user_status(user_id) == "DEPROVISIONED"


async def test_clear_sessions_is_idempotent_and_audited_each_time(
    http: aiohttp.ClientSession, okta: OktaEmulator, user_id: str, audit: AuditLog
) -> None:
    path = f"/api/v1/users/{user_id}/sessions"
    for _ in range(2):
        cleared = await call(http, "DELETE", path, params={"oauthTokens": "true"}, headers=AUTH)
        assert cleared.status == 204
    assert okta.live_sessions(user_id) == 0
    entries = audit.entries(action="okta.clear_sessions")
    assert [e.detail for e in entries] == [
        {"oauth_tokens": True, "ended": 2},
        {"oauth_tokens": True, "ended": 0},
    ]
    # this endpoint takes the id only (the spec's pathUserId)
    by_login = await call(http, "DELETE", f"/api/v1/users/{LOGIN}/sessions", headers=AUTH)
    assert by_login.status == 404


async def test_rate_limit_answers_429_once_the_minute_is_spent(
    spec: OktaSpec,
    http: aiohttp.ClientSession,
    okta: OktaEmulator,
    user_id: str,
    clock: ManualClock,
    audit: AuditLog,
) -> None:
    okta.rate_limit_per_minute = 3
    path = f"/api/v1/users/{user_id}"
    window_end = (int(clock.now().timestamp()) // 60 + 1) * 60
    for remaining in (2, 1, 0):
        ok = await call(http, "GET", path, headers=AUTH)
        assert ok.status == 200
        assert ok.headers["X-Rate-Limit-Limit"] == "3"
        assert ok.headers["X-Rate-Limit-Remaining"] == str(remaining)
        assert ok.headers["X-Rate-Limit-Reset"] == str(window_end)

    limited = await call(http, "GET", path, headers=AUTH)
    assert limited.status == 429
    assert_valid(spec, limited)
    expected = spec.example("ErrorTooManyRequests")
    assert_okta_error(spec, limited, expected["errorCode"], expected["errorSummary"])
    assert limited.headers["X-Rate-Limit-Remaining"] == "0"
    assert int(limited.headers["X-Rate-Limit-Reset"]) > clock.now().timestamp()
    assert audit.throttled["okta.get_user"] == 1

    clock.set(datetime.fromtimestamp(window_end, UTC))
    fresh = await call(http, "GET", path, headers=AUTH)
    assert fresh.status == 200
    assert fresh.headers["X-Rate-Limit-Remaining"] == "2"


async def test_injected_throttle_sends_the_reset_header_twice(
    http: aiohttp.ClientSession,
    okta: OktaEmulator,
    faults: FaultPlan,
    user_id: str,
    clock: ManualClock,
    audit: AuditLog,
) -> None:
    faults.add(FaultRule(endpoint="okta.deactivate", kind="throttle", count=1, retry_after=2.5))
    path = DEACTIVATE.format(user_id)

    throttled = await call(http, "POST", path, params=NO_EMAIL, headers=AUTH)
    assert throttled.status == 429
    assert throttled.body["errorCode"] == "E0000047"
    resets = [int(v) for v in throttled.headers.getall("X-Rate-Limit-Reset")]
    assert len(resets) == 2
    assert min(resets) == math.ceil(clock.now().timestamp() + 2.5)
    assert max(resets) > min(resets)
    assert throttled.headers["X-Rate-Limit-Remaining"] == "0"
    assert okta.user_status(user_id) == "ACTIVE"
    assert deactivations(audit) == []

    retried = await call(http, "POST", path, params=NO_EMAIL, headers=AUTH)
    assert retried.status == 200
    assert audit.calls["okta.deactivate"] == 2
    assert audit.throttled["okta.deactivate"] == 1


async def test_injected_error_after_the_mutation_is_okta_500(
    spec: OktaSpec,
    http: aiohttp.ClientSession,
    okta: OktaEmulator,
    faults: FaultPlan,
    user_id: str,
    audit: AuditLog,
) -> None:
    faults.add(FaultRule(endpoint="okta.deactivate", kind="error", count=1, phase="after"))
    failed = await call(http, "POST", DEACTIVATE.format(user_id), params=NO_EMAIL, headers=AUTH)

    assert failed.status == 500
    assert_okta_error(spec, failed, "E0000009", "Internal Server Error")
    assert "X-Rate-Limit-Remaining" in failed.headers
    # the client saw a failure, yet the user is deactivated: what a read-back is for
    assert okta.user_status(user_id) == "DEPROVISIONED"
    assert len(deactivations(audit)) == 1


async def test_suspend_unsuspend_and_activate(
    spec: OktaSpec, http: aiohttp.ClientSession, okta: OktaEmulator, user_id: str, audit: AuditLog
) -> None:
    base = f"/api/v1/users/{user_id}/lifecycle"
    suspended = await call(http, "POST", f"{base}/suspend", headers=AUTH)
    assert suspended.status == 200
    assert_valid(spec, suspended)
    assert okta.user_status(user_id) == "SUSPENDED"
    refused = await call(http, "POST", f"{base}/suspend", headers=AUTH)
    assert refused.status == 403
    assert_valid(spec, refused)

    assert (await call(http, "POST", f"{base}/unsuspend", headers=AUTH)).status == 200
    assert okta.user_status(user_id) == "ACTIVE"
    already = await call(http, "POST", f"{base}/activate", headers=AUTH)
    assert already.status == 403
    assert already.body["errorCode"] == "E0000016"

    await call(http, "POST", f"{base}/deactivate", headers=AUTH)
    activated = await call(http, "POST", f"{base}/activate", params=NO_EMAIL, headers=AUTH)
    assert activated.status == 200
    assert_valid(spec, activated)
    assert activated.body["activationUrl"].endswith(activated.body["activationToken"])
    assert okta.user_status(user_id) == "ACTIVE"
    actions = [e.action for e in audit.entries()]
    assert actions == [
        "okta.suspend",
        "okta.unsuspend",
        "okta.deactivate",
        "okta.activate",
    ]


async def test_sandbox_admin_routes_need_no_token(
    http: aiohttp.ClientSession, okta: OktaEmulator, audit: AuditLog
) -> None:
    body = {"login": "grace@example.com", "first_name": "Grace", "status": "ACTIVE", "sessions": 3}
    async with http.post("/_sandbox/okta/users", json=body) as resp:
        assert resp.status == 200
        new_id = (await resp.json())["id"]
    async with http.post("/_sandbox/okta/users", json=body) as resp:
        assert resp.status == 400  # the login exists already
    okta.add_user("linus@example.com", status="DEPROVISIONED", sessions=0)

    async with http.post("/_sandbox/okta/users/linus@example.com/reactivate") as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "ACTIVE"
    async with http.get("/_sandbox/okta/users/grace@example.com") as resp:
        assert await resp.json() == {
            "id": new_id,
            "login": "grace@example.com",
            "status": "ACTIVE",
            "sessions": 3,
        }
    async with http.get("/_sandbox/okta/users/nobody@example.com") as resp:
        assert resp.status == 404
    assert [e.action for e in audit.entries()] == ["okta.reactivate"]
    assert okta.user_status("linus@example.com") == "ACTIVE"


async def test_each_endpoint_group_counts_in_its_own_budget(
    http: aiohttp.ClientSession, okta: OktaEmulator, user_id: str
) -> None:
    """Okta's documented defaults, one window and set of headers per endpoint group."""
    read = await call(http, "GET", f"/api/v1/users/{user_id}", headers=AUTH)
    write = await call(http, "POST", f"/api/v1/users/{user_id}/lifecycle/suspend", headers=AUTH)
    sessions = await call(http, "DELETE", f"/api/v1/users/{user_id}/sessions", headers=AUTH)
    again = await call(http, "GET", f"/api/v1/users/{LOGIN}", headers=AUTH)
    limits = [
        (e.headers["X-Rate-Limit-Limit"], e.headers["X-Rate-Limit-Remaining"])
        for e in (read, write, sessions, again)
    ]
    assert limits == [("2000", "1999"), ("600", "599"), ("1200", "1199"), ("2000", "1998")]

    okta.rate_limits = okta.rate_limits | {"user-read": 1}
    assert (await call(http, "GET", f"/api/v1/users/{user_id}", headers=AUTH)).status == 429
    # another group's budget is untouched
    cleared = await call(http, "DELETE", f"/api/v1/users/{user_id}/sessions", headers=AUTH)
    assert cleared.status == 204
    assert cleared.headers["X-Rate-Limit-Remaining"] == "1198"


async def test_a_request_over_the_concurrency_cap_is_answered_429(
    spec: OktaSpec,
    http: aiohttp.ClientSession,
    okta: OktaEmulator,
    faults: FaultPlan,
    audit: AuditLog,
    user_id: str,
) -> None:
    assert okta.concurrency_limit == 75  # Okta's documented cap per org
    okta.concurrency_limit = 2
    faults.add(FaultRule(endpoint="okta.get_user", kind="latency", rate=1.0, delay=0.5))
    path = f"/api/v1/users/{user_id}"
    held = [asyncio.create_task(call(http, "GET", path, headers=AUTH)) for _ in range(2)]
    for _ in range(500):  # until both are in flight
        if len(audit.requests) == 2:
            break
        await asyncio.sleep(0.01)
    over = await call(http, "GET", path, headers=AUTH)
    assert [e.status for e in await asyncio.gather(*held)] == [200, 200]

    assert over.status == 429
    assert_valid(spec, over)
    assert over.headers["X-Rate-Limit-Limit"] == "0"
    assert over.headers["X-Rate-Limit-Remaining"] == "0"
    assert audit.throttled["okta.get_user"] == 1
