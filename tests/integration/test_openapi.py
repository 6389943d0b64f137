"""worker/web/openapi.json is valid, complete and true.

- valid OpenAPI 3.1, and exactly what the server serves at /openapi.json;
- every route the app registers is documented and every documented path is a route
  (the HTML status page under /ui, for browsers, is left out by one explicit rule);
- schemathesis, driven by the served document, finds no 5xx and no answer outside the
  document (status code, content type, body schema, response headers), with and without
  a valid API token;
- and nothing it sends stores anything, except what the manual API stores for a valid
  token: webhooks cannot be signed by schemathesis, so each one must be refused.

POST /v1/cases with the valid token is fuzzed like the rest, because whether a valid
request creates a case (201, 200 with an Idempotency-Key replay, 409 for a reused key) is
part of what the document promises. Those cases are allowed, and only those: after the
run every case not seeded by the test must come from `api:ops`, every stored delivery
must be an `api:ops:` Idempotency-Key, and every recorded refusal must be `api:ops`'s.

Bounded and reproducible: derandomized Hypothesis, at most 30 examples per pass (one pass
per operation x positive/negative data x with/without the token x configured source or
seeded case), no deadline, no example database, no shrinking; about 1,400 requests.

Two things the fuzzer cannot do are done by hand. Its header values are ASCII (its default
codec) and its JSON is what it can serialise, so bytes that are not UTF-8 in a header,
JSON nested past the recursion limit and times at the edge of the datetime range are
sent explicitly (test_hostile_requests_...). And it cannot sign, so the answers to signed
deliveries (created, replayed, rescheduled, cancelled, nothing-scheduled, ignored, 403,
422) and the manual API's idempotency are produced and checked against the document in
test_signed_deliveries_....
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import itertools
import json
import re
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from standardwebhooks.webhooks import Webhook

from tests.flows import contain
from worker.cases import drive_case, open_case
from worker.config import parse_config
from worker.domain import CaseStatus
from worker.runtime import Runtime, open_runtime
from worker.sandbox import Sandbox
from worker.web.app import build_app

DOCUMENT = Path(__file__).resolve().parents[2] / "worker" / "web" / "openapi.json"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

API_TOKEN = "api-" + "t" * 40
SECRETS = {
    "T_API_TOKEN": API_TOKEN,
    "T_WHSEC": "whsec_" + base64.b64encode(b"k" * 32).decode(),
    "T_BAMBOO": "bamboo-secret-value",
    "T_BOB": "hibob-secret-value",
    "T_PD": "pagerduty-secret-value",
    "T_BEARER": "soar-token-" + "b" * 30,
}
#: one source of every kind, so each adapter's refusals are exercised
SOURCES = {
    "hr": {
        "hris": {"kind": "standard-webhooks", "secrets": [{"env": "T_WHSEC"}]},
        "bamboo": {"kind": "bamboohr", "secrets": [{"env": "T_BAMBOO"}]},
        "bob": {"kind": "hibob", "secrets": [{"env": "T_BOB"}]},
        "hr-soar": {"kind": "bearer", "secrets": [{"env": "T_BEARER"}]},
    },
    "incident": {
        "pagerduty": {"kind": "pagerduty", "secrets": [{"env": "T_PD"}]},
        "soar": {"kind": "bearer", "secrets": [{"env": "T_BEARER"}]},
        "siem": {"kind": "standard-webhooks", "secrets": [{"env": "T_WHSEC"}]},
    },
}

#: bounded and reproducible: the same requests on every run
FUZZ = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # the examples phase is a pass of its own
    suppress_health_check=list(HealthCheck),
)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


def document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DOCUMENT.read_text(encoding="utf-8"))
    return loaded


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)


@dataclass
class Served:
    runtime: Runtime
    app: web.Application
    url: str
    database: Path


@pytest.fixture
async def served(config_data: dict[str, Any], tmp_path: Path) -> AsyncIterator[Served]:
    config_data["server"] = {
        "api_tokens": {"ops": {"env": "T_API_TOKEN"}},
        "max_body_bytes": 4096,
        "hr_sources": SOURCES["hr"],
        "incident_sources": SOURCES["incident"],
    }
    config_data["protected_identities"] = ["breakglass-*@example.com"]
    config = parse_config(config_data, "openapi test")
    async with open_runtime(config, base_dir=tmp_path) as runtime:
        # no worker: nothing runs a case behind the requests' backs
        app = build_app(runtime, run_worker=False)
        async with TestServer(app, host="127.0.0.1") as server:
            yield Served(
                runtime=runtime,
                app=app,
                url=str(server.make_url("")).rstrip("/"),
                database=Path(config.store.sqlite),
            )


# --- the document ------------------------------------------------------------------


def test_the_document_is_valid_openapi_3_1() -> None:
    spec = document()
    validate(spec)  # raises on any violation of the OpenAPI 3.1 schema
    assert spec["openapi"] == "3.1.0"


async def test_the_served_document_is_the_file(served: Served) -> None:
    async with ClientSession() as http, http.get(f"{served.url}/openapi.json") as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        assert await response.json() == document()


def _documentable(resource: web.AbstractResource) -> set[str]:
    """The paths a resource answers, as the document writes them: a variable limited to
    a few literal words (`{purpose:hr|incident}`) becomes one path per word."""
    info = resource.get_info()
    if "path" in info:
        return {info["path"]}
    formatter: str = info["formatter"]
    choices = {
        name: alternatives.split("|")
        for name, alternatives in re.findall(
            r"\(\?P<(\w+)>([\w-]+(?:\|[\w-]+)*)\)", info["pattern"].pattern
        )
    }
    paths = set()
    for words in itertools.product(*choices.values()):
        path = formatter
        for name, word in zip(choices, words, strict=True):
            path = path.replace("{" + name + "}", word)
        paths.add(path)
    return paths


async def test_every_route_is_documented_and_every_documented_path_is_a_route(
    served: Served,
) -> None:
    routes = {
        (route.method.lower(), path)
        for route in served.app.router.routes()
        # aiohttp adds HEAD beside every GET by itself; it answers like the GET, bodiless
        if route.method != "HEAD" and not _status_page(route.resource.canonical)
        for path in _documentable(route.resource)
    }
    spec = document()
    assert not [p for p in spec["paths"] if _status_page(p)], "the status page is not API"
    documented = {
        (method, path)
        for path, item in spec["paths"].items()
        for method in item
        if method in METHODS
    }
    assert documented - routes == set(), "documented, but the server has no such route"
    assert routes - documented == set(), "the server has these routes, the document does not"
    for path, item in spec["paths"].items():
        for operation in (item[m] for m in item if m in METHODS):
            named = {p["name"] for p in _parameters(spec, item, operation) if p["in"] == "path"}
            assert named == set(re.findall(r"\{(\w+)\}", path)), path


def _status_page(path: str) -> bool:
    """The one rule that leaves routes out of the document: the HTML status page under
    /ui (worker/web/ui.py, docs/ui.md) is for browsers (session cookie, forms, CSRF), not
    part of the API contract; the document's description says so."""
    return path == "/ui" or path.startswith("/ui/")


