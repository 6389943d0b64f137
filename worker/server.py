"""`offboard serve`: one aiohttp process that takes triggers and runs the worker loop.

Routes: signed HR and incident webhooks, the manual API (bearer tokens), health,
readiness, Prometheus metrics and the OpenAPI document. Every refusal is an RFC 9457
problem document; nothing is stored for a refused request (a protected identity is
the one refusal that is recorded, because an auditor wants to see the attempt).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from worker.clock import utc_iso
from worker.config import TriggerSource
from worker.domain import Arrival, Case, CaseStatus, Delivery
from worker.errors import CaseStarted, NotFound, OffboardError, PlaybookError
from worker.intake import Intake
from worker.metrics import Metrics, refresh
from worker.openapi import OPENAPI
from worker.service import (
    ProtectedIdentity,
    Runtime,
    confirm_task,
    is_login,
    open_case,
    playbook_case,
    protected_pattern,
)
from worker.triggers import IgnoredEvent, Trigger, TriggerAdapter, TriggerError, accept, adapter_for
from worker.worker import Worker

log = structlog.get_logger(__name__)


RUNTIME = web.AppKey("runtime", Runtime)
WORKER = web.AppKey("worker", Worker)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Problem(Exception):
    """An RFC 9457 problem: raised anywhere in a handler, answered by the middleware."""

    def __init__(
        self, status: int, title: str, detail: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.headers = headers or {}


def problem_response(
    status: int, title: str, detail: str, *, headers: dict[str, str] | None = None
) -> web.Response:
    slug = "-".join(title.lower().split())
    body = {"type": f"/problems/{slug}", "title": title, "status": status, "detail": detail}
    return web.json_response(
        body, status=status, content_type="application/problem+json", headers=headers
    )


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Problem as p:
        return problem_response(p.status, p.title, p.detail, headers=p.headers)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[STATE].max_body
        return problem_response(413, "body too large", f"the body is over {limit} bytes")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problem_response(exc.status, exc.reason, exc.text or exc.reason)
    except Exception:
        # A bug, never the caller's input: say nothing internal, log everything.
        log.exception("request_failed", path=request.path)
        return problem_response(500, "internal error", "the server failed; see its log")


@dataclass
class ServerState:
    adapters: dict[tuple[str, str], tuple[TriggerAdapter, TriggerSource]]
    api_tokens: dict[str, str]
    #: one lock per stripe of subjects: a person's triggers are handled one at a time
    locks: tuple[asyncio.Lock, ...]
    #: the runtime's metrics (worker/metrics.py): /metrics renders its registry
    metrics: Metrics
    max_body: int
    #: new terminations, admitted in groups (group commit: worker/intake.py)
    intake: Intake

    def lock_for(self, subject: str) -> asyncio.Lock:
        digest = hashlib.sha256(subject.lower().encode()).digest()
        return self.locks[digest[0] % len(self.locks)]


STATE: web.AppKey[ServerState] = web.AppKey("state")


def _state(runtime: Runtime) -> ServerState:
    config = runtime.config.server
    adapters: dict[tuple[str, str], tuple[TriggerAdapter, TriggerSource]] = {}
    for purpose, sources in (("hr", config.hr_sources), ("incident", config.incident_sources)):
        for name, source in sources.items():
            secrets = [
                ref.resolve(f"server.{purpose}_sources.{name}.secrets[{i}]").reveal()
                for i, ref in enumerate(source.secrets)
            ]
            adapter = adapter_for(
                source.kind,
                secrets=secrets,
                tolerance=source.tolerance(),
                purpose="hr" if purpose == "hr" else "incident",
            )
            adapters[(purpose, name)] = (adapter, source)
    tokens = {
        name: ref.resolve(f"server.api_tokens.{name}").reveal()
        for name, ref in config.api_tokens.items()
    }
    return ServerState(
        adapters=adapters,
        api_tokens=tokens,
        locks=tuple(asyncio.Lock() for _ in range(64)),
        metrics=runtime.metrics,
        max_body=config.max_body_bytes,
        intake=Intake(runtime.store, runtime.clock.now),
    )


def build_app(runtime: Runtime, *, run_worker: bool = True) -> web.Application:
    state = _state(runtime)
    app = web.Application(middlewares=[problems], client_max_size=state.max_body)
    app[RUNTIME] = runtime
    app[STATE] = state
    app[WORKER] = Worker(runtime)
    app.router.add_post("/v1/hooks/{purpose:hr|incident}/{source}", hook)
    app.router.add_post("/v1/cases", create_case)
    app.router.add_get("/v1/cases", list_cases)
    app.router.add_get("/v1/cases/{case_id}", get_case)
    app.router.add_post("/v1/cases/{case_id}/confirm/{step}", confirm)
    app.router.add_post("/v1/cases/{case_id}/cancel", cancel)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    from worker.ui import add_ui_routes  # here, not at the top: worker.ui imports this module

    add_ui_routes(app)  # the status page at /ui (docs/ui.md)
    app.on_cleanup.append(_close_intake)
    if run_worker:
        app.cleanup_ctx.append(_worker_ctx)
    return app


async def _close_intake(app: web.Application) -> None:
    await app[STATE].intake.close()


async def _worker_ctx(app: web.Application) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(app[WORKER].run(stop))
    yield
    # aiohttp waits for request handlers only; the worker drains here.
    stop.set()
    await task


# --- triggers ----------------------------------------------------------------------


def _json_content(request: web.Request) -> None:
    ctype = request.content_type
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise Problem(
            415,
            "unsupported media type",
            f"send Content-Type: application/json, not {ctype or 'nothing'}",
        )


async def hook(request: web.Request) -> web.Response:
    state, runtime = request.app[STATE], request.app[RUNTIME]
    purpose, source = request.match_info["purpose"], request.match_info["source"]
    found = state.adapters.get((purpose, source))
    if found is None:
        raise Problem(404, "unknown source", f"no {purpose} source named {source!r} is configured")
    adapter, config = found
    _json_content(request)
    body = await request.read()
    try:
        trigger = accept(adapter, source, request.headers, body, runtime.clock.now())
    except IgnoredEvent as exc:
        state.metrics.triggers.labels(purpose, source, "ignored").inc()
        return web.json_response({"outcome": "ignored", "detail": exc.detail}, status=202)
    except TriggerError as exc:
        state.metrics.triggers.labels(purpose, source, "refused").inc()
        log.info("trigger_refused", purpose=purpose, source=source, reason=exc.title)
        raise Problem(exc.status, exc.title, exc.detail) from None
    key = f"hook:{purpose}:{source}:{trigger.delivery_id}"
    playbook = config.playbook or ("incident" if purpose == "incident" else "leaver")
    status, answer = await _act_once(request, key, trigger, playbook)
    state.metrics.triggers.labels(purpose, source, str(answer.get("outcome"))).inc()
    return web.json_response(answer, status=status)


async def _act_once(
    request: web.Request,
    key: str,
    trigger: Trigger,
    playbook_name: str,
    extra: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Act on a verified trigger exactly once per delivery key; replays get the first answer."""
    state, runtime = request.app[STATE], request.app[RUNTIME]
    async with state.lock_for(trigger.subject):
        admitted = await _admit(request, key, trigger, playbook_name, extra or {})
        if admitted is not None:
            status, answer = admitted
        else:
            seen = await runtime.store.get_delivery(key)
            if seen is not None:
                return _replay(seen)
            status, answer, case_id = await _act(request, trigger, playbook_name)
            answer = {**answer, **(extra or {})}
            await runtime.store.record_delivery(
                Delivery(
                    key=key,
                    case_id=case_id,
                    outcome={"status": status, "body": answer},
                    received_at=runtime.clock.now(),
                )
            )
    request.app[WORKER].wake.set()
    return status, answer


