"""The Entra ID adapter (worker.providers.entra) against the Entra emulator, over real HTTP.

The emulator is served with one extra, outermost middleware that keeps every request
the adapter sends and the status it got, so that the tests can check the wire: the
token form, the Graph paths and queries, and where credentials travel.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from multidict import CIMultiDict

from tests.flows import idp_repertoire
from tests.graph_spec import builder_for
from tests.graph_spec import exchange_errors as graph_exchange_errors
from tests.wire import WireExchange, conformance
from worker.clock import Clock, ManualClock, SystemClock
from worker.config import EntraConfig, SecretRef
from worker.errors import ConfigError, PermanentError, TransientError
from worker.providers.base import IdpUser
from worker.providers.entra import Entra, user_path
from worker.retry import RetryPolicy, with_retry
from worker.sandbox.common import AuditLog, FaultPlan, FaultRule, Handler, serve_on_loopback
from worker.sandbox.entra import EntraEmulator, make_certificate

TENANT = "3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b"
CLIENT_ID = "8d1e6f0a-2b3c-4d5e-8f9a-0b1c2d3e4f5a"
CLIENT_SECRET = "Qx8~sandbox.client-secret_value-0123456789"
SECRET_ENV = "OFFBOARD_TEST_ENTRA_CLIENT_SECRET"
LEAVER = "leaver@example.com"
SELECT = "id,userPrincipalName,accountEnabled"
#: RFC 7523 2.2; written from the RFC, not imported, so that a wrong value in the adapter
#: or the emulator shows up here instead of agreeing with itself
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def certificate_thumbprints(certificate: x509.Certificate) -> dict[str, str]:
    """RFC 7515 4.1.7-4.1.8: the base64url SHA-256 and SHA-1 digests of the DER."""
    der = certificate.public_bytes(serialization.Encoding.DER)

    def b64url(digest: bytes) -> str:
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    return {
        "x5t#S256": b64url(hashlib.sha256(der).digest()),
        "x5t": b64url(hashlib.sha1(der).digest()),  # noqa: S324 - a name, not a MAC
    }


@dataclass
class Seen:
    method: str
    path: str  # as sent, percent-encoding and all, without the query
    query: list[tuple[str, str]]
    headers: CIMultiDict[str]
    body: bytes
    status: int = 0
    response_headers: CIMultiDict[str] = field(default_factory=CIMultiDict)

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode()))


@dataclass
class Env:
    emulator: EntraEmulator
    audit: AuditLog
    faults: FaultPlan
    clock: Clock
    url: str
    http: aiohttp.ClientSession
    seen: list[Seen]
    key_file: Path
    cert_file: Path

    def config(self, **overrides: Any) -> EntraConfig:
        settings: dict[str, Any] = {
            "tenant_id": TENANT,
            "client_id": CLIENT_ID,
            "graph_url": f"{self.url}/v1.0",
            "login_url": self.url,
            "timeout_seconds": 2.0,
        }
        settings.update(overrides)
        if "certificate" not in settings:
            settings.setdefault("client_secret", SecretRef(env=SECRET_ENV))
        return EntraConfig(**settings)

    def adapter(self, **overrides: Any) -> Entra:
        return Entra(self.config(**overrides), self.http, clock=self.clock)

    def with_certificate(self) -> Entra:
        return self.adapter(
            certificate_key=SecretRef(file=str(self.key_file)),
            certificate=SecretRef(file=str(self.cert_file)),
        )

    def graph(self) -> list[Seen]:
        return [s for s in self.seen if s.path.startswith("/v1.0/")]

    def token_requests(self) -> list[Seen]:
        return [s for s in self.seen if s.path.endswith("/oauth2/v2.0/token")]


@pytest.fixture(scope="session")
def registered() -> tuple[str, str]:
    """The app's certificate (PEM key, PEM certificate), registered with the emulator."""
    return make_certificate("offboard-entra-test")


@pytest.fixture
def clock() -> Clock:
    return SystemClock()


