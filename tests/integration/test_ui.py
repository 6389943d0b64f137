"""The status page at /ui, in-process: sign-in, sessions, what the page shows, CSRF,
escaping, and that it names no host but the consoles of operator tasks."""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from tests.flows import contain
from worker.cases import drive_case, open_case
from worker.config import parse_config
from worker.domain import Case, CaseStatus, OperatorTask
from worker.runtime import Runtime, open_runtime
from worker.sandbox import Sandbox
from worker.web.app import build_app
from worker.web.ui import COOKIE, CSP, SESSION_TTL, UiState, issue_session, read_session

TOKEN = "ui-ops-token-" + "u" * 32
OTHER = "ui-night-token-" + "n" * 32
#: what a browser posting the page's own forms says of where they come from
BROWSER = {"Sec-Fetch-Site": "same-origin"}
HOSTILE_SUBJECT = "<img/src=x/onerror=alert(1)>@evil.example"
HOSTILE_REASON = '<script>alert("halt")</script> & "quoted" \'single\''


@dataclass
class Ui:
    http: TestClient[web.Request, web.Application]
    runtime: Runtime
    sandbox: Sandbox


@pytest.fixture
async def ui(
    config_data: dict[str, Any],
    tmp_path: Path,
    sandbox: Sandbox,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Ui]:
    monkeypatch.setenv("T_UI_OPS", TOKEN)
    monkeypatch.setenv("T_UI_NIGHT", OTHER)
    config_data["server"] = {
        "api_tokens": {"ops": {"env": "T_UI_OPS"}, "night-shift": {"env": "T_UI_NIGHT"}}
    }
    config = parse_config(config_data, "ui test")
    async with open_runtime(config, base_dir=tmp_path) as runtime:
        # no worker: nothing moves a case behind the test's back
        app = build_app(runtime, run_worker=False)
        async with TestClient(TestServer(app)) as http:
            yield Ui(http=http, runtime=runtime, sandbox=sandbox)


async def _waiting_case(ui: Ui, login: str = "waiting@example.com") -> Case:
    user = ui.sandbox.seed_leaver(login)
    case, _ = await open_case(ui.runtime, ui.runtime.playbook("leaver"), user.login, {})
    case = await drive_case(ui.runtime, case.id)
    assert case.status is CaseStatus.WAITING
    return case


async def _sign_in(ui: Ui, token: str = TOKEN) -> str:
    """Sign in through the form; the session cookie's value."""
    response = await ui.http.post("/ui/login", data={"token": token}, allow_redirects=False)
    assert response.status == 303, await response.text()
    assert response.headers["Location"] == "/ui"
    return response.cookies[COOKIE].value


async def _page(ui: Ui, path: str = "/ui", **headers: str) -> str:
    response = await ui.http.get(path, headers=headers, allow_redirects=False)
    assert response.status == 200, await response.text()
    assert response.content_type == "text/html"
    assert response.headers["Content-Security-Policy"] == CSP
    return await response.text()


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


def _task(case_id: str, step: str, console_url: str, title: str) -> OperatorTask:
    return OperatorTask(
        case_id=case_id,
        step_id=step,
        title=title,
        instructions=f"do {title}",
        console_url=console_url,
        subject="someone@example.com",
        opened_at=datetime.now(UTC),
    )


# --- sign-in and sessions ------------------------------------------------------------


