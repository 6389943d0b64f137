"""`offboard serve`: one aiohttp process that takes triggers and runs the worker loop.

Routes: signed HR and incident webhooks, the manual API (bearer tokens), health,
readiness, Prometheus metrics, the OpenAPI document (worker/web/api.py) and the status
page (worker/web/ui.py). Every refusal is an RFC 9457 problem document; nothing is
stored for a refused request (a protected identity is the one refusal that is
recorded, because an auditor wants to see the attempt).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from worker.runtime import Runtime
from worker.web import api
from worker.web.problems import declared_body_limit, problems
from worker.web.state import RUNTIME, STATE, WORKER, server_state
from worker.web.ui import add_ui_routes
from worker.worker import Worker


def build_app(runtime: Runtime, *, run_worker: bool = True) -> web.Application:
    state = server_state(runtime)
    app = web.Application(
        middlewares=[problems, declared_body_limit], client_max_size=state.max_body
    )
    app[RUNTIME] = runtime
    app[STATE] = state
    app[WORKER] = Worker(runtime)
    app.router.add_post("/v1/hooks/{purpose:hr|incident}/{source}", api.hook)
    app.router.add_post("/v1/cases", api.create_case)
    app.router.add_get("/v1/cases", api.list_cases)
    app.router.add_get("/v1/cases/{case_id}", api.get_case)
    app.router.add_post("/v1/cases/{case_id}/confirm/{step}", api.confirm)
    app.router.add_post("/v1/cases/{case_id}/cancel", api.cancel)
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/readyz", api.readyz)
    app.router.add_get("/metrics", api.metrics)
    app.router.add_get("/openapi.json", api.openapi)
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
