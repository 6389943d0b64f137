"""The live status page of `offboard serve`, at /ui.

Open cases with their step timeline, the residual-access milestones counting down in
the browser, operator tasks with their console link and a Confirm button, halted cases
with their reason; `/ui/cases/{id}` adds the trigger, the countdown's inputs and the
timeline. Server-rendered HTML, every value escaped; one stylesheet and one script,
served from the package (`worker/web/ui_static/`); nothing is fetched from anywhere else,
and the Content-Security-Policy says so.

Authentication is the API's: the named bearer tokens of `server.api_tokens`.

- Scripts send `Authorization: Bearer <token>` to any /ui route.
- A browser posts a token once to /ui/login and gets a session cookie. The cookie is
  `v1.<payload>.<mac>`: the payload names the token (never the token itself), a random
  session id and an expiry; the mac is HMAC-SHA256 under a key derived from that token
  with PBKDF2. So a session survives a restart, is valid on every replica with the
  same configuration, and ends when its token is rotated or removed from the
  configuration; a cookie reveals nothing of the token but what an offline guess
  against a slow KDF would.
- Every form carries a CSRF token bound to the session (an HMAC of the session id
  under the same key). A POST with a session cookie must also show it comes from this
  server's pages: `Origin` (else `Referer`) is this server's origin (`server.public_url`,
  or the request's own Host) and `Sec-Fetch-Site`, when sent, is same-origin; a POST
  that carries none of the three is refused. A sign-in from another origin is refused.

Sessions are stateless: logging out clears the browser's cookie, and a copied cookie
stays valid until it expires (`SESSION_TTL`) or its token is rotated.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import json
import math
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from importlib import resources
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import structlog
from aiohttp import web

from worker.cases import confirm_task
from worker.clock import parse_iso, utc_iso
from worker.domain import Case, CaseEvent, CaseStatus, OperatorTask, StepRecord
from worker.errors import NotFound, OffboardError, StoreUnavailable
from worker.playbook import gates_later_steps
from worker.web.state import RUNTIME, STATE, WORKER

log = structlog.get_logger(__name__)

COOKIE = "offboard_ui"
#: a working day; a session also ends when its token is rotated or removed
SESSION_TTL = timedelta(hours=8)
#: PBKDF2-SHA256 rounds deriving a token's session key (once per token and process)
KDF_ROUNDS = 200_000
#: how often the open pages fetch themselves again
REFRESH_SECONDS = 5
#: how many cases one page of /ui shows; `?page=N` shows the others
PAGE_SIZE = 50
#: the cases the page shows unless asked for all
OPEN = (
    CaseStatus.PENDING,
    CaseStatus.RUNNING,
    CaseStatus.WAITING,
    CaseStatus.HALTED,
    CaseStatus.CONTAINED,
)
#: nothing but our own script, stylesheet and forms; no frames, no plugins, no base
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
#: where a login may send the browser on: the list or a case page, nothing else
NEXT = re.compile(r"/ui(?:/cases/[A-Za-z0-9._~%-]{1,200})?")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _static(name: str, content_type: str) -> tuple[bytes, str, str]:
    body = resources.files("worker.web").joinpath("ui_static", name).read_bytes()
    return body, content_type, hashlib.sha256(body).hexdigest()[:12]


#: the page's assets, read once; their URLs carry a hash of their content
STATIC = {
    "ui.css": _static("ui.css", "text/css; charset=utf-8"),
    "ui.js": _static("ui.js", "text/javascript; charset=utf-8"),
    "icon.svg": _static("icon.svg", "image/svg+xml"),
}


def _asset(name: str) -> str:
    return f"/ui/static/{name}?v={STATIC[name][2]}"


# --- sessions ------------------------------------------------------------------------


@dataclass
class UiState:
    #: token name -> token, as the API knows them
    tokens: dict[str, str]
    #: the origin forms must be posted from (`server.public_url`); None: the request's Host
    origin: str | None = None
    #: token name -> session key, derived on first use
    keys: dict[str, bytes] = field(default_factory=dict)

    def key(self, name: str) -> bytes | None:
        token = self.tokens.get(name)
        if token is None:
            return None
        if name not in self.keys:
            salt = b"offboard-ui-session-v1\x00" + name.encode()
            self.keys[name] = hashlib.pbkdf2_hmac("sha256", token.encode(), salt, KDF_ROUNDS)
        return self.keys[name]

    def name_of(self, presented: str) -> str | None:
        """The name of the token presented, compared in constant time against each."""
        # aiohttp keeps undecodable bytes as surrogates: encode them back, never fail
        raw = presented.encode("utf-8", "surrogateescape")
        found = None
        for name, token in self.tokens.items():
            if hmac.compare_digest(raw, token.encode()):
                found = name
        return found


UI: web.AppKey[UiState] = web.AppKey("ui", UiState)


@dataclass(frozen=True, kw_only=True)
class Session:
    #: the name of the token (never the token)
    name: str
    via: Literal["cookie", "bearer"]
    #: the random id of a cookie session ("" for a bearer request)
    sid: str = ""
    #: what this session's forms must send back ("" for a bearer request: no forms needed)
    csrf: str = ""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, purpose: str, data: str) -> str:
    return _b64(hmac.new(key, f"{purpose}\x00{data}".encode(), hashlib.sha256).digest())


def issue_session(ui: UiState, name: str, now: datetime) -> str:
    """A signed cookie value naming the token `name`, valid for SESSION_TTL from now."""
    key = ui.key(name)
    assert key is not None, "sessions are issued only for configured tokens"
    expires = int((now + SESSION_TTL).timestamp())
    payload = _b64(json.dumps({"n": name, "s": secrets.token_urlsafe(16), "e": expires}).encode())
    return f"v1.{payload}.{_mac(key, 'session', payload)}"


def read_session(ui: UiState, value: str, now: datetime) -> Session | None:
    """The session a cookie value carries, if its signature holds and it has not expired."""
    version, _, rest = value.partition(".")
    payload, _, mac = rest.partition(".")
    if version != "v1" or not payload or not mac or len(value) > 2048:
        return None
    try:
        data = json.loads(_unb64(payload))
        name, sid, expires = str(data["n"]), str(data["s"]), int(data["e"])
    except (binascii.Error, ValueError, UnicodeDecodeError, KeyError, TypeError):
        return None
    key = ui.key(name)
    if key is None:  # a token removed from the configuration ends its sessions
        return None
    if not hmac.compare_digest(mac.encode(), _mac(key, "session", payload).encode()):
        return None
    if now.timestamp() >= expires:
        return None
    return Session(name=name, via="cookie", sid=sid, csrf=_mac(key, "csrf", sid))


class _BadBearer(Exception):
    """An Authorization header that names no valid token."""


def _session(request: web.Request) -> Session | None:
    ui = request.app[UI]
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        name = ui.name_of(token) if scheme.lower() == "bearer" and token else None
        if name is None:
            raise _BadBearer
        return Session(name=name, via="bearer")
    cookie = request.cookies.get(COOKIE)
    if cookie is None:
        return None
    return read_session(ui, cookie, request.app[RUNTIME].clock.now())


def _secure(request: web.Request) -> bool:
    # a TLS-terminating proxy says so; believing it can only make the cookie stricter
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def _set_cookie(response: web.StreamResponse, request: web.Request, value: str) -> None:
    response.set_cookie(
        COOKIE,
        value,
        path="/ui",
        httponly=True,
        samesite="Strict",
        secure=_secure(request),
        max_age=int(SESSION_TTL.total_seconds()),
    )


def _clear_cookie(response: web.StreamResponse, request: web.Request) -> None:
    response.del_cookie(
        COOKIE, path="/ui", httponly=True, samesite="Strict", secure=_secure(request)
    )


FOREIGN = "This form was posted from another site."
UNPROVEN = (
    "This form came without an Origin, Referer or Sec-Fetch-Site header, so nothing shows "
    "it was posted from this page: post it from the page in a browser, or send a bearer "
    "token (Authorization: Bearer ...) from a script."
)


def _origin_of(url: str) -> str | None:
    """scheme://host[:port] of a URL, lowercased, the default port left out; None if none."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    default = 443 if parts.scheme == "https" else 80
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