def _replay(seen: Delivery) -> tuple[int, dict[str, Any]]:
    return int(seen.outcome["status"]), {**seen.outcome["body"], "replayed": True}


async def _admit(
    request: web.Request, key: str, trigger: Trigger, playbook_name: str, extra: dict[str, Any]
) -> tuple[int, dict[str, Any]] | None:
    """The common case, a termination for someone with no open case: admitted together
    with the deliveries arriving meanwhile, in one commit. None when `_act` decides:
    a rescission, a protected identity (the refusal is recorded), an open case (a
    later effective time reschedules it)."""
    state, runtime = request.app[STATE], request.app[RUNTIME]
    subject = trigger.subject.strip()
    if (
        trigger.kind == "rescind"
        or not is_login(subject)
        or protected_pattern(subject, runtime.config.protected_identities) is not None
    ):
        return None
    playbook = _playbook(runtime, playbook_name)

    def answer(case: Case) -> dict[str, Any]:
        return {"status": 202, "body": {"outcome": "created", **_summary(case), **extra}}

    new = playbook_case(
        playbook,
        subject,
        _case_trigger(trigger),
        run_after=_run_after(trigger, runtime.clock.now()),
    )
    admission = await state.intake.admit(Arrival(key=key, case=new, answer=answer))
    if admission.delivery is None:
        return None
    if not admission.created:
        return _replay(admission.delivery)
    return int(admission.delivery.outcome["status"]), admission.delivery.outcome["body"]