def _parameters(
    spec: dict[str, Any], item: dict[str, Any], operation: dict[str, Any]
) -> list[dict[str, Any]]:
    def resolve(p: dict[str, Any]) -> dict[str, Any]:
        if "$ref" not in p:
            return p
        found: dict[str, Any] = spec
        for part in p["$ref"].removeprefix("#/").split("/"):
            found = found[part]
        return found

    return [resolve(p) for p in [*item.get("parameters", []), *operation.get("parameters", [])]]


# --- schemathesis against the served document ----------------------------------------


@dataclass(frozen=True)
class Pass:
    """One bounded schemathesis run over one operation."""

    operation: str
    mode: GenerationMode
    token: bool = False
    path: dict[str, str] = field(default_factory=dict)
    #: POST /v1/cases: sometimes name a playbook that exists, to reach 201/200/409
    known_playbooks: bool = False
    #: schemathesis's examples phase: requests built from the document's own examples
    examples: bool = False

    @property
    def label(self) -> str:
        who = "token" if self.token else "no token"
        mode = "examples" if self.examples else self.mode.value
        return f"{self.operation} [{mode}, {who}, {self.path or 'generated path'}]"


@dataclass
class Outcome:
    failures: list[str] = field(default_factory=list)
    #: "operation: code title" -> how many requests failed so
    kinds: Counter[str] = field(default_factory=Counter)
    #: (operation, token?) -> status codes seen
    statuses: dict[tuple[str, bool], Counter[int]] = field(default_factory=dict)
    #: (operation, token?) -> status codes of the requests built from the examples
    example_statuses: dict[tuple[str, bool], Counter[int]] = field(default_factory=dict)
    #: bodies of webhook answers that were not refusals
    hook_answers: list[Any] = field(default_factory=list)
    requests: int = 0