def _own_origin(request: web.Request) -> str | None:
    configured = request.app[UI].origin
    if configured is not None:
        return configured
    return _origin_of(f"{'https' if _secure(request) else 'http'}://{request.host}")


def _post_refusal(request: web.Request, *, proof_needed: bool) -> str | None:
    """Why a POST cannot be taken as made from this server's own pages, or None.

    `Sec-Fetch-Site` is the browser's word; `Origin`, else `Referer`, is compared with
    our origin whether or not it is there (browsers without fetch metadata send those).
    `proof_needed`: with a session cookie, a POST that says nothing of where it came from
    is refused too (a bearer request or a sign-in has no cookie a forger could ride on).
    """
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return FOREIGN
    origin = request.headers.get("Origin")
    referer = request.headers.get("Referer")
    claimed = origin if origin not in (None, "null") else referer or None
    if claimed is not None:
        return None if _origin_of(claimed) == _own_origin(request) else FOREIGN
    if origin == "null" and site is None:  # a sandboxed frame, a privacy setting: unknown
        return FOREIGN
    if site is None and proof_needed:
        return UNPROVEN
    return None


async def _form(request: web.Request) -> dict[str, str]:
    """The fields of a posted form; our forms are URL-encoded, anything else is no form."""
    if request.content_type != "application/x-www-form-urlencoded":
        return {}
    try:
        data = await request.post()
    except ValueError:
        return {}
    return {k: v for k, v in data.items() if isinstance(v, str)}


