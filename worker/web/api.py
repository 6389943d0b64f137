"""The JSON side of `offboard serve`: the HR and incident webhooks, the manual API
(bearer tokens), health, readiness, metrics and the OpenAPI document.

What becomes of a trigger or a `POST /v1/cases` is decided by admission
(worker/admission.py); these handlers verify and parse the request, and translate
the decision into a status and a body (or a problem document).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from worker.admission import Admitted, Instruction, Outcome
from worker.cases import confirm_task
from worker.clock import utc_iso
from worker.domain import Case, CaseStatus, InvalidSubject, canonical_subject
from worker.errors import CaseStarted, NotFound, OffboardError, PlaybookError, StoreUnavailable
from worker.metrics import refresh
from worker.playbook import Playbook
from worker.runtime import Runtime
from worker.triggers import IgnoredEvent, Trigger, TriggerError, accept
from worker.web.openapi import OPENAPI
from worker.web.problems import RETRY_AFTER_UNAVAILABLE, Problem
from worker.web.state import RUNTIME, STATE, WORKER

log = structlog.get_logger(__name__)


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
    playbook = _playbook(
        runtime, config.playbook or ("incident" if purpose == "incident" else "leaver")
    )
    status, answer = await _admit_keyed(request, _instruction(trigger, playbook, key))
    # a replay carries the first answer's outcome; it is counted as what it is
    counted = "replayed" if answer.get("replayed") else str(answer.get("outcome"))
    state.metrics.triggers.labels(purpose, source, counted).inc()
    # which delivery made or joined which case, once it is durable (no address: the case
    # names the person)
    log.info(
        "trigger_accepted",
        purpose=purpose,
        source=source,
        delivery=trigger.delivery_id,
        outcome=counted,
        case_id=answer.get("case_id"),
    )
    return web.json_response(answer, status=status)


def _instruction(trigger: Trigger, playbook: Playbook, key: str | None) -> Instruction:
    return Instruction(
        playbook=playbook,
        subject=trigger.subject,
        trigger=_case_trigger(trigger),
        rescind=trigger.kind == "rescind",
        effective_at=trigger.effective_at,
        key=key,
    )


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


async def _admit_keyed(
    request: web.Request, instruction: Instruction, extra: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    """Admit a keyed instruction: (status, body), recorded with its delivery; a replay
    gets the first answer again, marked `replayed`."""
    try:
        admitted = await request.app[STATE].admissions.admit(
            instruction, lambda a: _recorded(a, instruction, extra or {})
        )
    except InvalidSubject as exc:
        raise _subject_problem(exc) from None
    _refuse(admitted)
    assert admitted.delivery is not None  # a keyed admission records or replays one
    outcome = admitted.delivery.outcome
    status, body = int(outcome["status"]), outcome["body"]
    if admitted.outcome is Outcome.REPLAYED:
        return status, {**body, "replayed": True}
    request.app[WORKER].wake.set()
    return status, body


def _recorded(
    admitted: Admitted, instruction: Instruction, extra: dict[str, Any]
) -> dict[str, Any]:
    """The answer a delivery records: status and body."""
    status, body = _answer(admitted, instruction)
    return {"status": status, "body": {**body, **extra}}


def _answer(admitted: Admitted, instruction: Instruction) -> tuple[int, dict[str, Any]]:
    """A rescission is answered 200 (done), a termination 202 (accepted, to be run)."""
    status = 200 if instruction.rescind else 202
    if admitted.case is None:  # nothing-scheduled: the one outcome without a case
        return status, {"outcome": admitted.outcome.value, "subject": instruction.subject}
    return status, {"outcome": admitted.outcome.value, **_summary(admitted.case)}


def _subject_problem(exc: InvalidSubject) -> Problem:
    """An address that cannot be a login: 422 naming what is wrong (never a 500, which
    a webhook sender would retry forever), without repeating the address."""
    return Problem(422, "invalid subject", f"subject: {exc}")


def _refuse(admitted: Admitted) -> None:
    """The refusals, as problem documents."""
    if admitted.outcome is Outcome.PROTECTED:
        raise Problem(403, "protected identity", admitted.detail)
    if admitted.outcome is Outcome.ALREADY_STARTED:
        raise Problem(409, "already started", admitted.detail)


def _playbook(runtime: Runtime, name: str) -> Playbook:
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


#: RFC 3339's date-time (section 5.6): a full date, a full time, an offset
RFC_3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})", re.ASCII
)


class CaseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    playbook: str = Field(pattern=r"^[a-z][a-z0-9-]{0,62}$")
    subject: str = Field(min_length=3, max_length=320)
    reason: str = Field(default="", max_length=2000)
    effective_at: datetime | None = None

    @field_validator("subject")
    @classmethod
    def _email(cls, value: str) -> str:
        try:
            return canonical_subject(value)
        except InvalidSubject as exc:
            if exc.non_ascii:  # admission decides: a protected look-alike is a 403
                return value.strip()
            raise ValueError(str(exc)) from None

    @field_validator("effective_at", mode="before")
    @classmethod
    def _rfc_3339(cls, value: Any) -> Any:
        # pydantic alone would take Unix numbers (and numeric strings): 0 would run now
        if value is not None and not (isinstance(value, str) and RFC_3339.fullmatch(value)):
            raise ValueError("must be an RFC 3339 date-time string, e.g. 2026-01-31T17:00:00Z")
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
    known = runtime.playbook_names()
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
    playbook = _playbook(runtime, body.playbook)
    if idem is None:
        instruction = _instruction(trigger, playbook, None)
        try:
            admitted = await request.app[STATE].admissions.admit(instruction)
        except InvalidSubject as exc:
            raise _subject_problem(exc) from None
        _refuse(admitted)
        _, answer = _answer(admitted, instruction)
        request.app[WORKER].wake.set()
        return web.json_response(answer, status=201 if admitted.created else 200)
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
    _, answer = await _admit_keyed(
        request, _instruction(trigger, playbook, key), extra={"fingerprint": fingerprint}
    )
    created = answer["outcome"] == "created" and not answer.get("replayed")
    return web.json_response(answer, status=201 if created else 200)


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
        confirmation = await confirm_task(runtime, case.id, step, f"api:{caller}")
    except NotFound as exc:
        raise Problem(404, "no such task", str(exc)) from None
    except StoreUnavailable:
        raise  # 503 (worker/web/problems.py), not the caller's mistake
    except OffboardError as exc:
        raise Problem(404, "no such step", str(exc)) from None
    task = confirmation.task
    if not confirmation.already:
        request.app[WORKER].wake.set()
    # a repeat answers with the first confirmation, and records nothing
    return web.json_response(
        {
            "case_id": case.id,
            "step": step,
            "confirmed_by": task.confirmed_by,
            "confirmed_at": _opt(task.confirmed_at),
            "already_confirmed": confirmation.already,
            "detail": confirmation.message,
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
    retry = {"Retry-After": str(RETRY_AFTER_UNAVAILABLE)}
    if not request.app[WORKER].available:
        # the worker loop met the outage first and waits for the database
        raise Problem(503, "not ready", "the store is not reachable", headers=retry)
    try:
        await request.app[RUNTIME].store.ping()
    except Exception as exc:
        raise Problem(
            503,
            "not ready",
            f"the store is not reachable: {type(exc).__name__}",
            headers=retry,
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
