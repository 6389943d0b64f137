"""What every emulator shares: an audit log of mutations, fault injection, loopback serving.

The audit log is one object shared by all emulators of a sandbox, with one global
sequence, so a test can prove the order in which things happened across services.
Fault injection is one mechanism for all emulators; each emulator only supplies
how its real service spells a throttle or a server error.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from aiohttp import web
from aiohttp.typedefs import Middleware

from worker.clock import Clock, SystemClock

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: Names the endpoint a request is for, e.g. "okta.deactivate" or "identitystore.DescribeUser".
EndpointNamer = Callable[[web.Request], str]
#: Builds the service's own throttle response for a hinted wait in seconds.
ThrottleResponder = Callable[[float], web.Response]
#: Builds the service's own server-error response for a status code.
ErrorResponder = Callable[[int], web.Response]


def wire_time(when: datetime) -> str:
    """A moment as Okta (`lastUpdated`), SCIM (`meta.lastModified`) and Google
    (`creationTime`) write it: ISO 8601 in UTC to the millisecond with a `Z`, e.g.
    `2013-06-24T16:39:18.000Z`.

    Written here, not taken from the product: the emulators must not share the adapters'
    idea of the format. Rounded up, so a moment the session model reports is never
    earlier than the one it stands for."""
    when = when.astimezone(UTC)
    if when.microsecond % 1000:
        when += timedelta(microseconds=1000 - when.microsecond % 1000)
    return (
        f"{when.year:04d}-{when.month:02d}-{when.day:02d}T"
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d}.{when.microsecond // 1000:03d}Z"
    )


def parse_wire_time(text: str) -> datetime:
    """An ISO 8601 moment as a caller of the sandbox's admin routes writes it (UTC when no
    offset is given)."""
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True, kw_only=True)
class AuditEntry:
    seq: int
    at: datetime
    service: str
    action: str
    target: str
    detail: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": wire_time(self.at),
            "service": self.service,
            "action": self.action,
            "target": self.target,
            "detail": self.detail,
        }


class AuditLog:
    """Every mutation an emulator applied, in the order applied, plus a count of all calls."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self._entries: list[AuditEntry] = []
        self.calls: Counter[str] = Counter()
        self.throttled: Counter[str] = Counter()
        #: (time, endpoint, outcome) of every request, so tests can check waits between calls
        self.requests: list[tuple[datetime, str, str]] = []

    def record(self, service: str, action: str, target: str, **detail: Any) -> AuditEntry:
        entry = AuditEntry(
            seq=len(self._entries) + 1,
            at=self.clock.now(),
            service=service,
            action=action,
            target=target,
            detail=detail,
        )
        self._entries.append(entry)
        return entry

    def entries(self, *, action: str | None = None, target: str | None = None) -> list[AuditEntry]:
        return [
            e
            for e in self._entries
            if (action is None or e.action == action) and (target is None or e.target == target)
        ]

    def as_json(self) -> dict[str, Any]:
        return {
            "entries": [e.as_json() for e in self._entries],
            "calls": dict(self.calls),
            "throttled": dict(self.throttled),
        }


FaultKind = Literal["throttle", "error", "timeout", "reset", "latency"]


@dataclass(kw_only=True)
class FaultRule:
    """One kind of fault for the endpoints it matches.

    `count` faults fire first (deterministic), then `rate` applies with the plan's
    seeded generator. `phase="after"` lets the real handler run first, so that a
    mutation is applied although the client sees a failure: the case a write-ahead
    ledger exists for.
    """

    endpoint: str = "*"  #: exact endpoint name, a prefix ending in "*", or "*"
    kind: FaultKind
    count: int | None = None
    rate: float = 0.0
    status: int = 500
    retry_after: float = 1.0
    delay: float = 30.0
    phase: Literal["before", "after"] = "before"
    fired: int = field(default=0)

    def matches(self, endpoint: str) -> bool:
        if self.endpoint == "*":
            return True
        if self.endpoint.endswith("*"):
            return endpoint.startswith(self.endpoint[:-1])
        return endpoint == self.endpoint

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FaultRule:
        allowed = {"endpoint", "kind", "count", "rate", "status", "retry_after", "delay", "phase"}
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(f"unknown fault rule fields: {sorted(unknown)}")
        return cls(**data)