@pytest.fixture
async def env(
    clock: Clock,
    registered: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Env]:
    monkeypatch.setenv(SECRET_ENV, CLIENT_SECRET)
    key_pem, cert_pem = registered
    key_file, cert_file = tmp_path / "entra.key", tmp_path / "entra.crt"
    key_file.write_text(key_pem)
    cert_file.write_text(cert_pem)
    audit = AuditLog(clock)
    faults = FaultPlan(seed=3)
    emulator = EntraEmulator(
        audit=audit,
        faults=faults,
        clock=clock,
        tenant_id=TENANT,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        certificates=[cert_pem],
    )
    seen: list[Seen] = []

    @web.middleware
    async def capture(request: web.Request, handler: Handler) -> web.StreamResponse:
        entry = Seen(
            method=request.method,
            path=request.raw_path.partition("?")[0],
            query=list(request.query.items()),
            headers=CIMultiDict(request.headers),
            body=await request.read(),
        )
        seen.append(entry)
        response = await handler(request)
        entry.status = response.status
        entry.response_headers = CIMultiDict(response.headers)
        return response

    app = emulator.app()
    app.middlewares.insert(0, capture)
    served = await serve_on_loopback(app)
    try:
        async with aiohttp.ClientSession() as http:
            yield Env(emulator, audit, faults, clock, served.url, http, seen, key_file, cert_file)
    finally:
        await served.close()


@pytest.fixture
def leaver_id(env: Env) -> str:
    return env.emulator.add_user(LEAVER, display_name="Leaver Example", sessions=2)


def shown(error: BaseException) -> str:
    return " ".join([str(error), repr(error), repr(error.args)])


# -- behaviour ---------------------------------------------------------------------------


async def test_find_disable_and_read_back(env: Env, leaver_id: str) -> None:
    entra = env.adapter()
    found = await entra.find_user(LEAVER)
    assert found == IdpUser(
        id=leaver_id, login=LEAVER, status="accountEnabled=true", deactivated=False
    )

    await entra.deactivate_user(found.id)

    after = await entra.get_user(found.id)
    assert after == IdpUser(
        id=leaver_id, login=LEAVER, status="accountEnabled=false", deactivated=True
    )
    [entry] = env.audit.entries(action="entra.disable")
    assert entry.target == leaver_id
    assert env.emulator.user_status(leaver_id) == "disabled"
    assert [(s.method, s.path, s.status) for s in env.seen] == [
        ("POST", f"/{TENANT}/oauth2/v2.0/token", 200),
        ("GET", f"/v1.0/users/{LEAVER}", 200),
        ("PATCH", f"/v1.0/users/{leaver_id}", 204),
        ("GET", f"/v1.0/users/{leaver_id}", 200),
    ]
    reads = [s for s in env.graph() if s.method == "GET"]
    assert all(s.query == [("$select", SELECT)] for s in reads)
    [patch] = [s for s in env.graph() if s.method == "PATCH"]
    assert patch.headers["Content-Type"] == "application/json"
    assert patch.body == b'{"accountEnabled": false}'


async def test_the_token_request_and_where_the_secret_travels(env: Env, leaver_id: str) -> None:
    entra = env.adapter()
    await entra.find_user(LEAVER)
    await entra.revoke_sessions(leaver_id)

    [token] = env.token_requests()
    assert token.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert token.form() == {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        # the scope is the Graph origin with /.default, so the sandbox's origin here
        "scope": f"{env.url}/.default",
        "client_secret": CLIENT_SECRET,
    }
    assert token.query == []
    for seen in env.graph():
        assert seen.headers["Authorization"].startswith("Bearer ")
        assert CLIENT_SECRET not in seen.headers["Authorization"]
        assert CLIENT_SECRET not in seen.path + str(seen.query)
    # The production scope follows from the production Graph URL
    production = EntraConfig(
        tenant_id=TENANT, client_id=CLIENT_ID, client_secret=SecretRef(env=SECRET_ENV)
    )
    assert Entra(production, env.http).scope == "https://graph.microsoft.com/.default"
    assert Entra(production, env.http).token_url == (
        f"https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token"
    )


