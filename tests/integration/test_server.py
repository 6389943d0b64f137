"""`offboard serve`'s HTTP API in-process: webhooks, the manual API, refusals, scheduling."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from standardwebhooks.webhooks import Webhook

from tests.flows import assert_contained_in_order, delete_portal_sessions
from worker.cases import open_case
from worker.clock import ManualClock
from worker.config import parse_config
from worker.domain import CaseStatus
from worker.runtime import Runtime, open_runtime
from worker.sandbox import Sandbox, SeededUser
from worker.web.app import build_app
from worker.web.state import STATE
from worker.worker import Worker

WHSEC = "whsec_" + base64.b64encode(b"k" * 32).decode()
WHSEC_OLD = "whsec_" + base64.b64encode(b"o" * 32).decode()
API_TOKEN = "api-" + "t" * 40
PD_SECRET = "pagerduty-secret-value"
BEARER = "soar-token-" + "b" * 30


def server_settings(data: dict[str, Any]) -> dict[str, Any]:
    data["server"] = {
        "api_tokens": {"ops": {"env": "T_API_TOKEN"}},
        "max_body_bytes": 4096,
        "hr_sources": {
            "hris": {
                "kind": "standard-webhooks",
                "secrets": [{"env": "T_WHSEC"}, {"env": "T_WHSEC_OLD"}],
            },
        },
        "incident_sources": {
            "pagerduty": {"kind": "pagerduty", "secrets": [{"env": "T_PD"}]},
            "soar": {"kind": "bearer", "secrets": [{"env": "T_BEARER"}]},
        },
    }
    data["protected_identities"] = ["breakglass-*@example.com", "root@example.com"]
    return data


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "T_API_TOKEN": API_TOKEN,
        "T_WHSEC": WHSEC,
        "T_WHSEC_OLD": WHSEC_OLD,
        "T_PD": PD_SECRET,
        "T_BEARER": BEARER,
    }.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
async def client(
    config_data: dict[str, Any], tmp_path: Path
) -> AsyncIterator[tuple[TestClient[web.Request, web.Application], Runtime]]:
    config = parse_config(server_settings(config_data), "test")
    async with open_runtime(config, base_dir=tmp_path) as runtime:
        app = build_app(runtime)
        async with TestClient(TestServer(app)) as test_client:
            yield test_client, runtime


def signed(
    payload: dict[str, Any],
    *,
    msg_id: str | None = None,
    secret: str = WHSEC,
    when: datetime | None = None,
) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    msg_id = msg_id or "msg_" + secrets.token_hex(8)
    when = when or datetime.now(UTC)
    signature = Webhook(secret).sign(msg_id, when, body.decode())
    return body, {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": signature,
        "Content-Type": "application/json",
    }


def termination(email: str, **data: Any) -> dict[str, Any]:
    return {
        "type": "employee.terminated",
        "data": {"email": email, "hr_reference": "E-1", "reason": "resigned", **data},
    }


async def _case_count(runtime: Runtime) -> int:
    return len(await runtime.store.list_cases())


async def _wait_status(
    runtime: Runtime, case_id: str, wanted: CaseStatus, timeout: float = 20
) -> None:
    for _ in range(int(timeout / 0.05)):
        case = await runtime.store.get_case(case_id)
        if case.status is wanted:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"case {case_id} is {case.status}, never {wanted}")


async def test_signed_hr_webhook_runs_the_leaver_playbook(
    client: tuple[TestClient[web.Request, web.Application], Runtime],
    sandbox: Sandbox,
    leaver: SeededUser,
) -> None:
    http, runtime = client
    body, headers = signed(termination(leaver.login))
    response = await http.post("/v1/hooks/hr/hris", data=body, headers=headers)
    assert response.status == 202, await response.text()
    answer = await response.json()
    assert answer["outcome"] == "created" and answer["playbook"] == "leaver"

    await _wait_status(runtime, answer["case_id"], CaseStatus.WAITING)
    await delete_portal_sessions(sandbox, leaver)
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    confirmed = await http.post(
        f"/v1/cases/{answer['case_id']}/confirm/portal-sessions", headers=auth
    )
    assert confirmed.status == 200, await confirmed.text()
    first = await confirmed.json()
    assert first["confirmed_by"] == "api:ops" and first["already_confirmed"] is False
    await _wait_status(runtime, answer["case_id"], CaseStatus.CONTAINED)
    # issue 14: a repeat answers with the first confirmation and records nothing
    events = len(await runtime.store.events(answer["case_id"]))
    again = await http.post(f"/v1/cases/{answer['case_id']}/confirm/portal-sessions", headers=auth)
    assert again.status == 200, await again.text()
    repeat = await again.json()
    assert repeat["already_confirmed"] is True
    assert (repeat["confirmed_by"], repeat["confirmed_at"]) == (
        first["confirmed_by"],
        first["confirmed_at"],
    )
    assert "already confirmed by api:ops at " in repeat["detail"]
    assert len(await runtime.store.events(answer["case_id"])) == events
    assert_contained_in_order(sandbox, leaver)

    detail = await (await http.get(f"/v1/cases/{answer['case_id']}", headers=auth)).json()
    assert [s["status"] for s in detail["steps"]] == ["done"] * 5  # the resolve first
    assert detail["countdown"]["inputs"]["permission_sets"]
    assert detail["trigger"]["source"] == "hris"


async def test_a_rotated_secret_is_still_accepted(
    client: tuple[TestClient[web.Request, web.Application], Runtime], leaver: SeededUser
) -> None:
    http, _ = client
    body, headers = signed(termination(leaver.login), secret=WHSEC_OLD)
    assert (await http.post("/v1/hooks/hr/hris", data=body, headers=headers)).status == 202


async def test_the_same_delivery_creates_one_case_however_often_it_arrives(
    client: tuple[TestClient[web.Request, web.Application], Runtime], leaver: SeededUser
) -> None:
    http, runtime = client
    body, headers = signed(termination(leaver.login), msg_id="msg_once")

    responses = await asyncio.gather(
        *(http.post("/v1/hooks/hr/hris", data=body, headers=headers) for _ in range(100))
    )

    assert all(r.status == 202 for r in responses), {r.status for r in responses}
    answers = [await r.json() for r in responses]
    assert len({a["case_id"] for a in answers}) == 1
    assert sum(1 for a in answers if not a.get("replayed")) == 1
    assert await _case_count(runtime) == 1


async def test_an_accepted_delivery_is_logged_with_its_case_not_the_address(
    client: tuple[TestClient[web.Request, web.Application], Runtime], leaver: SeededUser
) -> None:
    http, _ = client
    body, headers = signed(termination(leaver.login), msg_id="msg_logged")

    with structlog.testing.capture_logs() as logs:
        first = await http.post("/v1/hooks/hr/hris", data=body, headers=headers)
        again = await http.post("/v1/hooks/hr/hris", data=body, headers=headers)

    case_id = (await first.json())["case_id"]
    accepted = [e for e in logs if e["event"] == "trigger_accepted"]
    assert [(e["case_id"], e["outcome"], e["delivery"]) for e in accepted] == [
        (case_id, "created", "msg_logged"),
        (case_id, "replayed", "msg_logged"),
    ]
    assert again.status == 202
    assert leaver.login not in repr(accepted)  # the case names the person


async def test_deliveries_arriving_together_are_committed_together(
    client: tuple[TestClient[web.Request, web.Application], Runtime], sandbox: Sandbox
) -> None:
    http, runtime = client
    people = [sandbox.seed_leaver(f"group{i:02d}@example.com").login for i in range(40)]
    sent = [signed(termination(login)) for login in people]
    # the same person twice more, under other deliveries: no second case for them
    sent += [signed(termination(people[0])), signed(termination(people[1]))]

    responses = await asyncio.gather(
        *(http.post("/v1/hooks/hr/hris", data=body, headers=headers) for body, headers in sent)
    )

    assert [r.status for r in responses] == [202] * 42
    answers = [await r.json() for r in responses]
    assert [a["outcome"] for a in answers[:40]] == ["created"] * 40
    assert [a["outcome"] for a in answers[40:]] == ["existing"] * 2
    assert [a["case_id"] for a in answers[40:]] == [answers[0]["case_id"], answers[1]["case_id"]]
    cases = {c.id: c for c in await runtime.store.list_cases()}
    assert sorted(c.subject for c in cases.values()) == sorted(people)
    # each delivery is recorded with the answer it got, and a retry of it is a replay
    for (_, headers), answer in zip(sent, answers, strict=True):
        delivery = await runtime.store.get_delivery(f"hook:hr:hris:{headers['webhook-id']}")
        assert delivery is not None and delivery.outcome["body"] == answer
    retry = await http.post("/v1/hooks/hr/hris", data=sent[5][0], headers=sent[5][1])
    assert await retry.json() == {**answers[5], "replayed": True}
    # more than one delivery shared a commit
    groups = list(http.server.app[STATE].intake.groups)
    assert sum(groups) >= 40 and max(groups) > 1, groups


REFUSALS = {
    "tampered body": (400, 401),
    "wrong secret": (401,),
    "stale timestamp": (401,),
    "missing headers": (400,),
    "not json": (400,),
    "not a termination": (422,),
    "wrong content type": (415,),
    "too large": (413,),
    "unknown source": (404,),
}


@pytest.mark.parametrize("name", sorted(REFUSALS))
async def test_refusals_are_problem_documents_and_store_nothing(
    name: str, client: tuple[TestClient[web.Request, web.Application], Runtime], leaver: SeededUser
) -> None:
    http, runtime = client
    url = "/v1/hooks/hr/hris"
    body, headers = signed(termination(leaver.login))
    if name == "tampered body":
        body = body.replace(b"resigned", b"RESIGNED")
    elif name == "wrong secret":
        body, headers = signed(
            termination(leaver.login), secret=WHSEC.replace("a", "b", 1)[:-4] + "AAA="
        )
    elif name == "stale timestamp":
        body, headers = signed(
            termination(leaver.login), when=datetime.now(UTC) - timedelta(minutes=10)
        )
    elif name == "missing headers":
        headers = {"Content-Type": "application/json"}
    elif name == "not json":
        body, headers = b"{not json", signed({"x": 1})[1]
        body, headers = _resign(body, headers)
    elif name == "not a termination":
        body, headers = signed({"type": "employee.hired", "data": {"email": leaver.login}})
    elif name == "wrong content type":
        headers["Content-Type"] = "text/plain"
    elif name == "too large":
        body, headers = signed(termination(leaver.login, reason="x" * 5000))
    elif name == "unknown source":
        url = "/v1/hooks/hr/nobody"

    response = await http.post(url, data=body, headers=headers)

    assert response.status in REFUSALS[name], await response.text()
    assert response.content_type == "application/problem+json"
    problem = await response.json()
    assert problem["status"] == response.status and problem["title"] and problem["detail"]
    assert WHSEC not in json.dumps(problem)
    assert await _case_count(runtime) == 0
    assert await runtime.store.get_delivery(f"hook:hr:hris:{headers.get('webhook-id')}") is None


def _resign(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    when = datetime.fromtimestamp(int(headers["webhook-timestamp"]), UTC)
    headers = {
        **headers,
        "webhook-signature": Webhook(WHSEC).sign(headers["webhook-id"], when, body.decode()),
    }
    return body, headers


async def test_future_termination_is_scheduled_then_moved_then_rescinded(
    client: tuple[TestClient[web.Request, web.Application], Runtime], leaver: SeededUser
) -> None:
    http, runtime = client
    later = datetime.now(UTC) + timedelta(days=3)
    body, headers = signed(termination(leaver.login, effective_at=later.isoformat()))
    answer = await (await http.post("/v1/hooks/hr/hris", data=body, headers=headers)).json()
    assert answer["outcome"] == "created" and answer["scheduled_for"] is not None
    case = await runtime.store.get_case(answer["case_id"])
    assert case.status is CaseStatus.PENDING and case.run_after is not None
    assert abs((case.run_after - later).total_seconds()) < 1

    sooner = later - timedelta(days=2)
    body, headers = signed(termination(leaver.login, effective_at=sooner.isoformat()))
    moved = await (await http.post("/v1/hooks/hr/hris", data=body, headers=headers)).json()
    assert moved["case_id"] == case.id and moved["outcome"] == "rescheduled"
    run_after = (await runtime.store.get_case(case.id)).run_after
    assert run_after is not None and abs((run_after - sooner).total_seconds()) < 1

    rescind = {
        "type": "employee.termination_rescinded",
        "data": {"email": leaver.login, "hr_reference": "E-1"},
    }
    body, headers = signed(rescind)
    gone = await (await http.post("/v1/hooks/hr/hris", data=body, headers=headers)).json()
    assert gone["outcome"] == "cancelled"
    assert (await runtime.store.get_case(case.id)).status is CaseStatus.CANCELLED


async def test_a_new_date_after_containment_began_is_refused_as_a_rescission_is(
    client: tuple[TestClient[web.Request, web.Application], Runtime], leaver: SeededUser
) -> None:
    http, runtime = client
    body, headers = signed(termination(leaver.login))
    started = await (await http.post("/v1/hooks/hr/hris", data=body, headers=headers)).json()
    await _wait_status(runtime, started["case_id"], CaseStatus.WAITING)

    later = datetime.now(UTC) + timedelta(days=3)
    body, headers = signed(termination(leaver.login, effective_at=later.isoformat()))
    moved = await http.post("/v1/hooks/hr/hris", data=body, headers=headers)
    assert moved.status == 409, await moved.text()
    assert "has started" in (await moved.json())["detail"]
    # nothing recorded: the sender may deliver it again, and is answered the same
    key = f"hook:hr:hris:{headers['webhook-id']}"
    assert await runtime.store.get_delivery(key) is None
    case = await runtime.store.get_case(started["case_id"])
    assert case.status is CaseStatus.WAITING and case.run_after is None


async def test_protected_identity_is_refused_and_recorded(
    client: tuple[TestClient[web.Request, web.Application], Runtime],
) -> None:
    http, runtime = client
    body, headers = signed(termination("breakglass-admin@example.com"))
    response = await http.post("/v1/hooks/hr/hris", data=body, headers=headers)
    assert response.status == 403
    assert "protected identity" in (await response.json())["detail"]
    assert await _case_count(runtime) == 0
    refusals = await runtime.store.refusals()
    assert [(r.source, r.subject) for r in refusals] == [("hris", "breakglass-admin@example.com")]


async def test_pagerduty_incident_runs_the_incident_playbook_first(
    client: tuple[TestClient[web.Request, web.Application], Runtime], leaver: SeededUser
) -> None:
    http, runtime = client
    payload = {
        "event": {
            "id": "evt-1",
            "event_type": "incident.triggered",
            "occurred_at": datetime.now(UTC).isoformat(),
            "data": {"id": "PINC1", "title": f"Credential leak [offboard {leaver.login}]"},
        }
    }
    body = json.dumps(payload).encode()
    signature = "v1=" + hmac.new(PD_SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {"X-PagerDuty-Signature": signature, "Content-Type": "application/json"}
    first = await http.post("/v1/hooks/incident/pagerduty", data=body, headers=headers)
    again = await http.post("/v1/hooks/incident/pagerduty", data=body, headers=headers)
    assert first.status == 202 and again.status == 202
    a, b = await first.json(), await again.json()
    assert a["playbook"] == "incident" and a["case_id"] == b["case_id"] and b["replayed"]
    case = await runtime.store.get_case(a["case_id"])
    assert case.priority == 100


async def test_manual_api_needs_a_token_and_is_idempotent(
    client: tuple[TestClient[web.Request, web.Application], Runtime], leaver: SeededUser
) -> None:
    http, runtime = client
    request = {"playbook": "leaver", "subject": leaver.login, "reason": "manual"}
    assert (await http.post("/v1/cases", json=request)).status == 401
    bad = await http.post("/v1/cases", json=request, headers={"Authorization": "Bearer nope"})
    assert bad.status == 401 and "WWW-Authenticate" in bad.headers
    auth = {"Authorization": f"Bearer {API_TOKEN}", "Idempotency-Key": "req-1"}
    later = (datetime.now(UTC) + timedelta(hours=5)).isoformat()
    scheduled = {**request, "effective_at": later}

    first = await http.post("/v1/cases", json=scheduled, headers=auth)
    again = await http.post("/v1/cases", json=scheduled, headers=auth)
    other = await http.post("/v1/cases", json={**scheduled, "reason": "changed"}, headers=auth)

    assert first.status == 201, await first.text()
    assert (
        again.status == 200 and (await again.json())["case_id"] == (await first.json())["case_id"]
    )
    assert other.status == 409
    assert await _case_count(runtime) == 1
    case_id = (await first.json())["case_id"]
    listed = await (await http.get("/v1/cases", headers=auth)).json()
    assert [c["case_id"] for c in listed["cases"]] == [case_id]
    cancelled = await http.post(f"/v1/cases/{case_id}/cancel", headers=auth)
    assert cancelled.status == 200 and (await cancelled.json())["status"] == "cancelled"

    invalid = await http.post(
        "/v1/cases", json={"playbook": "leaver", "subject": "not-an-email", "x": 1}, headers=auth
    )
    assert invalid.status == 422
    detail = (await invalid.json())["detail"]
    assert "subject" in detail and "x: unknown field" in detail
    unknown = await http.get("/v1/cases/c-nope", headers=auth)
    assert unknown.status == 404


async def test_cancel_after_containment_began_is_a_conflict(
    client: tuple[TestClient[web.Request, web.Application], Runtime], leaver: SeededUser
) -> None:
    http, runtime = client
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    created = await http.post(
        "/v1/cases", json={"playbook": "leaver", "subject": leaver.login}, headers=auth
    )
    case_id = (await created.json())["case_id"]
    await _wait_status(runtime, case_id, CaseStatus.WAITING)
    response = await http.post(f"/v1/cases/{case_id}/cancel", headers=auth)
    assert response.status == 409
    assert (await runtime.store.get_case(case_id)).status is CaseStatus.WAITING


async def test_health_readiness_metrics_and_openapi(
    client: tuple[TestClient[web.Request, web.Application], Runtime],
) -> None:
    http, _ = client
    assert (await http.get("/healthz")).status == 200
    assert (await (await http.get("/readyz")).json())["status"] == "ready"
    metrics = await (await http.get("/metrics")).text()
    assert "offboard_operator_tasks_waiting" in metrics
    spec = await (await http.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.1")


async def test_scheduled_termination_fires_after_a_restart_and_a_cancelled_one_never(
    config_data: dict[str, Any], tmp_path: Path, sandbox: Sandbox
) -> None:
    users = [sandbox.seed_leaver(f"sched{i}@example.com") for i in range(2)]
    clock = ManualClock(datetime.now(UTC))
    config = parse_config(server_settings(config_data), "test")
    due = clock.now() + timedelta(days=2)
    case_ids = []
    async with open_runtime(config, base_dir=tmp_path, clock=clock) as runtime:
        app = build_app(runtime, run_worker=False)
        async with TestClient(TestServer(app)) as http:
            for user in users:
                body, headers = signed(
                    termination(user.login, effective_at=due.isoformat()), when=clock.now()
                )
                answer = await (
                    await http.post("/v1/hooks/hr/hris", data=body, headers=headers)
                ).json()
                case_ids.append(answer["case_id"])
        await runtime.store.cancel_case(case_ids[1], clock.now(), "test")
    # a new process: the schedule lives in the store, not in memory
    clock.advance(timedelta(days=2, seconds=1))
    async with open_runtime(config, base_dir=tmp_path, clock=clock) as runtime:
        worker = Worker(runtime)
        await worker.tick()
        await worker.join()
        fired = await runtime.store.get_case(case_ids[0])
        assert fired.status is CaseStatus.WAITING  # ran up to the portal-session task
        assert (await runtime.store.get_case(case_ids[1])).status is CaseStatus.CANCELLED
    assert sandbox.okta.user_status(users[0].login) == "DEPROVISIONED"
    assert sandbox.okta.user_status(users[1].login) == "ACTIVE"


async def test_the_case_list_comes_a_page_at_a_time_by_cursor(
    client: tuple[TestClient[web.Request, web.Application], Runtime],
) -> None:
    http, runtime = client
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    leaver = runtime.playbook("leaver")
    later = runtime.clock.now() + timedelta(days=3)  # scheduled: the worker leaves them be
    made = [
        (await open_case(runtime, leaver, f"p{n:03d}@example.com", {}, run_after=later))[0]
        for n in range(102)
    ]
    for case in made[10:12]:
        await runtime.store.cancel_case(case.id, runtime.clock.now(), "rescinded")
    listed = [c.id for c in await runtime.store.list_cases()]

    async def walk(url: str) -> tuple[list[str], list[str]]:
        ids, links = [], []
        next_url: str | None = url
        while next_url is not None:
            response = await http.get(next_url, headers=auth)
            assert response.status == 200, await response.text()
            body = await response.json()
            assert set(body) == {"cases", "next"}
            ids += [c["case_id"] for c in body["cases"]]
            next_url = body["next"]
            if next_url is not None:
                links.append(next_url)
        return ids, links

    # the default page is 100 cases; the next link brings the rest
    ids, links = await walk("/v1/cases")
    assert ids == listed and len(links) == 1
    first = await (await http.get("/v1/cases", headers=auth)).json()
    assert len(first["cases"]) == 100 and first["next"] == f"/v1/cases?after={listed[99]}"
    # a page of 7 at a time, and a filtered walk keeping its filter and its size
    ids, links = await walk("/v1/cases?limit=7")
    assert ids == listed and len(links) == 14  # 102 cases: 15 pages, the last not full
    pending = [c.id for c in await runtime.store.list_cases((CaseStatus.PENDING,))]
    ids, links = await walk("/v1/cases?status=pending&limit=25")
    assert ids == pending and len(ids) == 100 and len(links) == 3
    assert all(link.startswith("/v1/cases?status=pending&limit=25&after=c-") for link in links)
    last = await (await http.get("/v1/cases?limit=1000", headers=auth)).json()
    assert [c["case_id"] for c in last["cases"]] == listed and last["next"] is None

    # a case opened during a walk comes at its end; nothing is repeated or skipped
    page = await (await http.get("/v1/cases?limit=60", headers=auth)).json()
    late, _ = await open_case(runtime, leaver, "late@example.com", {}, run_after=later)
    rest, _ = await walk(page["next"])
    assert [c["case_id"] for c in page["cases"]] + rest == [*listed, late.id]

    for query, named in (
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=-1", "limit"),
        ("limit=1.5", "limit"),
        ("limit=ten", "limit"),
        ("limit=", "limit"),
        ("limit=99999999999999999999", "limit"),
        ("after=c-does-not-exist", "after"),
        ("after=" + "x" * 201, "after"),
        ("status=pending&after=nope", "after"),
    ):
        response = await http.get(f"/v1/cases?{query}", headers=auth)
        assert response.status == 400, query
        assert response.content_type == "application/problem+json"
        assert (await response.json())["detail"].startswith(f"{named} must be"), query


async def test_a_non_ascii_address_is_a_clear_4xx_on_every_front_end(
    client: tuple[TestClient[web.Request, web.Application], Runtime],
) -> None:
    """issue 14: `jörg@example.com` was a 500 on every retry (senders retry a 5xx forever)."""
    http, runtime = client
    body, headers = signed(termination("jörg@example.com"))
    hook = await http.post("/v1/hooks/hr/hris", data=body, headers=headers)
    assert hook.status == 422, await hook.text()
    problem = await hook.json()
    assert "non-ASCII" in problem["detail"] and "jörg" not in problem["detail"]
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    api = await http.post(
        "/v1/cases",
        json={"playbook": "leaver", "subject": "jörg@example.com"},
        headers=auth,
    )
    assert api.status == 422 and "non-ASCII" in (await api.json())["detail"]
    assert await _case_count(runtime) == 0


async def test_a_protected_identity_in_another_case_or_script_is_refused_unechoed(
    client: tuple[TestClient[web.Request, web.Application], Runtime],
) -> None:
    """issue 14: a protected identity spelt with a Cyrillic letter was a 500 (or slipped by)."""
    http, runtime = client
    for spelling in ("ROOT@Example.com", "r\u043eot@example.com", "bre\u0430kglass-x@example.com"):
        body, headers = signed(termination(spelling))
        response = await http.post("/v1/hooks/hr/hris", data=body, headers=headers)
        assert response.status == 403, (spelling, await response.text())
        detail = (await response.json())["detail"]
        assert "protected identity" in detail and spelling.casefold() not in detail.casefold()
    assert await _case_count(runtime) == 0
