"""What the web application's handlers share, under typed aiohttp keys."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from worker.admission import Admissions
from worker.config import TriggerSource
from worker.intake import Intake
from worker.metrics import Metrics
from worker.runtime import Runtime
from worker.triggers import TriggerAdapter, adapter_for
from worker.worker import Worker


@dataclass
class ServerState:
    adapters: dict[tuple[str, str], tuple[TriggerAdapter, TriggerSource]]
    api_tokens: dict[str, str]
    #: the runtime's metrics (worker/metrics.py): /metrics renders its registry
    metrics: Metrics
    max_body: int
    #: new terminations, admitted in groups (group commit: worker/intake.py)
    intake: Intake
    #: the one admission path (worker/admission.py), committing through `intake`
    admissions: Admissions


RUNTIME = web.AppKey("runtime", Runtime)
WORKER = web.AppKey("worker", Worker)
STATE: web.AppKey[ServerState] = web.AppKey("state")


def server_state(runtime: Runtime) -> ServerState:
    """The trigger adapters and API tokens of the configuration, their secrets resolved."""
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
        name: ref.resolve_token(f"server.api_tokens.{name}").reveal()
        for name, ref in config.api_tokens.items()
    }
    intake = Intake(runtime.store, runtime.clock.now)
    return ServerState(
        adapters=adapters,
        api_tokens=tokens,
        metrics=runtime.metrics,
        max_body=config.max_body_bytes,
        intake=intake,
        admissions=runtime.admissions(intake=intake),
    )
