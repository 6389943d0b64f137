"""Issue 14: one open case per person, through every front end.

The webhooks (HR, signed; incident, bearer), `POST /v1/cases`, `offboard run`,
`offboard cancel` and `offboard bulk` each map the one admission decision: join
(`existing`), escalate, attach to a halted case, answer a contained one, and
another spelling of the address is the same person. The server runs here without
its worker loop, so every case stays in the state the test put it in.
"""

from __future__ import annotations

import base64
import json
import secrets
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from standardwebhooks.webhooks import Webhook

from tests.acceptance import cli
from tests.flows import CONTAINMENT_ORDER, contain, mutations
from worker import bulk
from worker.admission import Instruction
from worker.cases import drive_case
from worker.config import parse_config
from worker.domain import Case, CaseStatus
from worker.runtime import Runtime, open_runtime
from worker.sandbox import Sandbox, SeededUser
from worker.web.app import build_app

WHSEC = "whsec_" + base64.b64encode(b"k" * 32).decode()
API_TOKEN = "api-" + "t" * 40
BEARER = "soar-token-" + "b" * 30
Client = TestClient[web.Request, web.Application]


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_API_TOKEN", API_TOKEN)
    monkeypatch.setenv("T_WHSEC", WHSEC)
    monkeypatch.setenv("T_BEARER", BEARER)


@pytest.fixture
async def served(
    config_data: dict[str, Any], tmp_path: Path
) -> AsyncIterator[tuple[Client, Runtime]]:
    config_data["server"] = {
        "api_tokens": {"ops": {"env": "T_API_TOKEN"}},
        "hr_sources": {"hris": {"kind": "standard-webhooks", "secrets": [{"env": "T_WHSEC"}]}},
        "incident_sources": {"soar": {"kind": "bearer", "secrets": [{"env": "T_BEARER"}]}},
    }
    config = parse_config(config_data, "test")
    async with open_runtime(config, base_dir=tmp_path) as runtime:
        async with TestClient(TestServer(build_app(runtime, run_worker=False))) as client:
            yield client, runtime


async def hr(client: Client, email: str) -> tuple[int, dict[str, Any]]:
    payload = {"type": "employee.terminated", "data": {"email": email, "hr_reference": "E-1"}}
    body = json.dumps(payload)
    msg_id = "msg_" + secrets.token_hex(8)
    when = datetime.now(UTC)
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(WHSEC).sign(msg_id, when, body),
        "Content-Type": "application/json",
    }
    response = await client.post("/v1/hooks/hr/hris", data=body.encode(), headers=headers)
    return response.status, await response.json()


async def incident(client: Client, email: str) -> tuple[int, dict[str, Any]]:
    payload = {
        "type": "identity.compromised",
        "data": {"email": email, "incident_id": "INC-" + secrets.token_hex(4)},
    }
    response = await client.post(
        "/v1/hooks/incident/soar", json=payload, headers={"Authorization": f"Bearer {BEARER}"}
    )
    return response.status, await response.json()


async def api(client: Client, email: str, playbook: str = "leaver") -> tuple[int, dict[str, Any]]:
    response = await client.post(
        "/v1/cases",
        json={"playbook": playbook, "subject": email},
        headers={"Authorization": f"Bearer {API_TOKEN}"},
    )
    return response.status, await response.json()


async def left_in(runtime: Runtime, case_id: str, status: CaseStatus) -> Case:
    """The case moved to `status` as a worker would leave it."""
    now = runtime.clock.now()
    assert await runtime.store.claim_case(case_id, "w-test", now, 30) is not None
    await runtime.store.release_case(case_id, "w-test", status, now)
    return await runtime.store.get_case(case_id)


async def kinds(runtime: Runtime, case_id: str) -> list[str]:
    return [e.kind for e in await runtime.store.events(case_id)]