async def test_without_a_session_the_page_sends_the_browser_to_sign_in(ui: Ui) -> None:
    case = await _waiting_case(ui)

    response = await ui.http.get("/ui", allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/ui/login"
    response = await ui.http.get(f"/ui/cases/{case.id}", allow_redirects=False)
    assert response.headers["Location"] == f"/ui/login?next=/ui/cases/{case.id}"

    confirm = f"/ui/cases/{case.id}/confirm/portal-sessions"
    response = await ui.http.post(confirm, data={"csrf": "x"}, allow_redirects=False)
    assert response.status == 401
    task = await ui.runtime.store.get_task(case.id, "portal-sessions")
    assert task is not None and task.confirmed_at is None

    login = await _page(ui, "/ui/login")
    assert 'action="/ui/login"' in login and 'type="password"' in login
    assert case.subject not in login


async def test_a_wrong_token_gets_the_sign_in_page_again_with_401(ui: Ui) -> None:
    response = await ui.http.post("/ui/login", data={"token": "not-" + TOKEN})
    assert response.status == 401
    text = await response.text()
    assert "That token is not valid." in text and 'action="/ui/login"' in text
    assert COOKIE not in response.cookies
    assert "not-" + TOKEN not in text  # never echoed back

    empty = await ui.http.post("/ui/login", data={})
    assert empty.status == 401 and COOKIE not in empty.cookies

    bearer = await ui.http.get("/ui", headers={"Authorization": "Bearer nope"})
    assert bearer.status == 401 and "invalid_token" in bearer.headers["WWW-Authenticate"]


async def test_signing_in_sets_a_signed_session_cookie_that_shows_the_cases(ui: Ui) -> None:
    case = await _waiting_case(ui)
    with capture_logs() as logs:
        response = await ui.http.post(
            "/ui/login",
            data={"token": TOKEN, "next": f"/ui/cases/{case.id}"},
            allow_redirects=False,
        )
    assert response.status == 303 and response.headers["Location"] == f"/ui/cases/{case.id}"
    header = response.headers["Set-Cookie"]
    attributes = {a.strip().split("=")[0].lower() for a in header.split(";")[1:]}
    assert {"httponly", "path", "samesite", "max-age"} <= attributes
    assert "Path=/ui" in header and "SameSite=Strict" in header
    assert "secure" not in attributes  # plain http here; see the https test below
    value = response.cookies[COOKIE].value
    assert TOKEN not in value
    payload = json.loads(base64.urlsafe_b64decode(value.split(".")[1] + "=="))
    assert payload["n"] == "ops" and set(payload) == {"n", "s", "e"}
    assert TOKEN not in repr(logs)

    page = await _page(ui)
    assert f'id="case-{case.id}"' in page and case.subject in page
    assert "signed in as <b>ops</b>" in page
    assert 'data-step="portal-sessions"' in page and "Confirm portal-sessions" in page
    # the step timeline, and the countdown as UTC instants for the script to count down to
    for step in ("idp-deactivate", "idp-sessions", "ic-disable", "portal-sessions"):
        assert '<tr class="step' in page and f'data-step="{step}"' in page
    assert re.search(r'class="countdown" data-at="\d{4}-\d\d-\d\dT[\d:.]+Z"', page)
    assert TOKEN not in page


async def test_the_cookie_is_secure_behind_https(ui: Ui) -> None:
    response = await ui.http.post(
        "/ui/login",
        data={"token": TOKEN},
        headers={"X-Forwarded-Proto": "https"},
        allow_redirects=False,
    )
    assert response.status == 303
    assert "Secure" in response.headers["Set-Cookie"]


async def test_a_bearer_token_works_for_scripts(ui: Ui) -> None:
    case = await _waiting_case(ui)
    auth = {"Authorization": f"Bearer {OTHER}"}
    page = await _page(ui, "/ui", **auth)
    assert case.subject in page and "signed in as <b>night-shift</b>" in page
    # a browser never adds a bearer header by itself: no CSRF token needed with one
    confirm = f"/ui/cases/{case.id}/confirm/portal-sessions"
    response = await ui.http.post(confirm, headers=auth, allow_redirects=False)
    assert response.status == 303
    task = await ui.runtime.store.get_task(case.id, "portal-sessions")
    assert task is not None and task.confirmed_by == "ui:night-shift"


def test_a_session_is_signed_expires_and_ends_with_its_token() -> None:
    ui = UiState(tokens={"ops": TOKEN})
    now = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    value = issue_session(ui, "ops", now)
    session = read_session(ui, value, now)
    assert session is not None and session.name == "ops" and session.csrf
    assert read_session(ui, value, now + SESSION_TTL) is None  # expired

    version, payload, mac = value.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=="))
    forged = base64.urlsafe_b64encode(json.dumps({**data, "n": "admin"}).encode()).decode()
    assert read_session(ui, f"{version}.{forged.rstrip('=')}.{mac}", now) is None
    longer = base64.urlsafe_b64encode(json.dumps({**data, "e": data["e"] + 9999}).encode())
    assert read_session(ui, f"{version}.{longer.decode().rstrip('=')}.{mac}", now) is None
    for garbage in ("", "v1", "v1..", "v2." + value[3:], value + "x", "v1.%%%.x"):
        assert read_session(ui, garbage, now) is None

    assert read_session(UiState(tokens={"ops": TOKEN + "-rotated"}), value, now) is None
    assert read_session(UiState(tokens={"other": TOKEN}), value, now) is None
    # the same configuration on another replica, or after a restart, accepts it
    assert read_session(UiState(tokens={"ops": TOKEN}), value, now) is not None


async def test_signing_out_ends_the_browser_session(ui: Ui) -> None:
    await _sign_in(ui)
    page = await _page(ui)
    refused = await ui.http.post(
        "/ui/logout", data={"csrf": "wrong"}, headers=BROWSER, allow_redirects=False
    )
    assert refused.status == 403
    response = await ui.http.post(
        "/ui/logout", data={"csrf": _csrf(page)}, headers=BROWSER, allow_redirects=False
    )
    assert response.status == 303 and response.headers["Location"] == "/ui/login"
    assert response.cookies[COOKIE].value == ""
    again = await ui.http.get("/ui", allow_redirects=False)
    assert again.status == 303 and again.headers["Location"] == "/ui/login"


# --- CSRF ----------------------------------------------------------------------------


async def test_confirming_needs_the_sessions_csrf_token(ui: Ui) -> None:
    case = await _waiting_case(ui)
    # another session's token is no good: it is bound to the session it was issued in
    await _sign_in(ui, OTHER)
    foreign = _csrf(await _page(ui))
    await _sign_in(ui)
    page = await _page(ui)
    csrf = _csrf(page)
    assert csrf != foreign
    confirm = f"/ui/cases/{case.id}/confirm/portal-sessions"

    for form in ({}, {"csrf": ""}, {"csrf": "wrong"}, {"csrf": csrf[:-1]}, {"csrf": foreign}):
        response = await ui.http.post(confirm, data=form, headers=BROWSER, allow_redirects=False)
        assert response.status == 403, form
        assert "expired" in await response.text()  # refused for its CSRF token
        assert "text/html" in response.headers["Content-Type"]
    # right token, but the browser says another site posted the form
    response = await ui.http.post(
        confirm,
        data={"csrf": csrf},
        headers={"Sec-Fetch-Site": "cross-site"},
        allow_redirects=False,
    )
    assert response.status == 403
    task = await ui.runtime.store.get_task(case.id, "portal-sessions")
    assert task is not None and task.confirmed_at is None
    assert (await ui.runtime.store.get_case(case.id)).status is CaseStatus.WAITING

    response = await ui.http.post(
        confirm,
        data={"csrf": csrf, "back": "list"},
        headers={"Sec-Fetch-Site": "same-origin"},
        allow_redirects=False,
    )
    assert response.status == 303
    assert response.headers["Location"] == f"/ui#case-{case.id}"
    task = await ui.runtime.store.get_task(case.id, "portal-sessions")
    assert task is not None and task.confirmed_by == "ui:ops"
    events = await ui.runtime.store.events(case.id)
    assert events[-1].kind == "operator_confirmed" and events[-1].data["confirmed_by"] == "ui:ops"
    # the case runs on (a worker picks it up); the page now shows who confirmed
    assert (await ui.runtime.store.get_case(case.id)).status is CaseStatus.PENDING
    detail = await _page(ui, f"/ui/cases/{case.id}")
    assert "confirmed by <b>ui:ops</b>" in detail and "operator_confirmed" in detail


async def test_a_login_posted_from_another_site_is_refused(ui: Ui) -> None:
    response = await ui.http.post(
        "/ui/login",
        data={"token": TOKEN},
        headers={"Sec-Fetch-Site": "cross-site"},
        allow_redirects=False,
    )
    assert response.status == 403 and COOKIE not in response.cookies


# --- what the page shows -----------------------------------------------------------


async def test_halted_cases_show_their_reason_and_everything_is_escaped(ui: Ui) -> None:
    leaver = ui.runtime.playbook("leaver")
    hostile, _ = await open_case(ui.runtime, leaver, HOSTILE_SUBJECT, {"reason": HOSTILE_REASON})
    halted, _ = await open_case(ui.runtime, leaver, "halted@example.com", {})
    now = ui.runtime.clock.now()
    assert await ui.runtime.store.claim_case(halted.id, "test", now, 30)
    await ui.runtime.store.release_case(
        halted.id, "test", CaseStatus.HALTED, now, halt_reason=HOSTILE_REASON
    )
    await ui.runtime.store.open_task(
        _task(hostile.id, "idp-deactivate", "javascript:alert(1)", "<b>bold</b> task")
    )
    await _sign_in(ui)

    page = await _page(ui)
    for raw in (HOSTILE_SUBJECT, HOSTILE_REASON, "<b>bold</b>", "<script>"):
        assert raw not in page
    assert "&lt;img/src=x/onerror=alert(1)&gt;@evil.example" in page
    reason = "&lt;script&gt;alert(&quot;halt&quot;)&lt;/script&gt; &amp; &quot;quoted&quot; &#x27;"
    assert f'<strong>Halted:</strong> <span class="reason">{reason}' in page
    assert 'href="javascript:' not in page and "javascript:alert(1)" in page  # shown, not linked
    # the halted case comes first: it needs a human
    assert page.index(f'id="case-{halted.id}"') < page.index(f'id="case-{hostile.id}"')

    detail = await _page(ui, f"/ui/cases/{hostile.id}")
    assert HOSTILE_SUBJECT not in detail and HOSTILE_REASON not in detail
    assert "&lt;script&gt;" in detail  # the trigger's reason, escaped


async def test_the_page_names_no_host_but_the_consoles_of_its_tasks(ui: Ui) -> None:
    contained = await contain(ui.runtime, ui.sandbox, ui.sandbox.seed_leaver("c@example.com"))
    assert contained.countdown is not None
    waiting = await _waiting_case(ui)
    await _sign_in(ui)
    tasks = [await ui.runtime.store.get_task(c.id, "portal-sessions") for c in (contained, waiting)]
    consoles = {t.console_url for t in tasks if t is not None}
    assert len(consoles) == 2

    for path in ("/ui", "/ui?show=all", f"/ui/cases/{waiting.id}", f"/ui/cases/{contained.id}"):
        page = await _page(ui, path)
        # in text, attributes and the timeline's JSON alike
        urls = set(re.findall(r"(?i)\b(?:https?:)?//[^\s\"'<>]+", html.unescape(page)))
        assert urls <= consoles, (path, urls - consoles)
        for attribute, value in re.findall(r'\b(src|href|action)="([^"]*)"', page):
            assert value.startswith("/ui") or value in consoles, (path, attribute, value)
        for link in re.findall(r"<a [^>]*target=[^>]*>", page):
            assert 'rel="noopener noreferrer"' in link
    # the contained case shows its milestones, each an instant for the script
    page = await _page(ui, f"/ui/cases/{contained.id}")
    for name in ("new-sessions-end", "applications-lapse", "role-sessions-lapse", "all-lapsed"):
        assert f'data-milestone="{name}"' in page
    assert "Countdown inputs" in page and "Timeline" in page


async def test_closed_cases_are_shown_only_when_asked(ui: Ui) -> None:
    leaver = ui.runtime.playbook("leaver")
    later = ui.runtime.clock.now() + timedelta(days=2)
    pending, _ = await open_case(ui.runtime, leaver, "later@example.com", {}, run_after=later)
    cancelled, _ = await open_case(ui.runtime, leaver, "gone@example.com", {}, run_after=later)
    await ui.runtime.store.cancel_case(cancelled.id, ui.runtime.clock.now(), "rescinded")
    await _sign_in(ui)

    page = await _page(ui)
    assert f'id="case-{pending.id}"' in page and f'id="case-{cancelled.id}"' not in page
    assert re.search(r'<p class="scheduled">.* data-reached="due now">in [12]d \d\dh', page)
    everything = await _page(ui, "/ui?show=all")
    assert f'id="case-{cancelled.id}"' in everything


async def test_unknown_cases_tasks_and_files_are_404(ui: Ui) -> None:
    await _sign_in(ui)
    missing = await ui.http.get("/ui/cases/c-nope")
    assert missing.status == 404 and missing.content_type == "text/html"
    page = await _page(ui)
    response = await ui.http.post(
        "/ui/cases/c-nope/confirm/portal-sessions", data={"csrf": _csrf(page)}, headers=BROWSER
    )
    assert response.status == 404
    assert (await ui.http.get("/ui/static/../ui.py")).status == 404
    assert (await ui.http.get("/ui/static/nope.js")).status == 404
    script = await ui.http.get("/ui/static/ui.js")
    assert script.status == 200 and script.content_type == "text/javascript"
    assert "immutable" in script.headers["Cache-Control"]
    assert script.headers["Content-Security-Policy"] == CSP


async def test_hostile_forms_and_cookies_get_an_answer_never_a_500(ui: Ui) -> None:
    for headers, body in (
        ({"Content-Type": "application/x-www-form-urlencoded"}, b"token=%ff%fe&next=%c3"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, b"token=\xff\xfe"),
        ({"Content-Type": "multipart/form-data"}, b"--x\r\nbroken"),
        ({"Content-Type": "multipart/form-data; boundary=x"}, b"--x\r\nbroken"),
        ({"Content-Type": "application/json"}, b'{"token": "' + TOKEN.encode() + b'"}'),
    ):
        response = await ui.http.post(
            "/ui/login", data=body, headers=headers, allow_redirects=False
        )
        assert response.status in (400, 401), (headers, body, response.status)
        assert COOKIE not in response.cookies
    for cookie in ("v1.\udcff.x", "v1." + "A" * 5000 + ".x", "v1.e30.x", "v1.bnVsbA.x"):
        ui.http.session.cookie_jar.clear()
        response = await ui.http.get(
            "/ui", headers={"Cookie": f"{COOKIE}={cookie}"}, allow_redirects=False
        )
        assert response.status == 303, cookie


async def test_many_cases_come_a_page_at_a_time_the_most_urgent_first(
    ui: Ui, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, runtime = ui.runtime.store, ui.runtime
    leaver = runtime.playbook("leaver")
    later = runtime.clock.now() + timedelta(days=2)
    made = [
        (await open_case(runtime, leaver, f"p{n:03d}@example.com", {}, run_after=later))[0]
        for n in range(124)
    ]
    # the oldest are the urgent ones: they still come first
    for case, status in ((made[0], CaseStatus.HALTED), (made[1], CaseStatus.WAITING)):
        now = runtime.clock.now()
        await store.reschedule_case(case.id, now, now)
        assert await store.claim_case(case.id, "test", now, 30)
        await store.release_case(case.id, "test", status, now, halt_reason="test")
    await store.open_task(_task(made[1].id, "portal-sessions", "https://console.example", "t"))
    await store.cancel_case(made[2].id, runtime.clock.now(), "rescinded")
    rank = {CaseStatus.HALTED: 0, CaseStatus.WAITING: 1}
    cases = [c for c in await store.list_cases() if c.status is not CaseStatus.CANCELLED]
    cases.sort(key=lambda c: c.id)  # then stable: ties of time in id order
    cases.sort(key=lambda c: (rank.get(c.status, 2), -c.created_at.timestamp()))
    expected = [c.id for c in cases]
    assert len(expected) == 123

    # every card comes from one page of the store, never from a list of every case
    async def every_case(*args: object, **kwargs: object) -> None:
        raise AssertionError("the page loaded every case")

    monkeypatch.setattr(store, "list_cases", every_case)
    steps_read: list[str] = []
    steps = store.steps

    async def counted(case_id: str) -> Any:
        steps_read.append(case_id)
        return await steps(case_id)

    monkeypatch.setattr(store, "steps", counted)
    await _sign_in(ui)

    def cards(page: str) -> list[str]:
        return re.findall(r'<article class="case [^"]*" id="case-([^"]+)"', page)

    first = await _page(ui)
    assert cards(first) == expected[:50] and len(steps_read) == 50
    assert "open (123)" in first and "showing 1&ndash;50 of 123" in first
    assert '<a href="/ui?page=2" rel="next">' in first and 'rel="prev"' not in first
    assert "Confirm portal-sessions" in first  # the waiting case's open task, on its card
    second = await _page(ui, "/ui?page=2")
    assert cards(second) == expected[50:100] and "showing 51&ndash;100 of 123" in second
    assert '<a href="/ui" rel="prev">' in second and '<a href="/ui?page=3" rel="next">' in second
    third = await _page(ui, "/ui?page=3")
    assert cards(third) == expected[100:] and "showing 101&ndash;123 of 123" in third
    assert '<a href="/ui?page=2" rel="prev">' in third and 'rel="next"' not in third
    # a page past the end shows the last there is; a page that is no number, the first
    assert cards(await _page(ui, "/ui?page=99")) == expected[100:]
    for odd in ("0", "-1", "x", "", "1e3", "٣"):
        assert cards(await _page(ui, f"/ui?page={odd}")) == expected[:50], odd

    everything = await _page(ui, "/ui?show=all&page=3")
    assert "all (124)" in everything and "showing 101&ndash;124 of 124" in everything
    assert '<a href="/ui?show=all&amp;page=2" rel="prev">' in everything
    assert f'id="case-{made[2].id}"' in everything  # the cancelled one, last: the oldest


# --- where a form was posted from (issue 15) ---------------------------------------------


def _origin(ui: Ui) -> str:
    return str(ui.http.make_url("")).rstrip("/")


async def _confirm_with(ui: Ui, headers: dict[str, str]) -> tuple[Case, Any]:
    case = await _waiting_case(ui)
    await _sign_in(ui)
    csrf = _csrf(await _page(ui))
    response = await ui.http.post(
        f"/ui/cases/{case.id}/confirm/portal-sessions",
        data={"csrf": csrf},
        headers=headers,
        allow_redirects=False,
    )
    return case, response


async def _unconfirmed(ui: Ui, case: Case) -> bool:
    task = await ui.runtime.store.get_task(case.id, "portal-sessions")
    return task is not None and task.confirmed_at is None


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Referer": "https://evil.example/page"},
        {"Origin": "https://evil.example", "Referer": "{own}/ui"},
        {"Sec-Fetch-Site": "same-origin", "Origin": "https://evil.example"},
    ],
    ids=["foreign-origin", "null-origin", "foreign-referer", "origin-first", "fetch-and-origin"],
)
async def test_a_confirm_from_another_origin_is_refused_without_sec_fetch_site(
    ui: Ui, headers: dict[str, str]
) -> None:
    sent = {k: v.replace("{own}", _origin(ui)) for k, v in headers.items()}
    case, response = await _confirm_with(ui, sent)
    assert response.status == 403
    assert "another site" in await response.text()
    assert await _unconfirmed(ui, case)