@dataclass(kw_only=True)
class ServiceLimit:
    """A rate limit enforced like the real service: a token bucket over the endpoints
    it names (prefixes ending in "*"), refilled `per_second`, holding `burst`."""

    endpoints: tuple[str, ...]
    per_second: float
    burst: float = 1.0
    retry_after: float = 1.0
    _tokens: float = field(default=-1.0)
    _at: float = field(default=0.0)

    def matches(self, endpoint: str) -> bool:
        return any(
            endpoint.startswith(p[:-1]) if p.endswith("*") else endpoint == p
            for p in self.endpoints
        )

    def admit(self) -> bool:
        now = time.monotonic()
        if self._tokens < 0:
            self._tokens, self._at = self.burst, now
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.per_second)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class FaultPlan:
    """Seeded, per-endpoint faults shared by all emulators of a sandbox, and the
    services' own rate limits."""

    def __init__(self, seed: int = 0) -> None:
        self.rules: list[FaultRule] = []
        self.limits: list[ServiceLimit] = []
        self._random = random.Random(seed)

    def limit(self, limit: ServiceLimit) -> ServiceLimit:
        self.limits.append(limit)
        return limit

    def add(self, rule: FaultRule) -> FaultRule:
        self.rules.append(rule)
        return rule

    def clear(self) -> None:
        self.rules.clear()

    def pick(self, endpoint: str) -> list[FaultRule]:
        """The faults that fire for this request; latency stacks with at most one failure."""
        picked: list[FaultRule] = []
        failure_picked = False
        for rule in self.rules:
            if not rule.matches(endpoint):
                continue
            if rule.count is not None and rule.fired < rule.count:
                fire = True
            elif rule.count is not None:
                fire = False
            else:
                fire = rule.rate > 0 and self._random.random() < rule.rate
            if not fire:
                continue
            if rule.kind != "latency":
                if failure_picked:
                    continue
                failure_picked = True
            rule.fired += 1
            picked.append(rule)
        return picked

    def middleware(
        self,
        *,
        service: str,
        audit: AuditLog,
        namer: EndpointNamer,
        throttle: ThrottleResponder,
        error: ErrorResponder,
    ) -> Middleware:
        @web.middleware
        async def inject_faults(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.path.startswith("/_sandbox"):
                return await handler(request)
            endpoint = namer(request)
            audit.calls[endpoint] += 1
            if request.path.startswith("/_console"):
                # a human in the console is not a provider API: counted, never faulted
                return await handler(request)
            for limit in self.limits:
                if limit.matches(endpoint) and not limit.admit():
                    audit.throttled[endpoint] += 1
                    audit.requests.append((audit.clock.now(), endpoint, "rate-limited"))
                    return throttle(limit.retry_after)
            faults = self.pick(endpoint)
            outcome = next((f.kind for f in faults if f.kind != "latency"), "ok")
            audit.requests.append((audit.clock.now(), endpoint, outcome))
            for fault in faults:
                if fault.kind == "latency":
                    await asyncio.sleep(fault.delay)
            failure = next((f for f in faults if f.kind != "latency"), None)
            if failure is None:
                return await handler(request)
            if failure.phase == "after":
                await handler(request)
            if failure.kind == "throttle":
                audit.throttled[endpoint] += 1
                return throttle(failure.retry_after)
            if failure.kind == "error":
                return error(failure.status)
            if failure.kind == "timeout":
                await asyncio.sleep(failure.delay)
                return error(504)
            # reset: drop the connection without an answer
            transport = request.transport
            if transport is not None:
                transport.abort()
            raise ConnectionResetError("sandbox: injected connection reset")

        return inject_faults


class SandboxUserAdmin:
    """The sandbox admin routes every IdP emulator shares: show a user, re-enable one
    (the drift a watchdog must catch). Emulators supply `_find`, `_sandbox_view` and
    `reactivate`."""

    def _find(self, key: str) -> Any:
        raise NotImplementedError

    def _sandbox_view(self, user: Any) -> dict[str, Any]:
        raise NotImplementedError

    def reactivate(self, user_id_or_login: str) -> None:
        raise NotImplementedError

    async def sandbox_get_user(self, request: web.Request) -> web.Response:
        user = self._find(request.match_info["key"])
        if user is None:
            return web.json_response({"error": "no such user"}, status=404)
        return web.json_response(self._sandbox_view(user))

    async def sandbox_reactivate(self, request: web.Request) -> web.Response:
        user = self._find(request.match_info["key"])
        if user is None:
            return web.json_response({"error": "no such user"}, status=404)
        self.reactivate(user.id)
        return web.json_response(self._sandbox_view(user))


@dataclass
class Served:
    """An aiohttp application listening on loopback."""

    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def close(self) -> None:
        await self.runner.cleanup()


async def serve_on_loopback(app: web.Application, port: int = 0, host: str = "127.0.0.1") -> Served:
    """Start `app` on loopback; port 0 picks a free one."""
    if not host.startswith("127.") and host not in ("localhost", "::1"):
        raise ValueError(f"the sandbox listens on loopback only, not {host!r}")
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    assert server is not None
    sockets = getattr(server, "sockets", None) or []
    bound_port = sockets[0].getsockname()[1] if sockets else port
    return Served(runner=runner, host=host, port=bound_port)