async def test_webhooks_and_the_api_join_escalate_and_case_fold(
    served: tuple[Client, Runtime],
) -> None:
    client, runtime = served
    status, first = await hr(client, "Ann.Lee@Example.com")
    assert (status, first["outcome"]) == (202, "created")
    case_id = first["case_id"]
    # the API with another spelling: the same person, the same case (case-folded)
    status, joined = await api(client, "  ANN.LEE@EXAMPLE.COM ")
    assert (status, joined["outcome"], joined["case_id"]) == (200, "existing", case_id)
    # an incident escalates the open leaver case in place
    status, escalated = await incident(client, "ann.lee@example.com")
    assert (status, escalated["outcome"], escalated["case_id"]) == (202, "escalated", case_id)
    case = await runtime.store.get_case(case_id)
    assert case.priority == 100 and case.steps[-1].id == "deny-role-sessions"
    # a later HR delivery and an API incident join the (now incident-priority) case
    status, again = await hr(client, "ann.lee@EXAMPLE.com")
    assert (status, again["outcome"], again["case_id"]) == (202, "existing", case_id)
    status, api_incident = await api(client, "Ann.Lee@example.com", "incident")
    assert (status, api_incident["outcome"]) == (200, "existing")
    assert len(await runtime.store.list_cases()) == 1
    timeline = await kinds(runtime, case_id)
    assert timeline.count("trigger_joined") == 3 and timeline.count("case_escalated") == 1
    # the status page explains the rule and shows the escalation
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    page = await (await client.get("/ui", headers=auth)).text()
    assert "One open case per person" in page and "Escalation" in page
    assert "never holds up containment" in page
    detail = await (await client.get(f"/ui/cases/{case_id}", headers=auth)).text()
    assert "Escalated in place" in detail and "deny-role-sessions" in detail
    # a Unicode look-alike spelling is a clear 4xx on each, never a case
    status, problem = await api(client, "ann.l\u0435e@example.com")
    assert status == 422 and "non-ASCII" in problem["detail"]
    status, problem = await incident(client, "\uff41nn.lee@example.com")
    assert status == 422
    assert len(await runtime.store.list_cases()) == 1


async def test_webhooks_and_the_api_attach_to_a_halted_case_and_answer_a_contained_one(
    served: tuple[Client, Runtime],
) -> None:
    client, runtime = served
    _, first = await api(client, "halted@example.com")
    halted = await left_in(runtime, first["case_id"], CaseStatus.HALTED)
    for send in (hr, incident, api):
        status, answer = await send(client, "Halted@Example.com")
        assert answer["outcome"] == "attached" and answer["case_id"] == halted.id, answer
        assert status in (200, 202)
    assert (await kinds(runtime, halted.id)).count("trigger_attached") == 3

    _, first = await api(client, "done@example.com")
    contained = await left_in(runtime, first["case_id"], CaseStatus.CONTAINED)
    for send in (hr, api):
        status, answer = await send(client, "DONE@example.com")
        assert answer["outcome"] == "contained" and answer["case_id"] == contained.id, answer
    # an incident for a contained leaver still escalates: its deny step must run
    status, answer = await incident(client, "done@example.com")
    assert (answer["outcome"], answer["case_id"]) == ("escalated", contained.id)
    assert (await runtime.store.get_case(contained.id)).status is CaseStatus.PENDING
    assert len(await runtime.store.list_cases()) == 2


async def test_bulk_rows_join_attach_and_answer_contained(runtime: Runtime) -> None:
    store, leaver = runtime.store, runtime.playbook("leaver")
    admissions = runtime.admissions()

    async def opened(email: str, playbook: str = "leaver") -> str:
        admitted = await admissions.admit(
            Instruction(playbook=runtime.playbook(playbook), subject=email, trigger={"source": "t"})
        )
        assert admitted.case is not None
        return admitted.case.id

    open_incident = await opened("inc@example.com", "incident")
    halted = await left_in(runtime, await opened("stuck@example.com"), CaseStatus.HALTED)
    contained = await left_in(runtime, await opened("gone@example.com"), CaseStatus.CONTAINED)
    rows = bulk.parse_bulk_csv(
        b"email\nINC@example.com\nStuck@Example.com\ngone@EXAMPLE.com\nnew@example.com\n",
        protected=[],
    ).rows
    entries = await bulk.enqueue(runtime, leaver, rows, file="f.csv", by="test")
    assert [(e.outcome, e.case_id) for e in entries][:3] == [
        ("existing", open_incident),
        ("attached", halted.id),
        ("contained", contained.id),
    ]
    assert entries[3].outcome == "created"
    assert len(await store.list_cases()) == 4