def _csrf_ok(session: Session, form: dict[str, str]) -> bool:
    if session.via == "bearer":  # a browser never adds a bearer header by itself
        return True
    sent = form.get("csrf", "").encode("utf-8", "surrogateescape")
    return hmac.compare_digest(sent, session.csrf.encode())


# --- routes --------------------------------------------------------------------------


def add_ui_routes(app: web.Application) -> None:
    """Register the status page on `offboard serve`'s app (after its STATE is set)."""
    public_url = app[RUNTIME].config.server.public_url
    app[UI] = UiState(
        tokens=dict(app[STATE].api_tokens),
        origin=_origin_of(public_url) if public_url is not None else None,
    )
    app.router.add_get("/ui", _guarded(cases_page))
    app.router.add_get("/ui/cases/{case_id}", _guarded(case_page))
    app.router.add_post("/ui/cases/{case_id}/confirm/{step}", _guarded(confirm))
    app.router.add_get("/ui/login", login_page)
    app.router.add_post("/ui/login", login)
    app.router.add_post("/ui/logout", _guarded(logout))
    app.router.add_get("/ui/static/{name}", static)
    app.on_response_prepare.append(_headers)


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every /ui answer, errors and redirects included: our CSP, no framing, no sniffing."""
    if request.path != "/ui" and not request.path.startswith("/ui/"):
        return
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    # our own forms' Origin reaches us (`no-referrer` made it "null"); no other site
    # learns anything
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers.setdefault("Cache-Control", "no-store")


def _guarded(
    handler: Callable[[web.Request, Session], Awaitable[web.StreamResponse]],
) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            session = _session(request)
        except _BadBearer:
            response = _html(
                _login_body("", "The bearer token is not valid."), "sign in", status=401
            )
            response.headers["WWW-Authenticate"] = 'Bearer realm="offboard", error="invalid_token"'
            return response
        if session is None:
            if request.method in ("GET", "HEAD"):
                target = "/ui/login"
                if request.path != "/ui" and NEXT.fullmatch(request.path):
                    target += "?next=" + quote(request.path, safe="/")
                response = web.HTTPSeeOther(target)
            else:
                response = _html(
                    _login_body("", "Sign in first: your session has ended."),
                    "sign in",
                    status=401,
                )
                response.headers["WWW-Authenticate"] = 'Bearer realm="offboard"'
            if COOKIE in request.cookies:  # expired or forged: drop it
                _clear_cookie(response, request)
            if isinstance(response, web.HTTPException):
                raise response
            return response
        if request.method == "POST":
            refusal = _post_refusal(request, proof_needed=session.via == "cookie")
            if refusal is not None:
                log.info("ui_post_refused", reason="origin", token_name=session.name)
                return _error(403, "Refused", refusal, session)
        return await handler(request, session)

    return guarded


def _next(value: str | None) -> str:
    return value if value and NEXT.fullmatch(value) else "/ui"


async def login_page(request: web.Request) -> web.StreamResponse:
    target = _next(request.query.get("next"))
    try:
        session = _session(request)
    except _BadBearer:
        session = None
    if session is not None:
        raise web.HTTPSeeOther(target)
    return _html(_login_body(target, None), "sign in")


async def login(request: web.Request) -> web.StreamResponse:
    if _post_refusal(request, proof_needed=False) is not None:
        return _html(_login_body("/ui", "Sign in from this page."), "sign in", status=403)
    form = await _form(request)
    target = _next(form.get("next"))
    ui = request.app[UI]
    name = ui.name_of(form.get("token", "")) if form.get("token") else None
    if name is None:
        log.info("ui_login_refused")
        response = _html(_login_body(target, "That token is not valid."), "sign in", status=401)
        response.headers["WWW-Authenticate"] = 'Bearer realm="offboard"'
        return response
    log.info("ui_login", token_name=name)
    redirect = web.HTTPSeeOther(target)
    _set_cookie(redirect, request, issue_session(ui, name, request.app[RUNTIME].clock.now()))
    raise redirect


async def logout(request: web.Request, session: Session) -> web.StreamResponse:
    if not _csrf_ok(session, await _form(request)):
        return _error(403, "Refused", "The form has expired: reload the page.", session)
    log.info("ui_logout", token_name=session.name)
    redirect = web.HTTPSeeOther("/ui/login")
    _clear_cookie(redirect, request)
    raise redirect


async def static(request: web.Request) -> web.StreamResponse:
    found = STATIC.get(request.match_info["name"])
    if found is None:
        return _error(404, "Not found", "There is no such file.", None)
    body, content_type, _ = found
    # the URL carries a hash of the content: a new version is a new URL
    headers = {"Content-Type": content_type, "Cache-Control": "public, max-age=86400, immutable"}
    return web.Response(body=body, headers=headers)


async def cases_page(request: web.Request, session: Session) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    show_all = request.query.get("show") == "all"
    statuses = None if show_all else OPEN
    number = _page_number(request.query.get("page"))
    # the most urgent first (halted and waiting need a human), one page of them
    listing = await runtime.store.urgent_cases(
        statuses, limit=PAGE_SIZE, offset=(number - 1) * PAGE_SIZE
    )
    last = max(1, math.ceil(listing.total / PAGE_SIZE))
    if number > last:  # a link from before cases closed: the last page there is now
        number = last
        listing = await runtime.store.urgent_cases(
            statuses, limit=PAGE_SIZE, offset=(number - 1) * PAGE_SIZE
        )
    tasks: dict[str, list[OperatorTask]] = {}
    for task in await runtime.store.open_tasks_of([c.id for c in listing.cases]):
        tasks.setdefault(task.case_id, []).append(task)
    now = runtime.clock.now()
    cards = [
        _case_card(c, await runtime.store.steps(c.id), tasks.get(c.id, []), now, session, "list")
        for c in listing.cases
    ]
    open_label = f"open ({listing.total:,})" if not show_all else "open"
    all_label = f"all ({listing.total:,})" if show_all else "all"
    nav = (
        '<nav class="filter">'
        + _link("/ui", open_label, current=not show_all)
        + _link("/ui?show=all", all_label, current=show_all)
        + "</nav>"
    )
    empty = "No open cases." if not show_all else "No cases."
    pager = _pager(number, listing.total, show_all)
    body = f'<div class="bar"><h1>Cases</h1>{nav}</div>{RULES}{pager}' + (
        "".join(cards) + pager if cards else f'<p class="empty">{empty}</p>'
    )
    return _html(_main(body, now, refresh=True), "cases", session=session)


def _page_number(value: str | None) -> int:
    """`?page=N` (1 for the first); anything that is not a page number is the first."""
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 9:
        return 1
    return max(1, int(value))


def _page_href(number: int, show_all: bool) -> str:
    query = [("show", "all")] if show_all else []
    if number > 1:
        query.append(("page", str(number)))
    return "/ui" + ("?" + "&".join(f"{k}={v}" for k, v in query) if query else "")


def _pager(number: int, total: int, show_all: bool) -> str:
    """`showing 51&ndash;100 of 10,000` with links to the pages before and after."""
    if total <= PAGE_SIZE:
        return ""
    first = (number - 1) * PAGE_SIZE + 1
    last = min(total, number * PAGE_SIZE)
    parts = [f'<span class="showing">showing {first:,}&ndash;{last:,} of {total:,}</span>']
    if number > 1:
        href = _page_href(number - 1, show_all)
        parts.append(f'<a href="{e(href)}" rel="prev">&larr; previous</a>')
    if last < total:
        href = _page_href(number + 1, show_all)
        parts.append(f'<a href="{e(href)}" rel="next">next &rarr;</a>')
    return f'<nav class="pages" aria-label="pages">{" ".join(parts)}</nav>'


#: what the page's reader needs to know of how cases come and go (README says the same)
RULES = (
    '<details class="rules"><summary>How cases work</summary><ul>'
    "<li><strong>One open case per person.</strong> A later trigger for someone with an "
    "open case joins it (on its timeline), whatever the playbook; a trigger for a "
    "contained person answers with that case and its countdown.</li>"
    "<li><strong>Escalation.</strong> An incident for a person with an open leaver case "
    "escalates that case in place: the incident's steps it lacks are added after its own "
    "(in the one safe order), its priority is raised so that it jumps the queue, and it "
    "runs at once, a contained case too.</li>"
    "<li><strong>Halted.</strong> A trigger for a person whose case is halted is attached "
    "to it and the operators are told: fix the cause, then retry; no parallel case.</li>"
    "<li><strong>The operator step never holds up containment.</strong> Once the Identity "
    "Center user is confirmed disabled, the portal-sessions task opens and every "
    "automated step after it (deny, remove access) runs at once; the case is contained "
    "when the confirmation is given too.</li></ul></details>"
)


def _escalations(events: list[CaseEvent]) -> str:
    """The escalations of a case, said plainly above its timeline."""
    lines = [
        f"<li>{_when(ev.at)}: escalated by <strong>{e(ev.data.get('playbook', '?'))}</strong> "
        f"({e(ev.data.get('source', '?'))}) to priority {e(ev.data.get('priority', '?'))}; "
        f"steps added: {e(', '.join(ev.data.get('steps_added', [])) or 'none')}</li>"
        for ev in events
        if ev.kind == "case_escalated"
    ]
    if not lines:
        return ""
    items = "".join(lines)
    return f'<section class="escalations"><h3>Escalated in place</h3><ul>{items}</ul></section>'


async def case_page(request: web.Request, session: Session) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    try:
        case = await runtime.store.get_case(request.match_info["case_id"])
    except NotFound:
        return _error(404, "No such case", "There is no case with that id.", session)
    steps = await runtime.store.steps(case.id)
    tasks = [t for s in steps if (t := await runtime.store.get_task(case.id, s.step_id))]
    events = await runtime.store.events(case.id)
    now = runtime.clock.now()
    body = (
        '<p class="back"><a href="/ui">&larr; all open cases</a></p>'
        + _case_card(case, steps, tasks, now, session, "case", detail=True)
        + _escalations(events)
        + _trigger(case.trigger)
        + _countdown_inputs(case.countdown)
        + _timeline(events)
    )
    return _html(_main(body, now, refresh=True), f"case {case.id}", session=session)


async def confirm(request: web.Request, session: Session) -> web.StreamResponse:
    form = await _form(request)
    if not _csrf_ok(session, form):
        log.info("ui_confirm_refused", reason="csrf", token_name=session.name)
        return _error(
            403,
            "Refused",
            "The form has expired or did not come from this page: reload it.",
            session,
        )
    runtime = request.app[RUNTIME]
    case_id, step = request.match_info["case_id"], request.match_info["step"]
    try:
        confirmation = await confirm_task(runtime, case_id, step, f"ui:{session.name}")
    except NotFound:
        return _error(404, "Nothing to confirm", "There is no such case or task.", session)
    except StoreUnavailable:
        raise  # 503 (worker/web/problems.py), not the operator's mistake
    except OffboardError as exc:
        return _error(404, "Nothing to confirm", str(exc), session)
    if not confirmation.already:
        request.app[WORKER].wake.set()
    log.info(
        "ui_confirmed",
        case_id=case_id,
        step=step,
        by=confirmation.task.confirmed_by,
        already=confirmation.already,
    )
    back = f"/ui/cases/{quote(case_id, safe='')}" if form.get("back") == "case" else "/ui"
    raise web.HTTPSeeOther(f"{back}#case-{quote(case_id, safe='')}")


# --- HTML ----------------------------------------------------------------------------


def e(value: object) -> str:
    """Escaped for HTML text and quoted attribute values alike."""
    return html.escape(str(value), quote=True)


def _html(
    body: str, title: str, *, status: int = 200, session: Session | None = None
) -> web.Response:
    who = ""
    if session is not None:
        logout_form = (
            '<form method="post" action="/ui/logout" class="inline">'
            + _csrf_field(session)
            + '<button type="submit" class="link">sign out</button></form>'
            if session.via == "cookie"
            else ""
        )
        who = f'<span class="who">signed in as <b>{e(session.name)}</b> {logout_form}</span>'
    page = (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="same-origin">'
        f"<title>{e(title)} · offboard</title>"
        f'<link rel="icon" href="{_asset("icon.svg")}" type="image/svg+xml">'
        f'<link rel="stylesheet" href="{_asset("ui.css")}">'
        f'<script src="{_asset("ui.js")}" defer></script>'
        "</head><body>"
        f'<header class="top"><a class="brand" href="/ui">offboard</a>{who}</header>'
        f"{body}</body></html>\n"
    )
    return web.Response(text=page, status=status, content_type="text/html", charset="utf-8")


def _main(content: str, now: datetime, *, refresh: bool) -> str:
    """The part of a page that refreshes itself; `data-server-now` lets the script
    correct the countdowns for the difference between the browser's clock and ours."""
    attrs = f' data-server-now="{e(utc_iso(now))}"'
    note = ""
    if refresh:
        attrs += f' data-refresh="{REFRESH_SECONDS}"'
        note = f'<p class="asof">as of {e(utc_iso(now))} · refreshes every {REFRESH_SECONDS} s</p>'
    return f"<main{attrs}>{content}{note}</main>"


