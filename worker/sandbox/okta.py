"""An emulator of Okta's Management API: users, their lifecycle and sessions.

It speaks the wire shapes of Okta's published spec (User, Error, Success), checks
`Authorization: SSWS <token>`, and keeps Okta's rate limits on the clock: a one-minute
window per endpoint group (`RATE_LIMITS`), each answered with its own `X-Rate-Limit-*`
headers, and the cap on requests in flight (`CONCURRENCY_LIMIT`). Only mutations
actually applied are audited: a refused call leaves no entry, so a test can count what
really happened.
"""

from __future__ import annotations

import hmac
import json
import math
import secrets
import string
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from worker.clock import Clock
from worker.sandbox.common import AuditLog, FaultPlan, Handler, SandboxUserAdmin, wire_time

SERVICE = "okta"
USER_STATUSES = frozenset(
    {
        "ACTIVE",
        "DEPROVISIONED",
        "LOCKED_OUT",
        "PASSWORD_EXPIRED",
        "PROVISIONED",
        "RECOVERY",
        "STAGED",
        "SUSPENDED",
    }
)
#: Lifecycle operations a user's `_links` offer, by status (a subset of Okta's).
_LIFECYCLE_LINKS = {
    "ACTIVE": ("suspend", "deactivate"),
    "SUSPENDED": ("unsuspend", "deactivate"),
    "DEPROVISIONED": ("activate",),
    "STAGED": ("activate", "deactivate"),
}
_ALNUM = string.ascii_letters + string.digits
_RATE_WINDOW = 60  # seconds; Okta's limits are per minute
#: Okta's per-minute budgets by endpoint group, the defaults of Okta's management
#: rate-limit page (Workforce Identity; they vary by plan: set `rate_limits`)
RATE_LIMITS = {
    "users": 600,  # GET/POST /api/v1/users
    "user-write": 600,  # POST/PUT/DELETE /api/v1/users/{id} (and its lifecycle operations)
    "user-read": 2000,  # GET /api/v1/users/{idOrLogin}
    "logs": 120,  # /api/v1/logs
    "other": 1200,  # every other /api/v1 endpoint
}
#: Okta's cap on requests in flight per org
CONCURRENCY_LIMIT = 75


def rate_bucket(method: str, path: str) -> str:
    """The endpoint group a request counts in: a key of `RATE_LIMITS`."""
    parts = path.strip("/").split("/")
    if parts[:3] != ["api", "v1", "users"]:
        return "logs" if parts[:3] == ["api", "v1", "logs"] else "other"
    if len(parts) == 3:
        return "users"
    if len(parts) == 4:
        return "user-read" if method == "GET" else "user-write"
    return "user-write" if parts[4] == "lifecycle" else "other"


def _okta_id(prefix: str) -> str:
    """Okta ids are 20 characters: a 3-character type prefix ("00u" for users) and 17 more."""
    return prefix + "".join(secrets.choice(_ALNUM) for _ in range(17))


def _json(status: int, body: Any) -> web.Response:
    # bytes, not text, so that the header is exactly `application/json` as Okta sends it
    return web.Response(
        status=status, body=json.dumps(body).encode(), content_type="application/json"
    )


def okta_error(status: int, code: str, summary: str) -> web.Response:
    """Okta's error object; errorLink repeats the code, as the spec's examples show."""
    return _json(
        status,
        {
            "errorCode": code,
            "errorSummary": summary,
            "errorLink": code,
            "errorId": "oae" + "".join(secrets.choice(_ALNUM) for _ in range(22)),
            "errorCauses": [],
        },
    )


def _not_found(key: str) -> web.Response:
    return okta_error(404, "E0000007", f"Not found: Resource not found: {key} (User)")


def _wrong_status() -> web.Response:
    return okta_error(
        403, "E0000038", "This operation is not allowed in the user's current status."
    )


def _flag(value: str | None, default: bool) -> bool:
    return default if value is None else value.lower() == "true"