def _passes(spec: dict[str, Any], seeded: dict[str, str]) -> list[Pass]:
    passes = []
    for path, item in spec["paths"].items():
        for method in (m for m in item if m in METHODS):
            operation = item[method]
            label = f"{method.upper()} {path}"
            has_input = bool(operation.get("parameters") or operation.get("requestBody"))
            modes = (
                [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
                if has_input
                else [GenerationMode.POSITIVE]
            )
            guarded = {"apiToken": []} in operation.get("security", [])
            for token in [False, True] if guarded else [False]:
                passes.append(Pass(label, GenerationMode.POSITIVE, token, examples=True))
            for mode, token in itertools.product(modes, [False, True] if guarded else [False]):
                if path.startswith("/v1/hooks/"):
                    purpose = path.split("/")[3]
                    for source in [*SOURCES[purpose], None]:
                        fixed = {"source": source} if source else {}
                        passes.append(Pass(label, mode, path=fixed))
                    continue
                passes.append(Pass(label, mode, token, known_playbooks=label == "POST /v1/cases"))
            if "{case_id}" in path:
                # real cases, so 200 and 409 answers are checked against the document too
                for case_id in seeded.values():
                    fixed = {"case_id": case_id}
                    if path.endswith("/confirm/{step}") and case_id == seeded["waiting"]:
                        fixed["step"] = "portal-sessions"
                    passes.append(Pass(label, GenerationMode.POSITIVE, True, fixed))
    return passes


def _run(url: str, passes: list[Pass]) -> Outcome:
    """Blocking: runs in a thread while the event loop serves the app."""
    served = schemathesis.openapi.from_url(f"{url}/openapi.json", timeout=10)
    # from_url leaves out the operation that served the document; the same document,
    # loaded from what was served, keeps GET /openapi.json in the run
    schema = schemathesis.openapi.from_dict(served.raw_schema)
    operations = {r.ok().label: r.ok() for r in schema.get_all_operations()}
    outcome = Outcome()
    with requests.Session() as session:
        for p in passes:
            _fuzz(p, operations[p.operation], url, session, outcome)
    return outcome


def _fuzz(
    p: Pass,
    operation: schemathesis.APIOperation,
    url: str,
    session: requests.Session,
    outcome: Outcome,
) -> None:
    if p.examples:
        from_examples = operation.get_strategies_from_examples()
        if not from_examples:
            return
        strategy = st.one_of(from_examples)
        seen = outcome.example_statuses.setdefault((p.operation, p.token), Counter())
    else:
        strategy = operation.as_strategy(generation_mode=p.mode, path_parameters=p.path or None)
        seen = outcome.statuses.setdefault((p.operation, p.token), Counter())
    playbooks = st.sampled_from([None, "leaver", "incident"] if p.known_playbooks else [None])
    headers = {"Authorization": f"Bearer {API_TOKEN}"} if p.token else None

    # the document's examples are a few fixed requests: a few tries send each of them
    @settings(FUZZ, max_examples=8 if p.examples else FUZZ.max_examples)
    @given(case=strategy, playbook=playbooks)
    def fuzz(case: schemathesis.Case, playbook: str | None) -> None:
        if playbook and isinstance(case.body, dict):
            case.body["playbook"] = playbook
        outcome.requests += 1
        try:
            response = case.call(base_url=url, session=session, headers=headers, timeout=10)
        except requests.RequestException as exc:
            curl = case.as_curl_command(headers, base_url=url)
            outcome.failures.append(f"{p.label}: no answer: {exc!r}\n{curl}")
            return
        seen[response.status_code] += 1
        if p.operation.startswith("POST /v1/hooks/") and response.status_code < 300:
            outcome.hook_answers.append(response.json())
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except FailureGroup as exc:  # every failed check, and the request as curl
            outcome.failures.append(f"{p.label}:\n{exc}")
            for failure in exc.exceptions:
                outcome.kinds[f"{p.operation}: {failure.code} {failure.title}"] += 1

    fuzz()


async def _seed(runtime: Runtime, sandbox: Sandbox) -> dict[str, str]:
    """Cases in the states the case routes answer differently for."""
    contained = await contain(runtime, sandbox, sandbox.seed_leaver("contained@example.com"))
    assert contained.status is CaseStatus.CONTAINED and contained.countdown is not None
    leaver = runtime.playbook("leaver")
    user = sandbox.seed_leaver("waiting@example.com")
    waiting, _ = await open_case(runtime, leaver, user.login, {"source": "test"})
    assert (await drive_case(runtime, waiting.id)).status is CaseStatus.WAITING
    later = runtime.clock.now() + timedelta(days=3)
    pending, _ = await open_case(
        runtime, leaver, "pending@example.com", {"source": "test"}, run_after=later
    )
    return {"contained": contained.id, "waiting": waiting.id, "pending": pending.id}


def _stored(database: Path, query: str) -> list[sqlite3.Row]:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        db.row_factory = sqlite3.Row
        return db.execute(query).fetchall()


async def test_schemathesis_finds_nothing_and_refused_requests_store_nothing(
    served: Served, sandbox: Sandbox
) -> None:
    seeded = await _seed(served.runtime, sandbox)
    passes = _passes(document(), seeded)

    outcome = await asyncio.to_thread(_run, served.url, passes)

    kinds = "\n".join(f"  {n} x {kind}" for kind, n in sorted(outcome.kinds.items()))
    first = "\n\n".join(outcome.failures[:3])
    assert not outcome.failures, (
        f"{len(outcome.failures)} failing requests:\n{kinds}\n\nthe first, in full:\n{first}"
    )
    # without the token every manual-API request was refused; with it they got through
    # (a negative-mode case may still drop the Authorization header: schemathesis tests
    # missing credentials too), and the seeded cases were answered for real
    anonymous = {op: c for (op, token), c in outcome.statuses.items() if not token}
    with_token = {op: c for (op, token), c in outcome.statuses.items() if token}
    # (a declared body over the limit is refused at once, 413, before anything is read,
    # the credentials included)
    assert all(401 in anonymous[op] and set(anonymous[op]) <= {401, 413} for op in with_token), (
        anonymous
    )
    assert {201, 200, 422} <= set(with_token["POST /v1/cases"])
    assert 200 in with_token["GET /v1/cases"] and 200 in with_token["GET /v1/cases/{case_id}"]
    assert 200 in with_token["POST /v1/cases/{case_id}/confirm/{step}"]
    assert {200, 409} <= set(with_token["POST /v1/cases/{case_id}/cancel"])

    # every example the document gives is one the server takes: with the token, nothing
    # built from them is refused as bad input (a 404 for the example case id is an answer)
    refused_examples = {
        op: dict(c)
        for (op, token), c in outcome.example_statuses.items()
        if token and {400, 422} & set(c)
    }
    assert refused_examples == {}, refused_examples
    assert {op for op, token in outcome.example_statuses if token} >= {
        "POST /v1/cases",
        "GET /v1/cases/{case_id}",
    }
    # no webhook got further than a refusal (an unsigned HiBob ping is ignored, not acted on)
    assert all(a.get("outcome") == "ignored" for a in outcome.hook_answers), outcome.hook_answers
    cases = _stored(served.database, "SELECT id, trigger FROM cases")
    made = [c for c in cases if c["id"] not in seeded.values()]
    sources = Counter(json.loads(c["trigger"])["source"] for c in made)
    assert set(sources) <= {"api:ops"}, sources
    keys = [d["key"] for d in _stored(served.database, "SELECT key FROM deliveries")]
    assert all(k.startswith("api:ops:") for k in keys), keys
    refusals = _stored(served.database, "SELECT source FROM refusals")
    assert {r["source"] for r in refusals} <= {"api:ops"}
    print(
        f"schemathesis {schemathesis.__version__}: {len(passes)} passes,"
        f" {outcome.requests} requests, {len(made)} cases made through the API"
    )
    for (operation, token), statuses in sorted(outcome.statuses.items()):
        print(f"  {operation} {'token' if token else 'no token'}: {dict(sorted(statuses.items()))}")
    for (operation, token), statuses in sorted(outcome.example_statuses.items()):
        who = "token" if token else "no token"
        print(f"  examples {operation} {who}: {dict(sorted(statuses.items()))}")


# --- requests schemathesis does not generate ------------------------------------------

#: Header bytes that are not UTF-8 (aiohttp decodes them with surrogateescape), JSON nested
#: deeper than Python's recursion limit, times that leave the datetime range when moved
#: to UTC. Each must get an answer the document allows, never a 500; a refusal stores nothing.
HOSTILE: dict[str, tuple[str, str, dict[str, str], bytes]] = {
    "api-token-not-utf8": ("GET", "/v1/cases", {"Authorization": "Bearer \xe9"}, b""),
    "idempotency-key-not-utf8": (
        "POST",
        "/v1/cases",
        {"Authorization": f"Bearer {API_TOKEN}", "Idempotency-Key": "key-\xe9"},
        b'{"playbook": "leaver", "subject": "someone@example.com"}',
    ),
    "effective-at-before-utc-min": (
        "POST",
        "/v1/cases",
        {"Authorization": f"Bearer {API_TOKEN}"},
        b'{"playbook": "leaver", "subject": "someone@example.com",'
        b' "effective_at": "0001-01-01T00:00:00+01:00"}',
    ),
    "effective-at-after-utc-max": (
        "POST",
        "/v1/cases",
        {"Authorization": f"Bearer {API_TOKEN}"},
        b'{"playbook": "leaver", "subject": "someone@example.com",'
        b' "effective_at": "9999-12-31T23:59:59-01:00"}',
    ),
    "json-nested-too-deep": (
        "POST",
        "/v1/cases",
        {"Authorization": f"Bearer {API_TOKEN}"},
        b"[" * 2000 + b"]" * 2000,
    ),
    "hook-token-not-utf8": (
        "POST",
        "/v1/hooks/incident/soar",
        {"Authorization": "Bearer \xe9"},
        b'{"type": "identity.compromised", "data": {"email": "a@example.com",'
        b' "incident_id": "INC-1"}}',
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
async def test_hostile_requests_are_refused_as_documented(name: str, served: Served) -> None:
    method, path, headers, body = HOSTILE[name]

    response = await _exchange(served, method, path, headers, body)

    if response.status_code >= 400:  # a refused request stores nothing
        assert _stored(served.database, "SELECT id FROM cases") == []
        assert _stored(served.database, "SELECT key FROM deliveries") == []


@functools.cache
def _schema() -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_dict(document())


async def _exchange(
    served: Served, method: str, path: str, headers: dict[str, str], body: bytes = b""
) -> requests.Response:
    """Send one request exactly as given; its answer must be one the document allows."""
    for template in document()["paths"]:
        match = re.fullmatch(re.sub(r"\{(\w+)\}", r"(?P<\1>[^/?]+)", template), path.split("?")[0])
        if match:
            break
    else:
        raise AssertionError(f"{path} is not documented")

    def send() -> requests.Response:
        # requests writes header values as Latin-1 bytes, as a hostile client may
        return requests.request(
            method,
            served.url + path,
            headers={"Content-Type": "application/json", **headers},
            data=body or None,
            timeout=10,
        )

    response = await asyncio.to_thread(send)
    assert response.status_code < 500, f"{method} {path}: {response.status_code} {response.text}"
    case = _schema()[template][method].Case(
        path_parameters=match.groupdict(), media_type="application/json"
    )
    case.validate_response(response, checks=CHECKS)
    return response


# --- answers schemathesis cannot reach: signed deliveries, real cases --------------------


def _standard_webhook(payload: dict[str, Any], msg_id: str) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    now = datetime.now(UTC)
    signature = Webhook(SECRETS["T_WHSEC"]).sign(msg_id, now, body.decode())
    timestamp = str(int(now.timestamp()))
    headers = {"webhook-id": msg_id, "webhook-timestamp": timestamp, "webhook-signature": signature}
    return body, headers


def _hr(kind: str, email: str, **data: Any) -> dict[str, Any]:
    return {"type": f"employee.{kind}", "data": {"email": email, "hr_reference": "E-1", **data}}


async def test_signed_deliveries_and_the_manual_api_are_answered_as_documented(
    served: Served,
) -> None:
    hris, later = "/v1/hooks/hr/hris", datetime.now(UTC) + timedelta(days=3)

    async def hr(payload: dict[str, Any], msg_id: str) -> dict[str, Any]:
        body, headers = _standard_webhook(payload, msg_id)
        answer: dict[str, Any] = (await _exchange(served, "POST", hris, headers, body)).json()
        return answer

    scheduled = _hr("terminated", "mover@example.com", effective_at=later.isoformat())
    created = await hr(scheduled, "msg-1")
    assert created["outcome"] == "created" and created["scheduled_for"]
    assert (await hr(scheduled, "msg-1"))["replayed"] is True
    sooner = _hr(
        "terminated", "mover@example.com", effective_at=(later - timedelta(days=1)).isoformat()
    )
    assert (await hr(sooner, "msg-2"))["outcome"] == "rescheduled"
    rescind = _hr("termination_rescinded", "mover@example.com")
    assert (await hr(rescind, "msg-3"))["outcome"] == "cancelled"
    assert (await hr(rescind, "msg-4"))["outcome"] == "nothing-scheduled"
    assert (await hr(_hr("terminated", "breakglass-1@example.com"), "msg-5"))["status"] == 403
    assert (await hr(_hr("hired", "new@example.com"), "msg-6"))["status"] == 422

    incident = {
        "event": {
            "id": "evt-1",
            "event_type": "incident.triggered",
            "data": {"id": "PINC1", "title": "Leak [offboard leak@example.com]"},
        }
    }
    for event_type, outcome in (
        ("incident.triggered", "created"),
        ("incident.resolved", "ignored"),
    ):
        incident["event"]["event_type"] = event_type
        body = json.dumps(incident).encode()
        digest = hmac.new(SECRETS["T_PD"].encode(), body, hashlib.sha256).hexdigest()
        headers = {"X-PagerDuty-Signature": f"v1={digest}"}
        response = await _exchange(served, "POST", "/v1/hooks/incident/pagerduty", headers, body)
        assert response.json()["outcome"] == outcome
    soar = json.dumps(
        {"type": "identity.compromised", "data": {"email": "soar@example.com", "incident_id": 7}}
    ).encode()
    response = await _exchange(
        served, "POST", "/v1/hooks/incident/soar", {"X-API-Key": SECRETS["T_BEARER"]}, soar
    )
    assert response.json()["playbook"] == "incident"

    auth = {"Authorization": f"Bearer {API_TOKEN}", "Idempotency-Key": "req-1"}
    request = {
        "playbook": "leaver",
        "subject": "manual@example.com",
        "effective_at": later.isoformat(),
    }
    first = await _exchange(served, "POST", "/v1/cases", auth, json.dumps(request).encode())
    again = await _exchange(served, "POST", "/v1/cases", auth, json.dumps(request).encode())
    other = {**request, "reason": "changed"}
    reused = await _exchange(served, "POST", "/v1/cases", auth, json.dumps(other).encode())
    assert (first.status_code, again.status_code, reused.status_code) == (201, 200, 409)
    case_id = first.json()["case_id"]
    listed = await _exchange(served, "GET", "/v1/cases?status=pending,cancelled", auth)
    assert case_id in {c["case_id"] for c in listed.json()["cases"]}
    assert (await _exchange(served, "GET", f"/v1/cases/{case_id}", auth)).status_code == 200
    assert (await _exchange(served, "POST", f"/v1/cases/{case_id}/cancel", auth)).status_code == 200


async def test_the_case_list_pages_are_answered_as_documented(
    served: Served, sandbox: Sandbox
) -> None:
    seeded = await _seed(served.runtime, sandbox)
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    walked: list[str] = []
    path: str | None = "/v1/cases?limit=1"
    while path is not None:
        page = (await _exchange(served, "GET", path, auth)).json()
        walked += [c["case_id"] for c in page["cases"]]
        path = page["next"]
    assert walked == [c.id for c in await served.runtime.store.list_cases()]
    assert set(walked) == set(seeded.values())
    for query in ("limit=0", "limit=1001", "limit=x", "after=c-nope"):
        refused = await _exchange(served, "GET", f"/v1/cases?{query}", auth)
        assert refused.status_code == 400, query


def _examples(node: Any, pointer: str = "") -> list[tuple[str, Any]]:
    """(JSON pointer of the schema, example) for every `examples` list of a schema."""
    found: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        if isinstance(node.get("examples"), list) and ("type" in node or "$ref" in node):
            found += [(pointer, example) for example in node["examples"]]
        for key, value in node.items():
            escaped = key.replace("~", "~0").replace("/", "~1")
            found += _examples(value, f"{pointer}/{escaped}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _examples(value, f"{pointer}/{index}")
    return found


def test_every_example_in_the_document_is_valid_against_its_schema() -> None:
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    spec = document()
    uri = "urn:offboard:openapi"
    registry = Registry().with_resource(uri, Resource(contents=spec, specification=DRAFT202012))
    examples = _examples(spec)
    assert len(examples) >= 15  # the walk finds them
    invalid = []
    for pointer, example in examples:
        validator = Draft202012Validator({"$ref": f"{uri}#{pointer}"}, registry=registry)
        invalid += [f"{pointer}: {example!r}: {e.message}" for e in validator.iter_errors(example)]
    assert invalid == []