def _error(status: int, title: str, detail: str, session: Session | None) -> web.Response:
    body = f'<main class="error"><h1>{e(title)}</h1><p>{e(detail)}</p>'
    body += '<p><a href="/ui">back to the cases</a></p></main>'
    return _html(body, title, status=status, session=session)


def _login_body(target: str, error: str | None) -> str:
    alert = f'<p class="alert" role="alert">{e(error)}</p>' if error else ""
    return (
        '<main class="login"><h1>Sign in</h1>'
        "<p>Use an API token of this server (<code>server.api_tokens</code>). "
        "Its name is recorded as who confirmed.</p>"
        f"{alert}"
        '<form method="post" action="/ui/login">'
        f'<input type="hidden" name="next" value="{e(_next(target))}">'
        '<label for="token">API token</label>'
        '<input id="token" name="token" type="password" autocomplete="current-password" '
        "required autofocus>"
        '<button type="submit">Sign in</button></form></main>'
    )


def _csrf_field(session: Session) -> str:
    return f'<input type="hidden" name="csrf" value="{e(session.csrf)}">'


def _link(href: str, label: str, *, current: bool) -> str:
    aria = ' aria-current="page"' if current else ""
    return f'<a href="{e(href)}"{aria}>{e(label)}</a>'


def _when(at: datetime | None) -> str:
    if at is None:
        return '<span class="muted">&ndash;</span>'
    text = utc_iso(at)
    return f'<time datetime="{e(text)}">{e(text.replace("T", " "))}</time>'