async def test_revoke_sessions_ends_them(env: Env, leaver_id: str) -> None:
    entra = env.adapter()
    await entra.revoke_sessions(leaver_id)
    assert env.emulator.live_sessions(leaver_id) == 0
    [entry] = env.audit.entries(action="entra.revoke_sessions")
    assert entry.detail == {"ended": 2}
    [post] = env.graph()
    assert (post.method, post.path, post.status) == (
        "POST",
        f"/v1.0/users/{leaver_id}/revokeSignInSessions",
        200,
    )


async def test_disabling_a_disabled_account_is_success(env: Env, leaver_id: str) -> None:
    entra = env.adapter()
    already = env.emulator.add_user("gone@example.com", account_enabled=False, sessions=0)
    await entra.deactivate_user(already)
    assert env.audit.entries() == []
    assert (await entra.get_user(already)).deactivated

    await entra.deactivate_user(leaver_id)
    await entra.deactivate_user(leaver_id)
    assert len(env.audit.entries(action="entra.disable")) == 1
    assert [s.status for s in env.graph() if s.method == "PATCH"] == [204, 204, 204]


async def test_a_reenabled_account_reads_enabled_again(env: Env, leaver_id: str) -> None:
    entra = env.adapter()
    await entra.deactivate_user(leaver_id)
    env.emulator.reactivate(leaver_id)
    assert not (await entra.get_user(leaver_id)).deactivated
    assert [e.action for e in env.audit.entries()] == ["entra.disable", "entra.enable"]


async def test_unknown_user_is_permanent_with_a_clear_message(env: Env) -> None:
    entra = env.adapter()
    with pytest.raises(PermanentError) as err:
        await entra.find_user("ghost@example.com")
    assert str(err.value) == "entra: no Entra user with userPrincipalName 'ghost@example.com'"
    assert err.value.status == 404
    nobody = str(uuid.uuid4())
    for call in (entra.get_user, entra.deactivate_user, entra.revoke_sessions):
        with pytest.raises(PermanentError) as err:
            await call(nobody)
        assert str(err.value) == f"entra: no Entra user with id '{nobody}'"


@pytest.mark.parametrize(
    ("upn", "raw_path"),
    [
        # a guest: "#" must be encoded, or it would end the path
        (
            "ada_contoso.com#EXT#@tenant.onmicrosoft.com",
            "/v1.0/users/ada_contoso.com%23EXT%23@tenant.onmicrosoft.com",
        ),
        ("o.neil+offboard@example.com", "/v1.0/users/o.neil%2Boffboard@example.com"),
        # Graph reads /users/$x as an OData segment: such a UPN goes in ('...')
        ("$adele@example.com", "/v1.0/users('$adele@example.com')"),
    ],
)
async def test_special_user_principal_names(env: Env, upn: str, raw_path: str) -> None:
    user_id = env.emulator.add_user(upn)
    found = await env.adapter().find_user(upn)
    assert (found.id, found.login) == (user_id, upn)
    assert env.graph()[-1].path == raw_path


def test_a_dollar_upn_with_a_quote_is_escaped_as_odata() -> None:
    assert user_path("$o'neil@example.com") == "/users('$o''neil@example.com')"


