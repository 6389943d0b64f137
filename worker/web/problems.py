"""RFC 9457 problem documents: every refusal of the web application is one."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from worker.errors import StoreUnavailable
from worker.web.state import STATE

log = structlog.get_logger(__name__)

#: seconds a caller is asked to wait (Retry-After) while the database is unreachable
RETRY_AFTER_UNAVAILABLE = 5

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
    except StoreUnavailable as exc:
        # the database is away for now (a restart, a failover): senders retry
        log.warning("request_store_unavailable", path=request.path, error=str(exc))
        return problem_response(
            503,
            "store unavailable",
            "the database cannot be reached for now; retry later",
            headers={"Retry-After": str(RETRY_AFTER_UNAVAILABLE)},
        )
    except web.HTTPRequestEntityTooLarge:
        return _too_large(request.app[STATE].max_body)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # a 405 says what is allowed (RFC 9110 15.5.6)
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return problem_response(exc.status, exc.reason, exc.text or exc.reason, headers=allow)
    except Exception:
        # A bug, never the caller's input: say nothing internal, log everything.
        log.exception("request_failed", path=request.path)
        return problem_response(500, "internal error", "the server failed; see its log")


@web.middleware
async def declared_body_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A body whose declared length is over the limit is refused from the headers alone,
    before any of it is read (aiohttp's own limit trips only while reading)."""
    limit = request.app[STATE].max_body
    if request.content_length is not None and request.content_length > limit:
        response = _too_large(limit)
        response.force_close()  # the unread body must not be taken for the next request
        return response
    return await handler(request)


def _too_large(limit: int) -> web.Response:
    return problem_response(413, "body too large", f"the body is over {limit} bytes")