def _case_ids(db: str) -> list[tuple[str, str, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT id, status, playbook FROM cases ORDER BY created_at").fetchall()


async def test_cli_run_answers_a_contained_case_new_needs_a_reason_and_cancel(
    sandbox: Sandbox, config_data: dict[str, Any], tmp_path: Path
) -> None:
    db = config_data["store"]["sqlite"]
    config = cli.write_config(tmp_path / "offboard.yaml", config_data)
    env = cli.environment(sandbox.environment())
    base = ["--config", str(config)]
    parsed = parse_config(config_data, "test")
    async with open_runtime(parsed, base_dir=tmp_path) as runtime:
        admitted = await runtime.admissions().admit(
            Instruction(playbook=runtime.playbook("leaver"), subject="cat@example.com", trigger={})
        )
        assert admitted.case is not None
        case_id = (await left_in(runtime, admitted.case.id, CaseStatus.CONTAINED)).id

    run = await cli.run([*base, "run", "leaver", "--user", "CAT@Example.com"], env, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"already contained: case {case_id}" in run.stdout
    assert len(_case_ids(db)) == 1

    bare = await cli.run(
        [*base, "run", "leaver", "--user", "cat@example.com", "--new"], env, tmp_path
    )
    assert bare.returncode == 2 and "--new needs --reason" in bare.stderr
    assert len(_case_ids(db)) == 1
    again = await cli.run(
        [*base, "run", "leaver", "--user", "cat@example.com", "--new", "--reason", "re-hired"],
        env,
        tmp_path,
    )
    assert "opened case " in again.stdout, again.stdout + again.stderr
    assert len(_case_ids(db)) == 2
    with sqlite3.connect(db) as conn:
        (trigger,) = conn.execute("SELECT trigger FROM cases WHERE id != ?", (case_id,)).fetchone()
    assert json.loads(trigger)["new_reason"] == "re-hired"

    # cancel: a case that has not begun can be withdrawn, a started one cannot
    started = await cli.run([*base, "cancel", case_id, "--reason", "wrong"], env, tmp_path)
    assert started.returncode == 1 and "not cancelled" in started.stderr
    async with open_runtime(parsed, base_dir=tmp_path) as runtime:
        fresh = await runtime.admissions().admit(
            Instruction(playbook=runtime.playbook("leaver"), subject="dog@example.com", trigger={})
        )
        assert fresh.case is not None
    cancel = await cli.run(
        [*base, "cancel", fresh.case.id, "--reason", "HR sent the wrong person"], env, tmp_path
    )
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr
    assert "HR sent the wrong person" in cancel.stdout
    assert (fresh.case.id, "cancelled", "leaver") in _case_ids(db)


async def test_an_escalated_contained_case_runs_the_deny_step_and_is_contained_again(
    runtime: Runtime, sandbox: Sandbox, leaver: SeededUser
) -> None:
    """The escalation is not only recorded: a worker picks the case up at once, runs the
    incident's deny step (the leaver's steps stay done) and contains it again."""
    case = await contain(runtime, sandbox, leaver)
    assert case.status is CaseStatus.CONTAINED
    before = [a for a in mutations(sandbox) if a in CONTAINMENT_ORDER]
    admitted = await runtime.admissions().admit(
        Instruction(
            playbook=runtime.playbook("incident"),
            subject=leaver.login.upper(),
            trigger={"source": "pagerduty"},
        )
    )
    assert admitted.outcome.value == "escalated"
    case = await drive_case(runtime, case.id)
    assert case.status is CaseStatus.CONTAINED and case.priority == 100
    steps = await runtime.store.steps(case.id)
    assert [(s.step_id, s.status.value) for s in steps][-1] == ("deny-role-sessions", "done")
    # nothing of the leaver's containment was done again
    assert [a for a in mutations(sandbox) if a in CONTAINMENT_ORDER] == before
    timeline = await kinds(runtime, case.id)
    assert timeline.index("case_escalated") < len(timeline) - 1
    assert timeline[-1] == "case_contained"