async def test_wrong_client_secret_is_permanent_401_without_the_secret(
    env: Env, leaver_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "Wr0ng~client-secret-that-must-not-leak-9f8e"
    monkeypatch.setenv(SECRET_ENV, wrong)
    entra = env.adapter()
    for call in (
        lambda: entra.find_user(LEAVER),
        lambda: entra.deactivate_user(leaver_id),
        lambda: entra.revoke_sessions(leaver_id),
    ):
        with pytest.raises(PermanentError) as err:
            await call()
        assert err.value.status == 401
        assert err.value.code == "invalid_client"
        assert "AADSTS7000215: Invalid client secret provided." in str(err.value)
        assert "Trace ID" not in str(err.value)  # the first line of the description only
        assert wrong not in shown(err.value)
        assert CLIENT_SECRET not in shown(err.value)
    assert env.graph() == []  # nothing reached Graph without a token
    assert env.audit.entries() == []
    assert env.emulator.user_status(leaver_id) == "enabled"


async def test_missing_graph_permission_is_permanent_403(env: Env, leaver_id: str) -> None:
    env.emulator.roles = {"User.Read.All"}
    entra = env.adapter()
    assert not (await entra.find_user(LEAVER)).deactivated
    for call in (entra.deactivate_user, entra.revoke_sessions):
        with pytest.raises(PermanentError) as err:
            await call(leaver_id)
        assert err.value.status == 403
        assert "Insufficient privileges to complete the operation." in str(err.value)
    assert env.audit.entries() == []
    # the least-privileged roles that suffice
    env.emulator.roles = {"User.Read.All", "User.EnableDisableAccount.All"}
    await entra.deactivate_user(leaver_id)
    assert env.emulator.user_status(leaver_id) == "disabled"


async def test_an_account_mastered_on_premises_is_permanent(env: Env) -> None:
    synced = env.emulator.add_user("synced@example.com", on_premises_sync=True)
    with pytest.raises(PermanentError) as err:
        await env.adapter().deactivate_user(synced)
    assert err.value.status == 400
    assert "on-premises mastered Directory Sync objects" in str(err.value)


async def test_a_revoked_token_is_replaced_once_and_a_lasting_401_is_permanent(
    env: Env, leaver_id: str
) -> None:
    entra = env.adapter()
    await entra.find_user(LEAVER)
    env.emulator.revoke_tokens()
    await entra.get_user(leaver_id)  # 401, a fresh token, the same request again
    assert env.audit.calls["entra.token"] == 2
    assert [s.status for s in env.graph()] == [200, 401, 200]

    env.faults.add(FaultRule(endpoint="entra.get_user", kind="error", status=401, rate=1.0))
    with pytest.raises(PermanentError) as err:
        await entra.get_user(leaver_id)
    assert err.value.status == 401
    assert "Access token has expired or is not yet valid." in str(err.value)
    assert env.audit.calls["entra.token"] == 3  # one more token, not a loop


async def test_throttled_disable_waits_for_retry_after(env: Env, leaver_id: str) -> None:
    entra = env.adapter()
    await entra.find_user(LEAVER)  # the token, so only the PATCH is timed
    env.faults.add(FaultRule(endpoint="entra.disable", kind="throttle", count=1, retry_after=1.0))

    policy = RetryPolicy(attempts=4, initial=0.01, maximum=0.05, give_up_after=10)
    await with_retry(
        lambda: entra.deactivate_user(leaver_id), policy, SystemClock(), operation="disable"
    )

    attempts = [
        (at, outcome) for at, name, outcome in env.audit.requests if name == "entra.disable"
    ]
    assert [outcome for _, outcome in attempts] == ["throttle", "ok"]
    assert (attempts[1][0] - attempts[0][0]) >= timedelta(seconds=1)
    [throttled] = [s for s in env.graph() if s.status == 429]
    assert throttled.response_headers["Retry-After"] == "1"
    assert env.emulator.user_status(leaver_id) == "disabled"


async def test_throttle_is_transient_with_the_hint(env: Env, leaver_id: str) -> None:
    env.faults.add(FaultRule(endpoint="entra.get_user", kind="throttle", count=1, retry_after=2))
    before = time.monotonic()
    with pytest.raises(TransientError) as err:
        await env.adapter().find_user(LEAVER)
    assert time.monotonic() - before < 1  # the adapter reports; the retry policy waits
    assert err.value.status == 429
    assert err.value.retry_after == 2
    assert "Please retry again later." in str(err.value)


async def test_a_throttled_token_request_is_transient_with_the_hint(env: Env) -> None:
    env.faults.add(FaultRule(endpoint="entra.token", kind="throttle", count=1, retry_after=3))
    with pytest.raises(TransientError) as err:
        await env.adapter().find_user(LEAVER)
    assert err.value.retry_after == 3
    assert err.value.code == "temporarily_unavailable"
    assert "AADSTS90055" in str(err.value)
    assert CLIENT_SECRET not in shown(err.value)


async def test_server_errors_are_transient_without_a_hint(env: Env, leaver_id: str) -> None:
    env.faults.add(FaultRule(endpoint="entra.revoke_sessions", kind="error", count=1, status=503))
    env.faults.add(FaultRule(endpoint="entra.token", kind="error", count=1, status=500))
    entra = env.adapter()
    with pytest.raises(TransientError) as err:
        await entra.find_user(LEAVER)
    assert (err.value.status, err.value.retry_after) == (500, None)
    assert "AADSTS90033" in str(err.value)
    with pytest.raises(TransientError) as err:
        await entra.revoke_sessions(leaver_id)
    assert (err.value.status, err.value.retry_after) == (503, None)
    assert env.audit.entries() == []


@pytest.mark.parametrize("clock", [pytest.param(ManualClock(), id="manual-clock")])
async def test_the_token_is_cached_and_refreshed_before_it_expires(
    env: Env, leaver_id: str, clock: ManualClock
) -> None:
    entra = env.adapter()
    await entra.find_user(LEAVER)
    await entra.get_user(leaver_id)
    await entra.revoke_sessions(leaver_id)
    await entra.deactivate_user(leaver_id)
    assert env.audit.calls["entra.token"] == 1

    clock.advance(3599 - 301)  # more than five minutes left: the same token
    await entra.get_user(leaver_id)
    assert env.audit.calls["entra.token"] == 1
    clock.advance(2)  # less than five minutes left: a new one, before the old expires
    await entra.get_user(leaver_id)
    assert env.audit.calls["entra.token"] == 2
    clock.advance(3599 - 300)
    await entra.get_user(leaver_id)
    assert env.audit.calls["entra.token"] == 3
    # no request was ever refused for an expired token
    assert all(s.status == 200 for s in env.graph() if s.method == "GET")


@pytest.mark.parametrize("clock", [pytest.param(ManualClock(), id="manual-clock")])
async def test_a_short_lived_token_is_refreshed_at_half_its_life(
    env: Env, leaver_id: str, clock: ManualClock
) -> None:
    env.emulator.token_lifetime = 60
    entra = env.adapter()
    await entra.get_user(leaver_id)
    clock.advance(29)
    await entra.get_user(leaver_id)
    assert env.audit.calls["entra.token"] == 1
    clock.advance(2)
    await entra.get_user(leaver_id)
    assert env.audit.calls["entra.token"] == 2


async def test_concurrent_calls_share_one_token_request(env: Env, leaver_id: str) -> None:
    entra = env.adapter()
    await asyncio.gather(*(entra.get_user(leaver_id) for _ in range(5)))
    assert env.audit.calls["entra.token"] == 1


# -- the certificate credential ----------------------------------------------------------


async def test_a_certificate_assertion_is_verified_by_the_emulator(
    env: Env, leaver_id: str, registered: tuple[str, str]
) -> None:
    entra = env.with_certificate()
    await entra.find_user(LEAVER)
    env.emulator.revoke_tokens()
    await entra.deactivate_user(leaver_id)
    assert env.emulator.user_status(leaver_id) == "disabled"

    requests = env.token_requests()
    assert len(requests) == 2
    for seen in requests:
        form = seen.form()
        assert "client_secret" not in form
        assert form["client_assertion_type"] == CLIENT_ASSERTION_TYPE
        assert form["scope"] == f"{env.url}/.default"
        assert form["client_id"] == CLIENT_ID
    certificate = x509.load_pem_x509_certificate(registered[1].encode())
    thumbprints = certificate_thumbprints(certificate)
    [(header1, claims1), (header2, claims2)] = env.emulator.assertions
    for header, claims in ((header1, claims1), (header2, claims2)):
        assert header["alg"] == "RS256"
        assert header["x5t#S256"] == thumbprints["x5t#S256"]
        assert header["x5t"] == thumbprints["x5t"]
        assert claims["aud"] == entra.token_url == f"{env.url}/{TENANT}/oauth2/v2.0/token"
        assert claims["iss"] == claims["sub"] == CLIENT_ID
        assert 0 < claims["exp"] - claims["nbf"] <= 600
    assert claims1["jti"] != claims2["jti"]


async def test_a_certificate_not_registered_is_refused(env: Env, tmp_path: Path) -> None:
    key_pem, cert_pem = make_certificate("not-registered")
    (tmp_path / "other.key").write_text(key_pem)
    (tmp_path / "other.crt").write_text(cert_pem)
    entra = env.adapter(
        certificate_key=SecretRef(file=str(tmp_path / "other.key")),
        certificate=SecretRef(file=str(tmp_path / "other.crt")),
    )
    with pytest.raises(PermanentError) as err:
        await entra.find_user(LEAVER)
    assert err.value.status == 401
    assert "AADSTS700027" in str(err.value)
    body = key_pem.splitlines()[1]
    assert body not in shown(err.value)
    assert env.emulator.assertions == []


async def _post_assertion(env: Env, assertion: str) -> tuple[int, dict[str, Any]]:
    async with env.http.post(
        f"{env.url}/{TENANT}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": CLIENT_ID,
            "scope": "https://graph.microsoft.com/.default",
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": assertion,
        },
    ) as response:
        return response.status, await response.json()