def endpoint_name(request: web.Request) -> str:
    """The endpoint a request is for, as the fault plan names it."""
    name = request.match_info.route.name
    return name if name and name.startswith("okta.") else "okta.other"


@dataclass(kw_only=True)
class _User:
    id: str
    login: str
    first_name: str
    last_name: str
    status: str
    sessions: int
    created: datetime
    activated: datetime | None
    status_changed: datetime
    last_login: datetime | None
    last_updated: datetime
    transitioning_to: str | None = None
    transition_done: datetime | None = None

    def set_status(self, status: str, at: datetime) -> None:
        self.status = status
        self.status_changed = self.last_updated = at
        self.transitioning_to = self.transition_done = None
        if status == "ACTIVE":
            self.activated = at


class OktaEmulator(SandboxUserAdmin):
    def __init__(
        self,
        *,
        audit: AuditLog,
        faults: FaultPlan,
        clock: Clock,
        api_token: str,
        async_deactivate_delay: float = 0.0,
        rate_limits: dict[str, int] | None = None,
        concurrency_limit: int | None = CONCURRENCY_LIMIT,
    ) -> None:
        self.audit = audit
        self.faults = faults
        self.clock = clock
        self.api_token = api_token
        self.async_deactivate_delay = async_deactivate_delay
        #: calls a minute by endpoint group (`rate_bucket`)
        self.rate_limits = RATE_LIMITS | (rate_limits or {})
        #: Okta's per-org cap on requests in flight; None: no cap
        self.concurrency_limit = concurrency_limit
        self._in_flight = 0
        self._users: dict[str, _User] = {}
        self._ids_by_login: dict[str, str] = {}
        self._user_type_id = _okta_id("oty")
        # each endpoint group's window: its start (epoch seconds) and the calls in it
        self._windows: dict[str, tuple[int, int]] = {}
        #: calls within their group's budget (answered, not throttled), by group
        self.calls_by_bucket: Counter[str] = Counter()

    @property
    def rate_limit_per_minute(self) -> int:
        """The smallest budget of any endpoint group."""
        return min(self.rate_limits.values())

    @rate_limit_per_minute.setter
    def rate_limit_per_minute(self, value: int) -> None:
        """Every endpoint group the same budget (tests about something else)."""
        self.rate_limits = dict.fromkeys(RATE_LIMITS, value)

    # -- the sandbox's own handles on the state ------------------------------------------

    def add_user(
        self,
        login: str,
        *,
        first_name: str = "",
        last_name: str = "",
        status: str = "ACTIVE",
        sessions: int = 2,
    ) -> str:
        if status not in USER_STATUSES:
            raise ValueError(f"unknown Okta user status {status!r}")
        if login.lower() in self._ids_by_login:
            raise ValueError(f"an Okta user with login {login!r} exists already")
        if sessions < 0:
            raise ValueError("sessions must not be negative")
        now = self.clock.now()
        user = _User(
            id=_okta_id("00u"),
            login=login,
            first_name=first_name,
            last_name=last_name,
            status=status,
            sessions=sessions,
            created=now,
            activated=now if status not in ("STAGED", "PROVISIONED") else None,
            status_changed=now,
            last_login=now if sessions else None,
            last_updated=now,
        )
        self._users[user.id] = user
        self._ids_by_login[login.lower()] = user.id
        return user.id

    def user_status(self, user_id_or_login: str) -> str:
        return self._get(user_id_or_login).status

    def live_sessions(self, user_id_or_login: str) -> int:
        return self._get(user_id_or_login).sessions

    def reactivate(self, user_id_or_login: str) -> None:
        """A human re-enables the user behind the worker's back (what the watchdog must catch)."""
        user = self._get(user_id_or_login)
        previous = user.status
        user.set_status("ACTIVE", self.clock.now())
        self.audit.record(SERVICE, "okta.reactivate", user.id, previous_status=previous)

    def _find(self, key: str) -> _User | None:
        user = self._users.get(key) or self._users.get(self._ids_by_login.get(key.lower(), ""))
        if user is not None:
            self._settle(user)
        return user

    def _get(self, key: str) -> _User:
        user = self._find(key)
        if user is None:
            raise KeyError(f"no Okta user {key!r}")
        return user

    def _settle(self, user: _User) -> None:
        """Finish an asynchronous transition whose time has come (computed on read)."""
        done = user.transition_done
        if user.transitioning_to is None or done is None or self.clock.now() < done:
            return
        if user.transitioning_to == "DEPROVISIONED":
            user.sessions = 0
        user.set_status(user.transitioning_to, done)

    # -- the application -----------------------------------------------------------------

    def app(self) -> web.Application:
        faults: Middleware = self.faults.middleware(
            service=SERVICE,
            audit=self.audit,
            namer=endpoint_name,
            throttle=self._throttle_response,
            error=self._error_response,
        )
        # The edge (rate limit, auth) is outside the faults, so that every response,
        # an injected one too, carries the rate-limit headers.
        app = web.Application(middlewares=[self._edge, faults])
        users = "/api/v1/users/{id}"
        app.router.add_get(users, self._get_user, name="okta.get_user")
        lifecycle = {
            "deactivate": self._deactivate,
            "suspend": self._suspend,
            "unsuspend": self._unsuspend,
            "activate": self._activate,
        }
        for op, handler in lifecycle.items():
            app.router.add_post(f"{users}/lifecycle/{op}", handler, name=f"okta.{op}")
        app.router.add_delete(
            "/api/v1/users/{userId}/sessions", self._clear_sessions, name="okta.clear_sessions"
        )
        app.router.add_post("/_sandbox/okta/users", self._sandbox_add_user)
        app.router.add_get("/_sandbox/okta/users/{key}", self.sandbox_get_user)
        app.router.add_post("/_sandbox/okta/users/{key}/reactivate", self.sandbox_reactivate)
        return app

    @web.middleware
    async def _edge(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/api/"):
            return await handler(request)
        name = endpoint_name(request)
        if self.concurrency_limit is not None and self._in_flight >= self.concurrency_limit:
            return self._concurrency_exceeded(name)
        self._in_flight += 1
        try:
            return await self._admitted(request, handler, name)
        finally:
            self._in_flight -= 1

    def _concurrency_exceeded(self, name: str) -> web.Response:
        """Okta answers a request over the concurrency cap with 429 and a zero limit."""
        self.audit.calls[name] += 1
        self.audit.throttled[name] += 1
        response = okta_error(
            429, "E0000047", "API call exceeded rate limit due to too many requests."
        )
        reset = int(self.clock.now().timestamp()) + 1
        response.headers["X-Rate-Limit-Limit"] = "0"
        response.headers["X-Rate-Limit-Remaining"] = "0"
        response.headers["X-Rate-Limit-Reset"] = str(reset)
        return response

    async def _admitted(
        self, request: web.Request, handler: Handler, name: str
    ) -> web.StreamResponse:
        bucket = rate_bucket(request.method, request.path)
        limit = self.rate_limits[bucket]
        used, reset = self._count_call(bucket)
        response: web.StreamResponse
        if used > limit:
            self.audit.calls[name] += 1
            self.audit.throttled[name] += 1
            response = okta_error(
                429, "E0000047", "API call exceeded rate limit due to too many requests."
            )
        elif not self._authorized(request):
            self.calls_by_bucket[bucket] += 1
            self.audit.calls[name] += 1
            response = okta_error(401, "E0000011", "Invalid token provided")
        else:
            self.calls_by_bucket[bucket] += 1
            try:
                response = await handler(request)
            except web.HTTPNotFound:
                response = okta_error(
                    404, "E0000007", f"Not found: Resource not found: {request.path}"
                )
            except web.HTTPMethodNotAllowed:
                response = okta_error(
                    405, "E0000022", "The endpoint does not support the provided HTTP method"
                )
        remaining = max(0, limit - used)
        for header, value in (
            ("X-Rate-Limit-Limit", limit),
            ("X-Rate-Limit-Remaining", remaining),
            ("X-Rate-Limit-Reset", reset),
        ):
            # an injected throttle has set its own (duplicated) headers: keep them
            if header not in response.headers:
                response.headers[header] = str(value)
        return response

    def _count_call(self, bucket: str) -> tuple[int, int]:
        """Count a call in its group's current one-minute window: the calls counted
        in it so far and the window's end in epoch seconds."""
        start = int(self.clock.now().timestamp()) // _RATE_WINDOW * _RATE_WINDOW
        window_start, used = self._windows.get(bucket, (start, 0))
        used = used + 1 if window_start == start else 1
        self._windows[bucket] = (start, used)
        return used, start + _RATE_WINDOW

    def _authorized(self, request: web.Request) -> bool:
        given = request.headers.get("Authorization", "").encode(errors="replace")
        return hmac.compare_digest(given, f"SSWS {self.api_token}".encode())

    def _throttle_response(self, retry_after: float) -> web.Response:
        response = okta_error(
            429, "E0000047", "API call exceeded rate limit due to too many requests."
        )
        reset = math.ceil(self.clock.now().timestamp() + retry_after)
        response.headers["X-Rate-Limit-Limit"] = str(self.rate_limit_per_minute)
        response.headers["X-Rate-Limit-Remaining"] = "0"
        # Real Okta sometimes sends the header twice; the smaller is right. The larger
        # comes first so that a client taking the first value is caught.
        response.headers.add("X-Rate-Limit-Reset", str(reset + _RATE_WINDOW))
        response.headers.add("X-Rate-Limit-Reset", str(reset))
        return response

    def _error_response(self, status: int) -> web.Response:
        if status >= 500:
            return okta_error(status, "E0000009", "Internal Server Error")
        if status == 429:
            return self._throttle_response(1.0)
        if status == 404:
            return okta_error(404, "E0000007", "Not found: Resource not found")
        return okta_error(
            status, "E0000006", "You do not have permission to perform the requested action"
        )

    # -- Okta endpoints ------------------------------------------------------------------

    async def _get_user(self, request: web.Request) -> web.Response:
        key = request.match_info["id"]
        user = self._find(key)
        if user is None:
            return _not_found(key)
        return _json(200, self._user_json(user, str(request.url.origin())))

    async def _deactivate(self, request: web.Request) -> web.Response:
        key = request.match_info["id"]
        user = self._find(key)
        # Okta answers a user that is (or is becoming) DEPROVISIONED as if it did not exist:
        # 404 E0000007, reported in okta/okta-sdk-java#721; the spec lists 403 and 404.
        if user is None or "DEPROVISIONED" in (user.status, user.transitioning_to):
            return _not_found(key)
        now = self.clock.now()
        send_email = _flag(request.query.get("sendEmail"), default=False)
        delay = self.async_deactivate_delay
        if request.headers.get("Prefer") == "respond-async" and delay > 0:
            done = now + timedelta(seconds=delay)
            user.transitioning_to, user.transition_done = "DEPROVISIONED", done
            user.last_updated = now
            self.audit.record(
                SERVICE,
                "okta.deactivate",
                user.id,
                send_email=send_email,
                asynchronous=True,
                completes_at=wire_time(done),
            )
        else:
            ended, user.sessions = user.sessions, 0
            user.set_status("DEPROVISIONED", now)
            self.audit.record(
                SERVICE,
                "okta.deactivate",
                user.id,
                send_email=send_email,
                asynchronous=False,
                sessions_ended=ended,
            )
        return _json(200, {})

    async def _suspend(self, request: web.Request) -> web.Response:
        return self._transition(request, "okta.suspend", ("ACTIVE",), "SUSPENDED")

    async def _unsuspend(self, request: web.Request) -> web.Response:
        return self._transition(request, "okta.unsuspend", ("SUSPENDED",), "ACTIVE")

    async def _activate(self, request: web.Request) -> web.Response:
        key = request.match_info["id"]
        user = self._find(key)
        if user is not None and user.status == "ACTIVE":
            return okta_error(
                403, "E0000016", "Activation failed because the user is already active"
            )
        response = self._transition(request, "okta.activate", ("STAGED", "DEPROVISIONED"), "ACTIVE")
        if response.status != 200 or _flag(request.query.get("sendEmail"), default=True):
            return response
        # without the email, Okta hands back the activation link instead
        token = "".join(secrets.choice(_ALNUM) for _ in range(20))
        origin = str(request.url.origin())
        return _json(200, {"activationUrl": f"{origin}/welcome/{token}", "activationToken": token})

    def _transition(
        self, request: web.Request, action: str, allowed_from: tuple[str, ...], to: str
    ) -> web.Response:
        key = request.match_info["id"]
        user = self._find(key)
        if user is None:
            return _not_found(key)
        if user.status not in allowed_from or user.transitioning_to is not None:
            return _wrong_status()
        previous = user.status
        user.set_status(to, self.clock.now())
        self.audit.record(SERVICE, action, user.id, previous_status=previous)
        return _json(200, {})

    async def _clear_sessions(self, request: web.Request) -> web.Response:
        # This path takes the user's id only (the spec's pathUserId), not a login.
        user_id = request.match_info["userId"]
        user = self._users.get(user_id)
        if user is None:
            return _not_found(user_id)
        self._settle(user)
        oauth_tokens = _flag(request.query.get("oauthTokens"), default=False)
        ended, user.sessions = user.sessions, 0
        self.audit.record(
            SERVICE, "okta.clear_sessions", user.id, oauth_tokens=oauth_tokens, ended=ended
        )
        return web.Response(status=204)

    def _user_json(self, user: _User, origin: str) -> dict[str, Any]:
        href = f"{origin}/api/v1/users/{user.id}"
        links: dict[str, Any] = {"self": {"href": href}}
        for op in _LIFECYCLE_LINKS.get(user.status, ("deactivate",)):
            links[op] = {"href": f"{href}/lifecycle/{op}", "method": "POST"}
        links["type"] = {"href": f"{origin}/api/v1/meta/types/user/{self._user_type_id}"}
        body: dict[str, Any] = {
            "id": user.id,
            "status": user.status,
            "created": wire_time(user.created),
            "activated": wire_time(user.activated) if user.activated else None,
            "statusChanged": wire_time(user.status_changed),
            "lastLogin": wire_time(user.last_login) if user.last_login else None,
            "lastUpdated": wire_time(user.last_updated),
            "passwordChanged": wire_time(user.created),
            "type": {"id": self._user_type_id},
            "profile": {
                # the spec's firstName/lastName are nullable with minLength 1: null, not ""
                "firstName": user.first_name or None,
                "lastName": user.last_name or None,
                "mobilePhone": None,
                "secondEmail": None,
                "login": user.login,
                "email": user.login,
            },
            "credentials": {"password": {}, "provider": {"type": "OKTA", "name": "OKTA"}},
            "_links": links,
        }
        if user.transitioning_to is not None:
            # the spec: returned only while a transition is in progress
            body["transitioningToStatus"] = user.transitioning_to
        return body

    # -- sandbox administration (not Okta; no auth) --------------------------------------

    async def _sandbox_add_user(self, request: web.Request) -> web.Response:
        try:
            data = await request.json()
            user_id = self.add_user(
                str(data["login"]),
                first_name=str(data.get("first_name", "")),
                last_name=str(data.get("last_name", "")),
                status=str(data.get("status", "ACTIVE")),
                sessions=int(data.get("sessions", 2)),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return _json(400, {"error": f"bad user: {exc}"})
        return _json(200, {"id": user_id})

    @staticmethod
    def _sandbox_view(user: _User) -> dict[str, Any]:
        return {
            "id": user.id,
            "login": user.login,
            "status": user.status,
            "sessions": user.sessions,
        }