def _run_after(trigger: Trigger, now: datetime) -> datetime | None:
    return trigger.effective_at if trigger.effective_at and trigger.effective_at > now else None


def _case_trigger(trigger: Trigger) -> dict[str, Any]:
    """What the case records of the trigger that opened it."""
    return {
        "source": trigger.source,
        "kind": trigger.kind,
        "reason": trigger.reason,
        "reference": trigger.reference,
        "delivery": trigger.delivery_id,
        "effective_at": utc_iso(trigger.effective_at) if trigger.effective_at else None,
    }


async def _act(
    request: web.Request, trigger: Trigger, playbook_name: str
) -> tuple[int, dict[str, Any], str | None]:
    runtime = request.app[RUNTIME]
    now = runtime.clock.now()
    playbook = _playbook(runtime, playbook_name)
    if trigger.kind == "rescind":
        case = await runtime.store.find_open_case(trigger.subject, playbook.name)
        if case is None:
            return 200, {"outcome": "nothing-scheduled", "subject": trigger.subject}, None
        try:
            case = await runtime.store.cancel_case(
                case.id, now, f"termination rescinded by {trigger.source} ({trigger.reference})"
            )
        except CaseStarted as exc:
            raise Problem(409, "already started", str(exc)) from None
        return 200, {"outcome": "cancelled", **_summary(case)}, case.id
    run_after = _run_after(trigger, now)
    try:
        case, created = await open_case(
            runtime, playbook, trigger.subject, _case_trigger(trigger), run_after=run_after
        )
    except ProtectedIdentity as exc:
        raise Problem(403, "protected identity", str(exc)) from None
    outcome = "created" if created else ("rescheduled" if run_after else "existing")
    return 202, {"outcome": outcome, **_summary(case)}, case.id


def _playbook(runtime: Runtime, name: str) -> Any:
    try:
        return runtime.playbook(name)
    except PlaybookError as exc:
        # configuration, not input: the operator must fix the playbook
        raise Problem(500, "playbook unavailable", str(exc)) from None


# --- manual API --------------------------------------------------------------------