async def test_the_emulator_refuses_forged_and_misaddressed_assertions(
    env: Env, registered: tuple[str, str]
) -> None:
    key_pem, cert_pem = registered
    certificate = x509.load_pem_x509_certificate(cert_pem.encode())
    own_key = serialization.load_pem_private_key(key_pem.encode(), None)
    other_key = serialization.load_pem_private_key(make_certificate()[0].encode(), None)
    now = int(time.time())
    good = {
        "iss": CLIENT_ID,
        "sub": CLIENT_ID,
        "aud": f"{env.url}/{TENANT}/oauth2/v2.0/token",
        "jti": "first",
        "nbf": now,
        "exp": now + 600,
    }
    headers = certificate_thumbprints(certificate)

    def sign(key: Any, **changes: Any) -> str:
        return jwt.encode({**good, **changes}, key, algorithm="RS256", headers=headers)

    status, body = await _post_assertion(env, sign(own_key))
    assert status == 200 and body["token_type"] == "Bearer"
    refusals = [
        (sign(own_key), 401, 50027),  # the same jti again: a replay
        (sign(other_key, jti="forged"), 401, 700027),  # the registered thumbprint, another key
        (sign(own_key, jti="aud", aud="https://example.com/token"), 401, 50027),
        (sign(own_key, jti="iss", iss="someone-else"), 401, 700021),
        (sign(own_key, jti="old", nbf=now - 3600, exp=now - 1800), 401, 700024),
        ("not-a-jwt", 401, 50027),
    ]
    for assertion, expected_status, code in refusals:
        status, body = await _post_assertion(env, assertion)
        assert (status, body["error"], body["error_codes"]) == (
            expected_status,
            "invalid_client",
            [code],
        ), body["error_description"]
        assert body["error_description"].startswith(f"AADSTS{code}: ")
    assert len(env.emulator.assertions) == 1