def remaining(at: datetime, now: datetime) -> str:
    """`in 1d 02h 03m 04s`, `in 12h 03m 10s`, `in 3m 05s`, `in 9s`: what ui.js shows too."""
    left = math.ceil((at - now).total_seconds())
    if left <= 0:
        return ""
    days, left = divmod(left, 86400)
    hours, left = divmod(left, 3600)
    minutes, seconds = divmod(left, 60)
    if days:
        return f"in {days}d {hours:02d}h {minutes:02d}m {seconds:02d}s"
    if hours:
        return f"in {hours}h {minutes:02d}m {seconds:02d}s"
    if minutes:
        return f"in {minutes}m {seconds:02d}s"
    return f"in {seconds}s"


def _ticker(at: datetime, now: datetime, reached: str) -> str:
    text = remaining(at, now) or reached
    return (
        f'<span class="countdown" data-at="{e(utc_iso(at))}" data-reached="{e(reached)}">'
        f"{e(text)}</span>"
    )


def _console_link(url: str) -> str:
    if urlsplit(url).scheme not in ("http", "https"):  # never a javascript: link
        return f'<code class="url">{e(url)}</code>'
    return (
        f'<a class="console" href="{e(url)}" target="_blank" rel="noopener noreferrer">'
        "open the console</a>"
    )