def _caller(request: web.Request) -> str:
    """The name of the API token presented, compared in constant time against each."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Problem(
            401,
            "unauthorized",
            "send Authorization: Bearer <token>",
            headers={"WWW-Authenticate": 'Bearer realm="offboard"'},
        )
    found = None
    # aiohttp keeps undecodable header bytes as surrogates: encode them back, never fail
    presented = token.encode("utf-8", "surrogateescape")
    for name, expected in request.app[STATE].api_tokens.items():
        if hmac.compare_digest(presented, expected.encode()):
            found = name
    if found is None:
        raise Problem(
            401,
            "unauthorized",
            "the bearer token is not valid",
            headers={"WWW-Authenticate": 'Bearer realm="offboard", error="invalid_token"'},
        )
    return found


class CaseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    playbook: str = Field(pattern=r"^[a-z][a-z0-9-]{0,62}$")
    subject: str = Field(min_length=3, max_length=320)
    reason: str = Field(default="", max_length=2000)
    effective_at: datetime | None = None

    @field_validator("subject")
    @classmethod
    def _email(cls, value: str) -> str:
        value = value.strip()
        if not is_login(value):
            raise ValueError("must be the person's login, an email address")
        return value

    @field_validator("effective_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("must carry a time zone offset, e.g. 2026-01-31T17:00:00Z")
        try:
            return value.astimezone(UTC)
        except OverflowError:
            raise ValueError("is outside the range of dates this service handles") from None


async def _json_body(request: web.Request) -> Any:
    _json_content(request)
    try:
        return json.loads(await request.read())
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Problem(400, "malformed json", "the body is not valid JSON") from None


def _validation_problem(exc: ValidationError) -> Problem:
    parts = []
    for error in exc.errors():
        field = ".".join(str(p) for p in error["loc"]) or "body"
        message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
        parts.append(f"{field}: {message}")
    return Problem(422, "invalid request", "; ".join(parts))


async def create_case(request: web.Request) -> web.Response:
    caller = _caller(request)
    data = await _json_body(request)
    try:
        body = CaseRequest.model_validate(data)
    except ValidationError as exc:
        raise _validation_problem(exc) from None
    runtime = request.app[RUNTIME]
    known = _playbook_names(runtime)
    if body.playbook not in known:
        raise Problem(
            422,
            "invalid request",
            f"playbook: unknown playbook {body.playbook!r} (known: {', '.join(known)})",
        )
    idem = request.headers.get("Idempotency-Key")
    fingerprint = hashlib.sha256(
        json.dumps(body.model_dump(mode="json"), sort_keys=True).encode()
    ).hexdigest()
    trigger = Trigger(
        source=f"api:{caller}",
        kind="terminate",
        subject=body.subject,
        effective_at=body.effective_at,
        reason=body.reason,
        reference=idem or "",
        delivery_id=idem or "",
    )
    if idem is None:
        _, answer, _ = await _act(request, trigger, body.playbook)
        request.app[WORKER].wake.set()
        return web.json_response(answer, status=201 if answer["outcome"] == "created" else 200)
    if not 1 <= len(idem) <= 200 or not (idem.isascii() and idem.isprintable()):
        raise Problem(
            400,
            "bad idempotency key",
            "Idempotency-Key must be 1 to 200 printable ASCII characters",
        )
    key = f"api:{caller}:{idem}"
    seen = await runtime.store.get_delivery(key)
    if seen is not None and seen.outcome["body"].get("fingerprint") != fingerprint:
        raise Problem(
            409, "idempotency key reused", "this Idempotency-Key was used with a different request"
        )
    _, answer = await _act_once(
        request, key, trigger, body.playbook, extra={"fingerprint": fingerprint}
    )
    created = answer["outcome"] == "created" and not answer.get("replayed")
    return web.json_response(answer, status=201 if created else 200)


def _playbook_names(runtime: Runtime) -> list[str]:
    names: set[str] = set()
    for directory in runtime.playbook_dirs():
        names.update(p.stem for p in directory.glob("*.yaml"))
    return sorted(names)


#: GET /v1/cases: the cases of one answer unless `?limit=` says, and the most it may say
LIST_LIMIT = 100
LIST_LIMIT_MAX = 1000


async def list_cases(request: web.Request) -> web.Response:
    """One page of cases, oldest first; `next` is the link to the page after it (null
    on the last), carrying the `after` cursor: the keyset (created_at, id), so cases
    created meanwhile neither shift nor repeat what a walk through the pages sees."""
    _caller(request)
    runtime = request.app[RUNTIME]
    wanted = request.query.get("status")
    statuses = None
    if wanted:
        try:
            statuses = tuple(CaseStatus(s) for s in wanted.split(","))
        except ValueError:
            known = ", ".join(s.value for s in CaseStatus)
            raise Problem(400, "bad query", f"status must be some of: {known}") from None
    limit = _list_limit(request.query.get("limit"))
    after = request.query.get("after") or None
    if after is not None and not (len(after) <= 200 and after.isascii() and after.isprintable()):
        raise Problem(400, "bad query", "after must be the cursor of a `next` link")
    try:
        # one more than asked: whether a next page exists, without a count
        cases = await runtime.store.cases_after(statuses, after=after, limit=limit + 1)
    except NotFound:
        raise Problem(400, "bad query", "after must be the cursor of a `next` link") from None
    following = None
    if len(cases) > limit:
        cases = cases[:limit]
        following = str(request.rel_url.update_query({"after": cases[-1].id}))
    return web.json_response({"cases": [_summary(c) for c in cases], "next": following})


def _list_limit(value: str | None) -> int:
    if value is None:
        return LIST_LIMIT
    number = int(value) if value.isascii() and value.isdigit() and len(value) <= 4 else 0
    if not 1 <= number <= LIST_LIMIT_MAX:
        raise Problem(400, "bad query", f"limit must be a whole number from 1 to {LIST_LIMIT_MAX}")
    return number


async def _case_or_404(runtime: Runtime, case_id: str) -> Case:
    try:
        return await runtime.store.get_case(case_id)
    except NotFound:
        raise Problem(404, "no such case", f"there is no case {case_id!r}") from None


async def get_case(request: web.Request) -> web.Response:
    _caller(request)
    runtime = request.app[RUNTIME]
    case = await _case_or_404(runtime, request.match_info["case_id"])
    steps = await runtime.store.steps(case.id)
    tasks = [await runtime.store.get_task(case.id, s.step_id) for s in steps]
    events = await runtime.store.events(case.id)
    return web.json_response(
        {
            **_summary(case),
            "trigger": case.trigger,
            "halt_reason": case.halt_reason,
            "steps": [
                {
                    "id": s.step_id,
                    "action": s.action,
                    "status": s.status.value,
                    "attempts": s.attempts,
                    "started_at": _opt(s.started_at),
                    "finished_at": _opt(s.finished_at),
                    "evidence": s.evidence,
                    "error": s.error,
                }
                for s in steps
            ],
            "operator_tasks": [
                {
                    "step": t.step_id,
                    "title": t.title,
                    "instructions": t.instructions,
                    "console_url": t.console_url,
                    "opened_at": utc_iso(t.opened_at),
                    "confirmed_at": _opt(t.confirmed_at),
                    "confirmed_by": t.confirmed_by,
                }
                for t in tasks
                if t is not None
            ],
            "countdown": case.countdown,
            "events": [
                {
                    "seq": e.seq,
                    "at": utc_iso(e.at),
                    "kind": e.kind,
                    "step": e.step_id,
                    "data": e.data,
                }
                for e in events
            ],
        }
    )


async def confirm(request: web.Request) -> web.Response:
    caller = _caller(request)
    runtime = request.app[RUNTIME]
    case = await _case_or_404(runtime, request.match_info["case_id"])
    step = request.match_info["step"]
    try:
        task = await confirm_task(runtime, case.id, step, f"api:{caller}")
    except NotFound as exc:
        raise Problem(404, "no such task", str(exc)) from None
    except OffboardError as exc:
        raise Problem(404, "no such step", str(exc)) from None
    request.app[WORKER].wake.set()
    return web.json_response(
        {
            "case_id": case.id,
            "step": step,
            "confirmed_by": task.confirmed_by,
            "confirmed_at": _opt(task.confirmed_at),
        }
    )


async def cancel(request: web.Request) -> web.Response:
    caller = _caller(request)
    runtime = request.app[RUNTIME]
    case = await _case_or_404(runtime, request.match_info["case_id"])
    try:
        case = await runtime.store.cancel_case(
            case.id, runtime.clock.now(), f"cancelled by api:{caller}"
        )
    except CaseStarted as exc:
        raise Problem(409, "already started", str(exc)) from None
    return web.json_response(_summary(case))


# --- operations --------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    try:
        await request.app[RUNTIME].store.ping()
    except Exception as exc:
        raise Problem(
            503, "not ready", f"the store is not reachable: {type(exc).__name__}"
        ) from None
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    state, runtime = request.app[STATE], request.app[RUNTIME]
    # the store-derived metrics are read at each scrape: right whichever replica did the work
    await refresh(state.metrics, runtime.store, runtime.clock.now())
    return web.Response(
        body=state.metrics.exposition(),
        headers={"Content-Type": CONTENT_TYPE_LATEST},
    )


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


def _summary(case: Case) -> dict[str, Any]:
    return {
        "case_id": case.id,
        "playbook": case.playbook,
        "subject": case.subject,
        "status": case.status.value,
        "priority": case.priority,
        "created_at": utc_iso(case.created_at),
        "scheduled_for": _opt(case.run_after) if case.status is CaseStatus.PENDING else None,
        "all_lapsed_at": _all_lapsed(case),
    }


def _all_lapsed(case: Case) -> str | None:
    for m in (case.countdown or {}).get("milestones", []):
        if m["name"] == "all-lapsed":
            return str(m["at"])
    return None


def _opt(when: datetime | None) -> str | None:
    return None if when is None else utc_iso(when)