def test_a_certificate_that_is_not_the_keys_is_a_config_error(env: Env, tmp_path: Path) -> None:
    other = tmp_path / "other.crt"
    other.write_text(make_certificate()[1])
    with pytest.raises(ConfigError, match=r"does not belong to idp\.entra\.certificate_key"):
        env.adapter(
            certificate_key=SecretRef(file=str(env.key_file)),
            certificate=SecretRef(file=str(other)),
        )
    garbage = tmp_path / "garbage.key"
    garbage.write_text(
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWJ1dC1icm9rZW4=\n-----END PRIVATE KEY-----"
    )
    with pytest.raises(ConfigError) as err:
        env.adapter(
            certificate_key=SecretRef(file=str(garbage)), certificate=SecretRef(file=str(other))
        )
    assert "idp.entra.certificate_key" in str(err.value)
    assert "c2VjcmV0" not in str(err.value)


# -- the plan and the emulator's wire shapes ---------------------------------------------


def test_plan_lists_the_calls(env: Env) -> None:
    entra = env.adapter()
    deactivate = entra.plan("idp.deactivate_user", LEAVER)
    assert [(c.method, c.mutates) for c in deactivate] == [
        ("POST", False),
        ("GET", False),
        ("PATCH", True),
        ("GET", False),
    ]
    # the address is looked up by the resolve step; the deactivation reads the id it recorded
    resolve = entra.plan("person.resolve", LEAVER)
    assert [(c.method, c.mutates) for c in resolve] == [("POST", False), ("GET", False)]
    assert resolve[1].target == f"{env.url}/v1.0/users/{LEAVER}?$select={SELECT}"
    assert deactivate[1].target == f"{env.url}/v1.0/users/{{id}}?$select={SELECT}"
    assert "accountEnabled: false" in deactivate[2].target
    revoke = entra.plan("idp.revoke_sessions", LEAVER)
    assert [(c.method, c.mutates) for c in revoke] == [
        ("POST", False),
        ("POST", True),
        ("GET", False),
    ]
    assert revoke[1].target.endswith("/users/{id}/revokeSignInSessions")
    assert entra.plan("idp.unknown", LEAVER) == []
    assert env.seen == []  # planning calls nothing