def _case_card(
    case: Case,
    steps: list[StepRecord],
    tasks: list[OperatorTask],
    now: datetime,
    session: Session,
    back: Literal["list", "case"],
    *,
    detail: bool = False,
) -> str:
    qid = quote(case.id, safe="")
    status = case.status.value
    title = e(case.subject) if detail else f'<a href="/ui/cases/{e(qid)}">{e(case.subject)}</a>'
    parts = [
        f'<article class="case status-{e(status)}" id="case-{e(case.id)}" '
        f'data-case="{e(case.id)}" data-status="{e(status)}">',
        f'<header><h2>{title}</h2><span class="badge status-{e(status)}">{e(status)}</span>'
        f'<span class="meta">{e(case.playbook)} · case <code>{e(case.id)}</code>'
        f" · opened {_when(case.created_at)}</span></header>",
    ]
    if case.status is CaseStatus.HALTED:
        parts.append(
            f'<p class="halt"><strong>Halted:</strong> '
            f'<span class="reason">{e(case.halt_reason or "no reason recorded")}</span></p>'
        )
    if case.status is CaseStatus.PENDING and case.run_after is not None:
        parts.append(
            f'<p class="scheduled">Scheduled for {_when(case.run_after)} '
            f"{_ticker(case.run_after, now, 'due now')}</p>"
        )
    if tasks:
        parts.append(_tasks(case, tasks, session, back))
    parts.append(_milestones(case.countdown, now))
    parts.append(_steps(steps))
    parts.append("</article>")
    return "".join(parts)


