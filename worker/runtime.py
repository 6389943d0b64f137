"""The runtime: the store, the providers, the engine and the clock a process works
with, assembled from configuration, and where its playbooks are found."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from worker.admission import Admissions
from worker.bundled import playbooks_dir
from worker.clock import Clock, SystemClock
from worker.config import Config
from worker.engine import Engine, EngineSettings, default_worker_id
from worker.errors import StoreUnavailable
from worker.intake import Intake
from worker.metrics import Metrics
from worker.notify import Notifier, notifier_from_config, record_in_timeline
from worker.playbook import Playbook, find_playbook, load_playbook
from worker.providers import identity_provider
from worker.providers.http import provider_session
from worker.providers.identity_center import AwsIdentityCenter
from worker.ratelimit import Limits
from worker.steps import Providers
from worker.store.base import Store
from worker.store.postgres import PostgresStore
from worker.store.sqlite import SqliteStore

log = structlog.get_logger(__name__)

#: how long `offboard worker` and `serve` wait for an unreachable database at start
#: (a restart, a managed failover) before they exit 2
STARTUP_STORE_WAIT_SECONDS = 60.0


@dataclass(frozen=True, kw_only=True)
class Runtime:
    config: Config
    store: Store
    providers: Providers
    engine: Engine
    clock: Clock
    base_dir: Path
    #: the process's Prometheus metrics, shared by the engine, the providers and /metrics
    metrics: Metrics = field(default_factory=Metrics)
    #: the process's client-side rate limiters, by provider, shared by every case
    limits: Limits = field(default_factory=lambda: Limits({}))

    def playbook_dirs(self) -> list[Path]:
        return playbook_search(self.config, self.base_dir)

    def playbook(self, name_or_path: str) -> Playbook:
        return load_playbook(find_playbook(name_or_path, self.playbook_dirs()))

    def playbook_names(self) -> list[str]:
        names: set[str] = set()
        for directory in self.playbook_dirs():
            names.update(p.stem for p in directory.glob("*.yaml"))
        return sorted(names)

    def admissions(self, *, intake: Intake | None = None) -> Admissions:
        """The admission path (worker/admission.py) over this runtime's store; the
        server's, with an intake, groups its webhooks' commits."""
        return Admissions(
            self.store,
            self.clock.now,
            protected=self.config.protected_identities,
            intake=intake,
            notifier=self.engine.notifier,
        )


def playbook_search(config: Config, base_dir: Path) -> list[Path]:
    """Where playbooks are looked for: the configured directories first (a playbook
    there wins), then the ones that ship with offboard."""
    configured = [Path(d) if Path(d).is_absolute() else base_dir / d for d in config.playbook_dirs]
    shipped = playbooks_dir()
    already = shipped.resolve() in {c.resolve() for c in configured}
    return configured + ([] if already else [shipped])


@contextlib.asynccontextmanager
async def open_store(
    config: Config, base_dir: Path, *, wait_seconds: float = 0.0
) -> AsyncIterator[Store]:
    """The configured store, open. `wait_seconds`: how long an unreachable database
    is tried again (a long-running process starting during a restart or a failover);
    a refused login, a bad DSN or a damaged file fail at once."""
    store: Store
    if config.store.postgres is not None:
        store = PostgresStore(config.store.postgres.resolve("store.postgres").reveal())
    else:
        path = Path(config.store.sqlite)
        store = SqliteStore(path if path.is_absolute() else base_dir / path)
    deadline = time.monotonic() + wait_seconds
    for attempt in itertools.count():
        try:
            await store.open()
            break
        except StoreUnavailable as exc:
            if time.monotonic() >= deadline:
                raise
            log.warning("store_unavailable_at_start", error=str(exc), attempt=attempt + 1)
            await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
    try:
        yield store
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def open_runtime(
    config: Config,
    *,
    base_dir: Path,
    clock: Clock | None = None,
    worker_id: str | None = None,
    notifier: Notifier | None = None,
    metrics: Metrics | None = None,
    wait_for_store: float = 0.0,
) -> AsyncIterator[Runtime]:
    clock = clock or SystemClock()
    metrics = metrics or Metrics()
    async with contextlib.AsyncExitStack() as stack:
        store = await stack.enter_async_context(
            open_store(config, base_dir, wait_seconds=wait_for_store)
        )
        http = await stack.enter_async_context(provider_session())
        if notifier is None:
            fanout = notifier_from_config(
                config.notifiers, http, record=record_in_timeline(store, clock), clock=clock
            )
            # closes before the store and the session: deliveries in flight finish
            # (or are cancelled after 20 s) and are recorded in the case timeline
            stack.push_async_callback(fanout.aclose, 20.0)
            notifier = fanout
        # replicas on PostgreSQL share each provider's budget through the store;
        # one process on SQLite keeps it in memory
        worker_id = worker_id or default_worker_id()
        shared = store if config.store.postgres is not None else None
        limits = config.limits.limits(shared, worker_id)
        idp = identity_provider(config.idp, http, limits, clock, metrics)
        ic = await stack.enter_async_context(
            AwsIdentityCenter(
                config.identity_center,
                http,
                limits["identity-center"],
                metrics=metrics,
                clock=clock,
            )
        )
        providers = Providers(idp=idp, identity_center=ic)
        settings = EngineSettings(
            lease_seconds=config.worker.lease_seconds,
            verify_timeout=config.worker.verify_timeout_seconds,
            verify_interval=config.worker.verify_interval_seconds,
            requeue_after=config.worker.requeue_after_seconds,
        )
        engine = Engine(
            store=store,
            providers=providers,
            clock=clock,
            policy=config.retry.policy(),
            settings=settings,
            sessions=config.countdown.settings(),
            notifier=notifier,
            worker_id=worker_id,
            metrics=metrics,
        )
        yield Runtime(
            config=config,
            store=store,
            providers=providers,
            engine=engine,
            clock=clock,
            base_dir=base_dir,
            metrics=metrics,
            limits=limits,
        )