async def test_graph_error_shapes(env: Env, leaver_id: str) -> None:
    async with env.http.get(f"{env.url}/v1.0/users/{leaver_id}") as response:
        assert response.status == 401
        error = (await response.json())["error"]
    assert error["code"] == "InvalidAuthenticationToken"
    assert {"message", "innerError"} <= set(error)

    env.faults.add(FaultRule(endpoint="entra.get_user", kind="throttle", count=1, retry_after=1.5))
    async with env.http.get(f"{env.url}/v1.0/users/{leaver_id}") as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "2"
        assert (await response.json())["error"]["code"] == "TooManyRequests"


async def test_graph_leaves_account_enabled_out_unless_selected(env: Env, leaver_id: str) -> None:
    entra = env.adapter()
    token = (await entra.tokens.token()).reveal()
    auth = {"Authorization": f"Bearer {token}"}
    async with env.http.get(f"{env.url}/v1.0/users/{leaver_id}", headers=auth) as response:
        plain = await response.json()
    assert "accountEnabled" not in plain
    assert plain["userPrincipalName"] == LEAVER
    async with env.http.get(
        f"{env.url}/v1.0/users/{leaver_id}", params={"$select": "accountEnabled"}, headers=auth
    ) as response:
        selected = await response.json()
    assert selected["accountEnabled"] is True
    assert selected["@odata.context"].endswith("#users(accountEnabled)/$entity")


# -- Graph's own definition (tests/graph_spec.py) -----------------------------------------


async def test_every_graph_exchange_is_one_graph_defines(
    env: Env, leaver_id: str, graph_conformance: list[WireExchange]
) -> None:
    """The adapter's whole repertoire — find, disable, read back, revoke, an unknown
    user, a throttle, a server error — checked against msgraph-sdk's builders and
    models here (and by the module's fixture after every other test)."""
    await idp_repertoire(
        env.adapter(), env.faults, LEAVER, read="entra.get_user", revoke="entra.revoke_sessions"
    )

    graph = [e for e in graph_conformance if e.raw_path.startswith("/v1.0/")]
    assert {(e.method, e.status) for e in graph} == {
        ("GET", 429), ("GET", 200), ("PATCH", 204), ("POST", 503), ("POST", 200), ("GET", 404)
    }  # fmt: skip
    checked = {builder_for(e.path.removeprefix("/v1.0"))[0] for e in graph}
    assert {b.cls.__name__ for b in checked if b is not None} == {
        "UserItemRequestBuilder",
        "RevokeSignInSessionsRequestBuilder",
    }
    assert conformance(graph_conformance, graph_exchange_errors) == []