def _tasks(case: Case, tasks: list[OperatorTask], session: Session, back: str) -> str:
    qid = quote(case.id, safe="")
    actions = {s.id: s.action for s in case.steps}
    items = []
    for t in tasks:
        if t.confirmed_at is None:
            action = f"/ui/cases/{qid}/confirm/{quote(t.step_id, safe='')}"
            gates = t.step_id not in actions or gates_later_steps(actions[t.step_id])
            note = (
                ""
                if gates
                else '<span class="note">does not wait: the automated steps after it '
                "run without this confirmation; the case is contained once it is given</span>"
            )
            state = (
                f'<span class="waiting">waiting since {_when(t.opened_at)}</span>{note}'
                f'<form method="post" action="{e(action)}" class="confirm">'
                f"{_csrf_field(session)}"
                f'<input type="hidden" name="back" value="{e(back)}">'
                f'<button type="submit" name="confirm" value="{e(t.step_id)}">'
                f"Confirm {e(t.step_id)}</button></form>"
            )
        else:
            state = (
                f'<span class="done">confirmed by <b>{e(t.confirmed_by or "?")}</b> '
                f"at {_when(t.confirmed_at)}</span>"
            )
        items.append(
            f'<li class="task" data-step="{e(t.step_id)}">'
            f'<p class="title"><strong>{e(t.title)}</strong> '
            f"<code>{e(t.step_id)}</code> · {_console_link(t.console_url)}</p>"
            f'<p class="instructions">{e(t.instructions)}</p>{state}</li>'
        )
    return f'<section class="tasks"><h3>Operator tasks</h3><ul>{"".join(items)}</ul></section>'


def _milestones(countdown: dict[str, Any] | None, now: datetime) -> str:
    if not countdown:
        return (
            '<p class="muted">Residual-access countdown: starts once the Identity Center user '
            "is confirmed disabled.</p>"
        )
    items = []
    for m in countdown.get("milestones", []):
        at = parse_iso(str(m["at"]))
        reached = " reached" if at <= now else ""
        items.append(
            f'<li class="milestone{reached}" data-milestone="{e(m["name"])}">'
            f'<span class="name">{e(m["name"])}</span> {_when(at)} '
            f"{_ticker(at, now, 'reached')}"
            f'<span class="meaning">{e(m.get("meaning", ""))}</span></li>'
        )
    drift = " (restarted after drift)" if countdown.get("drift") else ""
    removable = ""
    if countdown.get("deny_removable_at"):
        at = parse_iso(str(countdown["deny_removable_at"]))
        removable = (
            f'<p class="deny-removable">deny statement removable {_when(at)} '
            f"{_ticker(at, now, 'reached')}"
            '<span class="meaning">role sessions started without it end then</span></p>'
        )
    return (
        f'<section class="milestones"><h3>Residual access{e(drift)}</h3>'
        f"<ol>{''.join(items)}</ol>{removable}</section>"
    )