async def test_a_confirm_that_says_nothing_of_where_it_came_from_is_refused(ui: Ui) -> None:
    case, response = await _confirm_with(ui, {})
    assert response.status == 403
    text = await response.text()
    assert "Origin" in text and "bearer token" in text
    assert await _unconfirmed(ui, case)


@pytest.mark.parametrize("header", ["Origin", "Referer", "Sec-Fetch-Site"])
async def test_a_confirm_from_the_page_itself_is_accepted(ui: Ui, header: str) -> None:
    value = {
        "Origin": _origin(ui),
        "Referer": _origin(ui) + "/ui?show=all",
        "Sec-Fetch-Site": "same-origin",
    }[header]
    case, response = await _confirm_with(ui, {header: value})
    assert response.status == 303, await response.text()
    assert not await _unconfirmed(ui, case)


async def test_a_login_from_another_origin_is_refused_without_sec_fetch_site(ui: Ui) -> None:
    for headers in ({"Origin": "https://evil.example"}, {"Referer": "https://evil.example/"}):
        response = await ui.http.post(
            "/ui/login", data={"token": TOKEN}, headers=headers, allow_redirects=False
        )
        assert response.status == 403 and COOKIE not in response.cookies


async def test_the_configured_public_url_is_the_origin_forms_must_come_from(
    config_data: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sandbox: Sandbox
) -> None:
    """Behind a proxy the Host the server sees is not the one the browser used."""
    monkeypatch.setenv("T_UI_OPS", TOKEN)
    config_data["server"] = {
        "api_tokens": {"ops": {"env": "T_UI_OPS"}},
        "public_url": "https://offboard.example.com/",
    }
    config = parse_config(config_data, "ui test")
    async with open_runtime(config, base_dir=tmp_path) as runtime:
        app = build_app(runtime, run_worker=False)
        async with TestClient(TestServer(app)) as http:
            ui = Ui(http=http, runtime=runtime, sandbox=sandbox)
            case, refused = await _confirm_with(ui, {"Origin": _origin(ui)})
            assert refused.status == 403 and await _unconfirmed(ui, case)
            page = await _page(ui)
            response = await http.post(
                f"/ui/cases/{case.id}/confirm/portal-sessions",
                data={"csrf": _csrf(page)},
                headers={"Origin": "https://OFFBOARD.example.com"},
                allow_redirects=False,
            )
            assert response.status == 303, await response.text()
            assert not await _unconfirmed(ui, case)


async def test_the_page_lets_its_own_forms_say_where_they_come_from(ui: Ui) -> None:
    """`no-referrer` made a browser post `Origin: null` (Fetch, "serializing a request
    origin"): `same-origin` sends ours to us and nothing to anyone else."""
    await _sign_in(ui)
    response = await ui.http.get("/ui")
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert '<meta name="referrer" content="same-origin">' in await response.text()
