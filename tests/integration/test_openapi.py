"""worker/openapi.json is valid, complete and true.

- valid OpenAPI 3.1, and exactly what the server serves at /openapi.json;
- every route the app registers is documented and every documented path is a route;
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
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
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
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.flows import contain
from worker.config import parse_config
from worker.domain import CaseStatus
from worker.sandbox import Sandbox
from worker.server import build_app
from worker.service import Runtime, drive_case, open_case, open_runtime

DOCUMENT = Path(__file__).resolve().parents[2] / "worker" / "openapi.json"
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
    phases=[Phase.explicit, Phase.generate],
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
        for name, alternatives in re.findall(r"\(\?P<(\w+)>([\w-]+(?:\|[\w-]+)*)\)", info["pattern"].pattern)
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
        if route.method != "HEAD"
        for path in _documentable(route.resource)
    }
    spec = document()
    documented = {
        (method, path) for path, item in spec["paths"].items() for method in item if method in METHODS
    }
    assert documented - routes == set(), "documented, but the server has no such route"
    assert routes - documented == set(), "the server has these routes, the document does not"
    for path, item in spec["paths"].items():
        for operation in (item[m] for m in item if m in METHODS):
            named = {p["name"] for p in _parameters(spec, item, operation) if p["in"] == "path"}
            assert named == set(re.findall(r"\{(\w+)\}", path)), path


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

    @property
    def label(self) -> str:
        who = "token" if self.token else "no token"
        return f"{self.operation} [{self.mode.value}, {who}, {self.path or 'generated path'}]"


@dataclass
class Outcome:
    failures: list[str] = field(default_factory=list)
    #: (operation, token?) -> status codes seen
    statuses: dict[tuple[str, bool], Counter[int]] = field(default_factory=dict)
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
            modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE] if has_input else [
                GenerationMode.POSITIVE
            ]
            guarded = {"apiToken": []} in operation.get("security", [])
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
    strategy = operation.as_strategy(generation_mode=p.mode, path_parameters=p.path or None)
    playbooks = st.sampled_from([None, "leaver", "incident"] if p.known_playbooks else [None])
    seen = outcome.statuses.setdefault((p.operation, p.token), Counter())
    headers = {"Authorization": f"Bearer {API_TOKEN}"} if p.token else None

    @FUZZ
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
        except Exception as exc:  # a FailureGroup, with the request as curl
            outcome.failures.append(f"{p.label}:\n{exc}")

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

    report = "\n\n".join(outcome.failures[:20])
    assert not outcome.failures, f"{len(outcome.failures)} failing requests; the first:\n{report}"
    # the valid token really got past 401, and the real cases were answered for real
    with_token: Callable[[str], Counter[int]] = lambda op: outcome.statuses[(op, True)]  # noqa: E731
    assert with_token("POST /v1/cases")[201] and with_token("POST /v1/cases")[422]
    assert with_token("GET /v1/cases")[200] and with_token("GET /v1/cases/{case_id}")[200]
    assert with_token("POST /v1/cases/{case_id}/confirm/{step}")[200]
    assert with_token("POST /v1/cases/{case_id}/cancel")[200]
    assert with_token("POST /v1/cases/{case_id}/cancel")[409]
    assert all(s == 401 for s in outcome.statuses[("GET /v1/cases", False)].elements())

    # no webhook got further than a refusal (an unsigned HiBob ping is ignored, not acted on)
    assert all(a.get("outcome") == "ignored" for a in outcome.hook_answers), outcome.hook_answers
    cases = _stored(served.database, "SELECT id, trigger FROM cases")
    made = [c for c in cases if c["id"] not in seeded.values()]
    sources = Counter(json.loads(c["trigger"])["source"] for c in made)
    assert set(sources) <= {"api:ops"}, sources
    keys = [d["key"] for d in _stored(served.database, "SELECT key FROM deliveries")]
    assert all(k.startswith("api:ops:") for k in keys), [k for k in keys if not k.startswith("api:")]
    refusals = _stored(served.database, "SELECT source FROM refusals")
    assert {r["source"] for r in refusals} <= {"api:ops"}
    print(
        f"schemathesis {schemathesis.__version__}: {len(passes)} passes,"
        f" {outcome.requests} requests, {len(made)} cases made through the API"
    )
    for (operation, token), statuses in sorted(outcome.statuses.items()):
        print(f"  {operation} {'token' if token else 'no token'}: {dict(sorted(statuses.items()))}")
