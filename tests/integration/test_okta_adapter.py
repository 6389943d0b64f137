"""The Okta adapter (worker.providers.okta) against the Okta emulator, over real HTTP.

The emulator is served with one extra, outermost middleware that keeps every request
the adapter sends and the answer it got, so that each request can be checked against
Okta's published Management API spec, and the throttle test can see the headers.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict
from openapi_core.templating.paths.exceptions import OperationNotFound, PathNotFound
from openapi_core.testing import MockRequest, MockResponse
from openapi_core.validation.request.exceptions import InvalidParameter, ParameterValidationError

from tests.okta_spec import SPEC_HOST, OktaSpec, load_okta_spec
from worker.config import LimitsConfig, OktaConfig, SecretRef
from worker.errors import PermanentError, TransientError
from worker.providers.base import IdpUser
from worker.providers.okta import Okta
from worker.sandbox import Sandbox
from worker.sandbox.common import FaultRule, Handler, serve_on_loopback

TOKEN_ENV = "OFFBOARD_SANDBOX_OKTA_TOKEN"  # set by the conftest `sandbox` fixture
LEAVER = "leaver@example.com"


@dataclass
class Seen:
    """One request as it arrived, and the answer that left."""

    method: str
    path: str  # as sent, percent-encoding and all, without the query
    query: list[tuple[str, str]]
    headers: CIMultiDict[str]
    body: bytes
    status: int = 0
    response_headers: CIMultiDict[str] = field(default_factory=CIMultiDict)
    response_body: bytes = b""

    def mock_request(self) -> MockRequest:
        return MockRequest(
            SPEC_HOST,
            self.method,
            self.path,
            args=dict(self.query),
            headers=dict(self.headers),
            data=self.body or None,
            content_type=self.headers.get("Content-Type", ""),
        )

    def mock_response(self) -> MockResponse:
        return MockResponse(
            self.response_body,
            status_code=self.status,
            headers=dict(self.response_headers),
            content_type=self.response_headers.get("Content-Type", "").lower(),
        )


@dataclass
class Served:
    url: str
    seen: list[Seen]

    def api(self) -> list[Seen]:
        return [s for s in self.seen if s.path.startswith("/api/")]


@pytest.fixture(scope="session")
def spec() -> OktaSpec:
    return load_okta_spec()


@pytest.fixture
async def served(sandbox: Sandbox) -> AsyncIterator[Served]:
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
        if isinstance(response, web.Response) and isinstance(response.body, bytes):
            entry.response_body = response.body
        return response

    app = sandbox.okta.app()
    # outermost, so that it sees what the rate-limit edge and the fault injection answer too
    app.middlewares.insert(0, capture)
    running = await serve_on_loopback(app)
    try:
        yield Served(running.url, seen)
    finally:
        await running.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def adapter(served: Served, http: aiohttp.ClientSession) -> Okta:
    """Built when called, so that a test can change the token's variable first."""
    return Okta(OktaConfig(org_url=served.url, token=SecretRef(env=TOKEN_ENV)), http)


@pytest.fixture
def okta(served: Served, http: aiohttp.ClientSession) -> Okta:
    return adapter(served, http)


@pytest.fixture
def okta_id(sandbox: Sandbox) -> str:
    return sandbox.okta.add_user(LEAVER, first_name="Leaver", last_name="Example", sessions=2)


def request_errors(spec: OktaSpec, request: MockRequest) -> list[Exception]:
    with warnings.catch_warnings():
        # see tests/okta_spec.py: the spec's oauth2 alternative cannot be checked
        warnings.filterwarnings("ignore", "Unsupported scheme type", UserWarning)
        return list(spec.api.iter_request_errors(request))


# -- behaviour ---------------------------------------------------------------------------