def _steps(steps: list[StepRecord]) -> str:
    rows = []
    for s in steps:
        note = s.error or str(s.evidence.get("verified_by") or "")
        rows.append(
            f'<tr class="step step-{e(s.status.value)}" data-step="{e(s.step_id)}">'
            f"<td>{s.index + 1}</td><td><code>{e(s.step_id)}</code></td>"
            f"<td>{e(s.action)}</td>"
            f'<td><span class="badge step-{e(s.status.value)}">{e(s.status.value)}</span></td>'
            f"<td>{s.attempts}</td><td>{_when(s.started_at)}</td><td>{_when(s.finished_at)}</td>"
            f'<td class="note">{e(note)}</td></tr>'
        )
    head = "".join(
        f"<th>{h}</th>"
        for h in ("#", "step", "action", "status", "tries", "started", "finished", "verified by")
    )
    return (
        '<section class="steps"><h3>Steps</h3><table><thead><tr>'
        f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></section>"
    )


def _definitions(title: str, pairs: Iterable[tuple[str, object]], css: str) -> str:
    rows = "".join(f"<dt>{e(k)}</dt><dd>{'&ndash;' if v is None else e(v)}</dd>" for k, v in pairs)
    return f'<section class="{css}"><h3>{e(title)}</h3><dl>{rows}</dl></section>'


def _trigger(trigger: dict[str, Any]) -> str:
    return _definitions("Trigger", sorted(trigger.items()), "trigger")


def _countdown_inputs(countdown: dict[str, Any] | None) -> str:
    if not countdown:
        return ""
    inputs = countdown.get("inputs", {})
    pairs: list[tuple[str, object]] = [
        ("Identity Center user disabled (verified)", inputs.get("ic_disabled_at")),
        ("portal sessions deleted (confirmed)", inputs.get("portal_revoked_at") or "no"),
        ("own assignments and groups removed", inputs.get("unassigned_at") or "no"),
        ("deny statement provisioned", inputs.get("deny_provisioned_at") or "no"),
    ]
    for ps in inputs.get("permission_sets", []):
        duration = ps.get("session_duration") or "unknown (counted as the maximum)"
        pairs.append(
            (
                f"permission set {ps.get('name') or ps.get('arn')}",
                f"session {duration}; accounts {', '.join(ps.get('accounts', []))}; "
                f"via {', '.join(ps.get('via', []))}",
            )
        )
    apps = inputs.get("applications", [])
    if apps is None:
        pairs.append(("applications", "could not be read (not covered)"))
    for app in apps or ():
        background = {True: "enabled", False: "disabled", None: "unknown"}[
            app.get("background_sessions")
        ]
        pairs.append(
            (
                f"application {app.get('name') or app.get('arn')}",
                f"background sessions {background}; via {', '.join(app.get('via', []))}",
            )
        )
    if inputs.get("floor"):
        pairs.append(("an earlier disable ends no earlier than", inputs["floor"]))
    pairs.append(("deny statement removable", countdown.get("deny_removable_at")))
    pairs += [("why", r) for r in countdown.get("reasons", [])]
    pairs += [("would shorten", r) for r in countdown.get("would_shorten", [])]
    pairs += [("not covered", r) for r in countdown.get("out_of_model", [])]
    return _definitions("Countdown inputs", pairs, "inputs")


def _timeline(events: list[CaseEvent]) -> str:
    rows = "".join(
        f"<tr><td>{ev.seq}</td><td>{_when(ev.at)}</td><td>{e(ev.kind)}</td>"
        f"<td>{e(ev.step_id or '')}</td>"
        f'<td class="data"><code>{e(json.dumps(ev.data, sort_keys=True))}</code></td></tr>'
        for ev in events
    )
    return (
        '<section class="timeline"><h3>Timeline</h3><table><thead><tr><th>#</th><th>at</th>'
        f"<th>event</th><th>step</th><th>data</th></tr></thead><tbody>{rows}</tbody></table>"
        "</section>"
    )
