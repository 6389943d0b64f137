"""The Google Workspace adapter (worker.providers.google) against the Google emulator,
over real HTTP, with a real service-account key and a real signed JWT grant."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from multidict import CIMultiDict

from tests.flows import idp_repertoire
from tests.google_spec import exchange_errors as google_exchange_errors
from tests.google_spec import load_google_directory
from tests.wire import WireExchange, conformance
from worker.clock import Clock, ManualClock, SystemClock
from worker.config import GoogleConfig, SecretRef
from worker.errors import ConfigError, PermanentError, TransientError
from worker.providers.base import IdpUser
from worker.providers.google import GoogleWorkspace, rate_limit_reason
from worker.retry import RetryPolicy, with_retry
from worker.sandbox.common import AuditLog, FaultPlan, FaultRule, Handler, serve_on_loopback
from worker.sandbox.google import (
    GOOGLE_TOKEN_URI,
    USER_SCOPE,
    GoogleWorkspaceEmulator,
    ServiceAccount,
    make_service_account_key,
)

API = "/admin/directory/v1/"
ADMIN = "it-admin@example.com"
LEAVER = "leaver@example.com"
CLIENT_EMAIL = "offboard@offboard-sandbox.iam.gserviceaccount.com"
#: RFC 7523 2.1; written from the RFC, not imported from the adapter or the emulator
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@dataclass
class Seen:
    method: str
    path: str
    headers: CIMultiDict[str]
    body: bytes
    status: int = 0

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode()))


@dataclass
class Env:
    emulator: GoogleWorkspaceEmulator
    audit: AuditLog
    faults: FaultPlan
    clock: Clock
    url: str
    http: aiohttp.ClientSession
    seen: list[Seen]
    key: str  # the key file's content
    tmp_path: Path

    def key_file(self, content: str | None = None) -> SecretRef:
        path = self.tmp_path / f"key-{len(list(self.tmp_path.iterdir()))}.json"
        path.write_text(content if content is not None else self.key)
        return SecretRef(file=str(path))

    def config(self, **overrides: Any) -> GoogleConfig:
        settings: dict[str, Any] = {
            "service_account": self.key_file(),
            "delegated_admin": ADMIN,
            "directory_url": f"{self.url}/admin/directory/v1",
            # the key file names Google's token_uri (the JWT's aud); requests go here
            "token_url": f"{self.url}/token",
            "timeout_seconds": 2.0,
        }
        settings.update(overrides)
        return GoogleConfig(**settings)

    def adapter(self, **overrides: Any) -> GoogleWorkspace:
        return GoogleWorkspace(self.config(**overrides), self.http, clock=self.clock)

    def api(self) -> list[Seen]:
        return [s for s in self.seen if s.path.startswith(API)]

    def tokens(self) -> list[Seen]:
        return [s for s in self.seen if s.path == "/token"]


@pytest.fixture(scope="session")
def key() -> str:
    return make_service_account_key(client_email=CLIENT_EMAIL)


@pytest.fixture
def clock() -> Clock:
    return SystemClock()


@pytest.fixture
async def env(clock: Clock, key: str, tmp_path: Path) -> AsyncIterator[Env]:
    audit = AuditLog(clock)
    faults = FaultPlan(seed=5)
    emulator = GoogleWorkspaceEmulator(
        audit=audit,
        faults=faults,
        clock=clock,
        service_account=ServiceAccount.from_key_file(key),
    )
    emulator.add_user(ADMIN, admin=True, sessions=1)
    seen: list[Seen] = []

    @web.middleware
    async def capture(request: web.Request, handler: Handler) -> web.StreamResponse:
        entry = Seen(
            method=request.method,
            path=request.raw_path.partition("?")[0],
            headers=CIMultiDict(request.headers),
            body=await request.read(),
        )
        seen.append(entry)
        response = await handler(request)
        entry.status = response.status
        return response

    app = emulator.app()
    app.middlewares.insert(0, capture)
    served = await serve_on_loopback(app)
    keys = tmp_path / "keys"
    keys.mkdir()
    try:
        async with aiohttp.ClientSession() as http:
            yield Env(emulator, audit, faults, clock, served.url, http, seen, key, keys)
    finally:
        await served.close()


@pytest.fixture
def leaver_id(env: Env) -> str:
    return env.emulator.add_user(LEAVER, given_name="Leaver", family_name="Example", sessions=3)


def shown(error: BaseException) -> str:
    return " ".join([str(error), repr(error), repr(error.args)])


def private_key_lines(key_file: str) -> list[str]:
    return json.loads(key_file)["private_key"].splitlines()[1:-1]


# -- behaviour ---------------------------------------------------------------------------


async def test_find_suspend_and_read_back(env: Env, leaver_id: str) -> None:
    google = env.adapter()
    found = await google.find_user(LEAVER)
    assert found == IdpUser(id=leaver_id, login=LEAVER, status="suspended=false", deactivated=False)

    await google.deactivate_user(found.id)

    after = await google.get_user(found.id)
    assert after == IdpUser(
        id=leaver_id, login=LEAVER, status="suspended=true (ADMIN)", deactivated=True
    )
    [entry] = env.audit.entries(action="google.suspend")
    assert entry.target == leaver_id
    assert env.emulator.user_status(leaver_id) == "suspended"
    assert [(s.method, s.path, s.status) for s in env.seen] == [
        ("POST", "/token", 200),
        ("GET", f"{API}users/{LEAVER}", 200),
        ("PUT", f"{API}users/{leaver_id}", 200),
        ("GET", f"{API}users/{leaver_id}", 200),
    ]
    [put] = [s for s in env.api() if s.method == "PUT"]
    assert put.headers["Content-Type"] == "application/json"
    assert json.loads(put.body) == {"suspended": True}


async def test_the_jwt_grant(env: Env, leaver_id: str) -> None:
    google = env.adapter()
    await google.find_user(LEAVER)
    [token] = env.tokens()
    form = token.form()
    assert set(form) == {"grant_type", "assertion"}
    assert form["grant_type"] == JWT_BEARER_GRANT
    [(header, claims)] = env.emulator.assertions
    assert header["alg"] == "RS256"
    assert header["kid"] == json.loads(env.key)["private_key_id"]
    assert claims["iss"] == CLIENT_EMAIL
    assert claims["sub"] == ADMIN
    assert claims["scope"] == USER_SCOPE
    assert claims["aud"] == GOOGLE_TOKEN_URI  # the key file's token_uri, not where it was sent
    assert claims["exp"] - claims["iat"] == 3600
    for seen in env.api():
        assert seen.headers["Authorization"].startswith("Bearer ya29.")


async def test_without_an_override_the_key_files_token_uri_is_used(env: Env) -> None:
    own = make_service_account_key(f"{env.url}/token", client_email=CLIENT_EMAIL)
    env.emulator.service_account = ServiceAccount.from_key_file(own)
    google = env.adapter(service_account=env.key_file(own), token_url=None)
    assert google.token_url == f"{env.url}/token"
    await google.find_user(ADMIN)
    [(_, claims)] = env.emulator.assertions
    assert claims["aud"] == f"{env.url}/token"


async def test_sign_out_ends_sessions(env: Env, leaver_id: str) -> None:
    await env.adapter().revoke_sessions(leaver_id)
    assert env.emulator.live_sessions(leaver_id) == 0
    [entry] = env.audit.entries(action="google.sign_out")
    assert entry.detail == {"ended": 3}
    [post] = env.api()
    assert (post.method, post.path, post.status) == ("POST", f"{API}users/{leaver_id}/signOut", 204)


async def test_suspending_a_suspended_user_is_success(env: Env, leaver_id: str) -> None:
    google = env.adapter()
    already = env.emulator.add_user("gone@example.com", suspended=True, sessions=0)
    await google.deactivate_user(already)
    assert env.audit.entries() == []
    assert (await google.get_user(already)).deactivated

    await google.deactivate_user(leaver_id)
    await google.deactivate_user(leaver_id)
    assert len(env.audit.entries(action="google.suspend")) == 1


async def test_an_unsuspended_user_reads_active_again(env: Env, leaver_id: str) -> None:
    google = env.adapter()
    await google.deactivate_user(leaver_id)
    env.emulator.reactivate(leaver_id)
    assert (await google.get_user(leaver_id)).status == "suspended=false"
    assert [e.action for e in env.audit.entries()] == ["google.suspend", "google.unsuspend"]


async def test_unknown_user_is_permanent_with_a_clear_message(env: Env) -> None:
    google = env.adapter()
    with pytest.raises(PermanentError) as err:
        await google.find_user("ghost@example.com")
    assert str(err.value) == "google: no Google user with primary email 'ghost@example.com'"
    assert err.value.status == 404
    for call in (google.get_user, google.deactivate_user, google.revoke_sessions):
        with pytest.raises(PermanentError) as err:
            await call("118000000000000000000")
        assert str(err.value) == "google: no Google user with id '118000000000000000000'"


async def test_an_email_with_a_plus_is_found(env: Env) -> None:
    user_id = env.emulator.add_user("o.neil+offboard@example.com")
    assert (await env.adapter().find_user("o.neil+offboard@example.com")).id == user_id
    assert env.api()[-1].path == f"{API}users/o.neil%2Boffboard@example.com"


# -- refusals ----------------------------------------------------------------------------


async def test_a_key_google_does_not_know_is_permanent_and_not_shown(
    env: Env, leaver_id: str
) -> None:
    stranger = make_service_account_key(client_email=CLIENT_EMAIL)  # same account, other key
    google = env.adapter(service_account=env.key_file(stranger))
    with pytest.raises(PermanentError) as err:
        await google.deactivate_user(leaver_id)
    assert err.value.status == 400
    assert err.value.code == "invalid_grant"
    assert "Invalid JWT Signature." in str(err.value)
    for line in private_key_lines(stranger) + private_key_lines(env.key):
        assert line not in shown(err.value)
    assert env.api() == []
    assert env.emulator.user_status(leaver_id) == "active"


async def test_scope_not_delegated_is_permanent_401(env: Env) -> None:
    env.emulator.delegated_scopes = set()
    with pytest.raises(PermanentError) as err:
        await env.adapter().find_user(LEAVER)
    assert (err.value.status, err.value.code) == (401, "unauthorized_client")
    assert "Client is unauthorized to retrieve access tokens" in str(err.value)


async def test_a_delegated_admin_who_does_not_exist_is_permanent(env: Env) -> None:
    with pytest.raises(PermanentError) as err:
        await env.adapter(delegated_admin="nobody@example.com").find_user(LEAVER)
    assert (err.value.status, err.value.code) == (400, "invalid_grant")
    assert "Invalid email or User ID" in str(err.value)


async def test_a_delegated_user_who_is_no_admin_gets_a_permanent_403(
    env: Env, leaver_id: str
) -> None:
    env.emulator.add_user("plain@example.com")
    google = env.adapter(delegated_admin="plain@example.com")
    with pytest.raises(PermanentError) as err:
        await google.deactivate_user(leaver_id)
    assert not isinstance(err.value, TransientError)
    assert err.value.status == 403
    assert "Not Authorized to access this resource/api" in str(err.value)
    assert env.audit.entries() == []


async def test_a_revoked_token_is_replaced_once_and_a_lasting_401_is_permanent(
    env: Env, leaver_id: str
) -> None:
    google = env.adapter()
    await google.find_user(LEAVER)
    env.emulator.revoke_tokens()
    await google.get_user(leaver_id)
    assert env.audit.calls["google.token"] == 2
    assert [s.status for s in env.api()] == [200, 401, 200]

    env.faults.add(FaultRule(endpoint="google.get_user", kind="error", status=401, rate=1.0))
    with pytest.raises(PermanentError) as err:
        await google.get_user(leaver_id)
    assert err.value.status == 401
    assert "Request had invalid authentication credentials" in str(err.value)
    assert env.audit.calls["google.token"] == 3


# -- throttling and server errors --------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "status"),
    [("userRateLimitExceeded", 403), ("quotaExceeded", 403), ("rateLimitExceeded", 429)],
)
async def test_throttles_are_transient_without_a_hint_and_retried(
    env: Env, leaver_id: str, reason: str, status: int
) -> None:
    env.emulator.throttle_reason = reason
    google = env.adapter()
    env.faults.add(FaultRule(endpoint="google.suspend", kind="throttle", count=1))
    with pytest.raises(TransientError) as err:
        await google.deactivate_user(leaver_id)
    assert err.value.status == status
    assert err.value.retry_after is None  # Google gives none: exponential backoff applies
    assert env.emulator.user_status(leaver_id) == "active"

    env.faults.add(FaultRule(endpoint="google.suspend", kind="throttle", count=2))
    policy = RetryPolicy(attempts=5, initial=0.05, maximum=0.2, give_up_after=10)
    await with_retry(
        lambda: google.deactivate_user(leaver_id), policy, SystemClock(), operation="suspend"
    )
    attempts = [(at, o) for at, name, o in env.audit.requests if name == "google.suspend"]
    assert [o for _, o in attempts] == ["throttle", "throttle", "throttle", "ok"]
    # backed off: at least the lower half of 0.05 and of 0.1 between the retried attempts
    assert attempts[3][0] - attempts[1][0] >= timedelta(seconds=0.025 + 0.05)
    assert env.emulator.user_status(leaver_id) == "suspended"


def test_rate_limit_reason_prefers_the_error_code() -> None:
    # once the HTTP client hands over Google's errors[0].reason as the error's code
    coded = PermanentError(
        "google", "PUT /users/1 answered 403 (Whatever)", status=403, code="quotaExceeded"
    )
    assert rate_limit_reason(coded) == "quotaExceeded"
    refused = PermanentError(
        "google", "PUT /users/1 answered 403 (Rate Limit Exceeded)", status=403, code="forbidden"
    )
    assert rate_limit_reason(refused) is None
    # until then, Google's wording
    worded = PermanentError(
        "google", "GET /users/1 answered 403 (User Rate Limit Exceeded)", status=403
    )
    assert rate_limit_reason(worded) is not None
    denied = PermanentError(
        "google",
        "GET /users/1 answered 403 (Not Authorized to access this resource/api)",
        status=403,
    )
    assert rate_limit_reason(denied) is None
    elsewhere = PermanentError(
        "google", "GET /users/1 answered 400 (Rate Limit Exceeded)", status=400
    )
    assert rate_limit_reason(elsewhere) is None


async def test_server_errors_are_transient(env: Env, leaver_id: str) -> None:
    env.faults.add(FaultRule(endpoint="google.token", kind="error", count=1, status=503))
    env.faults.add(FaultRule(endpoint="google.sign_out", kind="error", count=1, status=500))
    google = env.adapter()
    with pytest.raises(TransientError) as err:
        await google.revoke_sessions(leaver_id)
    assert (err.value.status, err.value.retry_after) == (503, None)
    with pytest.raises(TransientError) as err:
        await google.revoke_sessions(leaver_id)
    assert (err.value.status, err.value.retry_after) == (500, None)
    assert "Backend Error" in str(err.value)
    assert env.audit.entries() == []


# -- the token cache ---------------------------------------------------------------------


@pytest.mark.parametrize("clock", [pytest.param(ManualClock(), id="manual-clock")])
async def test_the_token_is_cached_and_refreshed_before_it_expires(
    env: Env, leaver_id: str, clock: ManualClock
) -> None:
    google = env.adapter()
    await google.find_user(LEAVER)
    await google.get_user(leaver_id)
    await google.revoke_sessions(leaver_id)
    await google.deactivate_user(leaver_id)
    assert env.audit.calls["google.token"] == 1

    clock.advance(3599 - 301)
    await google.get_user(leaver_id)
    assert env.audit.calls["google.token"] == 1
    clock.advance(2)
    await google.get_user(leaver_id)
    assert env.audit.calls["google.token"] == 2
    # each grant was signed at its own time, on the same clock the emulator checks
    [(_, first), (_, second)] = env.emulator.assertions
    assert second["iat"] - first["iat"] == 3599 - 299
    clock.advance(4000)
    await google.get_user(leaver_id)
    assert env.audit.calls["google.token"] == 3
    assert all(s.status == 200 for s in env.api() if s.method == "GET")


async def test_concurrent_calls_share_one_token_request(env: Env, leaver_id: str) -> None:
    google = env.adapter()
    await asyncio.gather(*(google.get_user(leaver_id) for _ in range(5)))
    assert env.audit.calls["google.token"] == 1


# -- configuration, plan, wire shapes ----------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        "not json at all: hunter2-secret-material",
        json.dumps({"type": "authorized_user", "client_secret": "hunter2-secret-material"}),
        json.dumps(
            {
                "type": "service_account",
                "client_email": CLIENT_EMAIL,
                "token_uri": GOOGLE_TOKEN_URI,
                "private_key": "-----BEGIN PRIVATE KEY-----\nhunter2-secret-material\n"
                "-----END PRIVATE KEY-----\n",
            }
        ),
    ],
)
def test_a_bad_key_file_is_a_config_error_that_does_not_show_it(env: Env, content: str) -> None:
    with pytest.raises(ConfigError) as err:
        env.adapter(service_account=env.key_file(content))
    assert "idp.google.service_account" in str(err.value)
    assert "hunter2" not in str(err.value)


def test_plan_lists_the_calls(env: Env) -> None:
    google = env.adapter()
    deactivate = google.plan("idp.deactivate_user", LEAVER)
    assert [(c.method, c.mutates) for c in deactivate] == [
        ("POST", False),
        ("GET", False),
        ("PUT", True),
        ("GET", False),
    ]
    # the address is looked up by the resolve step; the deactivation reads the id it recorded
    resolve = google.plan("person.resolve", LEAVER)
    assert [(c.method, c.mutates) for c in resolve] == [("POST", False), ("GET", False)]
    assert resolve[1].target == f"{env.url}/admin/directory/v1/users/{LEAVER}"
    assert deactivate[1].target == f"{env.url}/admin/directory/v1/users/{{id}}"
    revoke = google.plan("idp.revoke_sessions", LEAVER)
    assert [(c.method, c.mutates) for c in revoke] == [
        ("POST", False),
        ("POST", True),
        ("GET", False),
    ]
    assert revoke[1].target.endswith("/users/{id}/signOut")
    assert google.plan("idp.unknown", LEAVER) == []
    assert env.seen == []


async def test_google_error_shapes(env: Env, leaver_id: str) -> None:
    async with env.http.get(f"{env.url}{API}users/{leaver_id}") as response:
        assert response.status == 401
        error = (await response.json())["error"]
    assert (error["code"], error["status"]) == (401, "UNAUTHENTICATED")
    assert error["errors"][0]["reason"] == "authError"

    token = (await env.adapter().tokens.token()).reveal()
    env.faults.add(FaultRule(endpoint="google.get_user", kind="throttle", count=1))
    async with env.http.get(
        f"{env.url}{API}users/{leaver_id}", headers={"Authorization": f"Bearer {token}"}
    ) as response:
        assert response.status == 403
        assert "Retry-After" not in response.headers
        error = (await response.json())["error"]
    assert (error["code"], error["status"]) == (403, "PERMISSION_DENIED")
    assert error["errors"][0]["reason"] == "userRateLimitExceeded"
    assert error["errors"][0]["domain"] == "usageLimits"


async def _exchange(env: Env, assertion: str) -> tuple[int, dict[str, Any]]:
    async with env.http.post(
        f"{env.url}/token", data={"grant_type": JWT_BEARER_GRANT, "assertion": assertion}
    ) as response:
        return response.status, await response.json()


async def test_the_emulator_checks_the_grant(env: Env) -> None:
    data = json.loads(env.key)
    own = serialization.load_pem_private_key(data["private_key"].encode(), None)
    other = serialization.load_pem_private_key(
        json.loads(make_service_account_key())["private_key"].encode(), None
    )
    now = int(time.time())
    good = {
        "iss": CLIENT_EMAIL,
        "sub": ADMIN,
        "scope": USER_SCOPE,
        "aud": GOOGLE_TOKEN_URI,
        "iat": now,
        "exp": now + 3600,
    }

    def sign(key: Any, **changes: Any) -> str:
        return jwt.encode({**good, **changes}, key, algorithm="RS256")

    status, body = await _exchange(env, sign(own))
    assert status == 200 and body["token_type"] == "Bearer"
    refusals = [
        (sign(other), 400, "invalid_grant", "Invalid JWT Signature."),
        (sign(own, iss="someone@else.iam.gserviceaccount.com"), 400, "invalid_grant", "account"),
        (sign(own, aud="https://example.com/token"), 400, "invalid_grant", "audience"),
        (sign(own, exp=now + 7200), 400, "invalid_grant", "short-lived"),
        (sign(own, iat=now - 7200, exp=now - 3600), 400, "invalid_grant", "short-lived"),
        (sign(own, scope=""), 400, "invalid_scope", "scope"),
        (sign(own, sub="nobody@example.com"), 400, "invalid_grant", "Invalid email"),
        (
            sign(own, scope="https://www.googleapis.com/auth/admin.directory.group"),
            401,
            "unauthorized_client",
            "unauthorized",
        ),
    ]
    for assertion, expected_status, error, words in refusals:
        status, body = await _exchange(env, assertion)
        assert (status, body["error"]) == (expected_status, error), body
        assert words in body["error_description"]
    assert len(env.emulator.assertions) == 1


# -- Google's own definition (tests/google_spec.py) ---------------------------------------


async def test_every_google_exchange_is_one_the_directory_api_defines(
    env: Env, leaver_id: str, google_conformance: list[WireExchange]
) -> None:
    """The adapter's whole repertoire — token, find, suspend, read back, sign out, an
    unknown user, each throttle Google sends, a server error — checked against the
    discovery document and Google's own client and auth libraries."""
    await idp_repertoire(
        env.adapter(), env.faults, LEAVER, read="google.get_user", revoke="google.sign_out"
    )

    api = [e for e in google_conformance if e.raw_path.startswith(API)]
    directory = load_google_directory()
    methods = [directory.method_for(e.method, e.path)[0] for e in api]
    assert {m.id for m in methods if m is not None} == {
        "directory.users.get",
        "directory.users.update",
        "directory.users.signOut",
    }
    assert {(e.method, e.status) for e in api} == {
        ("GET", 403), ("GET", 200), ("PUT", 200), ("POST", 503), ("POST", 204), ("GET", 404)
    }  # fmt: skip
    assert [e.status for e in google_conformance if e.raw_path == "/token"] == [200]
    assert conformance(google_conformance, google_exchange_errors) == []