async def test_find_deactivate_and_read_back(
    okta: Okta, okta_id: str, sandbox: Sandbox, served: Served
) -> None:
    found = await okta.find_user(LEAVER)
    assert found == IdpUser(id=okta_id, login=LEAVER, status="ACTIVE", deactivated=False)

    await okta.deactivate_user(found.id)

    after = await okta.get_user(found.id)
    assert after == IdpUser(id=okta_id, login=LEAVER, status="DEPROVISIONED", deactivated=True)
    [entry] = sandbox.audit.entries(action="okta.deactivate")
    assert entry.target == okta_id
    assert entry.detail["send_email"] is False
    assert entry.detail["asynchronous"] is False
    assert sandbox.okta.live_sessions(okta_id) == 0
    assert [(s.method, s.path, s.status) for s in served.api()] == [
        ("GET", f"/api/v1/users/{LEAVER}", 200),
        ("POST", f"/api/v1/users/{okta_id}/lifecycle/deactivate", 200),
        ("GET", f"/api/v1/users/{okta_id}", 200),
    ]


async def test_deactivating_twice_is_success_and_audited_once(
    okta: Okta, okta_id: str, sandbox: Sandbox, served: Served
) -> None:
    await okta.deactivate_user(okta_id)
    # Okta answers 404 to deactivating a DEPROVISIONED user; the adapter reads and accepts.
    await okta.deactivate_user(okta_id)

    assert len(sandbox.audit.entries(action="okta.deactivate")) == 1
    assert (await okta.get_user(okta_id)).deactivated
    assert [(s.method, s.status) for s in served.api()] == [
        ("POST", 200),
        ("POST", 404),
        ("GET", 200),
        ("GET", 200),
    ]


async def test_a_user_deactivated_by_someone_else_is_success(okta: Okta, sandbox: Sandbox) -> None:
    gone = sandbox.okta.add_user("gone@example.com", status="DEPROVISIONED", sessions=0)
    await okta.deactivate_user(gone)
    assert sandbox.audit.entries() == []


async def test_a_deactivation_under_way_elsewhere_is_not_a_permanent_failure(
    okta: Okta, okta_id: str, sandbox: Sandbox, served: Served, http: aiohttp.ClientSession
) -> None:
    """Someone else (an HR-driven workflow, say) deactivated the user asynchronously a
    moment earlier. Okta then answers our deactivate with 404 while the user reads
    ACTIVE -> DEPROVISIONED. The goal is being reached: halting the case for a human
    (a PermanentError) is wrong; success, or a TransientError to read again later, is right."""
    sandbox.okta.async_deactivate_delay = 60.0
    async with http.post(
        f"{served.url}/api/v1/users/{okta_id}/lifecycle/deactivate",
        headers={
            "Authorization": f"SSWS {sandbox.credentials.okta_token}",
            "Prefer": "respond-async",
        },
    ) as response:
        assert response.status == 200
    during = await okta.get_user(okta_id)
    assert during.status == "ACTIVE -> DEPROVISIONED"
    assert not during.deactivated  # not yet: an async deactivation in flight is no deactivation

    try:
        await okta.deactivate_user(okta_id)
    except TransientError:
        pass  # acceptable: the engine retries and reads again
    assert len(sandbox.audit.entries(action="okta.deactivate")) == 1


async def test_unknown_user_is_permanent(okta: Okta) -> None:
    with pytest.raises(PermanentError) as err:
        await okta.find_user("ghost@example.com")
    assert str(err.value) == "okta: no Okta user with login 'ghost@example.com'"
    with pytest.raises(PermanentError) as err:
        await okta.deactivate_user("00uNOSUCHUSER0000000")
    assert str(err.value) == "okta: no Okta user with id '00uNOSUCHUSER0000000'"


async def test_a_login_with_special_characters_is_found(okta: Okta, sandbox: Sandbox) -> None:
    login = "o'neil+offboard@example.com"
    user_id = sandbox.okta.add_user(login)
    assert (await okta.find_user(login)).id == user_id


async def test_wrong_token_is_permanent_401_without_the_token(
    served: Served,
    http: aiohttp.ClientSession,
    okta_id: str,
    sandbox: Sandbox,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wrong = "00WRONG-token-that-must-not-leak-Zq9"
    monkeypatch.setenv(TOKEN_ENV, wrong)
    okta = adapter(served, http)
    calls = [
        lambda: okta.find_user(LEAVER),
        lambda: okta.get_user(okta_id),
        lambda: okta.deactivate_user(okta_id),
        lambda: okta.revoke_sessions(okta_id),
    ]
    for call in calls:
        with pytest.raises(PermanentError) as err:
            await call()
        assert err.value.status == 401
        assert "Invalid token provided" in str(err.value)
        for shown in (str(err.value), repr(err.value), repr(err.value.args)):
            assert wrong not in shown
            assert sandbox.credentials.okta_token not in shown
    assert all(s.headers["Authorization"] == f"SSWS {wrong}" for s in served.api())
    assert sandbox.audit.entries() == []
    assert sandbox.okta.user_status(okta_id) == "ACTIVE"


@pytest.mark.parametrize(
    ("endpoint", "action"),
    [("okta.get_user", "find"), ("okta.deactivate", "deactivate")],
)
async def test_throttle_waits_for_the_smallest_reset(
    okta: Okta,
    okta_id: str,
    sandbox: Sandbox,
    served: Served,
    endpoint: str,
    action: str,
) -> None:
    sandbox.faults.add(FaultRule(endpoint=endpoint, kind="throttle", count=1, retry_after=2.5))
    before = time.time()
    with pytest.raises(TransientError) as err:
        if action == "find":
            await okta.find_user(LEAVER)
        else:
            await okta.deactivate_user(okta_id)
    after = time.time()

    [throttled] = [s for s in served.api() if s.status == 429]
    resets = [float(v) for v in throttled.response_headers.getall("X-Rate-Limit-Reset")]
    assert len(resets) == 2  # the injected throttle sends the header twice, larger first
    assert resets[0] > resets[1]
    hint = err.value.retry_after
    assert hint is not None
    # the smallest reset, relative to the moment the adapter read it
    assert min(resets) - after <= hint <= min(resets) - before
    assert hint < max(resets) - after
    assert err.value.status == 429
    assert "API call exceeded rate limit" in str(err.value)
    assert sandbox.audit.entries(action="okta.deactivate") == []


async def test_server_error_is_transient_and_ignores_the_window_reset(
    okta: Okta, okta_id: str, sandbox: Sandbox, served: Served
) -> None:
    sandbox.faults.add(FaultRule(endpoint="okta.get_user", kind="error", count=1, status=503))
    with pytest.raises(TransientError) as err:
        await okta.get_user(okta_id)
    assert err.value.status == 503
    # every Okta answer carries X-Rate-Limit-Reset; off a 429 it is no request to wait
    assert "X-Rate-Limit-Reset" in served.api()[-1].response_headers
    assert err.value.retry_after is None


# -- conformance with Okta's published spec ----------------------------------------------


async def test_every_request_the_adapter_sends_is_in_the_spec(
    spec: OktaSpec, okta: Okta, okta_id: str, sandbox: Sandbox, served: Served
) -> None:
    special = sandbox.okta.add_user("o'neil+offboard@example.com")
    await okta.find_user(LEAVER)
    await okta.find_user("o'neil+offboard@example.com")
    await okta.get_user(okta_id)
    await okta.revoke_sessions(okta_id)
    await okta.deactivate_user(okta_id)
    await okta.deactivate_user(okta_id)  # the 404 path, and its read
    await okta.deactivate_user(special)
    with pytest.raises(PermanentError):
        await okta.find_user("ghost@example.com")

    sent = served.api()
    shapes = {(s.method, s.path.replace(okta_id, "{id}")) for s in sent}
    assert {
        ("GET", f"/api/v1/users/{LEAVER}"),
        # "+" stays encoded; yarl sends "'" as is (the same path, normalised)
        ("GET", "/api/v1/users/o'neil%2Boffboard@example.com"),
        ("GET", "/api/v1/users/{id}"),
        ("DELETE", "/api/v1/users/{id}/sessions"),
        ("POST", "/api/v1/users/{id}/lifecycle/deactivate"),
    } <= shapes
    assert len(sent) == 9
    token = sandbox.credentials.okta_token
    for seen in sent:
        where = f"{seen.method} {seen.path}?{seen.query}"
        assert request_errors(spec, seen.mock_request()) == [], where
        assert spec.errors_for(seen.mock_request(), seen.mock_response()) == [], where
        # openapi-core lets a request without the apiKey pass (via the oauth2 alternative)
        assert seen.headers["Authorization"] == f"SSWS {token}", where
        assert seen.headers["Accept"] == "application/json", where
        assert seen.body == b"", where
        assert "Prefer" not in seen.headers, where  # deactivation is synchronous
    deactivations = [s for s in sent if s.path.endswith("/lifecycle/deactivate")]
    assert {tuple(s.query) for s in deactivations} == {(("sendEmail", "false"),)}
    [revoke] = [s for s in sent if s.method == "DELETE"]
    assert revoke.query == [("oauthTokens", "true")]
    assert all(s.query == [] for s in sent if s.method == "GET")


async def test_the_request_validator_rejects_what_the_spec_forbids(
    spec: OktaSpec, okta: Okta, okta_id: str, served: Served
) -> None:
    """Negative controls on a real captured request: the check above can fail."""
    await okta.deactivate_user(okta_id)
    [deactivate] = [s for s in served.api() if s.method == "POST"]
    assert request_errors(spec, deactivate.mock_request()) == []

    def kinds(seen: Seen) -> list[type[Exception]]:
        return [type(e) for e in request_errors(spec, seen.mock_request())]

    # sendEmail is a boolean
    assert kinds(replace(deactivate, query=[("sendEmail", "maybe")])) == [ParameterValidationError]
    # deactivation is a POST
    assert kinds(replace(deactivate, method="PUT")) == [OperationNotFound]
    # Prefer may only ask for respond-async
    bad_prefer = CIMultiDict(deactivate.headers, Prefer="sync")
    assert kinds(replace(deactivate, headers=bad_prefer)) == [InvalidParameter]
    nowhere = f"/api/v1/users/{okta_id}/lifecycle/obliterate"
    assert kinds(replace(deactivate, path=nowhere)) == [PathNotFound]


async def test_each_call_spends_the_budget_of_its_endpoint_group(
    served: Served, http: aiohttp.ClientSession, okta_id: str
) -> None:
    """Okta counts lookups, lifecycle operations and sessions in different buckets:
    the adapter's limiter of each bucket reads that bucket's headers."""
    limits = LimitsConfig().limits()
    okta = Okta(
        OktaConfig(org_url=served.url, token=SecretRef(env=TOKEN_ENV)),
        http,
        limits["okta"],
        buckets=limits,
    )
    user = await okta.find_user(LEAVER)
    await okta.deactivate_user(user.id)
    await okta.revoke_sessions(user.id)

    sent = {name: limits[f"okta:{name}"]._sent for name in ("user-read", "user-write", "other")}
    assert sent == {"user-read": 1, "user-write": 1, "other": 1}
    assert limits["okta"]._sent == 3  # every call holds a place under the org's cap
    # each bucket's budget is the one its own answers announced
    assert limits["okta:user-read"]._left == 2000 - 1
    assert limits["okta:user-write"]._left == 600 - 1


def test_okta_buckets_are_configuration_with_the_documented_defaults() -> None:
    assert LimitsConfig().okta_buckets == {
        "users": 600,
        "user-write": 600,
        "user-read": 2000,
        "logs": 120,
        "other": 1200,
    }
    plan = LimitsConfig(okta_buckets={"user-write": 100})  # an Integrator free org
    assert plan.limits()["okta:user-write"].urgent_reserve == 15
    with pytest.raises(ValueError, match="unknown \\['lifecycle'\\]"):
        LimitsConfig(okta_buckets={"lifecycle": 100})
